"""easylight: SH irradiance, the studio environment and user environment maps."""

import math

import numpy as np
import pytest

from mvtune.render import lighting


def srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def test_constant_environment_gives_constant_irradiance():
    sh = lighting.sh9_from_equirect(np.full((32, 64, 3), 0.7, np.float32))
    normals = lighting.equirect_directions(10, 20)
    assert np.allclose(lighting.irradiance_over_pi(sh, normals), 0.7, atol=2e-3)


def test_equirect_convention_is_blenders():
    d = lighting.equirect_directions(4, 8)
    assert np.allclose(d[0, :, 2].mean(), math.sin(math.radians(67.5)))  # top rows look up (+Z)
    mid = lighting.equirect_directions(3, 6)[1]  # the equator row; the image centre looks along +X
    assert np.allclose(mid[2], [math.cos(math.pi / 6), 0.5, 0.0])  # left of centre: towards +Y
    assert np.allclose(mid[3], [math.cos(math.pi / 6), -0.5, 0.0])  # right of centre: towards -Y
    assert np.allclose(mid[0], [-math.cos(math.pi / 6), 0.5, 0.0])  # the edges look along -X


def test_studio_is_soft_bright_and_directional():
    k = lighting.easylight_sh("studio")
    shade = lighting.sh9_basis(lighting.equirect_directions(90, 180)) @ k
    assert shade.max() == pytest.approx(1.0, abs=1e-3)
    assert srgb(shade).min() > 0.55  # no crushed blacks
    front_top = np.array([-0.45, -0.75, 0.55]) / np.linalg.norm([-0.45, -0.75, 0.55])
    toward = lighting.sh9_basis(front_top) @ k
    away = lighting.sh9_basis(-front_top) @ k
    assert toward.mean() > 1.8 * away.mean()


def write_exr(path, rgb):
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"RGB": rgb.astype(np.float32)}).write(str(path))


def test_user_exr_environment_lights_from_its_bright_side(tmp_path):
    env = np.full((32, 64, 3), 0.1, np.float32)
    env[:8] = 5.0  # bright sky: light from +Z
    write_exr(tmp_path / "sky.exr", env)
    k = lighting.easylight_sh(tmp_path / "sky.exr", exposure=0.8)
    up, down = lighting.sh9_basis(np.array([0.0, 0.0, 1.0])) @ k, lighting.sh9_basis(np.array([0.0, 0.0, -1.0])) @ k
    assert up.mean() == pytest.approx(0.8, abs=0.01)
    assert down.mean() < 0.3 * up.mean()


def rgbe_bytes(rgb: np.ndarray, rle: bool) -> bytes:
    """A Radiance .hdr file; with rle, each channel of a scanline is one run plus literals."""
    h, w = rgb.shape[:2]
    peak = rgb.max(axis=2)
    exponent = np.where(peak > 0, np.floor(np.log2(np.maximum(peak, 1e-30))) + 1, 0).astype(np.int32)
    mantissa = np.where(peak[..., None] > 0, rgb / np.ldexp(1.0, exponent)[..., None] * 256, 0)
    rgbe = np.concatenate([mantissa.astype(np.uint8), np.where(peak > 0, exponent + 128, 0)[..., None]], -1)
    out = bytearray(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode())
    for row in rgbe.astype(np.uint8):
        if not rle:
            out += row.tobytes()
            continue
        out += bytes([2, 2, w >> 8, w & 255])
        for c in range(4):
            values = row[:, c]
            out += bytes([128 + 4, values[0]])  # a run of 4 copies of the first value
            rest = values[4:]
            for i in range(0, len(rest), 128):
                chunk = rest[i : i + 128]
                out += bytes([len(chunk)]) + chunk.tobytes()
    return bytes(out)


@pytest.mark.parametrize("rle", [False, True])
def test_radiance_hdr_reader(tmp_path, rle):
    rgb = np.random.default_rng(0).uniform(0.01, 8.0, (6, 40, 3)).astype(np.float32)
    if rle:
        rgb[:, :4] = rgb[:, :1]
    (tmp_path / "env.hdr").write_bytes(rgbe_bytes(rgb, rle))
    got = lighting.read_environment(tmp_path / "env.hdr")
    assert got.shape == rgb.shape
    step = rgb.max(axis=2, keepdims=True) / 128  # RGBE: 8-bit mantissas sharing the brightest channel's exponent
    assert np.all(np.abs(got - rgb) <= step)


def test_bad_environment_paths_say_what_is_supported(tmp_path):
    with pytest.raises(lighting.LightingError, match="not found"):
        lighting.easylight_sh(tmp_path / "missing.exr")
    (tmp_path / "env.png").write_bytes(b"png")
    with pytest.raises(lighting.LightingError, match=r"\.exr or \.hdr"):
        lighting.easylight_sh(tmp_path / "env.png")
    (tmp_path / "bad.exr").write_bytes(b"not an exr")
    with pytest.raises(lighting.LightingError, match="bad.exr"):
        lighting.easylight_sh(tmp_path / "bad.exr")
