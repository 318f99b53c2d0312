"""Evaluation: scores of generated views (geometry consistency, silhouettes, CLIP), set metrics and suites.

The last stage of the data path: it reads what `generate` writes and imports only earlier stages. Modules load
on import of their own name (`from mvtune.evaluate.score import score_views`), so this package stays cheap.
"""


class ScoreError(Exception):
    """Scoring cannot run: views or a mesh that do not fit, bad feature arrays (a scorer that does not load is a
    `mvtune.models.clip.ClipError`)."""
