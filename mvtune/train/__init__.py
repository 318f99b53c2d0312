"""Training: typed configs, the MV-Adapter Lightning system, and runs (folders, checkpoints, resume, signals).

`mvtune.train.config` imports no torch, so configs are checked before anything heavy loads.
"""
