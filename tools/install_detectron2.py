"""Install Detectron2 v0.6's pure-Python package from PyPI's ``pb1-detectron2`` sources.

Official detectron2 is not on PyPI; ``pb1-detectron2==0.6`` ships its Python files but no C++
sources, so its own ``setup.py`` cannot build. This script downloads that source distribution with
pip (or takes a local copy, ``--sdist``), checks its sha256, and installs only the ``detectron2``
package as a pure-Python wheel. Nothing happens when a detectron2 is already importable (e.g. one
built from the official repo), unless ``--target`` names a folder to install into instead of the
environment (as ``pip install --target``).
"""
import argparse
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Install Detectron2 v0.6's Python package from PyPI's sources.")
    parser.add_argument("--target", help="install into this folder instead of the environment (even when a "
                                         "detectron2 is importable)")
    parser.add_argument("--sdist", help=f"a local {SDIST_FILE} to install from instead of downloading it")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.target is None and importlib.util.find_spec("detectron2") is not None:
        print("detectron2 already importable; leaving it alone")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if args.sdist:
            sdist = pathlib.Path(args.sdist)
        else:
            # --no-build-isolation: the sdist's setup.py imports torch just to report its metadata.
            pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", SDIST, "-d", str(tmp))
            sdist = tmp / SDIST_FILE
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"error: {sdist.name}: sha256 {digest} is not the expected {SDIST_SHA256} of {SDIST}; "
                     "delete pip's cache (pip cache purge) or the file and retry")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("pb1-detectron2-0.6/detectron2/")]
            tar.extractall(tmp, members=members, filter="data")
        src = tmp / "pb1-detectron2-0.6"
        (src / "setup.py").write_text(WHEEL_SETUP)
        target = ["--target", args.target] if args.target else []
        pip("install", "--no-deps", "--no-build-isolation", *target, str(src))


if __name__ == "__main__":
    main()
