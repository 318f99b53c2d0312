"""Released-format compatibility (spec §9) and save/load behaviour of mvtune.models.adapter_io."""

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file

from mvtune.models import AdapterLoadError, adapter_state_dict, attach_mv_adapter, load_adapter, save_adapter
from mvtune.models.configs import SDXL_UNET_CONFIG, TINY_UNET_CONFIG

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "mvadapter"


def _fixture(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not available (needs the project's shared/ folder beside the repo)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("config, fixture", [(SDXL_UNET_CONFIG, "sdxl_unet_config.json"),
                                             (TINY_UNET_CONFIG, "tiny_sdxl_unet_config.json")])
def test_builtin_configs_match_the_fixtures(config, fixture):
    expected = {k: v for k, v in _fixture(fixture).items() if not k.startswith("_")}
    assert config == expected


@pytest.mark.parametrize("variant, manifest", [("tg2mv", "mvadapter_tg2mv_sdxl_keys.json"),
                                               ("t2mv", "mvadapter_t2mv_sdxl_keys.json")])
def test_sdxl_adapter_keys_and_shapes_equal_the_released_manifest(variant, manifest):
    expected = _fixture(manifest)
    with torch.device("meta"):  # 2.6 G + 0.5 G parameters: shapes only, no memory
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        cond_encoder = attach_mv_adapter(unet, variant=variant, num_views=6)
    state = adapter_state_dict(unet, cond_encoder)
    assert {k: list(v.shape) for k, v in state.items()} == expected["keys"]
    assert len(state) == expected["num_keys"] == 388
    assert sum(v.numel() for v in state.values()) == expected["num_params"] == 490_923_200
    assert sum(v.numel() for k, v in state.items() if k.startswith("adapter.")) == expected["num_params_cond_encoder"]
    assert sum(p.numel() for n, p in unet.named_parameters() if "_mv" not in n) == expected["base_unet_params"]


@pytest.fixture()
def adapted():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    cond_encoder = attach_mv_adapter(unet, variant="tg2mv")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "_mv" in name:
                param.normal_()
    return unet, cond_encoder


def test_round_trip_is_exact_and_in_released_layout(adapted, tmp_path):
    unet, cond_encoder = adapted
    path = save_adapter(tmp_path / "custom_adapter.safetensors", unet, cond_encoder)
    assert os.listdir(tmp_path) == ["custom_adapter.safetensors"]  # no temp file left behind
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert len(keys) == 85 + 38
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_mv.0.bias" in keys
    assert "adapter.conv_in.weight" in keys

    torch.manual_seed(1)
    fresh_unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    fresh_encoder = attach_mv_adapter(fresh_unet, variant="tg2mv")
    report = load_adapter(path, fresh_unet, fresh_encoder)
    assert report.ok
    saved = adapter_state_dict(unet, cond_encoder)
    loaded = adapter_state_dict(fresh_unet, fresh_encoder)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_strict_load_names_missing_unexpected_and_misshaped_keys(adapted, tmp_path):
    unet, cond_encoder = adapted
    state = {k: v.clone() for k, v in adapter_state_dict(unet, cond_encoder).items()}
    missing = "mid_block.attentions.0.transformer_blocks.1.attn1.processor.to_k_mv.weight"
    misshaped = "adapter.conv_in.weight"
    del state[missing]
    state["up_blocks.9.attn1.processor.to_q_mv.weight"] = torch.zeros(2, 2)
    state[misshaped] = torch.zeros(3, 3)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)

    before = {k: v.clone() for k, v in adapter_state_dict(unet, cond_encoder).items()}
    with pytest.raises(AdapterLoadError) as error:
        load_adapter(path, unet, cond_encoder)
    message = str(error.value)
    assert str(path) in message and missing in message and misshaped in message
    assert "up_blocks.9.attn1.processor.to_q_mv.weight" in message
    assert "1 missing" in message and "1 unexpected" in message and "1 mis-shaped" in message
    # strict mode fails before touching the model
    assert all(torch.equal(v, before[k]) for k, v in adapter_state_dict(unet, cond_encoder).items())

    with pytest.warns(UserWarning, match="mis-shaped"):
        report = load_adapter(path, unet, cond_encoder, strict=False)
    assert report.missing == [missing] and [k for k, _, _ in report.mismatched] == [misshaped]
    loaded = adapter_state_dict(unet, cond_encoder)
    assert torch.equal(loaded["adapter.body.0.resnets.0.block1.weight"], state["adapter.body.0.resnets.0.block1.weight"])
    assert torch.equal(loaded[missing], before[missing])
    assert torch.equal(loaded[misshaped], before[misshaped])


def test_load_errors_for_missing_file_and_unadapted_unet(adapted, tmp_path):
    unet, cond_encoder = adapted
    with pytest.raises(AdapterLoadError, match="not found"):
        load_adapter(tmp_path / "nope.safetensors", unet, cond_encoder)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterLoadError, match="safetensors"):
        load_adapter(tmp_path / "junk.safetensors", unet, cond_encoder)
    with pytest.raises(AdapterLoadError, match="attach_mv_adapter"):
        save_adapter(tmp_path / "a.safetensors", UNet2DConditionModel(**TINY_UNET_CONFIG), cond_encoder)
