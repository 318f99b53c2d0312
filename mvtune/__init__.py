"""mvtune: teach MV-Adapter to texture meshes in new themes, measured and repeatable."""

__version__ = "0.1.0"
