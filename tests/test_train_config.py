"""Training config: both YAML layouts, overrides, unknown keys, up-front checks, the users' view-order mistake."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import USER_YAML
from mvtune.train.config import TrainConfigError, check_config, dump_config, load_config


def dataset_overrides(ds: Path) -> list[str]:
    return [f"data.root={ds}", f"data.scene_list={ds / 'scene_list.json'}", f"data.captions={ds / 'captions.json'}",
            "model.base=tiny", "model.vae=null", "model.adapter=null",
            "data.train_indices=[0, -2]", "data.val_indices=[-2, null]"]


def test_users_yaml_maps_to_the_reference_recipe(user_yaml, caplog):
    caplog.set_level("DEBUG", logger="mvtune.train.config")
    cfg = load_config(user_yaml)
    assert cfg.strategy == "adapter" and cfg.train_cond_encoder
    assert cfg.model.variant == "tg2mv" and cfg.model.shift_noise and cfg.model.shift_scale == 8
    assert cfg.model.base == "Lykon/dreamshaper-xl-1-0"
    assert cfg.data.image_names == ["0000", "0001", "0002", "0003", "0004", "0005"]
    assert cfg.data.train_indices == (0, -8) and cfg.data.val_indices == (-8, None)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.cond_encoder_lr) == ("adamw", 5e-5, 5e-5)
    assert (cfg.optim.warmup_steps, cfg.optim.warmup_start_factor, cfg.optim.grad_clip) == (2000, 1e-6, 1.0)
    assert cfg.objective.prompt_drop_prob == cfg.objective.cond_drop_prob == 0.1
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 10
    assert (cfg.validation.seed, cfg.validation.num_inference_steps, cfg.validation.guidance_scale) == (42, 30, 3.0)
    assert "ignored system_cls" in caplog.text and "ignored system.image_drop_prob" in caplog.text
    # The resolved config reloads as an mvtune-layout file.
    assert load_config(None, base=yaml.safe_load(dump_config(cfg))) == cfg


def test_users_yaml_reports_missing_paths_up_front(user_yaml):
    with pytest.raises(TrainConfigError) as err:
        check_config(load_config(user_yaml))
    message = str(err.value)
    for key in ("model.base", "model.vae", "model.adapter", "data.root", "data.scene_list", "data.captions"):
        assert key in message


def test_unknown_keys_name_the_closest_valid_one(tmp_path, user_yaml):
    with pytest.raises(TrainConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(user_yaml, ["optim.lrr=1e-4"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x", "heigth": 64}, "stratgy": "lora"}))
    with pytest.raises(TrainConfigError) as err:
        load_config(path)
    assert "'data.heigth' (did you mean 'data.height'?)" in str(err.value)
    assert "'stratgy' (did you mean 'strategy'?)" in str(err.value)
    bad = yaml.safe_load(USER_YAML.read_text()) if USER_YAML.is_file() else {"system": {}}
    bad["system"]["prompt_drop_prb"] = 0.2
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TrainConfigError, match="did you mean 'system.prompt_drop_prob'"):
        load_config(path)


def test_interpolation_and_typed_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "ds", "height": 128, "width": "${data.height}"},
                                    "output": {"name": "run-${data.height}px"}}))
    cfg = load_config(path, ["optim.betas=[0.9, 0.99]", "ema.enabled=true", "prior.ratio=0.5"])
    assert cfg.data.width == 128 and cfg.output.name == "run-128px"
    assert cfg.optim.betas == (0.9, 0.99) and cfg.ema.enabled and cfg.prior.ratio == 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.cache_latents=true", "data.background=random"], "cache_latents"),
        (["strategy=lora"], "needs model.adapter"),
        (["data.height=100", "data.width=100"], "divisible by 32"),
        (["trainer.max_epochs=null"], "never ends"),
        (["prior.ratio=1.0"], "prior.ratio"),
        (["strategy=dreambooth"], "strategy"),
    ],
)
def test_impossible_combinations_are_refused(overrides, message):
    with pytest.raises(TrainConfigError, match=message):
        load_config(None, overrides, base={"data": {"root": "ds"}})


def test_users_view_mistake_is_refused_on_ortho10view(ducks, user_yaml):
    cfg = load_config(user_yaml, dataset_overrides(ducks))
    with pytest.raises(TrainConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert "view 0004 is fed as the top view" in message and "view 0005 is fed as the bottom view" in message
    assert "azimuth 45.00 deg, elevation 0.00 deg" in message  # the angle found
    assert 'fix: use image_names ["0000", "0001", "0002", "0003", "0008", "0009"]' in message
    check_config(load_config(user_yaml, dataset_overrides(ducks) + ['data.image_names=["0000","0001","0002","0003","0008","0009"]']))
    check_config(load_config(user_yaml, dataset_overrides(ducks) + ["data.image_names=null"]))


def test_users_view_order_is_accepted_where_0004_0005_are_top_bottom(ducks, user_yaml, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(ducks, swapped)
    for meta_path in swapped.glob("*/*/meta.json"):
        folder = meta_path.parent
        meta = json.loads(meta_path.read_text())
        swap = {"0004": "0008", "0008": "0004", "0005": "0009", "0009": "0005"}
        for loc in meta["locations"]:
            loc["index"] = swap.get(loc["index"], loc["index"])
        meta_path.write_text(json.dumps(meta))
        for a, b in (("0004", "0008"), ("0005", "0009")):
            for f in folder.glob(f"*_{a}.*"):
                tmp = f.with_name(f.name.replace(a, "tmp"))
                f.rename(tmp)
            for f in folder.glob(f"*_{b}.*"):
                f.rename(f.with_name(f.name.replace(b, a)))
            for f in folder.glob("*_tmp.*"):
                f.rename(f.with_name(f.name.replace("tmp", b)))
    check_config(load_config(user_yaml, dataset_overrides(swapped)))


def test_scheduler_whose_milestone_cuts_the_warmup_is_refused(tmp_path, user_yaml):
    config = yaml.safe_load(user_yaml.read_text())
    assert load_config(user_yaml).optim.warmup_steps == 2000
    config["system"]["scheduler"]["milestones"] = [500]  # switches to constant before the warm-up reaches 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TrainConfigError, match="linear warm-up then constant"):
        load_config(path)


# ---- MV-Adapter's published configs -------------------------------------------------------------------------
# The key structure of each training config in MV-Adapter's repository (configs/geometry-guidance/*.yaml,
# configs/view-guidance/*.yaml), written out here as data; values are the published ones where mvtune reads them.

_TEXT_SDXL = "mvadapter.systems.mvadapter_text_sdxl.MVAdapterTextSDXLSystem"
_ROW_COL = "mvadapter.models.attention_processor.DecoupledMVRowColSelfAttnProcessor2_0"
_ROW = "mvadapter.models.attention_processor.DecoupledMVRowSelfAttnProcessor2_0"


def published_config(kind: str) -> dict:
    """kind: tg2mv_sdxl, ig2mv_sdxl, ig2mv_partialimg_sdxl, t2mv_sdxl, t2mv_sd21, i2mv_sdxl, i2mv_sd21,
    i2mv_sdxl_aug_quantity."""
    variant, base = kind.split("_")[0], kind.split("_")[-1]
    geometry = variant in ("tg2mv", "ig2mv")
    image = variant in ("ig2mv", "i2mv")
    sdxl = base == "sdxl"
    size = 768 if sdxl else 512
    data = {
        "root_dir": "data/texture_ortho10view_easylight_objaverse",
        "scene_list": "data/objaverse_list_6w.json",
        "background_color": "gray",
        "image_names": ["0000", "0001", "0002", "0003", "0008", "0009"] if geometry
        else ["0000", "0004", "0001", "0002", "0003", "0005"],
        "image_modality": "color",
        "num_views": 6,
        "prompt_db_path": "data/objaverse_short_captions.json",
        "return_prompt": True,
        "projection_type": "ORTHO",
    }
    if geometry:
        data.update(source_image_modality=["position", "normal"], position_offset=0.5, position_scale=1.0)
    else:
        data.update(source_image_modality=["plucker"], plucker_offset=1.0, plucker_scale=2.0)
    if "aug_quantity" in kind:
        data["random_view_list"] = [[0, 1, 2, 3, 4, 5], [0, 2, 3, 4], [0, 2, 3], [0, 3]]
    if image:
        data.update(reference_root_dir=["data/texture_rand_easylight_objaverse"],
                    reference_scene_list=["data/objaverse_list_6w.json"], reference_image_modality="color",
                    reference_image_names=["0000", "0001", "0002", "0003", "0004"])
        if "partialimg" in kind:
            data["reference_mask_aug"] = True
    data.update(train_indices=[0, -8], val_indices=[-8, None], test_indices=[-8, None], height=size, width=size,
                batch_size=1, num_workers=16)
    system_module = f"mvadapter_{'image' if image else 'text'}_{'sdxl' if sdxl else 'sd'}"
    system_class = f"MVAdapter{'Image' if image else 'Text'}{'SDXL' if sdxl else 'SD'}System"
    return {
        "name": variant,
        "tag": f"r{size}-ortho-nv6-{variant}-{base}",
        "exp_root_dir": "outputs",
        "seed": 42,
        "data_cls": "mvadapter.data.multiview.MultiviewDataModule",
        "data": data,
        "system_cls": f"mvadapter.systems.{system_module}.{system_class}",
        "system": {
            "check_train_every_n_steps": 1000,
            "cleanup_after_validation_step": True,
            "cleanup_after_test_step": True,
            "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0" if sdxl
            else "stabilityai/stable-diffusion-2-1-base",
            "pretrained_vae_name_or_path": "madebyollin/sdxl-vae-fp16-fix" if sdxl else None,
            "pretrained_adapter_name_or_path": None,
            "init_adapter_kwargs": {
                "self_attn_processor": _ROW_COL if geometry else _ROW,
                "cond_in_channels": 6,
                "copy_attn_weights": True,
                "zero_init_module_keys": ["to_out_mv", "to_out_ref"] if image else ["to_out_mv"],
            },
            "train_cond_encoder": True,
            "trainable_modules": ["_mv", "_ref"] if image else ["_mv"],
            "prompt_drop_prob": 0.1,
            "image_drop_prob": 0.1,
            "cond_drop_prob": 0.1,
            "shift_noise": True,
            "shift_noise_mode": "interpolated",
            "shift_noise_scale": 8,
            "eval_seed": 42,
            "eval_num_inference_steps": 30,
            "eval_guidance_scale": 3.0,
            "eval_height": "${data.height}",
            "eval_width": "${data.width}",
            "optimizer": {
                "name": "AdamW",
                "args": {"lr": 5e-5, "betas": [0.9, 0.999], "weight_decay": 0.01},
                "params": {"cond_encoder": {"lr": 5e-5}, "unet": {"lr": 5e-5}},
            },
            "scheduler": {
                "name": "SequentialLR",
                "interval": "step",
                "schedulers": [
                    {"name": "LinearLR", "interval": "step",
                     "args": {"start_factor": 1e-6, "end_factor": 1.0, "total_iters": 2000}},
                    {"name": "ConstantLR", "interval": "step", "args": {"factor": 1.0, "total_iters": 9999999}},
                ],
                "milestones": [2000],
            },
        },
        "trainer": {
            "max_epochs": 10 if not (image and not sdxl) else 5,
            "log_every_n_steps": 10,
            "num_sanity_val_steps": 1,
            "val_check_interval": 2000,
            "enable_progress_bar": True,
            "precision": "bf16-mixed",
            "gradient_clip_val": 1.0,
            "strategy": "ddp",
            "accumulate_grad_batches": 1,
        },
        "checkpoint": {"save_last": True, "save_top_k": -1, "every_n_epochs": 9999},
    }


def write_published(tmp_path: Path, kind: str, **data_changes) -> Path:
    raw = published_config(kind)
    raw["data"].update(data_changes)
    path = tmp_path / f"mvadapter_{kind}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def long_scene_list(ds: Path, tmp_path: Path) -> Path:
    """The ducks' ids repeated to 10 entries, so the published slices [0, -8] / [-8, null] are not empty."""
    ids = json.loads((ds / "scene_list.json").read_text())
    path = tmp_path / "scene_list_10.json"
    path.write_text(json.dumps((ids * 2)[:10]))
    return path


def path_overrides(ds: Path, scene_list: Path) -> list[str]:
    return [f"data.root={ds}", f"data.scene_list={scene_list}", f"data.captions={ds / 'captions.json'}",
            "model.base=tiny", "model.vae=null"]


@pytest.mark.parametrize("kind, variant", [("tg2mv_sdxl", "tg2mv"), ("t2mv_sdxl", "t2mv")])
def test_published_sdxl_configs_load_and_check_with_only_paths_overridden(kind, variant, ducks, tmp_path):
    path = write_published(tmp_path, kind)
    cfg = load_config(path, path_overrides(ducks, long_scene_list(ducks, tmp_path)))
    check_config(cfg)  # paths, splits, and the published image_names against the dataset's poses
    assert cfg.model.variant == variant and cfg.trainer.seed == 42
    assert cfg.output.dir == Path("outputs") / variant and cfg.output.tag == f"r768-ortho-nv6-{variant}-sdxl"
    assert cfg.data.height == 768 and cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "bf16-mixed"


def test_published_config_names_the_run_folder_from_tag(tmp_path, monkeypatch):
    from mvtune.train.run import resolve_resume

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("MVTUNE_RUN_NAME", raising=False)
    cfg = load_config(write_published(tmp_path, "t2mv_sdxl"))
    run_dir, _ = resolve_resume(cfg, cfg.output.tag, None)
    assert run_dir.parent == Path("outputs/t2mv") and run_dir.name.startswith("r768-ortho-nv6-t2mv-sdxl-")


@pytest.mark.parametrize("kind, words", [
    ("ig2mv_sdxl", ["ig2mv", "image-guided"]),
    ("ig2mv_partialimg_sdxl", ["ig2mv", "image-guided"]),
    ("i2mv_sdxl", ["i2mv", "image-guided"]),
    ("i2mv_sdxl_aug_quantity", ["i2mv", "image-guided"]),
    ("t2mv_sd21", ["t2mv", "SD2.1", "stable-diffusion-2-1-base"]),
    ("i2mv_sd21", ["i2mv", "SD2.1", "image-guided"]),
])
def test_unsupported_published_configs_are_refused_in_one_line(kind, words, tmp_path):
    with pytest.raises(TrainConfigError) as err:
        load_config(write_published(tmp_path, kind))
    message = str(err.value)
    assert "\n" not in message and "unknown" not in message and "not support" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("key, value", [("plucker_offset", 0.5), ("plucker_scale", 1.0), ("position_offset", 0.0)])
def test_condition_encodings_other_than_the_published_ones_are_refused(key, value, tmp_path):
    kind = "t2mv_sdxl" if key.startswith("plucker") else "tg2mv_sdxl"
    with pytest.raises(TrainConfigError, match=rf"data\.{key}={value}"):
        load_config(write_published(tmp_path, kind, **{key: value}))


def test_condition_maps_must_match_the_processor(tmp_path):
    with pytest.raises(TrainConfigError, match="source_image_modality.*t2mv"):
        load_config(write_published(tmp_path, "t2mv_sdxl", source_image_modality=["position", "normal"]))


def test_all_config_problems_are_listed_at_once(tmp_path):
    """Unknown keys, type/range errors, impossible combinations and missing paths in one message."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "strategy": "lora",  # needs model.adapter: a combination, normally hidden by the field errors
        "data": {"root": str(tmp_path / "nowhere"), "heigth": 64, "batch_size": 0},
        "optim": {"lr": "fast"},
        "model": {"vae": str(tmp_path / "no-vae")},
    }))
    with pytest.raises(TrainConfigError) as err:
        load_config(path)
    message = str(err.value)
    for part in ("'data.heigth' (did you mean 'data.height'?)", "data.batch_size", "optim.lr",
                 "needs model.adapter", f"data.root {tmp_path / 'nowhere'} does not exist", "model.vae"):
        assert part in message, (part, message)


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  root: ds\n  height: [64\n")
    with pytest.raises(TrainConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line " in str(err.value) and "<unicode string>" not in str(err.value)


def test_an_empty_train_split_says_why(ducks, tmp_path):
    cfg = load_config(write_published(tmp_path, "tg2mv_sdxl"), [
        f"data.root={ducks}", f"data.scene_list={ducks / 'scene_list.json'}",
        f"data.captions={ducks / 'captions.json'}", "model.base=tiny", "model.vae=null"])
    with pytest.raises(TrainConfigError) as err:
        check_config(cfg)
    assert "data.train_indices [0, -8] selects nothing from the 7 entries" in str(err.value)


def test_the_example_config_loads_and_checks(ducks):
    """examples/train-tg2mv.yaml, linked from docs/training.md, runs with only its paths overridden."""
    example = Path(__file__).resolve().parents[1] / "examples" / "train-tg2mv.yaml"
    cfg = load_config(example, [f"data.root={ducks}", "model.base=tiny"])
    check_config(cfg)
    assert cfg.model.variant == "tg2mv" and cfg.output.tag == "tg2mv-ducks" and cfg.trainer.max_steps == 5000


@pytest.mark.slow
def test_published_tg2mv_config_trains(ducks, tmp_path, monkeypatch):
    """The published file as is (ddp, bf16-mixed, workers) with its paths set, and only size/length cut down."""
    from mvtune.train.run import train_from_cli

    monkeypatch.chdir(tmp_path)  # exp_root_dir "outputs" is relative to the working directory, as upstream
    path = write_published(tmp_path, "tg2mv_sdxl")
    run = train_from_cli(path, path_overrides(ducks, long_scene_list(ducks, tmp_path)) + [
        "data.height=64", "data.width=64", "trainer.max_steps=2", "data.num_workers=1", "validation.sanity_steps=0"],
        resume=None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2
    assert run.parent == Path("outputs/tg2mv") and (run / "export" / "mvadapter_tg2mv_sdxl.safetensors").is_file()
