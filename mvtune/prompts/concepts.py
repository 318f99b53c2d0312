"""Concepts files and prompt sets: what the dataset, the probes and the evaluation ask generators for.

A concepts file (YAML) names subjects ("duck"), concepts ("firefighter") with pools of attribute phrases
("red helmet", "heavy jacket"), style phrases and templates. Sampling draws, per concept, seeded combinations
(a subset of the attributes, one phrase each, a style, a template), keeps only new prompt strings, and runs every
prompt through the protected-IP guard. Each row keeps what was drawn, so the caption of the mesh made from it and
the attribute probes of the evaluation both know which traits the prompt asked for.
"""

from __future__ import annotations

import difflib
import json
import re
import string
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mvtune.prompts.generic import GENERIC_PROMPTS
from mvtune.prompts.guard import ensure_allowed

PLACEHOLDERS = ("subject", "concept", "attributes", "style")
DEFAULT_TEMPLATES = ("{subject} as a {concept}, {attributes}, {style}",)
#: Probability that an attribute is named in a sampled prompt (at least one always is): prompts with a few
#: traits left out are more diverse, and attribute probes see both presence and absence.
ATTRIBUTE_PROB = 0.75
#: Draws per requested prompt before a concept is declared too small for the count.
_DRAWS_PER_PROMPT = 40


class PromptsError(Exception):
    """Prompt sets cannot be read, sampled or written; the message names the file, line or key."""


class ConceptsError(PromptsError):
    """A concepts file is invalid; the message lists every problem, each naming its key and the file."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _phrases(value: list[str], what: str = "phrase") -> list[str]:
    cleaned = [v.strip() for v in value]
    if any(not v for v in cleaned):
        raise ValueError(f"empty {what} in the list")
    return cleaned


def _check_templates(value: list[str]) -> list[str]:
    for template in value:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"template {template!r}: {exc}") from None
        unknown = names - set(PLACEHOLDERS)
        if unknown:
            raise ValueError(f"template {template!r} uses {sorted(unknown)}; placeholders are {list(PLACEHOLDERS)}")
    return value


class Attribute(_Model):
    phrases: list[str] = Field(min_length=1)
    positive: str | None = None  # probe phrase for the attribute's presence (evaluation)
    contrast: str | None = None  # the alternative the probe compares against; required with positive

    _clean = field_validator("phrases")(_phrases)

    @model_validator(mode="after")
    def _probe_pair(self) -> "Attribute":
        if self.positive is not None and not self.contrast:
            raise ValueError("'contrast' is required when 'positive' is given (the probe compares the two)")
        return self


class Concept(_Model):
    phrase: str | None = None  # default: the name with dashes as spaces
    attributes: dict[str, Attribute] = {}
    styles: list[str] = []  # empty: the file's global styles
    templates: list[str] = []  # empty: the file's global templates
    prompts: list[str] = []  # fixed prompts, used as-is before sampled ones

    _name: str = PrivateAttr("")  # the key in `concepts`

    _clean = field_validator("styles", "prompts")(_phrases)
    _tpl = field_validator("templates")(_check_templates)

    @property
    def name(self) -> str:
        return self._name

    def probed_attributes(self) -> list[tuple[str, str, str]]:
        """(attribute name, positive phrase, contrast phrase) of every attribute with a probe pair."""
        return [(name, a.positive, a.contrast) for name, a in self.attributes.items() if a.positive]


class ConceptSet(_Model):
    seed: int = 0
    subjects: list[str] = Field(min_length=1)
    styles: list[str] = []
    templates: list[str] = Field(list(DEFAULT_TEMPLATES), min_length=1)
    protected_terms: list[str] = []
    generic: list[str] = []
    concepts: dict[str, Concept] = Field(min_length=1)
    _source: str = PrivateAttr("<concepts>")  # the file it came from, for messages

    _clean = field_validator("subjects", "styles", "protected_terms", "generic")(_phrases)
    _tpl = field_validator("templates")(_check_templates)

    @model_validator(mode="after")
    def _names(self) -> "ConceptSet":
        for name, concept in self.concepts.items():
            concept._name = name
            if concept.phrase is None:
                concept.phrase = re.sub(r"[-_]+", " ", name)
        for text in self.generic:
            if "{subject}" not in text:
                raise ValueError(f"generic prompt {text!r} needs a {{subject}} placeholder")
        return self

    @property
    def source(self) -> str:
        return self._source

    def generic_prompts(self, subject: str) -> list[str]:
        """The built-in generic prompts and this file's, for one subject."""
        return [p.format(subject=subject) for p in (*GENERIC_PROMPTS, *self.generic)]

    def prompts_for(self, concept_name: str, count: int, seed: int | None = None,
                    override: bool = False) -> list["PromptRow"]:
        """The concept's fixed prompts first, then sampled ones, ``count`` rows in all."""
        return list(iter_concept_prompts(self, concept_name, count, seed, override))


class PromptRow(_Model):
    id: str
    concept: str
    subject: str
    attributes: dict[str, str]
    style: str | None
    prompt: str
    seed: int
    override: str | None = None  # the protected term the prompt was allowed to name, if any


# ---- loading -------------------------------------------------------------------------------------------------


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of ``loc`` (dict values are stepped through)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    if get_origin(current) is dict:
        current = get_args(current)[1]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(map(str, loc)) or "file"
        if error["type"] == "extra_forbidden":
            owner = _model_at(ConceptSet, loc)
            fields = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.5)
            parent = ".".join(map(str, loc[:-1]))
            prefix = parent + "." if parent else ""
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(fields)}"
            problems.append(f"unknown key '{key}' ({hint})")
        elif error["type"] == "too_short":
            problems.append(f"'{key}' is an empty pool: give at least one entry")
        elif error["type"] == "missing":
            problems.append(f"'{key}' is required")
        else:
            problems.append(f"'{key}': {error['msg'].removeprefix('Value error, ')}")
    return problems


def parse_concepts(data: Any, source: str = "<concepts>") -> ConceptSet:
    """A ConceptSet from already-parsed YAML/JSON; ConceptsError lists every problem."""
    if not isinstance(data, dict):
        raise ConceptsError(f"{source}: a concepts file must be a mapping with 'subjects' and 'concepts'")
    try:
        concepts = ConceptSet.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        raise ConceptsError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems)) from None
    concepts._source = source
    return concepts


def load_concepts(path: str | Path) -> ConceptSet:
    """Read and validate a concepts YAML file."""
    from mvtune.config_files import read_yaml_mapping

    data = read_yaml_mapping(path, "concepts file", ConceptsError)
    return parse_concepts(data, str(path))


# ---- sampling ------------------------------------------------------------------------------------------------


def _stable(*parts) -> int:
    """A process-independent 31-bit number for seeding (Python's hash() is salted per process)."""
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


def _render(template: str, subject: str, concept: str, attributes: list[str], style: str) -> str:
    text = template.format(subject=subject, concept=concept, attributes=", ".join(attributes), style=style)
    # an empty placeholder leaves ", ," or a trailing comma behind
    text = re.sub(r"\s*,\s*(,\s*)+", ", ", text)
    text = re.sub(r"\s+", " ", text).strip(" ,")
    # "a astronaut" -> "an astronaut" ("u" is left alone: "a uniform")
    return re.sub(r"\b([Aa]) (?=[aeioAEIO])", r"\1n ", text)


def _fixed_attributes(concept: Concept, prompt: str) -> dict[str, str]:
    """Which attribute phrases a fixed prompt contains (the first one found per attribute)."""
    lower = prompt.lower()
    found = {}
    for name, attribute in concept.attributes.items():
        for phrase in attribute.phrases:
            if re.search(rf"\b{re.escape(phrase.lower())}\b", lower):
                found[name] = phrase
                break
    return found


def iter_concept_prompts(concepts: ConceptSet, concept_name: str, count: int, seed: int | None = None,
                         override: bool = False) -> Iterator[PromptRow]:
    """Rows of one concept, lazily: fixed prompts, then seeded samples, no prompt string twice.

    Row k depends only on (seed, concept, k), so a larger ``count`` extends a smaller one's list.
    Raises ProtectedPromptError (unless ``override``) and PromptsError when the pools cannot give ``count``
    distinct prompts.
    """
    if concept_name not in concepts.concepts:
        close = difflib.get_close_matches(concept_name, list(concepts.concepts), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PromptsError(f"{concepts.source}: no concept {concept_name!r}{hint}")
    if count < 0:
        raise PromptsError(f"count must be >= 0, got {count}")
    seed = concepts.seed if seed is None else seed
    concept = concepts.concepts[concept_name]
    styles = concept.styles or concepts.styles or [""]
    templates = concept.templates or concepts.templates
    names = list(concept.attributes)
    extra = tuple(concepts.protected_terms)
    seen: set[str] = set()
    made = 0

    def row(subject: str, attributes: dict[str, str], style: str, prompt: str) -> PromptRow:
        term = ensure_allowed(prompt, extra, override)
        return PromptRow(
            id=f"{concept_name}-{made:04d}", concept=concept_name, subject=subject, attributes=attributes,
            style=style or None, prompt=prompt, seed=_stable(seed, concept_name, made), override=term,
        )

    for prompt in concept.prompts:
        if made >= count:
            return
        if prompt in seen:
            continue
        seen.add(prompt)
        # the longest subject the prompt names ("rubber duck" over "duck"), else the first one
        named = [sub for sub in concepts.subjects if re.search(rf"\b{re.escape(sub.lower())}\b", prompt.lower())]
        subject = max(named, key=len) if named else concepts.subjects[0]
        yield row(subject, _fixed_attributes(concept, prompt), "", prompt)
        made += 1

    rng = np.random.default_rng([seed, _stable(concept_name)])
    draws, limit = 0, max(count, 1) * _DRAWS_PER_PROMPT
    while made < count:
        if draws >= limit:
            raise PromptsError(
                f"{concepts.source}: concept {concept_name!r} gave only {made} distinct prompts in {draws} draws, "
                f"{count} asked; add attribute phrases, styles or templates, or ask for fewer"
            )
        draws += 1
        subject = concepts.subjects[int(rng.integers(len(concepts.subjects)))]
        chosen = [n for n in names if rng.random() < ATTRIBUTE_PROB]
        if names and not chosen:
            chosen = [names[int(rng.integers(len(names)))]]
        attributes = {}
        for n in chosen:
            pool = concept.attributes[n].phrases
            attributes[n] = pool[int(rng.integers(len(pool)))]
        style = styles[int(rng.integers(len(styles)))]
        template = templates[int(rng.integers(len(templates)))]
        prompt = _render(template, subject, concept.phrase, list(attributes.values()), style)
        if prompt in seen:
            continue
        seen.add(prompt)
        yield row(subject, attributes, style, prompt)
        made += 1


def iter_prompts(concepts: ConceptSet, count: int, seed: int | None = None,
                 override: bool = False) -> Iterator[PromptRow]:
    """``count`` rows per concept, concept after concept in file order, one row in memory at a time."""
    for name in concepts.concepts:
        yield from iter_concept_prompts(concepts, name, count, seed, override)


def sample_prompts(concepts: ConceptSet, count: int, seed: int | None = None,
                   override: bool = False) -> list[PromptRow]:
    """``count`` prompts per concept (fixed prompts first), deterministic for a seed (default: the file's)."""
    return list(iter_prompts(concepts, count, seed, override))


# ---- prompt rows on disk -------------------------------------------------------------------------------------


def write_prompt_rows(path: str | Path, rows: Iterable[PromptRow | dict]) -> int:
    """Write rows as JSONL atomically (streamed into the temporary file); returns how many were written."""
    from mvtune.storage import atomic_write

    written = 0

    def writer(tmp: str) -> None:
        nonlocal written
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                data = r.model_dump() if isinstance(r, BaseModel) else r
                f.write(json.dumps(data, ensure_ascii=False) + "\n")
                written += 1

    atomic_write(path, writer)
    return written


def read_prompt_rows(path: str | Path) -> list[dict]:
    """Rows of a prompts JSONL (each an object with string ``id`` and ``prompt``); every bad line is named."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PromptsError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsError(f"prompts file {path} cannot be read: {exc}") from None
    rows, problems, ids = [], [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg})")
            continue
        if not isinstance(data, dict):
            problems.append(f"line {number}: must be a JSON object")
            continue
        bad = [k for k in ("id", "prompt") if not isinstance(data.get(k), str) or not data[k].strip()]
        if bad:
            problems.append(f"line {number}: needs a non-empty string {' and '.join(bad)}")
            continue
        if data["id"] in ids:
            problems.append(f"line {number}: duplicate id {data['id']!r}")
            continue
        ids.add(data["id"])
        rows.append(data)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise PromptsError(f"prompts file {path}: {len(problems)} bad line(s): {shown}")
    return rows
