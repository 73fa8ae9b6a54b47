"""``validate_config(cfg)``: every check of the keys this project adds, in one pass.

Each entry point (``train_net.py``, ``demo.py``, the tools) calls it once through ``hqod.engine.setup_cfg``, before
any worker starts or any model is built; builders and hooks then trust the config. Checks that need the built model
(backbone feature names, channel counts) stay with the builders.
"""
import math
import os

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import META_ARCH_REGISTRY

from ..config import add_hqod_config
from ..errors import HQODInputError
from ..modeling.detectors import hqod_meta_architectures
from ..modeling.head_norm import LEVEL_NORMS
from ..modeling.hqod_mixin import NORMALIZERS, HQODLossMixin
from ..quantization import ALGORITHMS, OBSERVERS
from ..quantization.base import check_bits
from ..quantization.convert import parse_override
from ..quantization.placement import PLACEMENTS
from .schedules import RAMP_TYPES, parse_bit_schedule


def validate_config(cfg) -> None:
    """Raise a one-line HQODInputError for the first bad value of MODEL.HQOD, the head norm, MODEL.ATSS,
    MODEL.QUANT (when ENABLED), their schedules, or a local MODEL.WEIGHTS file that does not exist."""
    check_hqod_config(cfg)
    check_head_norm(cfg)
    if "ATSS" in cfg.MODEL:
        check_atss_config(cfg.MODEL.ATSS)
    if "HQOD" in cfg.MODEL:
        sched = cfg.MODEL.HQOD.WEIGHT_SCHEDULE
        check_ramp("MODEL.HQOD.WEIGHT_SCHEDULE", sched.TYPE, sched.START_ITER, sched.END_ITER)
    if cfg.MODEL.QUANT.ENABLED:
        check_quant_config(cfg.MODEL.QUANT)
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise HQODInputError(f"MODEL.WEIGHTS file {weights!r} does not exist; pass an existing checkpoint or \"\" "
                             "for none")


def check_hqod_config(cfg) -> None:
    """Bad MODEL.HQOD values, or MODEL.HQOD keys changed from their defaults while MODEL.META_ARCHITECTURE has no
    HQOD losses (they would be silently ignored)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    is_hqod_arch = arch in META_ARCH_REGISTRY and issubclass(META_ARCH_REGISTRY.get(arch), HQODLossMixin)
    if "HQOD" not in cfg.MODEL:
        if is_hqod_arch:
            raise HQODInputError(f"{arch} needs the MODEL.HQOD keys: call hqod.add_hqod_config(cfg) before merging")
        return
    hqod = cfg.MODEL.HQOD
    _check_hqod_values(hqod.TCORR_WEIGHT, hqod.HIOU_WEIGHT, hqod.HIOU_ALPHA, hqod.HIOU_GAMMA)
    if hqod.NORMALIZER not in NORMALIZERS:
        raise HQODInputError(f"MODEL.HQOD.NORMALIZER is {hqod.NORMALIZER!r}; use one of {', '.join(NORMALIZERS)}")
    if is_hqod_arch:
        return
    defaults = get_cfg()
    add_hqod_config(defaults)
    changed = _changed_keys(hqod, defaults.MODEL.HQOD, "MODEL.HQOD")
    if changed:
        raise HQODInputError(
            f"{', '.join(changed)} set but MODEL.META_ARCHITECTURE={arch} has no HQOD losses; "
            f"use one of {', '.join(hqod_meta_architectures())}, or leave MODEL.HQOD at its defaults"
        )


def check_head_norm(cfg) -> None:
    """A per-level head norm (hqod.modeling.head_norm.LEVEL_NORMS) asked of Detectron2's own RetinaNet, whose
    builder cannot make it."""
    norm = cfg.MODEL.RETINANET.NORM
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and norm in LEVEL_NORMS:
        raise HQODInputError(
            f"MODEL.RETINANET.NORM {norm!r} is built by the project's RetinaNet only: set MODEL.META_ARCHITECTURE "
            "HQODRetinaNet (with MODEL.HQOD.TCORR_WEIGHT 0 and HIOU_WEIGHT 0 for no HQOD losses)")


def check_atss_config(atss) -> None:
    """MODEL.ATSS (``atss``): counts, anchor scale, loss weights, box-delta weights, test thresholds and head norm
    (IN_FEATURES is checked against the built backbone by the builder)."""
    for key in ("NUM_CLASSES", "NUM_CONVS", "TOPK", "TOPK_CANDIDATES_TEST"):
        value = atss[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HQODInputError(f"MODEL.ATSS.{key} must be an integer >= 1, got {value!r}")
    checks = [
        ("ANCHOR_SCALE", "a finite number > 0", lambda v: v > 0),
        ("BOX_LOSS_WEIGHT", "a finite number >= 0", lambda v: v >= 0),
        ("FOCAL_LOSS_ALPHA", "in [0, 1]", lambda v: 0 <= v <= 1),
        ("FOCAL_LOSS_GAMMA", "a finite number >= 0", lambda v: v >= 0),
        ("PRIOR_PROB", "in (0, 1)", lambda v: 0 < v < 1),
        ("SCORE_THRESH_TEST", "in [0, 1)", lambda v: 0 <= v < 1),
        ("NMS_THRESH_TEST", "in (0, 1]", lambda v: 0 < v <= 1),
    ]
    for key, expected, ok in checks:
        value = atss[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise HQODInputError(f"MODEL.ATSS.{key} must be {expected}, got {value!r}")
    weights = atss.BBOX_REG_WEIGHTS
    if len(weights) != 4 or not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in weights):
        raise HQODInputError(f"MODEL.ATSS.BBOX_REG_WEIGHTS must be 4 finite numbers > 0, got {weights!r}")
    norms = ("GN", "BN", "SyncBN", *LEVEL_NORMS, "")
    if atss.HEAD_NORM not in norms:
        raise HQODInputError(f"MODEL.ATSS.HEAD_NORM is {atss.HEAD_NORM!r}; use one of {', '.join(map(repr, norms))}")


def check_quant_config(qcfg) -> None:
    """MODEL.QUANT (``qcfg``): algorithm, bits, observers, calibration size, overrides, placement and the quantizer
    schedule."""
    if str(qcfg.ALGORITHM).upper() not in ALGORITHMS:
        raise HQODInputError(f"unknown MODEL.QUANT.ALGORITHM {qcfg.ALGORITHM!r}: use one of {', '.join(ALGORITHMS)}")
    for key in ("WEIGHT_BITS", "ACT_BITS", "FIRST_LAST_BITS"):
        check_bits(qcfg[key], f"MODEL.QUANT.{key}")
    if qcfg.DEPTHWISE_BITS != 0:
        check_bits(qcfg.DEPTHWISE_BITS, "MODEL.QUANT.DEPTHWISE_BITS (0: off)")
    for key in ("WEIGHT_OBSERVER", "ACT_OBSERVER"):
        if str(qcfg[key]).upper() not in OBSERVERS:
            raise HQODInputError(f"unknown MODEL.QUANT.{key} {qcfg[key]!r}: use one of {', '.join(OBSERVERS)}")
    calib = qcfg.CALIB_IMAGES
    if isinstance(calib, bool) or not isinstance(calib, int) or calib <= 0:
        raise HQODInputError(f"MODEL.QUANT.CALIB_IMAGES must be a positive integer, got {calib!r}")
    for item in qcfg.OVERRIDES:
        try:
            _, weight_bits, act_bits = parse_override(item)
        except ValueError:
            raise HQODInputError(f"MODEL.QUANT.OVERRIDES entry {item!r} is not 'pattern:weight_bits:act_bits'") from None
        for bits in (weight_bits, act_bits):
            check_bits(bits, f"bits in MODEL.QUANT.OVERRIDES entry {item!r}")
    if not 0 < qcfg.DSQ_ALPHA <= 0.5:
        raise HQODInputError(f"MODEL.QUANT.DSQ_ALPHA must be in (0, 0.5], got {qcfg.DSQ_ALPHA}")
    if qcfg.PLACEMENT not in PLACEMENTS:
        raise HQODInputError(f"unknown MODEL.QUANT.PLACEMENT {qcfg.PLACEMENT!r}: use one of {', '.join(PLACEMENTS)}")
    _check_quant_schedule(qcfg)


def _check_quant_schedule(qcfg) -> None:
    sched = qcfg.SCHEDULE
    alpha = sched.DSQ_ALPHA
    check_ramp("MODEL.QUANT.SCHEDULE.DSQ_ALPHA", alpha.TYPE, alpha.START_ITER, alpha.END_ITER)
    if not 0 < alpha.END_VALUE <= 0.5:
        raise HQODInputError(f"MODEL.QUANT.SCHEDULE.DSQ_ALPHA.END_VALUE must be in (0, 0.5], got {alpha.END_VALUE}")
    for entry in sched.BITS:
        try:
            (it, weight_bits, act_bits), = parse_bit_schedule([entry])
        except ValueError:
            raise HQODInputError(
                f"MODEL.QUANT.SCHEDULE.BITS entry {entry!r} is not 'iteration:weight_bits:act_bits'") from None
        if it < 0:
            raise HQODInputError(f"MODEL.QUANT.SCHEDULE.BITS entry {entry!r}: the iteration must be >= 0")
        for bits in (weight_bits, act_bits):
            check_bits(bits, f"bits in MODEL.QUANT.SCHEDULE.BITS entry {entry!r}")
    schedule = parse_bit_schedule(sched.BITS)
    if schedule and schedule[-1][1:] != (qcfg.WEIGHT_BITS, qcfg.ACT_BITS):
        raise HQODInputError(
            f"MODEL.QUANT.SCHEDULE.BITS ends at {schedule[-1][1]}/{schedule[-1][2]} bits but "
            f"MODEL.QUANT.WEIGHT_BITS/ACT_BITS are {qcfg.WEIGHT_BITS}/{qcfg.ACT_BITS}; make the last entry match them"
        )


def check_ramp(name: str, kind: str, start_iter: int, end_iter: int) -> None:
    """An unknown ramp type, or an empty or backward iteration range."""
    if kind not in RAMP_TYPES:
        raise HQODInputError(f"{name}.TYPE is {kind!r}; use one of {', '.join(RAMP_TYPES)}")
    if kind != "constant" and not 0 <= start_iter < end_iter:
        raise HQODInputError(f"{name}: need 0 <= START_ITER < END_ITER for a {kind} ramp, got {start_iter}, {end_iter}")


def _check_hqod_values(tcorr_weight, hiou_weight, hiou_alpha, hiou_gamma):
    """Unless the weights are finite and >= 0, alpha finite and > 0, gamma finite."""
    checks = [
        ("MODEL.HQOD.TCORR_WEIGHT", tcorr_weight, "a finite number >= 0", lambda v: v >= 0),
        ("MODEL.HQOD.HIOU_WEIGHT", hiou_weight, "a finite number >= 0", lambda v: v >= 0),
        ("MODEL.HQOD.HIOU_ALPHA", hiou_alpha, "a finite number > 0", lambda v: v > 0),
        ("MODEL.HQOD.HIOU_GAMMA", hiou_gamma, "a finite number", lambda v: True),
    ]
    for name, value, expected, ok in checks:
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise HQODInputError(f"{name} must be {expected}, got {value!r}")


def _changed_keys(node, default, prefix):
    """``KEY=value`` for every leaf of config ``node`` (nested CfgNodes included) that differs from ``default``."""
    changed = []
    for key, value in node.items():
        name = f"{prefix}.{key}"
        if isinstance(value, CfgNode) and isinstance(default.get(key), CfgNode):
            changed += _changed_keys(value, default[key], name)
        elif default.get(key) != value:
            changed.append(f"{name}={value}")
    return changed
