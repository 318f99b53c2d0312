"""Errors of the models stage."""


class MVAdapterError(ValueError):
    """The adapter was configured or called in a way the MV-Adapter architecture does not support."""


class AdapterLoadError(MVAdapterError):
    """An adapter file does not match the adapted UNet + cond encoder (names the offending keys)."""
