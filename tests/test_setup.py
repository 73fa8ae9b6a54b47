"""Set-up is idempotent and the Detectron2 compatibility measures behave as documented."""
import pathlib
import subprocess
import sys

import hqod  # noqa: F401
import pytest
import torch

from hqod import compat

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_make_setup_is_idempotent():
    first = subprocess.run(["make", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(["make", "-q", "setup"], cwd=ROOT)
    assert again.returncode == 0, "a second `make setup` would redo work"


def test_installer_leaves_an_importable_detectron2_alone():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "install_detectron2.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "leaving it alone" in out


@pytest.mark.skipif(compat.HAS_C_EXTENSION, reason="only a pure-Python Detectron2 has the stand-in module")
def test_missing_compiled_ops_raise_a_clear_error():
    from detectron2 import _C

    with pytest.raises(ImportError, match="compiled operators"):
        _C.deform_conv_forward  # noqa: B018


def test_ddp_wrapper_accepts_cpu_models():
    import detectron2.engine.defaults as defaults

    assert getattr(defaults.create_ddp_model, "_hqod_cpu_safe", False)
    assert defaults.create_ddp_model(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear  # world size 1
