"""Concepts files and prompt sets: validation naming keys, deterministic distinct sampling, rows on disk, CLI."""

import pytest

from mvtune.prompts import (
    ConceptsError,
    PromptsError,
    ProtectedPromptError,
    load_concepts,
    parse_concepts,
    read_prompt_rows,
    sample_prompts,
    write_prompt_rows,
)

from conftest import REPO

DUCKS = REPO / "examples" / "concepts" / "ducks.yaml"


def _minimal(**extra) -> dict:
    data = {
        "subjects": ["duck"],
        "styles": ["toy figurine", "stylized but clean"],
        "concepts": {"firefighter": {"attributes": {"helmet": {"phrases": ["red helmet", "fire helmet"]},
                                                    "tools": {"phrases": ["a hose", "an axe"]}}}},
    }
    data.update(extra)
    return data


def test_example_file_has_the_teams_concepts_and_probe_pairs():
    concepts = load_concepts(DUCKS)
    assert {"firefighter", "astronaut", "construction-worker"} <= set(concepts.concepts)
    assert concepts.concepts["construction-worker"].phrase == "construction worker"
    probed = concepts.concepts["firefighter"].probed_attributes()
    assert ("helmet", "a red firefighter helmet", "a bare head") in probed
    assert concepts.generic_prompts("duck")[-1] == "a duck floating in a bathtub full of bubbles"


def test_sampling_is_deterministic_distinct_and_records_what_was_drawn():
    concepts = load_concepts(DUCKS)
    rows = sample_prompts(concepts, 30)
    assert rows == sample_prompts(concepts, 30)
    assert rows != sample_prompts(concepts, 30, seed=1)
    assert len(rows) == 30 * len(concepts.concepts)
    assert len({r.prompt for r in rows}) == len(rows) and len({r.id for r in rows}) == len(rows)
    firefighter = [r for r in rows if r.concept == "firefighter"]
    assert firefighter[0].prompt == concepts.concepts["firefighter"].prompts[0]  # fixed prompts first
    assert firefighter[0].id == "firefighter-0000"
    for row in firefighter[1:]:
        assert row.attributes and all(phrase in row.prompt for phrase in row.attributes.values())
        pools = concepts.concepts["firefighter"].attributes
        assert all(phrase in pools[name].phrases for name, phrase in row.attributes.items())
        assert row.subject in row.prompt and row.override is None
    # a longer list extends a shorter one
    assert [r for r in sample_prompts(concepts, 50) if int(r.id[-4:]) < 30] == rows
    assert concepts.prompts_for("astronaut", 5) == [r for r in rows if r.concept == "astronaut"][:5]


@pytest.mark.parametrize("change, expected", [
    ({"subjects": []}, "'subjects' is an empty pool"),
    ({"concepts": {}}, "'concepts' is an empty pool"),
    ({"concepts": {"chef": {"attributes": {"hat": {"phrases": []}}}}},
     "'concepts.chef.attributes.hat.phrases' is an empty pool"),
    ({"stlyes": ["x"]}, "unknown key 'stlyes' (did you mean 'styles'?)"),
    ({"concepts": {"chef": {"atributes": {}}}},
     "unknown key 'concepts.chef.atributes' (did you mean 'concepts.chef.attributes'?)"),
    ({"concepts": {"chef": {"attributes": {"hat": {"phrases": ["a"], "postive": "x"}}}}},
     "did you mean 'concepts.chef.attributes.hat.positive'?"),
    ({"concepts": {"chef": {"attributes": {"hat": {"phrases": ["a"], "positive": "x"}}}}}, "'contrast' is required"),
    ({"templates": ["{subject} as {job}"]}, "placeholders are"),
    ({"generic": ["gold"]}, "{subject}"),
])
def test_bad_files_name_the_key(change, expected):
    with pytest.raises(ConceptsError) as info:
        parse_concepts(_minimal(**change), "c.yaml")
    assert expected in str(info.value) and str(info.value).startswith("c.yaml")


def test_all_problems_listed_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("subjects: []\nconcepts: {a: {attributes: {h: {phrases: []}}}}\ncolour: 1\n")
    with pytest.raises(ConceptsError) as info:
        load_concepts(path)
    message = str(info.value)
    assert "3 problem(s)" in message and "subjects" in message and "concepts.a.attributes.h.phrases" in message
    with pytest.raises(ConceptsError, match="does not exist"):
        load_concepts(tmp_path / "missing.yaml")


def test_fixed_prompts_name_their_subject_and_attributes():
    data = _minimal(subjects=["duck", "rubber duck"])
    data["concepts"]["firefighter"]["prompts"] = ["a rubber duck with a red helmet", "a red helmet"]
    rows = sample_prompts(parse_concepts(data), 2)
    assert [(r.subject, r.attributes) for r in rows] == [
        ("rubber duck", {"helmet": "red helmet"}), ("duck", {"helmet": "red helmet"})
    ]


def test_small_pools_refuse_large_counts():
    concepts = parse_concepts(_minimal())
    assert len(sample_prompts(concepts, 5)) == 5
    with pytest.raises(PromptsError, match="gave only .* distinct prompts"):
        sample_prompts(concepts, 500)


def test_protected_concepts_are_refused_or_recorded():
    plumber = {"phrase": "Mario-style plumber", "attributes": {"hat": {"phrases": ["red cap"]}}}
    data = _minimal(concepts={"plumber": plumber})
    with pytest.raises(ProtectedPromptError, match="Mario"):
        sample_prompts(parse_concepts(data), 1)
    rows = sample_prompts(parse_concepts(data), 1, override=True)
    assert rows[0].override == "Mario"
    extra = _minimal(protected_terms=["Quackers"], concepts={"q": {"prompts": ["a Quackers duck"]}})
    with pytest.raises(ProtectedPromptError, match="Quackers"):
        sample_prompts(parse_concepts(extra), 1)


def test_rows_round_trip_and_bad_lines_are_named(tmp_path):
    rows = sample_prompts(load_concepts(DUCKS), 3)
    path = tmp_path / "p.jsonl"
    assert write_prompt_rows(path, rows) == len(rows)
    assert read_prompt_rows(path) == [r.model_dump() for r in rows]
    path.write_text('{"id": "a", "prompt": "x"}\nnot json\n{"id": "a", "prompt": "y"}\n{"prompt": ""}\n')
    with pytest.raises(PromptsError) as info:
        read_prompt_rows(path)
    message = str(info.value)
    assert "line 2: not JSON" in message and "line 3: duplicate id 'a'" in message and "line 4" in message


def test_cli_sample_and_check(cli, tmp_path):
    out = tmp_path / "prompts.jsonl"
    cli("prompts", DUCKS, "--count", 4, "--out", out)
    rows = read_prompt_rows(out)
    assert len(rows) == 4 * len(load_concepts(DUCKS).concepts)
    assert "0 flagged" in cli("prompts", "check", out).stderr
    text = tmp_path / "list.txt"
    text.write_text("a yellow duck\na duck dressed as M.a.r.i.o\n\nfirefighter duck\n")
    result = cli("prompts", "check", text, expect=1)
    assert "line 2: Mario: a duck dressed as M.a.r.i.o" in result.stdout and "1 flagged" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("subjects: [duck]\nconcepts: {a: {attributes: {h: {phrases: []}}}}\n")
    result = cli("prompts", bad, "--count", 2, "--out", tmp_path / "x.jsonl", expect=2)
    assert "concepts.a.attributes.h.phrases" in result.stderr and "Traceback" not in result.stderr
    plumber = tmp_path / "plumber.yaml"
    plumber.write_text("subjects: [duck]\nconcepts: {plumber: {prompts: ['a Super Mario plumber duck']}}\n")
    result = cli("prompts", plumber, "--count", 1, "--out", tmp_path / "m.jsonl", expect=2)
    assert "'Mario'" in result.stderr and "--allow-protected" in result.stderr
    cli("prompts", plumber, "--count", 1, "--out", tmp_path / "m.jsonl", "--allow-protected")
    assert read_prompt_rows(tmp_path / "m.jsonl")[0]["override"] == "Mario"


def test_cli_check_reads_stdin(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", "prompts", "check", "-"], input='{"id": "r1", "prompt": "Sonic duck"}\n',
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 1 and "line 1 (r1): Sonic: Sonic duck" in result.stdout
    result = subprocess.run([sys.executable, "-m", "mvtune.cli", "prompts", "check", "-"], input="a blue duck\n",
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
