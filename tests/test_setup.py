"""Set-up is idempotent, the Detectron2 installer installs what it says (and refuses a wrong download), and the
Detectron2 compatibility measures behave as documented."""
import os
import pathlib
import subprocess
import sys
import tarfile

import hqod  # noqa: F401
import pytest
import torch
from detectron2.utils import comm

from hqod import compat
from hqod.engine import launch


def test_make_setup_is_idempotent(root):
    first = subprocess.run(["make", "setup"], cwd=root, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(["make", "-q", "setup"], cwd=root)
    assert again.returncode == 0, "a second `make setup` would redo work"


def run_installer(root, *args):
    return subprocess.run([sys.executable, str(root / "tools" / "install_detectron2.py"), *args],
                          capture_output=True, text=True)


def test_installer_leaves_an_importable_detectron2_alone(root):
    result = run_installer(root)
    assert result.returncode == 0 and "leaving it alone" in result.stdout


def test_installer_installs_the_checked_pure_python_package(root, tmp_path):
    target = tmp_path / "site"
    result = run_installer(root, "--target", str(target))  # pip downloads the sdist; its sha256 is checked
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in target.iterdir()) == ["detectron2", "pb1_detectron2-0.6.dist-info"]
    package = target / "detectron2"
    files = [path for path in package.rglob("*") if path.is_file()]
    assert package / "__init__.py" in files and package / "engine" / "defaults.py" in files
    assert not [path for path in files if path.suffix in (".c", ".cpp", ".cu", ".cuh", ".h", ".so")]
    show = "import detectron2; print(detectron2.__version__, detectron2.__file__)"
    imported = subprocess.run([sys.executable, "-c", show], env=dict(os.environ, PYTHONPATH=str(target)),
                              capture_output=True, text=True)
    assert imported.stdout.split() == ["0.6", str(package / "__init__.py")], imported.stderr[-3000:]


def test_installer_refuses_an_sdist_with_another_sha256_and_installs_nothing(root, tmp_path):
    package = tmp_path / "pb1-detectron2-0.6" / "detectron2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "0.6"\n')
    sdist = tmp_path / "pb1-detectron2-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:  # installable, were its sha256 not checked
        tar.add(package.parent, arcname="pb1-detectron2-0.6")
    result = run_installer(root, "--sdist", str(sdist), "--target", str(tmp_path / "site"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: pb1-detectron2-0.6.tar.gz: sha256 ") and "pip cache purge" in lines[0]
    assert not (tmp_path / "site").exists()


@pytest.mark.skipif(compat.HAS_C_EXTENSION, reason="only a pure-Python Detectron2 has the stand-in module")
def test_missing_compiled_ops_raise_a_clear_error():
    from detectron2 import _C

    with pytest.raises(ImportError, match="compiled operators"):
        _C.deform_conv_forward  # noqa: B018


def _wrap_and_step(out_dir):
    """On each CPU worker: wrap a linear layer as DefaultTrainer does, take one backward step on rank-own data."""
    import detectron2.engine.defaults as defaults

    torch.manual_seed(0)
    model = defaults.create_ddp_model(torch.nn.Linear(2, 1), broadcast_buffers=False)
    model(torch.full((1, 2), float(comm.get_rank() + 1))).sum().backward()
    grad = model.module.weight.grad if hasattr(model, "module") else None
    torch.save({"wrapper": type(model).__name__, "grad": grad}, pathlib.Path(out_dir) / f"rank{comm.get_rank()}.pth")


def test_ddp_wrapper_wraps_cpu_models_of_two_workers(tmp_path):
    launch(_wrap_and_step, 2, dist_url="auto", args=(str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    assert [r["wrapper"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert ranks[0]["grad"].tolist() == ranks[1]["grad"].tolist() == [[1.5, 1.5]]  # averaged over the workers
