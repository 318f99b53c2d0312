"""Stand-in for hy3dpaint/textureGenPipeline.py of Hunyuan3D-2.1 (imported with hy3dpaint/ on sys.path)."""

import os

import trimesh
from PIL import Image

from standin_mesh import check_folder, paint


class Hunyuan3DPaintConfig:
    def __init__(self, max_num_view, resolution, device=None):
        self.device = device or "cpu"
        self.multiview_cfg_path = "hy3dpaint/cfgs/hunyuan-paint-pbr.yaml"
        self.multiview_pretrained_path = "tencent/Hunyuan3D-2.1"
        self.realesrgan_ckpt_path = "ckpt/RealESRGAN_x4plus.pth"
        self.max_selected_view_num = max_num_view
        self.resolution = resolution


class Hunyuan3DPaintPipeline:
    def __init__(self, config=None):
        self.config = config
        for path in (config.multiview_cfg_path, config.realesrgan_ckpt_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"stand-in: {path} not found (relative to {os.getcwd()})")
        check_folder(os.path.join(config.multiview_pretrained_path, "hunyuan3d-paintpbr-v2-1"))

    def __call__(self, mesh_path=None, image_path=None, output_mesh_path=None, use_remesh=True, save_glb=True):
        image = Image.open(image_path) if isinstance(image_path, str) else image_path
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
        if output_mesh_path is None:
            output_mesh_path = os.path.join(os.path.dirname(mesh_path), "textured_mesh.obj")
        textured = paint(mesh, image)
        textured.export(output_mesh_path)
        if save_glb:
            textured.export(output_mesh_path.replace(".obj", ".glb"))
        return output_mesh_path
