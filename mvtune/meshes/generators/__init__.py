"""Mesh generators: prompt rows -> one folder per item (mesh.glb, mesh.txt caption, mesh.json provenance).

Each backend is one module with a backend object (see :class:`~mvtune.meshes.generators.base.Backend`);
adding one is a module plus a line in ``BACKENDS``. Backends are imported on first use, so listing them costs
nothing and a backend's heavy packages load only inside its worker processes.
"""

from __future__ import annotations

import difflib
import importlib

from mvtune.meshes.generators.base import GeneratorError

#: Backend name -> "module:object" of its backend object.
BACKENDS: dict[str, str] = {
    "procedural": "mvtune.meshes.generators.procedural:BACKEND",
    "hunyuan3d-2.1": "mvtune.meshes.generators.hunyuan:HUNYUAN3D_2_1",
    "hunyuan3d-2": "mvtune.meshes.generators.hunyuan:HUNYUAN3D_2",
}


def get_backend(name: str):
    """The backend object called ``name``; an unknown name is refused naming the closest one."""
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, list(BACKENDS), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GeneratorError(f"unknown backend {name!r}{hint}; available: {', '.join(BACKENDS)}")
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def generate_meshes(cfg, on_progress=None) -> dict:
    """Run a generator over prompt rows (see :func:`mvtune.meshes.generators.run.generate_meshes`)."""
    from mvtune.meshes.generators.run import generate_meshes as run

    return run(cfg, on_progress)


def import_meshes(*args, **kwargs) -> dict:
    """Import downloaded meshes with provenance (see :func:`mvtune.meshes.importers.import_meshes`)."""
    from mvtune.meshes.importers import import_meshes as run

    return run(*args, **kwargs)


__all__ = ["BACKENDS", "GeneratorError", "generate_meshes", "get_backend", "import_meshes"]
