"""easylight: soft diffuse image-based lighting from 2nd-order spherical harmonics.

The reference dataset's name says "easylight" but its lighting is unpublished (spec dataset-format §2.1); what
the model needs is albedo it can still recognise under soft, directional shading. So the shaded colour is

    colour_linear = albedo_linear * E(n) / pi * exposure

with E the diffuse irradiance of an environment, projected onto 9 spherical-harmonic coefficients
(Ramamoorthi & Hanrahan 2001), then encoded to sRGB. Environments:

- "studio": built in, procedural: a large soft key light from the front-top-left, a weaker fill from the
  front-right, a rim light from behind, a bright sky dome and a warm-neutral ground bounce. Its contrast is tuned
  so a white diffuse sphere averages about 0.83 in sRGB over the ortho10 views (0.89 seen from the front, 0.73
  from below) and no normal falls below 0.64 in sRGB (no crushed blacks); brightest/darkest irradiance ~2.7.
- a path to an equirectangular OpenEXR (.exr) or Radiance (.hdr) map, in Blender's convention: the image centre
  looks along world +X, azimuth grows towards +Y to the left of the centre, the top row is world +Z (Z-up).

Every environment is normalised so the brightest normal gets E/pi = 1 (a white surface facing the brightest
direction is exactly white at exposure 1): studio renders and arbitrary HDRs then share one brightness scale.

"albedo" is not an environment: the renderer outputs the unlit base colour (texture texel times factor, or
vertex colour) so that baking a texture from renders returns the texture.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: Convolution of the clamped cosine with SH bands 0, 1, 2, divided by pi (so E/pi comes out directly).
_BAND_GAIN = np.array([1.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 0.25, 0.25, 0.25, 0.25, 0.25])


class LightingError(Exception):
    """An environment map that cannot be read; the message names the file."""


def sh9_basis(directions: np.ndarray) -> np.ndarray:
    """Real SH basis Y_0..Y_8 at unit directions (..., 3) -> (..., 9), in the order the shader uses."""
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    return np.stack(
        [
            np.full_like(x, 0.282095),
            0.488603 * y,
            0.488603 * z,
            0.488603 * x,
            1.092548 * x * y,
            1.092548 * y * z,
            0.315392 * (3.0 * z * z - 1.0),
            1.092548 * x * z,
            0.546274 * (x * x - y * y),
        ],
        axis=-1,
    )


def equirect_directions(height: int, width: int) -> np.ndarray:
    """World directions (H, W, 3) of equirectangular pixel centres, Blender convention (centre = +X, top = +Z)."""
    elevation = math.pi * (0.5 - (np.arange(height) + 0.5) / height)
    azimuth = math.pi - 2.0 * math.pi * (np.arange(width) + 0.5) / width
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


def sh9_from_equirect(radiance: np.ndarray) -> np.ndarray:
    """Project an equirectangular radiance map (H, W, 3) onto 9 SH coefficients per channel -> (9, 3)."""
    h, w = radiance.shape[:2]
    directions = equirect_directions(h, w)
    solid_angle = (2.0 * math.pi / w) * (math.pi / h) * np.cos(math.pi * (0.5 - (np.arange(h) + 0.5) / h))
    basis = sh9_basis(directions) * solid_angle[:, None, None]
    return np.einsum("hwk,hwc->kc", basis, radiance.astype(np.float64))


def irradiance_over_pi(sh: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """E(n)/pi (..., 3) for unit normals (..., 3) from radiance SH coefficients (9, 3)."""
    return sh9_basis(normals) @ (sh * _BAND_GAIN[:, None])


def studio_environment(height: int = 64) -> np.ndarray:
    """The built-in neutral studio: equirectangular radiance (height, 2*height, 3), world Z-up, front = -Y."""
    d = equirect_directions(height, 2 * height)

    def lobe(direction, sharpness):
        axis = np.asarray(direction, dtype=np.float64)
        axis /= np.linalg.norm(axis)
        return np.exp(sharpness * (d @ axis - 1.0))[..., None]

    up = d[..., 2:3]
    sky = 0.9 + 0.25 * np.clip(up, 0.0, 1.0)
    ground = np.where(up < 0.0, 0.75, 0.0) * np.array([1.0, 0.96, 0.9])
    radiance = np.where(up >= 0.0, sky, 0.0) * np.array([0.97, 0.99, 1.0]) + ground
    radiance = radiance + 3.0 * lobe([-0.45, -0.75, 0.55], 6.0) * np.array([1.0, 0.98, 0.95])  # key
    radiance = radiance + 1.2 * lobe([0.7, -0.6, 0.1], 5.0)  # fill
    radiance = radiance + 1.4 * lobe([0.2, 0.8, 0.55], 8.0) * np.array([0.95, 0.97, 1.0])  # rim
    return radiance.astype(np.float32)


def read_environment(path: str | Path) -> np.ndarray:
    """Radiance (H, W, 3) float32 of an equirectangular .exr or .hdr file."""
    path = Path(path)
    if not path.is_file():
        raise LightingError(f"{path}: environment map not found (use 'studio', 'albedo' or an .exr/.hdr path)")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        return _read_exr_rgb(path)
    if suffix == ".hdr":
        return _read_rgbe(path)
    raise LightingError(f"{path}: unsupported environment map format {suffix!r}; use .exr or .hdr (Radiance RGBE)")


def _read_exr_rgb(path: Path) -> np.ndarray:
    import OpenEXR

    try:
        with OpenEXR.File(str(path)) as f:
            channels = f.channels()
            if "RGB" in channels:
                rgb = np.array(channels["RGB"].pixels, dtype=np.float32)
            elif "RGBA" in channels:
                rgb = np.array(channels["RGBA"].pixels[..., :3], dtype=np.float32)
            elif all(c in channels for c in "RGB"):
                rgb = np.stack([np.array(channels[c].pixels, dtype=np.float32) for c in "RGB"], axis=-1)
            else:
                raise LightingError(f"{path}: EXR has no R, G, B channels (found {sorted(channels)})")
    except LightingError:
        raise
    except Exception as exc:  # OpenEXR raises bare RuntimeErrors on corrupt files
        raise LightingError(f"{path}: cannot read EXR environment map: {exc}") from exc
    return np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0).clip(0.0, None)


def _read_rgbe(path: Path) -> np.ndarray:
    """Radiance .hdr (RGBE, flat or new-style run-length scanlines, '-Y H +X W' orientation only)."""
    data = path.read_bytes()
    header_end = data.find(b"\n\n")
    if not data.startswith(b"#?") or header_end < 0:
        raise LightingError(f"{path}: not a Radiance .hdr file")
    line_end = data.index(b"\n", header_end + 2)
    size = data[header_end + 2 : line_end].split()
    if len(size) != 4 or size[0] != b"-Y" or size[2] != b"+X":
        raise LightingError(f"{path}: unsupported .hdr orientation {b' '.join(size)!r} (only '-Y H +X W')")
    height, width = int(size[1]), int(size[3])
    buf = np.frombuffer(data, dtype=np.uint8, offset=line_end + 1)
    out = np.empty((height, width, 4), dtype=np.uint8)
    pos = 0
    try:
        for row in range(height):
            if 8 <= width < 32768 and buf[pos] == 2 and buf[pos + 1] == 2 and buf[pos + 2] < 128:
                pos += 4
                for channel in range(4):
                    x = 0
                    while x < width:
                        count = int(buf[pos])
                        if count > 128:
                            count -= 128
                            out[row, x : x + count, channel] = buf[pos + 1]
                            pos += 2
                        else:
                            out[row, x : x + count, channel] = buf[pos + 1 : pos + 1 + count]
                            pos += 1 + count
                        x += count
            else:
                out[row] = buf[pos : pos + 4 * width].reshape(width, 4)
                pos += 4 * width
    except (IndexError, ValueError) as exc:
        raise LightingError(f"{path}: truncated or corrupt .hdr pixel data") from exc
    exponent = out[..., 3].astype(np.int32)
    scale = np.where(exponent > 0, np.ldexp(1.0, exponent - 136), 0.0).astype(np.float32)
    return out[..., :3].astype(np.float32) * scale[..., None]


def easylight_sh(lighting: str | Path, exposure: float = 1.0) -> np.ndarray:
    """Shader coefficients (9, 3): colour_linear = albedo_linear * sum_i k_i Y_i(n).

    Normalised so the brightest normal gets E/pi = exposure.
    """
    radiance = studio_environment() if str(lighting) == "studio" else read_environment(lighting)
    sh = sh9_from_equirect(_downsample(radiance, 128)) * _BAND_GAIN[:, None]
    peak = irradiance_peak(sh)
    if peak <= 0.0:
        raise LightingError(f"{lighting}: environment map is black")
    return (sh * (exposure / peak)).astype(np.float32)


def irradiance_peak(shading_sh: np.ndarray) -> float:
    """Largest channel value of sum_i k_i Y_i(n) over a dense set of normals."""
    normals = equirect_directions(90, 180)
    return float((sh9_basis(normals) @ shading_sh).max())


def _downsample(radiance: np.ndarray, height: int) -> np.ndarray:
    """Box-filter a large map to about `height` rows; SH2 only needs the low frequencies."""
    h, w = radiance.shape[:2]
    f = max(1, h // height)
    h2, w2 = h // f, w // f
    return radiance[: h2 * f, : w2 * f].reshape(h2, f, w2, f, 3).mean(axis=(1, 3))
