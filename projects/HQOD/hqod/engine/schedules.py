"""Ramps used by the schedule hooks (constant, linear and cosine from a start to an end value) and the bit schedule."""
import math

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


def parse_bit_schedule(entries):
    """``["iter:wbits:abits", ...]`` -> ``[(iter, wbits, abits)]`` sorted by iteration; ValueError when an entry is
    not of that form (hqod.engine.validation reports it to the user)."""
    schedule = []
    for entry in entries:
        it, weight_bits, act_bits = (int(v) for v in str(entry).split(":"))
        schedule.append((it, weight_bits, act_bits))
    return sorted(schedule)
