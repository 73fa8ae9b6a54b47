"""The results JSON: read it back for resuming, write it atomically with NaN and infinity as null."""
import json
import math
import pathlib

from hqod.utils.io import atomic_write_bytes


def plain(value):
    """``value`` with non-finite floats replaced by None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load(path: pathlib.Path) -> dict:
    """The results of an earlier bench at ``path``, or ``{}``."""
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: pathlib.Path, results: dict) -> None:
    """Write ``results`` to ``path`` whole or not at all."""
    atomic_write_bytes(path, (json.dumps(plain(results), indent=1) + "\n").encode())
