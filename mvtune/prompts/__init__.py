"""Prompt sets (concepts files, seeded sampling, prompt rows) and the protected-IP guard every generator uses."""

from mvtune.prompts.concepts import (
    Attribute,
    Concept,
    ConceptSet,
    ConceptsError,
    PromptRow,
    PromptsError,
    iter_prompts,
    load_concepts,
    parse_concepts,
    read_prompt_rows,
    sample_prompts,
    write_prompt_rows,
)
from mvtune.prompts.generic import GENERIC_PROMPTS
from mvtune.prompts.guard import ProtectedPromptError, ensure_allowed, find_protected

__all__ = [
    "Attribute", "Concept", "ConceptSet", "ConceptsError", "GENERIC_PROMPTS", "PromptRow", "PromptsError",
    "ProtectedPromptError", "ensure_allowed", "find_protected", "iter_prompts", "load_concepts", "parse_concepts",
    "read_prompt_rows", "sample_prompts", "write_prompt_rows",
]
