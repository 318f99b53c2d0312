"""Leak-free train/val/test splits: every render and augmented copy of one source mesh stays in one split.

Objects are grouped by the provenance manifest (``manifest.json`` written by ``mvtune render``): objects that
share a ``group``, a ``source_sha256`` or a ``parent`` chain are one group (union-find, so a copy whose
sidecar forgot its group still follows its parent). Groups are assigned whole, stratified by ``concept`` when
the manifest has it, by a seeded shuffle. Near-duplicate objects (``mvtune.data.neardup``: same render hashes
and geometry) join one group too, so copies whose provenance was lost still share a split. ``check_leakage``
re-derives the groups and reports any group found in two split files; ``near_duplicate_leaks`` reports
near-duplicate pairs across splits.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mvtune.data.validate import read_scene_list, scene_id

SPLIT_FILES = {"train": "split_train.json", "val": "split_val.json", "test": "split_test.json"}
SPLIT_REPORT = "split_report.json"
MANIFEST = "manifest.json"


class SplitError(Exception):
    """Splits cannot be made or checked; the message names the file and what to do."""


def read_manifest(root: Path) -> dict[str, dict]:
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SplitError(f"{path} is missing; splits need the provenance manifest written by `mvtune render`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SplitError(f"{path} cannot be read: {exc}") from None
    objects = data.get("objects") if isinstance(data, dict) else None
    if not isinstance(objects, dict):
        raise SplitError(f"{path} must hold {{'objects': {{id: record}}}}")
    return objects


def source_groups(ids: list[str], manifest: dict[str, dict], linked: list[list[str]] = ()) -> dict[str, str]:
    """id -> group label; ids linked by group, source hash or parent, or listed together in ``linked`` (the
    near-duplicate groups), end up with the same label."""
    parent_of: dict[str, str] = {}

    def find(x: str) -> str:
        while parent_of.setdefault(x, x) != x:
            parent_of[x] = parent_of[parent_of[x]]
            x = parent_of[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent_of[max(ra, rb)] = min(ra, rb)

    for object_id in ids:
        node = f"id:{object_id}"
        find(node)
        record = manifest.get(object_id) or {}
        for key, prefix in (("group", "group:"), ("source_sha256", "sha:"), ("parent", "id:")):
            if record.get(key):
                union(node, prefix + str(record[key]))
    for members in linked:
        for other in members[1:]:
            union(f"id:{members[0]}", f"id:{other}")
    return {object_id: find(f"id:{object_id}") for object_id in ids}


def split_dataset(
    root: str | Path,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    scene_list: str | Path | None = None,
    near_duplicates: bool = True,
) -> dict:
    """Write ``split_train.json``, ``split_val.json``, ``split_test.json`` (JSON arrays of ids) and
    ``split_report.json`` next to the dataset; returns the report (counts, groups, concepts, near-duplicate
    groups, files). ``near_duplicates`` fingerprints the renders (cached in ``near_duplicates.json``)."""
    from mvtune.storage import write_json

    root = Path(root)
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise SplitError(f"val={val} and test={test} must be fractions in [0, 1) that sum to less than 1")
    list_path = Path(scene_list) if scene_list else root / "scene_list.json"
    try:
        ids = [scene_id(e) for e in read_scene_list(list_path, root)]
    except (OSError, ValueError) as exc:
        raise SplitError(f"cannot read scene list {list_path}: {exc}") from None
    manifest = read_manifest(root)
    unknown = [i for i in ids if i not in manifest]
    near_groups, near_problems = _near_duplicate_groups(root, ids, manifest) if near_duplicates else ([], [])
    groups = source_groups(ids, manifest, near_groups)
    members: dict[str, list[str]] = defaultdict(list)
    for object_id in ids:
        members[groups[object_id]].append(object_id)

    # A group's stratum is its most common concept; groups without one form their own stratum.
    strata: dict[str, list[str]] = defaultdict(list)
    for group, objs in members.items():
        concepts = Counter((manifest.get(o) or {}).get("concept") or "" for o in objs)
        strata[concepts.most_common(1)[0][0]].append(group)

    rng = np.random.default_rng(seed)
    fractions = {"test": test, "val": val, "train": 1.0 - val - test}
    assigned: dict[str, list[str]] = {name: [] for name in SPLIT_FILES}
    # Deficits carry over from stratum to stratum: per-stratum rounding alone would give every small stratum's
    # remainder to the same split (many 5-object concepts at 10/10%: test 20%, val nothing).
    counts = dict.fromkeys(fractions, 0)
    for concept in sorted(strata):
        group_list = sorted(strata[concept])
        rng.shuffle(group_list)
        for group in group_list:
            # Give the group to the split furthest below its share so far, this group included (ties: test, val,
            # train); within a stratum this spreads its groups in proportion.
            seen = sum(counts.values()) + len(members[group])
            name = max(fractions, key=lambda n: fractions[n] * seen - counts[n])
            counts[name] += len(members[group])
            assigned[name].extend(members[group])

    order = {object_id: k for k, object_id in enumerate(ids)}
    files = {}
    for name, file in SPLIT_FILES.items():
        split_ids = sorted(assigned[name], key=order.__getitem__)
        write_json(root / file, split_ids)
        files[name] = str(root / file)
    report = {
        "root": str(root),
        "seed": seed,
        "fractions": fractions,
        "objects": {name: len(assigned[name]) for name in SPLIT_FILES},
        "groups": {name: len({groups[o] for o in assigned[name]}) for name in SPLIT_FILES},
        "concepts": {
            name: dict(Counter((manifest.get(o) or {}).get("concept") for o in assigned[name])) for name in SPLIT_FILES
        },
        "not_in_manifest": unknown,
        "near_duplicate_groups": near_groups,
        "near_duplicate_problems": near_problems,
        "files": files,
    }
    write_json(root / SPLIT_REPORT, report)
    return report


def _near_duplicate_groups(root: Path, ids: list[str], manifest: dict, write_cache: bool = True):
    from mvtune.data.neardup import fingerprint_dataset, near_duplicate_groups

    prints, problems = fingerprint_dataset(root, ids, manifest, write_cache=write_cache)
    return near_duplicate_groups(prints), problems


def near_duplicate_leaks(root: str | Path) -> list[str]:
    """Near-duplicate pairs whose objects sit in different split files, one message per group."""
    from mvtune.data.neardup import fingerprint_dataset, near_duplicate_pairs

    root = Path(root)
    split_of: dict[str, str] = {}
    for name, file in SPLIT_FILES.items():
        try:
            for object_id in (scene_id(e) for e in read_scene_list(root / file)):
                split_of.setdefault(object_id, name)
        except (OSError, ValueError):
            continue  # a missing or unreadable split file is check_leakage's to report
    if not split_of:
        return []
    try:
        manifest = read_manifest(root)
    except SplitError:
        manifest = {}
    prints, _ = fingerprint_dataset(root, list(split_of), manifest, write_cache=False)
    crossing = [(a, b) for a, b, _, _ in near_duplicate_pairs(prints) if split_of[a] != split_of[b]]
    by_group: dict[str, list[tuple[str, str]]] = defaultdict(list)
    label = source_groups(list(prints), {}, [[a, b] for a, b in crossing])
    for a, b in crossing:
        by_group[label[a]].append((a, b))
    problems = []
    for pairs in by_group.values():
        shown = ", ".join(f"{a} ({split_of[a]}) ~ {b} ({split_of[b]})" for a, b in pairs[:3])
        problems.append(
            f"{len(pairs)} near-duplicate pair(s) across splits, e.g. {shown}: they are copies of one mesh by "
            f"their renders and geometry; rerun `mvtune dataset split {root}` (it keeps near-duplicates together)"
        )
    return problems


def check_leakage(root: str | Path) -> list[str]:
    """Problems with the split files of ``root``: a source group (or an id) in more than one split."""
    root = Path(root)
    present = {name: root / file for name, file in SPLIT_FILES.items() if (root / file).exists()}
    if not present:
        return []
    try:
        manifest = read_manifest(root)
    except SplitError as exc:
        return [f"cannot check split leakage: {exc}"]
    split_of: dict[str, list[str]] = defaultdict(list)
    problems = []
    for name, path in present.items():
        try:
            for object_id in (scene_id(e) for e in read_scene_list(path, root)):
                split_of[object_id].append(name)
        except (OSError, ValueError) as exc:
            problems.append(f"split file {path} cannot be read: {exc}")
    ids = list(split_of)
    for object_id, names in split_of.items():
        if len(names) > 1:
            problems.append(f"{object_id} is in several splits: {', '.join(names)}")
    groups = source_groups(ids, manifest)
    by_group: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for object_id, names in split_of.items():
        for name in names:
            by_group[groups[object_id]][name].append(object_id)
    for group, splits in by_group.items():
        if len(splits) > 1:
            where = "; ".join(f"{name}: {', '.join(sorted(objs)[:5])}" for name, objs in sorted(splits.items()))
            problems.append(
                f"source group {group.split(':', 1)[1]} is in {len(splits)} splits ({where}); renders and augmented "
                f"copies of one source must share a split: rerun `mvtune dataset split {root}`"
            )
    return problems
