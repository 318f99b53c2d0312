"""Licences of meshes and of the models that made them, with the flags a training run has to respect.

Every provenance sidecar and dataset manifest entry carries ``"licence": "<id>"`` with one of the ids below.
The flags encode what the licence texts say about the two uses mvtune makes of data: commercial use, and using
the data (or a model's outputs) to train another model. Kept neutral (no heavy imports) so the mesh generators,
the renderer, the data tools and training all read one table.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass


class LicenceError(ValueError):
    """An unknown licence id; the message names the closest known id."""


@dataclass(frozen=True)
class Licence:
    id: str
    name: str
    commercial: bool
    #: May the data (or a model's outputs under this licence) be used to train or improve other models?
    train_models: bool
    #: Territories where the licence grants nothing (ISO 3166 codes; "EU" for the European Union).
    excluded_territories: tuple[str, ...]
    url: str


_TABLE = (
    Licence("CC0-1.0", "Creative Commons Zero 1.0 (public domain dedication)", True, True, (),
            "https://creativecommons.org/publicdomain/zero/1.0/"),
    Licence("CC-BY-4.0", "Creative Commons Attribution 4.0", True, True, (),
            "https://creativecommons.org/licenses/by/4.0/"),
    # NonCommercial restricts use, not training as such: a research model may train on it, a product may not.
    Licence("CC-BY-NC-4.0", "Creative Commons Attribution-NonCommercial 4.0", False, True, (),
            "https://creativecommons.org/licenses/by-nc/4.0/"),
    Licence("CC-BY-SA-4.0", "Creative Commons Attribution-ShareAlike 4.0", True, True, (),
            "https://creativecommons.org/licenses/by-sa/4.0/"),
    Licence("MIT", "MIT License", True, True, (), "https://opensource.org/license/mit"),
    Licence("Apache-2.0", "Apache License 2.0", True, True, (), "https://www.apache.org/licenses/LICENSE-2.0"),
    # Hunyuan3D-2 / 2.1 community licence: not granted in the EU, the UK and South Korea, and its outputs must not
    # be used to improve any other AI model (section on use restrictions of the licence text).
    Licence("tencent-hunyuan-community", "Tencent Hunyuan 3D 2.x Community License", True, False, ("EU", "GB", "KR"),
            "https://github.com/Tencent-Hunyuan/Hunyuan3D-2.1/blob/main/LICENSE"),
    # Stability AI Community License: commercial use only below the revenue threshold (treated as not granted),
    # outputs may be used, including to train models.
    Licence("stability-community", "Stability AI Community License", False, True, (),
            "https://stability.ai/community-license-agreement"),
    Licence("unknown", "Unknown licence (no record)", False, False, (), ""),
)

LICENCES: dict[str, Licence] = {licence.id: licence for licence in _TABLE}

#: Other spellings seen in sidecars, exports and older mvtune versions, in `_key` form.
_ALIASES = {
    "cc0": "CC0-1.0",
    "cc0-1.0-generated-by-mvtune": "CC0-1.0",  # procedural samples before licence ids existed
    "public-domain": "CC0-1.0",
    "cc-by": "CC-BY-4.0",
    "by": "CC-BY-4.0",
    "by-4.0": "CC-BY-4.0",
    "cc-by-nc": "CC-BY-NC-4.0",
    "by-nc": "CC-BY-NC-4.0",
    "by-nc-4.0": "CC-BY-NC-4.0",
    "cc-by-sa": "CC-BY-SA-4.0",
    "by-sa": "CC-BY-SA-4.0",
    "by-sa-4.0": "CC-BY-SA-4.0",
    "mit-license": "MIT",
    "apache": "Apache-2.0",
    "apache2": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache2.0": "Apache-2.0",
    "apache-license-2.0": "Apache-2.0",
    "tencent-hunyuan": "tencent-hunyuan-community",
    "hunyuan": "tencent-hunyuan-community",
    "hunyuan3d": "tencent-hunyuan-community",
    "tencent-hunyuan-3d-2.1-community": "tencent-hunyuan-community",
    "stability": "stability-community",
    "stability-ai-community": "stability-community",
    "none": "unknown",
    "": "unknown",
}


def _key(text: str) -> str:
    """Lower case, every run of other characters one dash: "CC-BY 4.0", "cc_by-4.0" and "cc-by-4.0" agree."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


_KEYS = {_key(licence.id): licence.id for licence in _TABLE} | _ALIASES


def get_licence(licence_id: str | None) -> Licence:
    """The licence for an id or a common alias ("cc0", "cc-by", "CC-BY 4.0"); None and "" are ``unknown``."""
    if licence_id is None:
        return LICENCES["unknown"]
    key = _key(str(licence_id))
    if key in _KEYS:
        return LICENCES[_KEYS[key]]
    close = difflib.get_close_matches(key, list(_KEYS), n=1, cutoff=0.4)
    hint = f"; did you mean {_KEYS[close[0]]!r}?" if close else ""
    raise LicenceError(f"unknown licence {licence_id!r}{hint} (known: {', '.join(LICENCES)})")


@dataclass
class LicenceCheck:
    """What a training run may do with its objects' licences: counts, and the objects refused or warned about."""

    counts: dict[str, int]
    refused: list[tuple[str, str, str]]  # (object id, licence as recorded, why)
    warned: list[tuple[str, str, str]]
    policy: dict

    def to_json(self) -> dict:
        def rows(items):
            return [{"id": i, "licence": lic, "reason": why} for i, lic, why in items]

        return {"policy": self.policy, "counts": self.counts, "refused": rows(self.refused),
                "warned": rows(self.warned)}


def describe(items: list[tuple[str, str, str]], limit: int = 5) -> str:
    """'reason: N (a, b, ...); ...' grouped by reason, for one-line messages."""
    by_reason: dict[str, list[str]] = {}
    for object_id, _, why in items:
        by_reason.setdefault(why, []).append(object_id)
    return "; ".join(
        f"{why}: {len(ids)} ({', '.join(ids[:limit])}{', ...' if len(ids) > limit else ''})"
        for why, ids in by_reason.items()
    )


def check_training_licences(
    objects: dict[str, str | None],
    forbidden: str = "refuse",
    unknown: str = "warn",
    territory: str | None = None,
) -> LicenceCheck:
    """Sort objects (id -> licence as recorded) by what training may do with them.

    ``forbidden`` ("refuse" or "warn") applies to licences that forbid training other models and to licences that
    exclude ``territory``; ``unknown`` ("refuse", "warn" or "allow") to missing or unrecognised licences.
    """
    counts: dict[str, int] = {}
    refused, warned = [], []
    for object_id, recorded in objects.items():
        try:
            licence = get_licence(recorded)
            why = None
            if licence.id == "unknown":
                why, action = "no licence recorded", unknown
            elif not licence.train_models:
                why, action = f"{licence.id} forbids using it to train models", forbidden
            elif territory and territory.upper() in licence.excluded_territories:
                why, action = f"{licence.id} does not apply in {territory.upper()}", forbidden
        except LicenceError:
            licence, why, action = LICENCES["unknown"], f"unrecognised licence {recorded!r}", unknown
        counts[licence.id] = counts.get(licence.id, 0) + 1
        if why is not None and action == "refuse":
            refused.append((object_id, str(recorded), why))
        elif why is not None and action == "warn":
            warned.append((object_id, str(recorded), why))
    policy = {"forbidden": forbidden, "unknown": unknown, "territory": territory}
    return LicenceCheck(dict(sorted(counts.items())), refused, warned, policy)
