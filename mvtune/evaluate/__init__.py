"""Evaluation: scores of generated views (geometry consistency, silhouettes, CLIP), set metrics and suites.

The last stage of the data path: it reads what `generate` writes and imports only earlier stages. Modules load
on import of their own name (`from mvtune.evaluate.score import score_views`), so this package stays cheap.
"""
