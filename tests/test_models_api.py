"""Public surface of mvtune.models: names resolve, and importing the package stays light."""

import subprocess
import sys

import mvtune.models


def test_public_names_resolve():
    for name in mvtune.models.__all__:
        assert getattr(mvtune.models, name) is not None


def test_import_does_not_load_torch():
    code = "import sys, mvtune.models; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
