import os

from standin_mesh import check_folder, shape


class Hunyuan3DDiTFlowMatchingPipeline:
    @classmethod
    def from_pretrained(cls, model_path, device="cuda", dtype=None, use_safetensors=True, variant="fp16",
                        subfolder="hunyuan3d-dit-v2-1", **kwargs):
        check_folder(os.path.join(model_path, subfolder))
        return cls()

    def __call__(self, image=None, num_inference_steps=50, timesteps=None, sigmas=None, eta=0.0, guidance_scale=5.0,
                 generator=None, box_v=1.01, octree_resolution=384, mc_level=0.0, mc_algo=None, num_chunks=8000,
                 output_type="trimesh", enable_pbar=True, **kwargs):
        return [shape(image)]
