"""Dataset cards: what a rendered dataset holds, where it came from, and whether it is fit to train on.

`mvtune dataset card DS` writes ``card.json`` (machine-readable) and ``card.md`` (for people, with a contact
sheet of front views, ``card_front_views.png``): counts per concept, generator, licence and split, caption length
and vocabulary, render settings, the last validation's status and the near-duplicate groups.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from mvtune.data.splits import SPLIT_FILES, read_manifest
from mvtune.data.validate import read_scene_list, scene_dir, scene_id

CARD_JSON, CARD_MD, CARD_GRID = "card.json", "card.md", "card_front_views.png"
_TOP_WORDS = 20
_GRID_MAX = 64


class CardError(Exception):
    """A card cannot be made (no scene list or manifest); the message names the file."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def caption_stats(captions: list[str]) -> dict:
    """Length in words (min, median, mean, max), vocabulary size and the most common words."""
    words = [re.findall(r"[a-z0-9']+", c.lower()) for c in captions]
    lengths = np.array([len(w) for w in words] or [0])
    vocabulary = Counter(word for ws in words for word in ws)
    return {
        "count": len(captions),
        "empty": sum(1 for c in captions if not c.strip()),
        "unique": len(set(captions)),
        "words": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                  "mean": round(float(lengths.mean()), 2), "max": int(lengths.max())},
        "vocabulary": len(vocabulary),
        "top_words": [[word, n] for word, n in vocabulary.most_common(_TOP_WORDS)],
    }


def _licence_id(recorded) -> str:
    from mvtune.licences import LicenceError, get_licence

    try:
        return get_licence(recorded).id
    except LicenceError:
        return f"unrecognised: {recorded}"


def build_card(root: str | Path, near_duplicates: bool = True) -> dict:
    """The card of a dataset as a JSON-able dict (computes near-duplicate fingerprints, cached in the dataset)."""
    root = Path(root)
    try:
        ids = [scene_id(e) for e in read_scene_list(root / "scene_list.json")]
    except (OSError, ValueError) as exc:
        raise CardError(
            f"{root}: cannot read scene_list.json ({exc}); is this a dataset written by `mvtune render`?"
        ) from None
    try:
        manifest = read_manifest(root)
    except Exception as exc:  # SplitError: the message names the file
        raise CardError(str(exc)) from None
    records = [manifest.get(i) or {} for i in ids]
    split_of = {}
    for name, file in SPLIT_FILES.items():
        if (root / file).exists():
            for object_id in map(scene_id, read_scene_list(root / file)):
                split_of[object_id] = name
    captions_db = _read_json(root / "captions.json") or {}
    captions = [c if isinstance(c, str) else " ".join(c) for c in (captions_db.get(i, "") for i in ids)]

    from mvtune.licences import LICENCES

    licences = Counter(_licence_id(r.get("licence", r.get("license"))) for r in records)
    training_use = {lic: (LICENCES[lic].train_models if lic in LICENCES else False) for lic in licences}
    validation = _read_json(root / "validation_report.json")
    card = {
        "root": str(root),
        "objects": len(ids),
        "counts": {
            "concept": dict(Counter(r.get("concept") or "(none)" for r in records).most_common()),
            "generator": dict(Counter(r.get("generator") or "(none)" for r in records).most_common()),
            "licence": dict(licences.most_common()),
            "split": dict(Counter(split_of.get(i, "(unsplit)") for i in ids).most_common()),
        },
        "licences_allow_training": training_use,
        "captions": caption_stats(captions),
        "render": _read_json(root / "render_config.json"),
        "validation": (
            {"status": "ok" if validation.get("ok") else "failed", "counts": validation.get("counts", {}),
             "variant": validation.get("variant")}
            if isinstance(validation, dict) else {"status": "not validated (run `mvtune dataset validate`)"}
        ),
    }
    if near_duplicates:
        from mvtune.data.neardup import fingerprint_dataset, near_duplicate_groups

        prints, problems = fingerprint_dataset(root, ids, manifest)
        groups = near_duplicate_groups(prints)
        card["near_duplicates"] = {
            "groups": [{"members": g, "splits": sorted({split_of.get(i, "(unsplit)") for i in g})} for g in groups],
            "objects_in_groups": sum(len(g) for g in groups),
            "problems": problems,
        }
    return card


def _contact_sheet(root: Path, ids: list[str], out: Path) -> bool:
    """Front views of up to 64 objects in one grid image; False when none could be read."""
    from PIL import Image

    from mvtune.storage import atomic_write

    tiles = []
    for object_id in ids[:_GRID_MAX]:
        path = scene_dir(root, object_id) / "color_0000.webp"
        try:
            image = Image.open(path).convert("RGBA")
        except OSError:
            continue
        tile = Image.new("RGBA", image.size, (255, 255, 255, 255))
        tile.alpha_composite(image)
        tiles.append(tile.convert("RGB").resize((96, 96)))
    if not tiles:
        return False
    columns = min(8, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * 96, rows * 96), (255, 255, 255))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * 96, (k // columns) * 96))
    atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG"))
    return True


def _table(counts: dict) -> str:
    return "\n".join(["| value | objects |", "|---|---:|", *(f"| {k} | {v} |" for k, v in counts.items())])


def render_markdown(card: dict, grid: str | None) -> str:
    caps = card["captions"]
    lines = [f"# Dataset card: {card['root']}", "", f"{card['objects']} objects.", ""]
    if grid:
        lines += [f"![front views]({grid})", ""]
    sections = (("concept", "Concepts"), ("generator", "Generators"), ("licence", "Licences"), ("split", "Splits"))
    for key, title in sections:
        lines += [f"## {title}", "", _table(card["counts"][key]), ""]
    refused = [lic for lic, ok in card["licences_allow_training"].items() if not ok]
    if refused:
        lines += [f"Licences that do not allow training use (refused or warned about by `mvtune train`): "
                  f"{', '.join(refused)}.", ""]
    words = caps["words"]
    lines += [
        "## Captions", "",
        f"{caps['count']} captions ({caps['unique']} unique, {caps['empty']} empty); words per caption min "
        f"{words['min']}, median {words['median']:g}, mean {words['mean']:g}, max {words['max']}; vocabulary "
        f"{caps['vocabulary']} words.", "",
        "Most common words: " + ", ".join(f"{w} ({n})" for w, n in caps["top_words"]), "",
        "## Render settings", "",
    ]
    render = card.get("render") or {}
    lines += [f"- {k}: {v}" for k, v in render.items() if k not in ("input", "out_dir")] or ["(no render_config.json)"]
    lines += ["", "## Validation", "", f"Status: {card['validation']['status']}", ""]
    for code, count in (card["validation"].get("counts") or {}).items():
        lines.append(f"- {code}: {count}")
    near = card.get("near_duplicates")
    if near is not None:
        lines += ["", "## Near-duplicate groups", "",
                  f"{len(near['groups'])} groups holding {near['objects_in_groups']} objects "
                  "(same front/top render hashes and geometry).", ""]
        for group in near["groups"][:50]:
            members = ", ".join(group["members"][:8]) + (", ..." if len(group["members"]) > 8 else "")
            flag = " **in several splits**" if len(group["splits"]) > 1 else ""
            lines.append(f"- {len(group['members'])} objects ({', '.join(group['splits'])}){flag}: {members}")
        if len(near["groups"]) > 50:
            lines.append(f"- ... {len(near['groups']) - 50} more in card.json")
    return "\n".join(lines) + "\n"


def write_card(root: str | Path, near_duplicates: bool = True) -> dict:
    """Write card.json, card.md and the front-view contact sheet into the dataset; returns the card."""
    from mvtune.storage import atomic_write, write_json

    root = Path(root)
    card = build_card(root, near_duplicates)
    ids = [scene_id(e) for e in read_scene_list(root / "scene_list.json")]
    grid = CARD_GRID if _contact_sheet(root, ids, root / CARD_GRID) else None
    card["contact_sheet"] = grid
    write_json(root / CARD_JSON, card)
    text = render_markdown(card, grid)
    atomic_write(root / CARD_MD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return card
