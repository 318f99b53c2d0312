import os

from standin_mesh import check_folder, paint


class Hunyuan3DPaintPipeline:
    @classmethod
    def from_pretrained(cls, model_path, subfolder="hunyuan3d-paint-v2-0-turbo"):
        check_folder(os.path.join(model_path, "hunyuan3d-delight-v2-0"))
        check_folder(os.path.join(model_path, subfolder))
        return cls()

    def __call__(self, mesh, image):
        return paint(mesh, image)
