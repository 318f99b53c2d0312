"""`mvtune probe`: known / weak / unknown from attribute presence, on the example concepts file."""

import json
from pathlib import Path

import pytest

from evaluation_data import tiny_clip
from mvtune.evaluate.probe import KNOWN, UNKNOWN, WEAK, Thresholds, rank

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "concepts" / "ducks.yaml"


def test_rank_thresholds_are_documented_defaults_and_overridable():
    default = Thresholds()
    assert (default.known, default.weak) == (0.7, 0.4)
    assert [rank(p, default) for p in (0.9, 0.7, 0.55, 0.4, 0.2, None)] == [KNOWN, KNOWN, WEAK, WEAK, UNKNOWN, UNKNOWN]
    strict = Thresholds(known=0.95, weak=0.8)
    assert rank(0.9, strict) == WEAK
    with pytest.raises(ValueError, match="must not exceed"):
        Thresholds(known=0.5, weak=0.6)


def test_probe_cli_on_the_example_concepts(tmp_path, tiny_base, sample_meshes_dir, cli):
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} not present")
    clip = tiny_clip(tmp_path / "clip")
    mesh = sorted(sample_meshes_dir.glob("*.glb"))[0]
    out = tmp_path / "probe"
    result = cli("probe", EXAMPLE, "--out", out, "--base-model", tiny_base, "--clip", f"tiny={clip}", "--mesh", mesh,
                 "--seeds", "0", "--prompts", "1", "--steps", "2", "--resolution", "64", "--device", "cpu",
                 "--known", "0.9", "--weak", "0.3")
    probe = json.loads((out / "probe.json").read_text())
    assert probe["thresholds"] == {"known": 0.9, "weak": 0.3}
    assert set(probe["order"]) == set(probe["concepts"]) and len(probe["concepts"]) >= 3
    for name, concept in probe["concepts"].items():
        assert concept["rank"] == rank(concept["presence"], Thresholds(known=0.9, weak=0.3))
        assert "concept" in concept["attributes"]  # the concept itself is probed next to its traits
        assert concept["cells"] == 1
    assert all((out / g["file"]).is_file() for g in probe["grids"])
    assert "probe" in (out / "probe.html").read_text() and "concept probe" in result.stderr


def test_probe_needs_a_scorer(tmp_path, tiny_base, cli):
    result = cli("probe", EXAMPLE, "--out", tmp_path / "p", "--base-model", tiny_base, "--clip", str(tmp_path / "none"),
                 expect=2)
    assert "scorers" in result.stderr and "none" in result.stderr
