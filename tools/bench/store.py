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


def same_metrics(a, b, rel_tol: float = 1e-9) -> bool:
    """Whether two metric dicts agree (non-finite floats as ``plain`` stores them), floats to ``rel_tol``: the same
    model evaluated again may differ in the last bits of a float (summation order), not more."""
    a, b = plain(a), plain(b)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_metrics(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_metrics(x, y, rel_tol) for x, y in zip(a, b))
    return a == b


def load(path: pathlib.Path) -> dict:
    """The results of an earlier bench at ``path``, or ``{}``."""
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: pathlib.Path, results: dict) -> None:
    """Write ``results`` to ``path`` whole or not at all."""
    atomic_write_bytes(path, (json.dumps(plain(results), indent=1) + "\n").encode())
