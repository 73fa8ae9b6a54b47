"""Ramps used by the schedule hooks: constant, linear and cosine from a start to an end value."""
import math

from ..errors import HQODInputError

RAMP_TYPES = ("constant", "linear", "cosine")


def ramp(kind: str, it: int, start_iter: int, end_iter: int, start_value: float, end_value: float) -> float:
    """Value at iteration ``it``: ``start_value`` up to ``start_iter``, ``end_value`` from ``end_iter`` on."""
    if kind == "constant" or it >= end_iter:
        return end_value
    if it <= start_iter:
        return start_value
    t = (it - start_iter) / (end_iter - start_iter)
    if kind == "cosine":
        t = 0.5 * (1 - math.cos(math.pi * t))
    return start_value + (end_value - start_value) * t


def check_ramp(name: str, kind: str, start_iter: int, end_iter: int) -> None:
    """Reject an unknown ramp type or an empty/backward iteration range with a one-line error."""
    if kind not in RAMP_TYPES:
        raise HQODInputError(f"{name}.TYPE is {kind!r}; use one of {', '.join(RAMP_TYPES)}")
    if kind != "constant" and not 0 <= start_iter < end_iter:
        raise HQODInputError(f"{name}: need 0 <= START_ITER < END_ITER for a {kind} ramp, got {start_iter}, {end_iter}")
