"""Typed config files read one way by every command (train configs, suites, experiments, concepts files).

YAML errors name the file and line (PyYAML's own text says `<unicode string>`), `key=value` overrides merge into
the tree, and unknown keys are listed all at once, each with the closest valid key, down through nested sections,
lists of entries and named entries.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


def yaml_problem(exc) -> str:
    """A YAML error as 'line L, column C: problem'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    return where + problem + (f" ({context})" if context else "")


def read_yaml_mapping(path: str | Path, what: str, error: type[Exception]) -> dict:
    """The mapping a YAML file holds; `error(...)` names `what` and the file for every way that can fail."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for 'a.b', creating sections on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str], error: type[Exception] = ValueError) -> dict:
    """`a.b=value` strings (value parsed as YAML) into a nested dict."""
    import yaml

    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise error(f"override {item!r} is not key=value (e.g. optim.lr=1e-5)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise error(f"override {item!r}: value is not valid YAML: {yaml_problem(exc)}") from None
        set_dotted(tree, key.strip(), value)
    return tree


def merge(base: dict, extra: dict) -> dict:
    """base with extra laid over it, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _shape(annotation) -> tuple[str, type[BaseModel]] | None:
    """How a field holds config models: ('model', M) for M or M | None, ('list', M), ('dict', M), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _shape(args[0])
    if origin in (Union, types.UnionType):
        return next((shape for shape in map(_shape, args) if shape is not None), None)
    if origin in (list, tuple) and args:
        inner = _shape(args[0])
        return ("list", inner[1]) if inner and inner[0] == "model" else None
    if origin is dict and len(args) == 2:
        inner = _shape(args[1])
        return ("dict", inner[1]) if inner and inner[0] == "model" else None
    return None


def section_fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Field name -> the nested section model it holds directly (None for leaves, lists and named entries)."""
    out = {}
    for name, info in model.model_fields.items():
        shape = _shape(info.annotation)
        out[name] = shape[1] if shape and shape[0] == "model" else None
    return out


def unknown_keys(tree: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of tree that model does not have, as 'unknown key 'a.b' (did you mean 'a.c'?)'."""
    problems = []
    fields = model.model_fields
    for key, value in tree.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid keys: {', '.join(fields)})"
            problems.append(f"unknown key '{prefix}{key}'{hint}")
            continue
        shape = _shape(fields[key].annotation)
        if shape is None:
            continue
        kind, sub = shape
        where = f"{prefix}{key}."
        if kind == "model" and isinstance(value, dict):
            problems += unknown_keys(value, sub, where)
        elif kind == "list" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    problems += unknown_keys(item, sub, f"{where}{i}.")
        elif kind == "dict" and isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, dict):
                    problems += unknown_keys(item, sub, f"{where}{name}.")
    return problems


def validation_problems(exc: ValidationError, root: str = "config", prefix: str = "") -> list[str]:
    """pydantic's errors as 'dotted.key: message' lines (keys under `prefix` for a nested section)."""
    return [
        f"{prefix}{'.'.join(str(p) for p in err['loc']) or root}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    ]
