"""Texture a mesh from generated views: UV atlas, GL back-projection baking, UV fill, GLB and turntable export."""

from mvtune.texture.bake import BakeOptions, BakeResult, bake_texture, push_pull, rasterize_uv
from mvtune.texture.export import TextureConfig, glb_bytes, read_views, texture_mesh, turntable_images
from mvtune.texture.unwrap import TextureError, UnwrapConfig, UVCheck, UVMesh, check_uvs, prepare_uv_mesh

__all__ = [
    "BakeOptions",
    "BakeResult",
    "TextureConfig",
    "TextureError",
    "UVCheck",
    "UVMesh",
    "UnwrapConfig",
    "bake_texture",
    "check_uvs",
    "glb_bytes",
    "prepare_uv_mesh",
    "push_pull",
    "rasterize_uv",
    "read_views",
    "texture_mesh",
    "turntable_images",
]
