"""Stand-in for the hy3dshape package of a Hunyuan3D-2.1 checkout, for tests only."""
