"""LoRAs under the adapter (contract E): UNet and text-encoder LoRAs, several with scales, kohya keys; the
multi-view layers and the cond encoder stay bit-identical to the adapter file."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mvtune.generate import GenerateError, LoraSpec, ModelConfig, apply_lora, load_pipeline

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def random_lora(path, seed: int, text_encoders: bool = True, kohya: bool = False, rank: int = 2, alpha: float = 4.0):
    """A LoRA with non-zero B (peft starts B at zero, a no-op) on a fresh tiny SDXL, saved like the trainer does."""
    from peft import LoraConfig, inject_adapter_in_model

    from mvtune.models import build_tiny_sdxl
    from mvtune.train.concept_lora import save_concept_lora

    parts = build_tiny_sdxl(seed=0)
    unet = parts["unet"]
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS))
    encoders = {}
    if text_encoders:
        for name in ("text_encoder", "text_encoder_2"):
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_TARGETS), parts[name])
            encoders[name] = parts[name]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (unet, *encoders.values()):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return save_concept_lora(path, unet, encoders, kohya=kohya)


def _encoder_weights(pipe):
    return {
        f"{name}.{k}": v.clone()
        for name in ("text_encoder", "text_encoder_2")
        for k, v in getattr(pipe, name).state_dict().items()
    }


@pytest.fixture(scope="module")
def adapter_file(tiny_base, tmp_path_factory):
    """A non-trivial adapter file: the fresh MV branch with every tensor perturbed (to_out_mv is zero-init)."""
    from mvtune.models import MVAdapterPipeline, save_adapter

    pipe = MVAdapterPipeline.from_pretrained(tiny_base)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in [*pipe.unet.named_parameters(), *pipe.cond_encoder.named_parameters()]:
            if "_mv" in name or param in set(pipe.cond_encoder.parameters()):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return save_adapter(tmp_path_factory.mktemp("adapter") / "adapter.safetensors", pipe.unet, pipe.cond_encoder)


def test_unet_and_text_encoder_lora_keep_the_adapter_bit_identical(tmp_path, tiny_base, adapter_file):
    from mvtune.models import adapter_state_dict

    lora = random_lora(tmp_path / "lora.safetensors", seed=1)
    plain = load_pipeline(ModelConfig(base_model=tiny_base, adapter=adapter_file))
    pipe = load_pipeline(ModelConfig(base_model=tiny_base, adapter=adapter_file, loras=[LoraSpec(path=lora)]))

    released = load_file(adapter_file)
    now = adapter_state_dict(pipe.unet, pipe.cond_encoder)
    assert now.keys() == released.keys()
    for key, tensor in released.items():
        assert torch.equal(now[key], tensor), key
    # The base layers did change, in the UNet and in both text encoders, and no LoRA modules are left behind.
    base_keys = [k for k in plain.unet.state_dict() if "to_q.weight" in k and "_mv" not in k]
    assert any(not torch.equal(plain.unet.state_dict()[k], pipe.unet.state_dict()[k]) for k in base_keys)
    before, after = _encoder_weights(plain), _encoder_weights(pipe)
    assert before.keys() == after.keys()
    for prefix in ("text_encoder.", "text_encoder_2."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and "q_proj" in k)
    assert not any("lora" in name for name, _ in pipe.text_encoder.named_modules())
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())


def test_several_loras_add_their_scaled_deltas(tmp_path, tiny_base):
    a = random_lora(tmp_path / "a.safetensors", seed=1, text_encoders=False)
    b = random_lora(tmp_path / "b.safetensors", seed=2, text_encoders=False)

    def weights(*specs):
        pipe = load_pipeline(ModelConfig(base_model=tiny_base, loras=list(specs)))
        return {k: v.double() for k, v in pipe.unet.state_dict().items() if "to_q.weight" in k}

    base = weights()
    only_a, only_b = weights(LoraSpec(path=a, scale=0.5)), weights(LoraSpec(path=b, scale=2.0))
    both = weights(LoraSpec(path=a, scale=0.5), LoraSpec(path=b, scale=2.0))
    for key in base:
        expected = base[key] + (only_a[key] - base[key]) + (only_b[key] - base[key])
        np.testing.assert_allclose(both[key].numpy(), expected.numpy(), atol=1e-5)
    assert any(not torch.allclose(only_a[k], base[k]) for k in base)


def test_kohya_keys_give_the_same_weights_as_diffusers_keys(tmp_path, tiny_base):
    diffusers_file = random_lora(tmp_path / "d.safetensors", seed=3, alpha=1.0)
    kohya_file = random_lora(tmp_path / "k.safetensors", seed=3, alpha=1.0, kohya=True)
    keys = list(load_file(kohya_file))
    assert all(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in keys)
    assert any(k.endswith(".alpha") for k in keys)

    def weights(path):
        pipe = load_pipeline(ModelConfig(base_model=tiny_base, loras=[LoraSpec(path=path)]))
        return {**pipe.unet.state_dict(), **_encoder_weights(pipe)}

    a, b = weights(diffusers_file), weights(kohya_file)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_bad_lora_files_are_refused_with_the_file_named(tmp_path, tiny_base):
    from safetensors.torch import save_file

    pipe = load_pipeline(ModelConfig(base_model=tiny_base))
    mv = tmp_path / "mv.safetensors"
    save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q_mv.lora_A.weight": torch.zeros(2, 64),
               "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q_mv.lora_B.weight": torch.zeros(64, 2)}, mv)
    with pytest.raises(GenerateError, match="multi-view layers"):
        apply_lora(pipe, mv)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(GenerateError, match="junk.safetensors: not a readable SDXL LoRA"):
        apply_lora(pipe, junk)
    with pytest.raises(GenerateError, match=r"loras\[0\].path .*missing.safetensors does not exist"):
        load_pipeline(ModelConfig(base_model=tiny_base, loras=[LoraSpec(path=tmp_path / "missing.safetensors")]))
    with pytest.raises(ValueError, match="lora"):
        ModelConfig(base_model=tiny_base, lora=str(mv))  # the old single-LoRA field is gone


def test_cli_lora_options_pair_up(tmp_path, tiny_base, cli, sample_meshes_dir):
    a = random_lora(tmp_path / "a.safetensors", seed=1, text_encoders=False)
    mesh = sample_meshes_dir / "duck_yellow.glb"
    result = cli("generate", "--out", tmp_path / "o", "--base-model", tiny_base, "--mesh", mesh,
                 "--prompt", "a duck", "--lora", a, "--lora", a, "--lora-scale", "0.5", expect=2)
    assert "one --lora-scale per --lora" in result.stdout + result.stderr
