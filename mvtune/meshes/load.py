"""Import GLB/GLTF/OBJ/PLY files into a `Mesh`, refusing bad input with a specific `MeshError`.

The file is checked before trimesh parses it (glTF JSON, OBJ material library, texture image headers), because
trimesh drops missing or unreadable textures silently and would decode a decompression bomb. The scene graph is
walked by hand rather than through `scene.dump()`: dump copies each geometry, which forgets the file's normals
and decodes every texture before we could check its size.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct
import warnings
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import trimesh
from PIL import Image

from mvtune.meshes.mesh import NEUTRAL_GREY, Mesh, MeshError, MeshPart, linear_to_srgb

SUPPORTED_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply")
#: Bumped whenever the same file loads into other colours; part of the render settings, so a dataset rendered
#: under older rules re-renders. 2: glTF COLOR_0 is read as linear (glTF 2.0), it was taken as sRGB.
COLOR_RULES_VERSION = 2
#: 8192 x 8192: big enough for any sane baseColor texture, small enough that decoding it cannot exhaust memory.
DEFAULT_MAX_TEXTURE_PIXELS = 8192 * 8192
#: All textures of one object together (decoded RGBA: 4 bytes each, ~540 MB at this default): many textures that
#: each pass the per-texture limit must not add up to gigabytes.
DEFAULT_MAX_TOTAL_TEXTURE_PIXELS = 2 * 8192 * 8192


class UnsupportedFormatError(MeshError):
    """The file extension is not one we import."""


class MeshReadError(MeshError):
    """The file cannot be parsed: unreadable, truncated, or not the format its extension claims."""


class NotAMeshError(MeshError):
    """The file parses but holds no triangles: a point cloud, an empty scene, a text file."""


class InvalidGeometryError(MeshError):
    """Triangles exist but cannot be normalised or rendered: NaN/inf, bad indices, zero size or zero area."""


class TextureMissingError(MeshError):
    """A texture or material library the file refers to is absent or unreadable."""


class TextureTooLargeError(MeshError):
    """A texture exceeds the pixel limit (decompression-bomb guard)."""


class OutsideReferenceError(MeshError):
    """The file refers to a file outside its own folder (``../``, an absolute path): refused unless allowed."""


def _inside(path: Path, target: Path, what: str, allow_outside: bool) -> Path:
    """target, if it lies in the mesh file's folder (or below); a mesh from elsewhere must not read other files."""
    if not allow_outside and not target.resolve().is_relative_to(path.parent.resolve()):
        raise OutsideReferenceError(
            f"{path}: {what} refers to {target}, outside the mesh's folder {path.parent}; copy it next to the mesh "
            "(or allow files outside it with --allow-outside-files)"
        )
    return target


def load_mesh(
    path: str | Path,
    *,
    max_texture_pixels: int = DEFAULT_MAX_TEXTURE_PIXELS,
    max_total_texture_pixels: int = DEFAULT_MAX_TOTAL_TEXTURE_PIXELS,
    allow_outside: bool = False,
) -> Mesh:
    """Read a mesh file into source coordinates (scene-graph transforms applied, `to_frame` identity).

    One `MeshPart` per geometry instance and material. Skinned or animated glTF files load in their rest pose
    with a note in `Mesh.warnings`. Call `mvtune.meshes.normalize_mesh` next to reach the world frame.
    """
    path = Path(path)
    ext = path.suffix.lower()
    warns, textures = _check_file(path, max_texture_pixels, max_total_texture_pixels, allow_outside)
    with _pixel_guard(max_texture_pixels):
        try:
            # trimesh's own resolver refuses `../` on its own and then drops the texture in silence
            resolver = trimesh.resolvers.FilePathResolver(path, allow_anywhere=True) if allow_outside else None
            scene = trimesh.load(path, process=False, force="scene", resolver=resolver)
        except IndexError as e:
            if ext != ".obj":
                raise MeshReadError(f"{path}: cannot parse {ext} file (IndexError: {e})") from e
            # trimesh's OBJ parser indexes the vertex array with the file's face indices directly.
            raise InvalidGeometryError(f"{path}: face indices out of range ({e})") from e
        except Exception as e:
            raise MeshReadError(f"{path}: cannot parse {ext} file ({type(e).__name__}: {e})") from e
        if ext == ".obj" and textures and not any(
            getattr(getattr(g.visual, "material", None), "image", None) is not None for g in scene.geometry.values()
        ):
            raise TextureMissingError(
                f"{path}: its material library names {textures} texture(s) but none could be loaded; check the "
                "map_Kd lines (options before the file name are not supported)"
            )
        parts = _scene_parts(path, scene, max_texture_pixels, warns)
    mesh = Mesh(parts=parts, source=str(path), warnings=warns)
    _check_extent(path, mesh)
    return mesh


def check_mesh_file(
    path: str | Path,
    *,
    max_texture_pixels: int = DEFAULT_MAX_TEXTURE_PIXELS,
    max_total_texture_pixels: int = DEFAULT_MAX_TOTAL_TEXTURE_PIXELS,
    allow_outside: bool = False,
) -> list[str]:
    """The checks made before any parsing: format, referenced files, texture sizes from image headers only, the
    per-object pixel budget. For tools that give the file to trimesh themselves (augment), which would drop a
    texture it cannot decode in silence. Returns warnings; raises a MeshError."""
    return _check_file(Path(path), max_texture_pixels, max_total_texture_pixels, allow_outside)[0]


def _check_file(path: Path, max_texture_pixels: int, max_total_texture_pixels: int, allow_outside: bool):
    """(warnings, number of textures found) of check_mesh_file."""
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise UnsupportedFormatError(
            f"{path}: unsupported mesh format {ext or '(no extension)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise MeshReadError(f"{path}: file not found")
    warns: list[str] = []
    sizes: list[int] = []
    with _pixel_guard(max_texture_pixels):
        if ext in (".glb", ".gltf"):
            warns += _check_gltf(path, max_texture_pixels, sizes, allow_outside)
        elif ext == ".obj":
            _check_obj(path, max_texture_pixels, sizes, allow_outside)
    if sum(sizes) > max_total_texture_pixels:
        raise TextureTooLargeError(
            f"{path}: its {len(sizes)} textures hold {sum(sizes)} pixels together, over the per-object budget "
            f"of {max_total_texture_pixels} (raise it with --max-total-texture-pixels if you have the memory)"
        )
    return warns, len(sizes)


@contextlib.contextmanager
def _pixel_guard(max_pixels: int):
    """Make PIL itself refuse oversized images while we load, as a backstop to the header checks.

    PIL's limit is process-global: threads loading concurrently with different limits see each other's.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _check_image_header(path: Path, what: str, data: bytes | Path, max_pixels: int) -> int:
    """Read only the image header: size against the limit, and that PIL recognises the format at all; returns
    the pixel count."""
    try:
        with warnings.catch_warnings():
            # Between one and two times the limit PIL only warns; we raise below with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                width, height = img.size
    except Image.DecompressionBombError as e:
        raise TextureTooLargeError(f"{path}: {what} is over the limit of {max_pixels} pixels ({e})") from e
    except Exception as e:
        raise TextureMissingError(f"{path}: {what} is not a readable image ({type(e).__name__}: {e})") from e
    if width * height > max_pixels:
        raise TextureTooLargeError(
            f"{path}: {what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return width * height


def _gltf_header(path: Path) -> tuple[dict, bytes | None]:
    """The glTF JSON and, for GLB, the binary chunk; truncation and bad magic are reported here."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MeshReadError(f"{path}: cannot read file ({e})") from e
    binary = None
    if path.suffix.lower() == ".glb":
        if len(data) < 20 or data[:4] != b"glTF":
            raise MeshReadError(f"{path}: not a GLB file (missing 'glTF' magic header)")
        _, length = struct.unpack_from("<II", data, 4)
        if length > len(data):
            raise MeshReadError(f"{path}: truncated GLB: header says {length} bytes, file has {len(data)}")
        json_len, json_type = struct.unpack_from("<II", data, 12)
        if json_type != 0x4E4F534A or 20 + json_len > len(data):
            raise MeshReadError(f"{path}: corrupt GLB: first chunk is not a complete JSON chunk")
        text = data[20 : 20 + json_len]
        offset = 20 + json_len
        if offset + 8 <= len(data):
            bin_len, _ = struct.unpack_from("<II", data, offset)
            if offset + 8 + bin_len > len(data):
                raise MeshReadError(f"{path}: truncated GLB: binary chunk runs past the end of the file")
            binary = data[offset + 8 : offset + 8 + bin_len]
    else:
        text = data
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshReadError(f"{path}: invalid glTF JSON ({e})") from e
    if not isinstance(header, dict):
        raise MeshReadError(f"{path}: invalid glTF JSON (top level is not an object)")
    return header, binary


def _uri_bytes(path: Path, uri: str, what: str, allow_outside: bool = False) -> bytes:
    if uri.startswith("data:"):
        try:
            return base64.b64decode(uri.split("base64,", 1)[1])
        except (IndexError, ValueError) as e:
            raise MeshReadError(f"{path}: {what} has a malformed data URI") from e
    target = _inside(path, path.parent / unquote(uri), what, allow_outside)
    if not target.is_file():
        error = TextureMissingError if what.startswith("texture") else MeshReadError
        raise error(f"{path}: {what} refers to missing file {target.name!r} (looked in {target.parent})")
    return target.read_bytes()


def _check_gltf(path: Path, max_pixels: int, sizes: list[int], allow_outside: bool = False) -> list[str]:
    """Missing/oversized images and skins or animations, from the glTF JSON; returns warnings."""
    header, binary = _gltf_header(path)
    buffers: dict[int, bytes | None] = {}

    def buffer(index: int) -> bytes | None:
        if index not in buffers:
            spec = header.get("buffers", [])[index]
            uri = spec.get("uri")
            buffers[index] = binary if uri is None else _uri_bytes(path, uri, f"buffer {index}", allow_outside)
        return buffers[index]

    for i, spec in enumerate(header.get("buffers", [])):
        uri = spec.get("uri", "")
        if uri and not uri.startswith("data:"):
            _inside(path, path.parent / unquote(uri), f"buffer {i}", allow_outside)
        if uri and not uri.startswith("data:") and not (path.parent / unquote(uri)).is_file():
            raise MeshReadError(f"{path}: buffer {i} refers to missing file {unquote(uri)!r} (looked in {path.parent})")
    for i, image in enumerate(header.get("images", [])):
        what = f"texture image {i} ({image.get('uri') or image.get('name') or 'embedded'})"
        if "uri" in image:
            blob = _uri_bytes(path, image["uri"], what, allow_outside)
        elif "bufferView" in image:
            try:
                view = header["bufferViews"][image["bufferView"]]
                data = buffer(view["buffer"])
                start = view.get("byteOffset", 0)
                blob = data[start : start + view["byteLength"]] if data is not None else b""
            except (KeyError, IndexError, TypeError) as e:
                raise MeshReadError(f"{path}: {what} points at a missing buffer view") from e
        else:
            raise TextureMissingError(f"{path}: {what} has neither a uri nor a bufferView")
        sizes.append(_check_image_header(path, what, blob, max_pixels))

    notes = []
    if header.get("skins"):
        notes.append(f"{len(header['skins'])} skin(s)")
    if header.get("animations"):
        notes.append(f"{len(header['animations'])} animation(s)")
    if notes:
        return [f"{path.name}: has {' and '.join(notes)}; skinning and animation are ignored, the rest pose is used"]
    return []


def _check_obj(path: Path, max_pixels: int, sizes: list[int], allow_outside: bool = False) -> None:
    """The material library and its diffuse maps must exist, parsed the way trimesh parses them."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise MeshReadError(f"{path}: cannot read file ({e})") from e
    start = text.find("mtllib")
    if start < 0:
        return
    end = text.find("\n", start)
    mtl_name = text[start + 6 : end if end >= 0 else None].strip()
    mtl = _inside(path, path.parent / mtl_name, f"material library {mtl_name!r}", allow_outside)
    if not mtl.is_file():
        raise TextureMissingError(f"{path}: material library {mtl_name!r} not found (looked in {path.parent})")
    try:
        mtl_text = mtl.read_text(errors="replace")
    except OSError as e:
        raise TextureMissingError(f"{path}: cannot read material library {mtl_name!r} ({e})") from e
    for line in mtl_text.splitlines():
        stripped = line.strip()
        if stripped.lower().startswith("map_kd"):
            name = stripped[6:].strip()
            image = _inside(path, mtl.parent / name, f"texture {name!r} of {mtl.name}", allow_outside)
            if not image.is_file():
                raise TextureMissingError(f"{path}: texture {name!r} referenced by {mtl.name} not found")
            sizes.append(_check_image_header(path, f"texture {name!r}", image, max_pixels))


def _scene_parts(path: Path, scene: trimesh.Scene, max_pixels: int, warns: list[str]) -> list[MeshPart]:
    parts = []
    skipped = []
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            skipped.append(f"{geometry_name} ({type(geometry).__name__})")
            continue
        parts.append(_part(path, geometry, geometry_name, np.asarray(transform, dtype=np.float64), max_pixels, warns))
    if not parts:
        if skipped:
            raise NotAMeshError(f"{path}: not a triangle mesh, it holds only {', '.join(skipped)} with no faces")
        raise NotAMeshError(f"{path}: no geometry found (empty scene or not a {path.suffix} mesh file)")
    if skipped:
        warns.append(f"{path.name}: ignored geometry without faces: {', '.join(skipped)}")
    return parts


def _part(
    path: Path, geometry: trimesh.Trimesh, geometry_name: str, transform: np.ndarray, max_pixels: int, warns: list[str]
) -> MeshPart:
    name = str(geometry.metadata.get("name") or geometry_name)
    vertices = np.asarray(geometry.vertices, dtype=np.float64)
    faces = np.asarray(geometry.faces, dtype=np.int64)
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices).all(axis=1)).sum())
        raise InvalidGeometryError(f"{path}: {bad} vertices of part {name!r} are NaN or infinite")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InvalidGeometryError(
            f"{path}: face indices out of range in part {name!r} (indices {faces.min()}..{faces.max()}, "
            f"{len(vertices)} vertices)"
        )
    # Normals from the file are in trimesh's cache only when the file had them (process=False never computes).
    file_normals = geometry._cache.cache.get("vertex_normals")
    normals = _sane_normals(file_normals, len(vertices))
    if normals is None:
        if file_normals is not None:
            warns.append(f"{path.name}: part {name!r} has invalid normals in the file; recomputed them")
        # Not `geometry.vertex_normals`: that would hand back the rejected file normals from the cache.
        normals = trimesh.geometry.weighted_vertex_normals(
            vertex_count=len(vertices),
            faces=faces,
            face_normals=geometry.face_normals,
            face_angles=geometry.face_angles,
        )

    linear = transform[:3, :3]
    vertices = vertices @ linear.T + transform[:3, 3]
    normals = normals @ np.linalg.inv(linear)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    if np.linalg.det(linear) < 0:
        # A mirroring node transform turns the winding inside out (glTF spec, "Transformations").
        faces = faces[:, ::-1]

    part = MeshPart(
        vertices=vertices.astype(np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.uint32),
        normals=normals.astype(np.float32),
        name=name,
    )
    _apply_visual(path, geometry, part, max_pixels, warns)
    return part


def _sane_normals(normals: np.ndarray | None, count: int) -> np.ndarray | None:
    """The file's normals, unit length, or None when absent, misshaped, non-finite or zero."""
    if normals is None:
        return None
    normals = np.asarray(normals, dtype=np.float64)
    if normals.shape != (count, 3) or not np.isfinite(normals).all():
        return None
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    if (length < 1e-6).any():
        return None
    return normals / length


def _apply_visual(path: Path, geometry: trimesh.Trimesh, part: MeshPart, max_pixels: int, warns: list[str]) -> None:
    """Fill texture/uv, vertex colours or colour factor; untextured, uncoloured parts get neutral grey."""
    visual = geometry.visual
    count = len(part.vertices)
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        image, factor = None, None
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            image, factor = material.baseColorTexture, material.baseColorFactor
        elif isinstance(material, trimesh.visual.material.SimpleMaterial):
            # OBJ: the Kd colour is ignored when map_Kd is present, as Blender's importer does.
            image, factor = material.image, None if material.image is not None else material.diffuse
        uv = None if visual.uv is None else np.asarray(visual.uv, dtype=np.float64)
        if uv is not None and (uv.shape != (count, 2) or not np.isfinite(uv).all()):
            uv = None
        if image is not None and uv is not None:
            part.texture = _decode_texture(path, image, max_pixels)
            part.uv = uv.astype(np.float32)
        elif image is not None:
            warns.append(f"{path.name}: part {part.name!r} has a texture but no valid UVs; texture ignored")
        colors = visual.vertex_attributes.get("color") if hasattr(visual, "vertex_attributes") else None
        if part.texture is None and colors is not None and len(colors) == count:
            part.vertex_colors = _vertex_colors(path, colors)
        if factor is not None:
            part.color_factor = tuple(float(c) for c in np.asarray(factor, dtype=np.float64) / 255.0)
        elif part.texture is None and part.vertex_colors is None:
            part.color_factor = NEUTRAL_GREY
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind in ("vertex", "face"):
        # Face colours become per-vertex averages: the renderer interpolates vertex colours only.
        part.vertex_colors = _vertex_colors(path, visual.vertex_colors)
    else:
        part.color_factor = NEUTRAL_GREY


def _vertex_colors(path: Path, colors: np.ndarray) -> np.ndarray:
    """RGBA uint8 in MeshPart's convention (sRGB-encoded). glTF 2.0 defines COLOR_0 as linear, so glTF colours
    are encoded here (alpha stays linear); PLY and OBJ colours are display values, i.e. sRGB already."""
    rgba = _rgba_uint8(colors)
    if path.suffix.lower() not in (".glb", ".gltf"):
        return rgba
    colors = np.asarray(colors)
    linear = colors[:, :3].astype(np.float64) / (1.0 if colors.dtype.kind == "f" else 255.0)
    rgba[:, :3] = np.round(linear_to_srgb(linear) * 255.0).astype(np.uint8)
    return rgba


def _rgba_uint8(colors: np.ndarray) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.dtype.kind == "f":
        colors = np.round(np.clip(colors, 0.0, 1.0) * 255.0)
    colors = colors.astype(np.uint8)
    if colors.shape[1] == 3:
        colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    return np.ascontiguousarray(colors)


def _decode_texture(path: Path, image: Image.Image, max_pixels: int) -> np.ndarray:
    """RGBA uint8 with row 0 = top of the image (PIL's order), size checked before the pixels are decoded."""
    width, height = image.size
    if width * height > max_pixels:
        raise TextureTooLargeError(
            f"{path}: texture is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    try:
        return np.ascontiguousarray(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    except Exception as e:
        raise TextureMissingError(f"{path}: texture image cannot be decoded ({type(e).__name__}: {e})") from e


def _check_extent(path: Path, mesh: Mesh) -> None:
    """Refuse a point-sized object or one whose triangles have no area (e.g. all on a line); a flat card is fine."""
    bounds = mesh.bounds.astype(np.float64)
    longest = float((bounds[1] - bounds[0]).max())
    magnitude = max(1.0, float(np.abs(bounds).max()))
    if longest <= 1e-9 * magnitude:
        raise InvalidGeometryError(f"{path}: degenerate bounding box: all vertices lie on one point")
    area = sum(
        float(np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum()) / 2.0
        for v, f in ((p.vertices.astype(np.float64), p.faces.astype(np.int64)) for p in mesh.parts)
    )
    if area <= 1e-12 * longest * longest:
        raise InvalidGeometryError(f"{path}: all {mesh.num_faces} faces have zero area (vertices on a line)")
