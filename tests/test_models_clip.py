"""CLIP scorers: the tiny transformers CLIP, scorer specs, load errors, CLIP-T and attribute presence."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from mvtune.models.clip import (
    OPEN_CLIP_INSTALL,
    ClipScorer,
    ClipError,
    ScorerSpec,
    attribute_presence,
    clip_t,
    load_scorer,
)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from mvtune.models.tiny import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_tiny_clip_loads_like_a_real_folder(tiny_clip):
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"):
        assert (tiny_clip / name).is_file(), name
    scorer = load_scorer(ScorerSpec(path=tiny_clip))
    assert isinstance(scorer, ClipScorer)
    assert scorer.name == "tiny-clip"
    assert scorer.logit_scale == pytest.approx(1 / 0.07, rel=1e-3)  # CLIP's initial temperature
    images = _images(20)  # more than one batch
    feats = scorer.image_features(images)
    assert feats.shape == (20, 16) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scorer.image_features(images[3:5]), feats[3:5], atol=1e-5)  # batching-independent
    assert not np.allclose(feats[0], feats[1])
    text = scorer.text_features(["a duck", "a firefighter duck with a red helmet", "a duck"])
    assert text.shape == (3, 16)
    np.testing.assert_allclose(text[0], text[2], atol=1e-6)
    assert not np.allclose(text[0], text[1])
    # the same folder gives the same scores in a second process-level load
    again = load_scorer(ScorerSpec(name="again", path=tiny_clip))
    np.testing.assert_allclose(again.image_features(images[:2]), feats[:2], atol=1e-6)
    assert again.name == "again"


def test_tiny_clip_is_deterministic_by_seed(tiny_clip, tmp_path):
    from mvtune.models.tiny import write_tiny_clip

    other = load_scorer(ScorerSpec(path=write_tiny_clip(tmp_path / "seed1", seed=1)))
    same = load_scorer(ScorerSpec(path=write_tiny_clip(tmp_path / "seed0", seed=0)))
    images = _images(2)
    reference = load_scorer(ScorerSpec(path=tiny_clip)).image_features(images)
    np.testing.assert_allclose(same.image_features(images), reference, atol=1e-6)
    assert not np.allclose(other.image_features(images), reference)


def test_image_features_of_the_same_views_are_computed_once(tiny_clip, monkeypatch):
    scorer = load_scorer(ScorerSpec(path=tiny_clip))
    calls = []
    encode = scorer._encode_images
    monkeypatch.setattr(scorer, "_encode_images", lambda images: calls.append(len(images)) or encode(images))
    views, other = _images(6, seed=1), _images(6, seed=2)
    first = scorer.image_features(views)
    first[:] = 0.0  # callers get a copy, never the memo itself
    again = scorer.image_features([v.copy() for v in views])  # same pixels, other arrays
    assert calls == [6]
    assert np.abs(again).sum() > 0
    scorer.image_features(other)
    changed = [v.copy() for v in views]
    changed[5][0, 0, 0] ^= 1  # one value of one view
    scorer.image_features(changed)
    assert calls == [6, 6, 6]


def test_clip_t_is_100_cosine(tiny_clip):
    scorer = load_scorer(ScorerSpec(path=tiny_clip))
    images = _images(3)
    expected = 100.0 * scorer.image_features(images) @ scorer.text_features(["a blue duck"])[0]
    np.testing.assert_allclose(clip_t(scorer, images, "a blue duck"), expected, rtol=1e-5)
    assert clip_t(scorer, [], "a blue duck") == []


class KnownScorer:
    """A stand-in with answers known in closed form: an image's feature is the unit vector of its mean
    (red, blue); texts are looked up in a table."""

    name = "known"

    def __init__(self, logit_scale: float = 10.0):
        self.logit_scale = logit_scale

    TEXTS = {"red": (1.0, 0.0), "blue": (0.0, 1.0), "purple": (1.0, 1.0)}

    def image_features(self, images):
        rb = np.array([[im[..., 0].mean(), im[..., 2].mean()] for im in images], dtype=np.float32)
        return rb / np.linalg.norm(rb, axis=1, keepdims=True)

    def text_features(self, texts):
        t = np.array([self.TEXTS[x] for x in texts], dtype=np.float32)
        return t / np.linalg.norm(t, axis=1, keepdims=True)


def _solid(r: int, b: int) -> np.ndarray:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0], image[..., 2] = r, b
    return image


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_attribute_presence_with_known_answers():
    scorer = KnownScorer(logit_scale=10.0)
    red, blue, purple = _solid(200, 0), _solid(0, 200), _solid(150, 150)
    assert isinstance(scorer, ClipScorer)
    # a red view: cosines 1 (red) and 0 (blue) -> softmax of (10, 0)
    assert attribute_presence(scorer, [red], "red", "blue") == pytest.approx(_sigmoid(10.0))
    assert attribute_presence(scorer, [red], "blue", "red") == pytest.approx(_sigmoid(-10.0))
    # averaged over views, not over logits: 3 red + 3 blue views -> exactly one half
    assert attribute_presence(scorer, [red] * 3 + [blue] * 3, "red", "blue") == pytest.approx(0.5)
    assert attribute_presence(scorer, [red, red, blue], "red", "blue") == pytest.approx(
        (2 * _sigmoid(10.0) + _sigmoid(-10.0)) / 3
    )
    # purple is equally close to both phrases
    assert attribute_presence(scorer, [purple], "red", "blue") == pytest.approx(0.5, abs=1e-6)
    # against "purple" (cos 1/sqrt2 for red): logit difference 10 (1 - 1/sqrt2)
    assert attribute_presence(scorer, [red], "red", "purple") == pytest.approx(_sigmoid(10.0 * (1 - 2**-0.5)))
    # the temperature matters: a colder scorer is more certain
    assert attribute_presence(KnownScorer(100.0), [red], "red", "blue") > attribute_presence(scorer, [red], "red", "blue")
    # no overflow with a huge logit scale
    assert attribute_presence(KnownScorer(1e4), [blue], "red", "blue") == 0.0
    with pytest.raises(ClipError, match="at least one image"):
        attribute_presence(scorer, [], "red", "blue")


def test_scorer_spec_parses_the_cli_forms(tmp_path):
    assert ScorerSpec.parse("models/clip-vit-large-patch14") == ScorerSpec(path="models/clip-vit-large-patch14")
    named = ScorerSpec.parse("L14=models/clip-vit-large-patch14")
    assert (named.name, named.kind, named.label) == ("L14", "transformers", "L14")
    h14 = ScorerSpec.parse("open_clip:ViT-H-14:/weights/open_clip_pytorch_model.bin")
    assert (h14.kind, h14.arch, str(h14.path), h14.label) == (
        "open_clip", "ViT-H-14", "/weights/open_clip_pytorch_model.bin", "ViT-H-14:open_clip_pytorch_model"
    )  # fmt: skip
    assert ScorerSpec.parse("H=open_clip:ViT-H-14:w.bin").name == "H"
    assert ScorerSpec.parse("runs/a=b/clip").path.as_posix() == "runs/a=b/clip"  # '=' inside a path is no name
    with pytest.raises(ClipError, match="expected open_clip:ARCH:CHECKPOINT"):
        ScorerSpec.parse("open_clip:ViT-H-14")
    with pytest.raises(ValidationError, match="needs 'arch'"):
        ScorerSpec(kind="open_clip", path=tmp_path / "w.bin")
    with pytest.raises(ValidationError, match="only for open_clip"):
        ScorerSpec(path=tmp_path, arch="ViT-H-14")
    with pytest.raises(ValidationError, match="Extra inputs"):
        ScorerSpec(path=tmp_path, pretrained="laion2b")


def test_load_errors_name_the_folder(tmp_path, tiny_clip):
    with pytest.raises(ClipError, match=f"CLIP folder {tmp_path / 'none'} does not exist"):
        load_scorer(ScorerSpec(path=tmp_path / "none"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_clip / "config.json").read_text())
    with pytest.raises(ClipError, match=f"CLIP folder {partial} has no preprocessor_config.json"):
        load_scorer(ScorerSpec(path=partial))
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in tiny_clip.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ClipError, match=f"CLIP folder {broken} does not load"):
        load_scorer(ScorerSpec(path=broken))
    with pytest.raises(ClipError, match=f"open_clip checkpoint {tmp_path / 'w.bin'} does not exist"):
        load_scorer(ScorerSpec(kind="open_clip", arch="ViT-B-32", path=tmp_path / "w.bin"))


def _open_clip_importable() -> bool:
    try:
        import open_clip  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_open_clip_importable(), reason="open_clip is importable here; the missing-package error cannot occur")
def test_open_clip_missing_names_the_install_step(tmp_path):
    checkpoint = tmp_path / "w.bin"
    checkpoint.write_bytes(b"\0")
    with pytest.raises(ClipError, match="open_clip is not importable") as info:
        load_scorer(ScorerSpec(kind="open_clip", arch="ViT-B-32", path=checkpoint))
    assert OPEN_CLIP_INSTALL in str(info.value)


@pytest.mark.skipif(
    not _open_clip_importable(),
    reason="open_clip_torch needs torchvision, which does not import with the pinned CPU torch here",
)
def test_open_clip_scorer_from_a_local_checkpoint(tmp_path):
    """Random weights of a small architecture saved to a file, then loaded through the real path."""
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    checkpoint = tmp_path / "vit_b32_random.bin"
    torch.save(model.state_dict(), checkpoint)
    scorer = load_scorer(ScorerSpec(kind="open_clip", arch="ViT-B-32", path=checkpoint))
    assert isinstance(scorer, ClipScorer) and scorer.name == "ViT-B-32:vit_b32_random"
    feats = scorer.image_features(_images(2))
    assert feats.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert scorer.text_features(["a duck"]).shape == (1, 512)
    assert 0.0 < attribute_presence(scorer, _images(2), "a red helmet", "a bare head") < 1.0
