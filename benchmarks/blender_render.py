"""Reference renders with Blender Cycles: run INSIDE the bpy venv (scripts/setup_blender.sh), never imported by mvtune.

    .venv-blender/bin/python benchmarks/blender_render.py JOB.json

JOB.json:
    {
      "mesh": "mesh.npz",          # vertices (N,3) float32, faces (F,3) int; optional uv (N,2) float32
                                   # (OpenGL convention, v=0 at the image bottom) and texture (H,W,4|3) uint8
                                   # (row 0 = top of the image). Vertices are used as given (no normalisation),
                                   # so Blender sees bit-identical float32 geometry.
      "views": [{"index": "0000", "c2w": [[4x4]], "ortho_scale": 1.1,
                 "projection": "ORTHO" | "PERSP", "fov_x": 0.61}],   # c2w in Blender camera convention
      "resolution": 1024, "samples": 16,
      "output_dir": "out/",
      "threads": 0,                # 0 = all cores
      "denoise": false,
      "save_color": false,         # also store the Combined pass (linear RGBA float16) per view
      "keep_exr": false
    }

Writes per view `output_dir/view_<index>.npz` with `depth` (H,W) float32 (Blender's Z pass as is),
`position` (H,W,3) float32 world XYZ, `alpha` (H,W) float32 and optionally `color`, all with row 0 = image top;
and `output_dir/timing.json`.

How the passes come out in Blender 5.0: the view layer's `use_pass_z` / `use_pass_position` are enabled and
each view is rendered with `bpy.ops.render.render(write_still=True)` into a multilayer OpenEXR
(`image_settings.media_type = 'MULTI_LAYER_IMAGE'`, `file_format = 'OPEN_EXR_MULTILAYER'`, 32-bit float). No
compositor is involved. Blender 5.0 writes it as a multi-part EXR (one part per pass: `ViewLayer.Combined`,
`ViewLayer.Depth` with channel `Z`, `ViewLayer.Position` with `X`,`Y`,`Z`), which is read back here with the
OpenEXR package installed in the same venv.

Observed Cycles behaviour (Blender 5.0.1): the Z pass of an orthographic camera is planar depth along the view
axis; background pixels hold 1e10 (Cycles writes 1e10 where nothing was hit) and background Position is 0.
Depth and Position are written from each pixel's first sample only (not averaged over samples), and Cycles
places that first sample at the pixel-filter centre, i.e. at the pixel centre (u + 0.5, v + 0.5) -- measured
+0.0005 px right and +0.0005 px up of it (presumably the filter-table lookup's half-bin), with the default
Blackman-Harris and with the box filter, at 1 and at 16 samples. At 1024 px and ortho_scale 1.1 that is 5e-7 world units.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import bpy  # noqa: E402  (only available inside the bpy venv)
import numpy as np
from mathutils import Matrix


def _log(msg: str) -> None:
    print(f"[blender_render] {msg}", flush=True)


def _build_mesh(data: dict) -> bpy.types.Object:
    vertices = np.ascontiguousarray(data["vertices"], dtype=np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(data["faces"], dtype=np.int32).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"face indices out of range for {len(vertices)} vertices")
    n_v, n_f = len(vertices), len(faces)

    me = bpy.data.meshes.new("mesh")
    me.vertices.add(n_v)
    me.vertices.foreach_set("co", vertices.ravel())
    me.loops.add(3 * n_f)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(n_f)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * n_f, 3, dtype=np.int32))
    me.update(calc_edges=True)
    # No me.validate(): it may drop degenerate/duplicate faces, and we want exactly the caller's triangles.
    if hasattr(me, "shade_smooth"):
        me.shade_smooth()

    # Check Blender kept the float32 coordinates bit for bit.
    back = np.empty(n_v * 3, dtype=np.float32)
    me.vertices.foreach_get("co", back)
    if not np.array_equal(back, vertices.ravel()):
        raise RuntimeError("Blender changed the vertex coordinates")

    uv = data.get("uv")
    texture = data.get("texture")
    mat = bpy.data.materials.new("material")
    with warnings.catch_warnings():  # use_nodes is deprecated in 5.0 (always on) but needed on 4.x
        warnings.simplefilter("ignore", DeprecationWarning)
        mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.8
    if uv is not None and texture is not None:
        uv = np.asarray(uv, dtype=np.float32).reshape(-1, 2)
        layer = me.uv_layers.new(name="UVMap")
        layer.data.foreach_set("uv", uv[faces.ravel()].ravel())
        tex = np.asarray(texture, dtype=np.uint8)
        if tex.ndim == 2:
            tex = np.repeat(tex[..., None], 3, axis=2)
        if tex.shape[2] == 3:
            tex = np.concatenate([tex, np.full(tex.shape[:2] + (1,), 255, np.uint8)], axis=2)
        h, w = tex.shape[:2]
        img = bpy.data.images.new("texture", width=w, height=h, alpha=True)
        # Blender image rows are bottom-first; ours are top-first.
        img.pixels.foreach_set((tex[::-1].astype(np.float32) / 255.0).ravel())
        img.pack()
        node = mat.node_tree.nodes.new("ShaderNodeTexImage")
        node.image = img
        node.interpolation = "Linear"
        mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = (0.5, 0.5, 0.5, 1.0)
    me.materials.append(mat)

    obj = bpy.data.objects.new("mesh", me)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _setup_scene(job: dict) -> bpy.types.Scene:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cyc = scene.cycles
    cyc.device = "CPU"
    cyc.samples = int(job.get("samples", 16))
    cyc.use_adaptive_sampling = False
    cyc.use_denoising = bool(job.get("denoise", False))
    # The pixel filter is left at Cycles' default (Blackman-Harris, 1.5 px): it only shapes the anti-aliased
    # Combined pass. Cycles takes each pixel's first sample at the filter centre and writes Depth/Position
    # from that sample alone, so the geometry passes are point samples at the pixel centre whatever the
    # filter. (A BOX filter is always 1 px wide in Cycles, whatever filter_width says.)
    cyc.seed = 0

    r = scene.render
    res = int(job["resolution"])
    r.resolution_x = res
    r.resolution_y = res
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = True
    r.use_persistent_data = True  # keep the BVH between views (fairer to Blender)
    threads = int(job.get("threads", 0) or 0)
    if threads > 0:
        r.threads_mode = "FIXED"
        r.threads = threads
    else:
        r.threads_mode = "AUTO"

    ims = r.image_settings
    ims.media_type = "MULTI_LAYER_IMAGE"
    ims.file_format = "OPEN_EXR_MULTILAYER"
    ims.color_depth = "32"
    ims.exr_codec = "ZIP"

    vl = scene.view_layers[0]
    vl.use_pass_combined = True
    vl.use_pass_z = True
    vl.use_pass_position = True

    world = bpy.data.worlds.new("world")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        world.use_nodes = True
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    scene.world = world
    return scene


def _camera(scene: bpy.types.Scene) -> bpy.types.Object:
    cam = bpy.data.cameras.new("camera")
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = 32.0
    cam.shift_x = cam.shift_y = 0.0
    cam.clip_start = 1e-3
    cam.clip_end = 1e4
    obj = bpy.data.objects.new("camera", cam)
    scene.collection.objects.link(obj)
    scene.camera = obj
    return obj


def _set_view(cam_obj: bpy.types.Object, view: dict) -> None:
    cam = cam_obj.data
    projection = view.get("projection", "ORTHO").upper()
    if projection == "ORTHO":
        cam.type = "ORTHO"
        cam.ortho_scale = float(view.get("ortho_scale", 1.1))
    elif projection == "PERSP":
        cam.type = "PERSP"
        cam.lens_unit = "FOV"
        cam.angle_x = float(view["fov_x"])
    else:
        raise ValueError(f"view {view.get('index')}: unknown projection {projection!r}")
    c2w = np.asarray(view["c2w"], dtype=np.float64).reshape(4, 4)
    cam_obj.matrix_world = Matrix(c2w.tolist())


def _read_exr(path: str) -> dict[str, np.ndarray]:
    import OpenEXR

    out: dict[str, np.ndarray] = {}
    with OpenEXR.File(path, separate_channels=True) as f:
        for part in f.parts:
            for name, ch in part.channels.items():
                out[name] = np.array(ch.pixels, dtype=np.float32, copy=True)  # copy inside the with block
    return out


def _pick(channels: dict[str, np.ndarray], pass_name: str, chan: str) -> np.ndarray:
    for name, px in channels.items():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == pass_name and parts[-1] == chan:
            return px
    raise KeyError(f"no channel {pass_name}.{chan} in EXR (have {sorted(channels)})")


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if len(argv) != 1:
        print("usage: blender_render.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        job = json.load(fh)
    out_dir = job["output_dir"]
    os.makedirs(out_dir, exist_ok=True)

    t0 = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = _setup_scene(job)
    with np.load(job["mesh"]) as npz:
        data = {k: npz[k] for k in npz.files}
    obj = _build_mesh(data)
    cam_obj = _camera(scene)
    setup_s = time.perf_counter() - t0
    _log(f"Blender {bpy.app.version_string}: {len(data['vertices'])} vertices, {len(data['faces'])} faces, "
         f"setup {setup_s:.2f} s")

    per_view = []
    for view in job["views"]:
        index = str(view["index"])
        _set_view(cam_obj, view)
        exr = os.path.join(out_dir, f"view_{index}.exr")
        scene.render.filepath = exr
        t = time.perf_counter()
        c = time.process_time()
        bpy.ops.render.render(write_still=True)
        render_s = time.perf_counter() - t
        render_cpu_s = time.process_time() - c  # all threads of this process
        if not os.path.exists(exr):
            raise RuntimeError(f"Blender did not write {exr}")
        t = time.perf_counter()
        ch = _read_exr(exr)
        depth = _pick(ch, "Depth", "Z")
        position = np.stack([_pick(ch, "Position", c) for c in "XYZ"], axis=-1)
        alpha = _pick(ch, "Combined", "A")
        arrays = {"depth": depth, "position": position, "alpha": alpha}
        if job.get("save_color"):
            arrays["color"] = np.stack([_pick(ch, "Combined", c) for c in "RGBA"], axis=-1).astype(np.float16)
        np.savez(os.path.join(out_dir, f"view_{index}.npz"), **arrays)
        if not job.get("keep_exr"):
            os.remove(exr)
        read_s = time.perf_counter() - t
        per_view.append({"index": index, "render_s": render_s, "render_cpu_s": render_cpu_s, "readback_s": read_s})
        _log(f"view {index}: render {render_s:.2f} s (CPU {render_cpu_s:.2f} s), readback {read_s:.2f} s")

    timing = {
        "blender_version": bpy.app.version_string,
        "engine": "CYCLES",
        "device": "CPU",
        "samples": scene.cycles.samples,
        "denoise": scene.cycles.use_denoising,
        "resolution": scene.render.resolution_x,
        "threads": scene.render.threads,
        "num_vertices": int(len(data["vertices"])),
        "num_faces": int(len(data["faces"])),
        "textured": "texture" in data and "uv" in data,
        "setup_s": setup_s,
        "views": per_view,
        "total_s": time.perf_counter() - t0,
    }
    with open(os.path.join(out_dir, "timing.json"), "w") as fh:
        json.dump(timing, fh, indent=1)
    del obj
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
