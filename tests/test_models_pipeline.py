"""End-to-end multiview sampling on the tiny random SDXL (CPU, 64 px, 2-3 steps)."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from PIL import Image

from mvtune.models import (
    MVAdapterPipeline,
    build_tiny_sdxl,
    encode_prompt,
    plucker_condition_maps,
    save_adapter,
    sdxl_time_ids,
)


@pytest.fixture(scope="module")
def tg2mv_pipe():
    pipe = MVAdapterPipeline.from_components(build_tiny_sdxl(seed=0), variant="tg2mv")
    with torch.no_grad():  # a trained adapter has a non-zero MV output projection
        for name, param in pipe.unet.named_parameters():
            if "to_out_mv" in name:
                param.normal_(std=0.2, generator=torch.Generator().manual_seed(3))
    return pipe


def _condition(views=6, side=64):
    return torch.rand(views, 6, side, side, generator=torch.Generator().manual_seed(0))


def _sample(pipe, condition, seed=1, **kwargs):
    kwargs = {"num_inference_steps": 3, "output_type": "np", **kwargs}
    return pipe("a wooden chair", condition, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_six_views_shapes_and_seed_determinism(tg2mv_pipe):
    images = _sample(tg2mv_pipe, _condition())
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(images, _sample(tg2mv_pipe, _condition()))
    assert np.abs(images - _sample(tg2mv_pipe, _condition(), seed=2)).max() > 1e-3

    pil = _sample(tg2mv_pipe, _condition(), num_inference_steps=2, output_type="pil")
    assert len(pil) == 6 and all(isinstance(im, Image.Image) and im.size == (64, 64) for im in pil)


def test_mv_scale_and_condition_scale_change_the_output(tg2mv_pipe):
    reference = _sample(tg2mv_pipe, _condition())
    for kwargs in ({"mv_scale": 0.0}, {"control_conditioning_scale": 0.0}, {"control_conditioning_factor": 0.5},
                   {"guidance_scale": 1.0}, {"negative_prompt": None}):
        assert np.abs(_sample(tg2mv_pipe, _condition(), **kwargs) - reference).max() > 1e-4, kwargs


def test_condition_maps_are_validated(tg2mv_pipe):
    with pytest.raises(ValueError, match="6, H, W"):
        _sample(tg2mv_pipe, torch.rand(6, 3, 64, 64))
    with pytest.raises(ValueError, match="square"):
        _sample(tg2mv_pipe, torch.rand(6, 6, 64, 96))
    with pytest.raises(ValueError, match="exactly 6 views"):
        _sample(tg2mv_pipe, _condition(views=4))


def _ring_c2w(azimuths_deg, distance=1.8):
    """Cameras on the horizon looking at the origin (Blender camera axes, world +Z up)."""
    poses = []
    for azimuth in np.radians(azimuths_deg):
        position = distance * np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
        back = position / distance  # camera +Z points away from the target
        right = np.cross([0.0, 0.0, 1.0], back)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, position
        poses.append(c2w)
    return np.stack(poses)


def test_plucker_maps_are_constant_look_direction_and_position():
    maps = plucker_condition_maps(_ring_c2w([0, 90]), 64, 64)
    assert maps.shape == (2, 6, 64, 64)
    assert torch.equal(maps, maps[:, :, :1, :1].expand_as(maps))
    torch.testing.assert_close(maps[0, :, 0, 0], torch.tensor([0.0, 0.5, 0.5, 1.0, 0.5, 0.5]))  # at +X looking -X
    torch.testing.assert_close(maps[1, :, 0, 0], torch.tensor([0.5, 0.0, 0.5, 0.5, 1.0, 0.5]))


def test_t2mv_with_four_views_from_a_saved_folder_and_adapter(tmp_path):
    tiny_base = tmp_path / "tiny-sdxl"
    components = build_tiny_sdxl(tiny_base, seed=0)
    adapter_path = tmp_path / "custom_adapter.safetensors"
    source = MVAdapterPipeline.from_components(components, variant="t2mv", num_views=4, scheduler="ddpm")
    with torch.no_grad():
        for name, param in source.unet.named_parameters():
            if "to_out_mv" in name:
                param.normal_(std=0.2)
    save_adapter(adapter_path, source.unet, source.cond_encoder)

    pipe = MVAdapterPipeline.from_pretrained(tiny_base, adapter=adapter_path, variant="t2mv", num_views=4, scheduler="ddpm")
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe.scheduler.config.trained_betas is not None
    condition = plucker_condition_maps(_ring_c2w([0, 90, 180, 270]), 64, 64)
    images = _sample(pipe, condition, num_inference_steps=2)
    assert images.shape == (4, 64, 64, 3)
    # folder + adapter file reproduce the in-memory pipeline exactly
    np.testing.assert_array_equal(images, _sample(source, condition, num_inference_steps=2))
    assert isinstance(MVAdapterPipeline.from_components(build_tiny_sdxl(), "t2mv", 4).scheduler, EulerDiscreteScheduler)


def test_prompt_encoding_and_time_ids():
    components = build_tiny_sdxl(seed=0)
    embeds, pooled = encode_prompt(
        (components["tokenizer"], components["tokenizer_2"]),
        (components["text_encoder"], components["text_encoder_2"]),
        ["a chair", ""],
    )
    assert embeds.shape == (2, 77, 32) and pooled.shape == (2, 32)  # 16 + 16 features, projection 32
    assert not torch.equal(embeds[0], embeds[1])
    assert sdxl_time_ids(768, 768).tolist() == [768, 768, 0, 0, 768, 768]


def test_t2mv_maps_from_the_shared_camera_layout():
    from mvtune.cameras import variant_cameras

    views = variant_cameras("t2mv")
    maps = plucker_condition_maps(np.stack([view.c2w for view in views]), 32, 32)
    assert maps.shape == (6, 6, 32, 32)
    # front camera sits on -Y (the object's front) and looks along +Y
    torch.testing.assert_close(maps[0, :, 0, 0], torch.tensor([0.5, 1.0, 0.5, 0.5, 0.0, 0.5]), atol=1e-6, rtol=0)


def test_half_precision_sampling_runs():
    pipe = MVAdapterPipeline.from_components(build_tiny_sdxl(seed=0), variant="tg2mv").to("cpu", torch.bfloat16)
    assert pipe.cond_encoder.dtype == torch.bfloat16
    images = _sample(pipe, _condition(), num_inference_steps=1)
    assert images.shape == (6, 64, 64, 3) and np.isfinite(images).all()
