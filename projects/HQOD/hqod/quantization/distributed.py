"""Reductions of calibration statistics over ranks; no-ops outside a multi-process group."""
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_(tensor, op: str = "sum"):
    """Reduce ``tensor`` in place over all ranks with ``op`` ("sum", "min" or "max") and return it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=_OPS[op])
    return tensor
