"""ShiftSNR (spec §8): shifted schedule values and scheduler construction."""

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from mvtune.models import shift_snr_scheduler
from mvtune.models.tiny import SDXL_SCHEDULER_CONFIG

# t: (alpha_bar, shifted alpha_bar, shifted SNR), verified against the reference implementation.
SPEC_TABLE = {
    0: (0.999150, 0.999150, 1175.4),
    250: (0.673792, 0.551073, 1.2275),
    500: (0.276332, 0.118837, 0.13486),
    750: (0.056170, 0.012337, 0.012491),
    999: (0.004660, 0.000585, 0.00058524),
}


@pytest.mark.parametrize("scheduler_cls", [EulerDiscreteScheduler, DDPMScheduler])
def test_shifted_schedule_matches_spec_table(scheduler_cls):
    base = scheduler_cls.from_config(SDXL_SCHEDULER_CONFIG)
    shifted = shift_snr_scheduler(base, shift_scale=8.0)
    assert type(shifted) is scheduler_cls
    for t, (alpha_bar, shifted_alpha_bar, shifted_snr) in SPEC_TABLE.items():
        a = shifted.alphas_cumprod[t].item()
        assert base.alphas_cumprod[t].item() == pytest.approx(alpha_bar, rel=1e-4)
        assert a == pytest.approx(shifted_alpha_bar, rel=1e-3)
        assert a / (1 - a) == pytest.approx(shifted_snr, rel=1e-3)
    # SNR' = SNR * 8^(-t/999) everywhere, not just at the tabulated steps
    snr = base.alphas_cumprod.double() / (1 - base.alphas_cumprod.double())
    shifted_snr = shifted.alphas_cumprod.double() / (1 - shifted.alphas_cumprod.double())
    torch.testing.assert_close(shifted_snr, snr * 8.0 ** (-torch.arange(1000.0, dtype=torch.float64) / 999), rtol=5e-5, atol=0)


def test_class_plus_config_keeps_the_other_fields_and_shifts_euler_sigmas():
    euler = EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG)
    ddpm = shift_snr_scheduler(DDPMScheduler, euler.config)
    assert isinstance(ddpm, DDPMScheduler)
    assert ddpm.config.timestep_spacing == "leading" and ddpm.config.steps_offset == 1
    assert len(ddpm.config.trained_betas) == 1000
    shifted_euler = shift_snr_scheduler(euler)
    assert euler.sigmas.max().item() == pytest.approx(14.6, abs=0.05)
    assert shifted_euler.sigmas.max().item() == pytest.approx(41.3, abs=0.05)
    with pytest.raises(TypeError):
        shift_snr_scheduler(DDPMScheduler)
