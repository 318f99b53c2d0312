"""Prompt adherence during training: the `evaluation` block, eval/ metrics next to the losses, the best step."""

import csv
import json

import numpy as np
import pytest

from evaluation_data import tiny_clip
from mvtune.train.config import TrainConfigError, check_config, load_config
from mvtune.train.evaluation import EvaluationConfig, TrainingEvaluator

BLOCK = {
    "concepts": [{"name": "firefighter", "prompts": ["a duck as a firefighter"],
                  "attributes": {"helmet": {"positive": "a red helmet", "contrast": "a bare head"}}}],
    "generic": ["a duck made of polished gold"],
}


def test_evaluation_block_is_typed_and_checked(tmp_path, ducks):
    base = {"data": {"root": str(ducks)}, "output": {"dir": str(tmp_path)}}
    with pytest.raises(TrainConfigError, match="evaluation.clp' \\(did you mean 'evaluation.clip'"):
        load_config(None, base={**base, "evaluation": {"clp": ["x"]}})
    cfg = load_config(None, base={**base, "evaluation": {**BLOCK, "clip": [str(tmp_path / "missing")]}})
    with pytest.raises(TrainConfigError, match="evaluation.clip: .*missing does not exist"):
        check_config(cfg)
    assert not load_config(None, base=base).evaluation.enabled


def test_evaluator_scores_forgetting_from_its_first_validation_and_tracks_the_best(tmp_path):
    clip = tiny_clip(tmp_path / "clip")
    evaluator = TrainingEvaluator(EvaluationConfig(clip=[clip], best_metric="eval/clip_t", best_mode="max", **BLOCK))
    rng = np.random.default_rng(0)

    def sample(prompt, k):
        return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]

    first = evaluator.score(sample)
    assert set(first) == {"eval/clip_t", "eval/attribute_presence", "eval/generic_clip_t", "eval/forgetting"}
    assert first["eval/forgetting"] == 0.0 and 0.0 <= first["eval/attribute_presence"] <= 1.0
    second = evaluator.score(sample)
    assert second["eval/forgetting"] == pytest.approx(first["eval/generic_clip_t"] - second["eval/generic_clip_t"])
    assert evaluator.improved(first, 10) and evaluator.best["step"] == 10
    better = {"eval/clip_t": first["eval/clip_t"] + 1.0}
    assert not evaluator.improved({"eval/clip_t": first["eval/clip_t"] - 1.0}, 20)
    assert evaluator.improved(better, 30) and evaluator.best == {
        "metric": "eval/clip_t", "mode": "max", "value": better["eval/clip_t"], "step": 30}


def test_training_logs_eval_metrics_and_exports_the_best_step(ducks, tmp_path):
    from test_train_system import tiny_config

    from mvtune.train.run import train

    clip = tiny_clip(tmp_path / "clip")
    cfg = tiny_config(ducks, tmp_path / "out", trainer={"max_steps": 4},
                      validation={"every_n_steps": 2, "num_batches": 1, "num_inference_steps": 2, "sanity_steps": 1},
                      evaluation={**BLOCK, "clip": [str(clip)], "best_metric": "eval/clip_t", "best_mode": "max"})
    run = train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    best = summary["best"]
    assert best["metric"] == "eval/clip_t" and best["step"] in (2, 4)
    assert all(p.endswith(".safetensors") and "best" in p for p in best["exports"].values())
    rows = list(csv.DictReader(next(run.rglob("metrics.csv")).read_text().splitlines()))
    logged = [r for r in rows if r.get("eval/clip_t")]
    assert len(logged) == 2 and all(r.get("eval/forgetting") not in (None, "") for r in logged)
    assert any(r.get("val/loss") for r in rows)  # next to the losses
    assert list(run.rglob("events.out.tfevents*"))  # and in TensorBoard
