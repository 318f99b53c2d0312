"""Stand-in for Tencent's hy3dgen package (Hunyuan3D-2), for tests only."""
