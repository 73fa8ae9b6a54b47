"""Install Detectron2 v0.6's pure-Python package from PyPI's ``pb1-detectron2`` sources.

Official detectron2 is not on PyPI; ``pb1-detectron2==0.6`` ships its Python files but no C++
sources, so its own ``setup.py`` cannot build. This script downloads that source distribution with
pip, checks its sha256, and installs only the ``detectron2`` package as a pure-Python wheel.
Nothing happens when a detectron2 is already importable (e.g. one built from the official repo).
"""
import hashlib
import importlib.util
import pathlib
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_SETUP = """from setuptools import find_packages, setup
setup(name="pb1-detectron2", version="0.6", packages=find_packages(include=["detectron2", "detectron2.*"]))
"""


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main():
    if importlib.util.find_spec("detectron2") is not None:
        print("detectron2 already importable; leaving it alone")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        # --no-build-isolation: the sdist's setup.py imports torch just to report its metadata.
        pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", SDIST, "-d", str(tmp))
        sdist = tmp / SDIST_FILE
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"{SDIST_FILE}: sha256 {digest} != {SDIST_SHA256}; delete pip's cache and retry")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("pb1-detectron2-0.6/detectron2/")]
            tar.extractall(tmp, members=members, filter="data")
        src = tmp / "pb1-detectron2-0.6"
        (src / "setup.py").write_text(WHEEL_SETUP)
        pip("install", "--no-deps", "--no-build-isolation", str(src))


if __name__ == "__main__":
    main()
