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
    caplog.set_level("INFO", logger="mvtune.train.config")
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
