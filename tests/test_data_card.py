"""Dataset cards on the rendered duck dataset: counts, captions, render settings, validation, near-duplicates."""

import json
import shutil

from PIL import Image

from mvtune.data.card import caption_stats, write_card


def test_caption_stats():
    stats = caption_stats(["a yellow duck", "a red duck wearing a hat", ""])
    assert stats["count"] == 3 and stats["empty"] == 1 and stats["unique"] == 3
    assert stats["words"] == {"min": 0, "median": 3.0, "mean": 3.0, "max": 6}
    assert stats["vocabulary"] == 6 and stats["top_words"][0] == ["a", 3]


def test_card_of_the_duck_dataset(ducks, tmp_path, cli):
    from mvtune.data.validate import validate_dataset

    root = tmp_path / "ds"
    shutil.copytree(ducks, root)
    card = write_card(root)
    assert card["objects"] == 7
    assert card["counts"]["licence"] == {"CC0-1.0": 7}  # the procedural samples' old licence string, normalised
    assert card["counts"]["concept"]["rubber duck"] == 4 and card["counts"]["concept"]["firefighter duck"] == 1
    assert sum(card["counts"]["split"].values()) == 7 and set(card["counts"]["split"]) <= {"train", "val", "test"}
    assert card["captions"]["count"] == 7 and card["captions"]["empty"] == 0
    assert card["render"]["resolution"] == 64 and card["render"]["layout"] == "ortho10"
    assert card["validation"]["status"].startswith("not validated")
    # the four plain ducks are one body in four colours: one near-duplicate group
    groups = [set(g["members"]) for g in card["near_duplicates"]["groups"]]
    assert groups == [{"duck_yellow", "duck_blue", "duck_red", "duck_green_vertex_colors"}]
    assert json.loads((root / "card.json").read_text()) == card
    text = (root / "card.md").read_text()
    assert "## Licences" in text and "| CC0-1.0 | 7 |" in text and "## Near-duplicate groups" in text
    assert "![front views](card_front_views.png)" in text
    assert Image.open(root / "card_front_views.png").size == (7 * 96, 96)

    result = validate_dataset(root, "tg2mv")
    (root / "validation_report.json").write_text(json.dumps(result.to_json()))
    out = cli("dataset", "card", root)
    assert "validation: ok" in out.stderr and "1 near-duplicate groups" in out.stderr
    assert json.loads((root / "card.json").read_text())["validation"]["status"] == "ok"


def test_card_refuses_a_folder_that_is_no_dataset(tmp_path, cli):
    result = cli("dataset", "card", tmp_path, expect=2)
    assert "scene_list.json" in result.stderr and "Traceback" not in result.stderr
