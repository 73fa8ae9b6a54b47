"""Norms after the tower convs of the dense heads (RetinaNet, FCOS, ATSS): what their head-norm key names becomes the
``norm`` argument of Detectron2's ``RetinaNetHead`` / ``FCOSHead`` (and the project's ``ATSSHead``, built on it).

- ``"GN"``: GroupNorm with 32 groups (fewer where 32 does not divide the channels).
- ``"LevelBN"`` / ``"LevelSyncBN"``: AQD's multi-level BN (Chen et al., "AQD: Towards Accurate Quantized Object
  Detection", CVPR 2021): the tower convs stay shared by every FPN level, and each is followed by one BatchNorm
  (SyncBN) per level, with its own running statistics *and* affine weights. Detectron2's own ``"BN"`` / ``"SyncBN"``
  in these heads (``CycleBatchNormList``) keep per-level statistics but one shared affine.
- anything else goes to Detectron2's ``get_norm`` unchanged.

A ``LevelBatchNorm`` normalises its i-th input of a head forward pass with level i's BatchNorm; the head's forward
pre-hook (``count_levels_per_forward``) restarts the count, as the quantized convs count their per-level calls.
"""
import math
from functools import partial

from detectron2.layers import get_norm
from torch import nn

LEVEL_NORMS = {"LevelBN": "BN", "LevelSyncBN": "SyncBN"}  # head-norm value -> the get_norm kind of each level


def group_norm(channels):
    """``"GN"`` as a callable: 32 groups, fewer where 32 does not divide ``channels`` (v0.6's RetinaNetHead probes
    ``get_norm(norm, 1)``, which torch rejects for the string ``"GN"``)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class LevelBatchNorm(nn.ModuleList):
    """One ``get_norm(norm, channels)`` BatchNorm per FPN level; the i-th call since ``calls`` was last reset (the
    head's forward pre-hook does) uses level i's statistics and affine weights."""

    def __init__(self, num_levels: int, channels: int, norm: str = "BN"):
        super().__init__([get_norm(norm, channels) for _ in range(num_levels)])
        self.calls = 0

    def forward(self, x):
        if self.calls >= len(self):
            raise RuntimeError(f"LevelBatchNorm holds {len(self)} levels but was called {self.calls + 1} times in one "
                               "head forward; the head must be built with count_levels_per_forward")
        level, self.calls = self.calls, self.calls + 1
        return self[level](x)


def head_norm(name: str, num_levels: int):
    """The ``norm`` argument of a Detectron2 dense head for the config value ``name`` on ``num_levels`` FPN levels."""
    if name == "GN":
        return group_norm
    if name in LEVEL_NORMS:
        return partial(LevelBatchNorm, num_levels, norm=LEVEL_NORMS[name])
    return name


def _restart_level_count(head, inputs):
    for module in head.modules():
        if isinstance(module, LevelBatchNorm):
            module.calls = 0


def count_levels_per_forward(head: nn.Module) -> nn.Module:
    """``head``, whose every forward now starts its ``LevelBatchNorm`` layers at level 0 (a no-op without any)."""
    if any(isinstance(module, LevelBatchNorm) for module in head.modules()):
        head.register_forward_pre_hook(_restart_level_count)
    return head
