"""Datasets: validation, splits and the training loader (torch-dependent parts load lazily)."""
