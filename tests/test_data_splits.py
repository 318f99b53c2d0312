"""Leak-free splits: groups stay whole, concepts are stratified, leakage is reported."""

import json
from pathlib import Path

import pytest

from mvtune.data.splits import SPLIT_FILES, SplitError, check_leakage, split_dataset


def write_index(root: Path, records: dict[str, dict]) -> Path:
    """Only the files splits read: scene list and manifest (no renders needed)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scene_list.json").write_text(json.dumps(list(records)))
    objects = {i: {"id": i, "source_sha256": r.get("sha", f"sha-{i}"), "group": r.get("group", r.get("sha", f"sha-{i}")),
                   "concept": r.get("concept"), "parent": r.get("parent")} for i, r in records.items()}
    (root / "manifest.json").write_text(json.dumps({"mvtune_version": "test", "objects": objects}))
    return root


def many_sources(n_sources=40, copies=3):
    records = {}
    for s in range(n_sources):
        concept = ["duck", "car", "chair", "lamp"][s % 4]
        records[f"src{s:02d}"] = {"sha": f"sha{s}", "concept": concept}
        for k in range(copies):
            # augmented copies: the writer copies the parent's group; one in three forgets it and has only parent
            rec = {"sha": f"aug{s}-{k}", "concept": concept, "parent": f"src{s:02d}"}
            if k != 2:
                rec["group"] = f"sha{s}"
            records[f"src{s:02d}_aug{k}"] = rec
    return records


def read_splits(root: Path) -> dict[str, list[str]]:
    return {name: json.loads((root / file).read_text()) for name, file in SPLIT_FILES.items()}


def test_groups_stay_whole_and_concepts_are_stratified(tmp_path):
    root = write_index(tmp_path / "ds", many_sources())
    report = split_dataset(root, val=0.1, test=0.2, seed=7)
    splits = read_splits(root)
    assert sorted(sum(splits.values(), [])) == sorted(json.loads((root / "scene_list.json").read_text()))
    for name, ids in splits.items():
        for object_id in ids:
            source = object_id.split("_")[0]
            family = {source, *(f"{source}_aug{k}" for k in range(3))}
            assert family <= set(ids), f"{object_id} separated from its family"
    assert report["objects"] == {"train": 112, "val": 16, "test": 32}
    for name in ("val", "test"):
        assert set(report["concepts"][name]) == {"duck", "car", "chair", "lamp"}
    assert check_leakage(root) == []
    assert split_dataset(root, val=0.1, test=0.2, seed=7)["objects"] == report["objects"]
    assert read_splits(root) == splits  # same seed, same files
    split_dataset(root, val=0.1, test=0.2, seed=8)
    assert read_splits(root) != splits


def test_leakage_is_reported(tmp_path):
    root = write_index(tmp_path / "ds", many_sources(8, 2))
    split_dataset(root, val=0.25, test=0.25, seed=0)
    splits = read_splits(root)
    moved = next(i for i in splits["train"] if "_aug1" in i)
    splits["train"].remove(moved)
    splits["test"].append(moved)
    (root / SPLIT_FILES["test"]).write_text(json.dumps(splits["test"]))
    (root / SPLIT_FILES["train"]).write_text(json.dumps(splits["train"]))
    problems = check_leakage(root)
    assert len(problems) == 1
    assert moved in problems[0] and "test" in problems[0] and "train" in problems[0]
    (root / SPLIT_FILES["val"]).write_text(json.dumps(splits["val"] + [moved]))
    assert any("several splits" in p for p in check_leakage(root))


def test_bad_arguments_and_missing_manifest(tmp_path):
    root = write_index(tmp_path / "ds", {"a": {}})
    with pytest.raises(SplitError, match="fractions"):
        split_dataset(root, val=0.6, test=0.5)
    (root / "manifest.json").unlink()
    with pytest.raises(SplitError, match="manifest.json is missing"):
        split_dataset(root)


def test_many_small_concepts_still_fill_val_and_test(tmp_path):
    """Per-concept rounding must not hand every small concept's remainder to the same split."""
    records = {f"c{c}_{k}": {"concept": f"concept{c}"} for c in range(10) for k in range(5)}
    report = split_dataset(write_index(tmp_path / "ds", records), val=0.1, test=0.1, seed=0)
    assert report["objects"] == {"train": 40, "val": 5, "test": 5}
    records = {f"c{c}_{k}": {"concept": f"concept{c}"} for c in range(20) for k in range(3)}
    report = split_dataset(write_index(tmp_path / "ds2", records), val=0.1, test=0.1, seed=0)
    assert report["objects"] == {"train": 48, "val": 6, "test": 6}
