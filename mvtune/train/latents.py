"""Cached VAE posteriors beside the dataset: the frozen VAE encodes each object once instead of every step.

The cache stores the posterior's mean and log-variance (not a sample), so training still draws a fresh
posterior sample each step, exactly like encoding on the fly. Location:
`<dataset root>/latent_cache/<vae fingerprint>-<H>x<W>-<dtype>-<background>/<id[:2]>/<id>.safetensors`; a
file is valid only for the same source files (paths, sizes, mtimes). A changed VAE, resolution, dtype or
background lands in another folder.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from mvtune.data.cache import fingerprint, read_cache, write_cache
from mvtune.data.loader import MultiviewDataset
from mvtune.data.validate import scene_dir

log = logging.getLogger(__name__)


def vae_fingerprint(vae: AutoencoderKL) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(vae.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """Posterior parameters [V, 2*C, h, w] per object of one dataset for one VAE/resolution/dtype."""

    def __init__(self, dataset: MultiviewDataset, vae_id: str, dtype: torch.dtype):
        background = "-".join(f"{v:g}" for v in dataset.background)
        dtype_name = str(dtype).removeprefix("torch.")
        self.dataset = dataset
        self.dir = Path(dataset.root) / "latent_cache" / f"{vae_id}-{dataset.height}x{dataset.width}-{dtype_name}-{background}"
        self._fingerprints: dict[str, str] = {}
        self._index = {object_id: i for i, object_id in enumerate(dataset.ids)}

    def _fingerprint(self, i: int) -> str:
        object_id = self.dataset.ids[i]
        if object_id not in self._fingerprints:
            directory = scene_dir(self.dataset.root, self.dataset.entries[i])
            files = [directory / "meta.json", *sorted(directory.glob("color_*.webp"))]
            self._fingerprints[object_id] = fingerprint(files, variant=self.dataset.variant)
        return self._fingerprints[object_id]

    def _path(self, object_id: str) -> Path:
        return self.dir / object_id[:2] / f"{object_id}.safetensors"

    @torch.no_grad()
    def build(self, vae: AutoencoderKL, max_slice: int) -> dict:
        """Encode every object whose cache file is missing or stale; returns counts."""
        encoded = kept = 0
        for i, object_id in enumerate(self.dataset.ids):
            expected = self._fingerprint(i)
            if read_cache(self._path(object_id), expected) is not None:
                kept += 1
                continue
            rgb = self.dataset.sample(i)["rgb"].to(vae.device, vae.dtype) * 2 - 1
            params = torch.cat([vae.encode(chunk).latent_dist.parameters for chunk in rgb.split(max_slice)])
            write_cache(self._path(object_id), {"parameters": params.float().cpu().numpy()}, {"fingerprint": expected})
            encoded += 1
        log.info("latent cache %s: %d encoded, %d up to date", self.dir, encoded, kept)
        return {"encoded": encoded, "kept": kept}

    def load(self, object_id: str) -> torch.Tensor:
        found = read_cache(self._path(object_id), self._fingerprint(self._index[object_id]))
        if found is None:
            raise RuntimeError(f"latent cache entry for {object_id} in {self.dir} is missing or stale; it is rebuilt at start")
        return torch.from_numpy(found[0]["parameters"])
