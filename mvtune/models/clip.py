"""CLIP scorers from local weights (transformers folders, open_clip checkpoints) and the scores built on them.

A scorer turns images and texts into L2-normalised features in one shared space; every CLIP metric (CLIP-T,
attribute presence, CLIP-I, KID on CLIP features, diversity) is computed from those features, so adding a
backbone means one class behind the `ClipScorer` protocol and one line in `_LOADERS`. Nothing here downloads:
a scorer is a folder or file on disk (see docs/evaluation.md for which weights to fetch on a GPU node).
Kept with the models, not in `evaluate`, because training scores its validation samples with the same scorers.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal, Protocol, Sequence, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

#: Images (or texts) per forward pass: bounds memory for ViT-H/bigG at 224 px without slowing tiny models.
BATCH_SIZE = 16
OPEN_CLIP_INSTALL = "pip install open_clip_torch (it needs a torchvision build that matches your torch)"


class ClipError(Exception):
    """A CLIP scorer cannot run: a folder or checkpoint that does not load, bad images or texts."""


class ScorerSpec(BaseModel):
    """Where a CLIP backbone lives: a transformers CLIPModel folder, or an open_clip architecture + checkpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None  # label in results; default derived from the path (and arch)
    kind: Literal["transformers", "open_clip"] = "transformers"
    path: Path  # transformers: folder with config.json + weights; open_clip: a checkpoint file
    arch: str | None = None  # open_clip architecture, e.g. "ViT-H-14"

    @model_validator(mode="after")
    def _arch_matches_kind(self) -> "ScorerSpec":
        if self.kind == "open_clip" and not self.arch:
            raise ValueError("an open_clip scorer needs 'arch' (e.g. ViT-H-14)")
        if self.kind == "transformers" and self.arch:
            raise ValueError("'arch' is only for open_clip scorers; a transformers folder names its own")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "open_clip":
            return f"{self.arch}:{self.path.stem}"
        return self.path.name

    @classmethod
    def parse(cls, text: str) -> "ScorerSpec":
        """The CLI form: `[NAME=]PATH` (transformers folder) or `[NAME=]open_clip:ARCH:CHECKPOINT`."""
        name = None
        head, sep, rest = text.partition("=")
        if sep and head and "/" not in head and ":" not in head:
            name, text = head, rest
        if text.startswith("open_clip:"):
            _, arch, path = (text.split(":", 2) + ["", ""])[:3]
            if not arch or not path:
                raise ClipError(
                    f"--clip {text!r}: expected open_clip:ARCH:CHECKPOINT, e.g. open_clip:ViT-H-14:ckpt.bin"
                )
            return cls(name=name, kind="open_clip", arch=arch, path=Path(path))
        if not text:
            raise ClipError("--clip needs a path: a transformers CLIP folder or open_clip:ARCH:CHECKPOINT")
        return cls(name=name, kind="transformers", path=Path(text))


@runtime_checkable
class ClipScorer(Protocol):
    """What the metrics need from a CLIP backbone. Features are float32, L2-normalised rows."""

    name: str
    logit_scale: float

    def image_features(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def text_features(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalised(features) -> np.ndarray:
    array = features.detach().float().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    array = array.astype(np.float32, copy=False)
    return array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ClipError(f"image {i}: expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")


def _batches(items: Sequence, size: int = BATCH_SIZE):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _LocalClip(ABC):
    """What the real backbones share: input checks and a memo of the last image set's features.

    An evaluation cell asks for the same six views' features for CLIP-T, each attribute and CLIP-I; hashing
    the pixels (~10 ms at 768²) costs far less than another forward pass of a ViT-H.
    """

    _memo: tuple[bytes, np.ndarray] | None = None

    name: str

    @abstractmethod
    def _encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, D) normalised features of checked HxWx3 uint8 images."""

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) normalised features of texts."""

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            raise ClipError(f"scorer {self.name}: text_features needs at least one text")
        return self._encode_texts([str(t) for t in texts])

    def image_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            raise ClipError(f"scorer {self.name}: image_features needs at least one image")
        _check_images(images)
        digest = hashlib.blake2b(digest_size=16)
        for image in images:
            digest.update(repr(image.shape).encode())
            digest.update(np.ascontiguousarray(image).data)
        key = digest.digest()
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, self._encode_images(list(images)))
        return self._memo[1].copy()


class TransformersClip(_LocalClip):
    """A transformers CLIPModel folder (openai/clip-vit-large-patch14, laion/CLIP-ViT-H-14-..., or a tiny one)."""

    def __init__(self, spec: ScorerSpec, device: str = "cpu"):
        folder = spec.path
        if not folder.is_dir():
            raise ClipError(f"CLIP folder {folder} does not exist (a local transformers CLIPModel folder is needed)")
        for required in ("config.json", "preprocessor_config.json"):
            if not (folder / required).is_file():
                raise ClipError(f"CLIP folder {folder} has no {required}; download the whole model folder")

        import torch
        from transformers import CLIPModel, CLIPTokenizer

        try:
            from transformers import CLIPImageProcessorPil as ImageProcessor
        except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
            from transformers import CLIPImageProcessor as ImageProcessor

        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval().to(device)
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
            self.processor = ImageProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise ClipError(f"CLIP folder {folder} does not load: {type(exc).__name__}: {exc}") from exc
        self._torch = torch
        self.device = device
        self.name = spec.label
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self._max_tokens = int(self.model.config.text_config.max_position_embeddings)

    def _encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        out = []
        with self._torch.inference_mode():
            for batch in _batches(images):
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                # vision tower + projection spelled out: get_image_features returns a tensor in transformers 4
                # and a model output in 5.
                pooled = self.model.vision_model(pixel_values=pixels).pooler_output
                out.append(_normalised(self.model.visual_projection(pooled)))
        return np.concatenate(out)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._torch.inference_mode():
            for batch in _batches(texts):
                tokens = self.tokenizer(
                    list(batch), padding=True, truncation=True, max_length=self._max_tokens, return_tensors="pt"
                ).to(self.device)
                pooled = self.model.text_model(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).pooler_output
                out.append(_normalised(self.model.text_projection(pooled)))
        return np.concatenate(out)


class OpenClip(_LocalClip):
    """An open_clip architecture with a local checkpoint (ViT-H-14, ViT-bigG-14, ... laion2b weights)."""

    def __init__(self, spec: ScorerSpec, device: str = "cpu"):
        if not spec.path.is_file():
            raise ClipError(f"open_clip checkpoint {spec.path} does not exist (a local weights file is needed)")
        try:
            import open_clip
            import torch
        except Exception as exc:  # ImportError, or torchvision failing to load its operators
            raise ClipError(
                f"scorer {spec.label}: open_clip is not importable ({type(exc).__name__}: {exc}); {OPEN_CLIP_INSTALL}, "
                "or use a transformers CLIP folder"
            ) from exc
        try:
            # weights_only: a checkpoint is untrusted input, never unpickled as code
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=str(spec.path), device=device, weights_only=True
            )
            self.tokenizer = open_clip.get_tokenizer(spec.arch)
        except Exception as exc:
            raise ClipError(
                f"open_clip {spec.arch} does not load from {spec.path}: {type(exc).__name__}: {exc}"
            ) from exc
        self._torch = torch
        self.model = model.eval()
        self.preprocess = preprocess
        self.device = device
        self.name = spec.label
        self.logit_scale = float(self.model.logit_scale.exp().item())

    def _encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        from PIL import Image

        out = []
        with self._torch.inference_mode():
            for batch in _batches(images):
                pixels = self._torch.stack([self.preprocess(Image.fromarray(im)) for im in batch]).to(self.device)
                out.append(_normalised(self.model.encode_image(pixels)))
        return np.concatenate(out)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._torch.inference_mode():
            for batch in _batches(texts):
                out.append(_normalised(self.model.encode_text(self.tokenizer(list(batch)).to(self.device))))
        return np.concatenate(out)


_LOADERS = {"transformers": TransformersClip, "open_clip": OpenClip}


def load_scorer(spec: ScorerSpec, device: str = "cpu") -> ClipScorer:
    """Load one CLIP backbone from local files; ClipError naming the folder/file when it cannot."""
    return _LOADERS[spec.kind](spec, device=device)


def clip_t(scorer: ClipScorer, images: Sequence[np.ndarray], prompt: str) -> list[float]:
    """CLIP-T per image: 100 x cosine(image, prompt), unclipped (the multi-view papers' convention)."""
    if not len(images):
        return []
    image = scorer.image_features(images)
    text = scorer.text_features([prompt])
    return [float(x) for x in 100.0 * (image @ text[0])]


def attribute_presence(scorer: ClipScorer, images: Sequence[np.ndarray], positive: str, contrast: str) -> float:
    """Zero-shot probability that the trait is there: softmax over (positive, contrast) of logit_scale x cosine,
    the positive's probability averaged over the images (views)."""
    if not len(images):
        raise ClipError("attribute presence needs at least one image")
    image = scorer.image_features(images)
    text = scorer.text_features([positive, contrast])
    logits = scorer.logit_scale * (image @ text.T).astype(np.float64)
    # two-way softmax = logistic of the logit difference, as exp(-log(1 + e^diff)): no overflow at any scale
    p_positive = np.exp(-np.logaddexp(0.0, logits[:, 1] - logits[:, 0]))
    return float(p_positive.mean())
