"""The one reader of typed config files: unknown keys everywhere in the tree, YAML errors that name the file."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from mvtune.config_files import merge, parse_overrides, read_yaml_mapping, unknown_keys


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    scale: float = 1.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 1


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: _Section | None = None
    entries: list[_Entry] = []
    named: dict[str, _Entry] = {}
    tags: list[str] = []


class _Problem(Exception):
    pass


def test_unknown_keys_are_found_in_sections_lists_and_named_entries():
    tree = {
        "section": {"stpes": 3},
        "entries": [{"path": "a"}, {"path": "b", "scal": 2}],
        "named": {"first": {"pth": "c"}},
        "tags": ["x"],
        "tagz": [],
    }
    assert unknown_keys(tree, _Root) == [
        "unknown key 'section.stpes' (did you mean 'section.steps'?)",
        "unknown key 'entries.1.scal' (did you mean 'entries.1.scale'?)",
        "unknown key 'named.first.pth' (did you mean 'named.first.path'?)",
        "unknown key 'tagz' (did you mean 'tags'?)",
    ]
    assert unknown_keys({"section": {"steps": 2}, "entries": [{"path": "a"}]}, _Root) == []


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [2\n")
    with pytest.raises(_Problem) as err:
        read_yaml_mapping(bad, "suite file", _Problem)
    text = str(err.value)
    assert str(bad) in text and "line " in text and "<unicode string>" not in text
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(_Problem, match="must hold a mapping"):
        read_yaml_mapping(listing, "suite file", _Problem)
    with pytest.raises(_Problem, match="does not exist"):
        read_yaml_mapping(tmp_path / "missing.yaml", "suite file", _Problem)


def test_overrides_merge_into_sections():
    tree = merge({"section": {"steps": 1}, "tags": ["a"]}, parse_overrides(["section.steps=4", "tags=[b, c]"]))
    assert tree == {"section": {"steps": 4}, "tags": ["b", "c"]}
    with pytest.raises(_Problem, match="not key=value"):
        parse_overrides(["steps"], _Problem)
