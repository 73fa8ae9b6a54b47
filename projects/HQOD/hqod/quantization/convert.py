"""convert_to_qat: swap every conv of a built Detectron2 model, in place, for its fake-quantized subclass."""
import fnmatch
import logging
from functools import partial

import torch
from tabulate import tabulate
from torch import nn

from ..errors import HQODInputError
from .base import FakeQuantizer
from .dsq import DSQQuantizer
from .freeze import freeze_frozen_quantizers
from .lsq import LSQQuantizer
from .observers import build_observer
from .qconv import can_fold_bn, open_weight_memos, quant_class, release_weight_memos, reset_call_counters
from .state import is_quantized
from .tqt import TQTQuantizer

ALGORITHMS = {"LSQ": LSQQuantizer, "TQT": TQTQuantizer, "DSQ": DSQQuantizer}
DRY_RUN_SIZE = 256
logger = logging.getLogger(__name__)


def convert_to_qat(model, cfg, example_inputs=None):
    """Fake-quantize weight and input of every nn.Conv2d of ``model`` in place per cfg.MODEL.QUANT (ENABLED unread;
    the config is trusted: hqod.engine.validation.validate_config checked it);
    an eval dry run on ``example_inputs`` (default: a blank 256² image) finds the stem and per-FPN-level convs;
    FREEZE_FROZEN_QUANTIZERS freezes the quantizers of convs whose weights are frozen (freeze_frozen_quantizers)."""
    qcfg = cfg.MODEL.QUANT
    if is_quantized(model):
        raise HQODInputError("convert_to_qat got a model that is already converted to QAT")
    algorithm = str(qcfg.ALGORITHM).upper()
    overrides = [parse_override(item) for item in qcfg.OVERRIDES]
    convs = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise HQODInputError(f"convert_to_qat found no nn.Conv2d in {type(model).__name__}")
    for _, conv in convs:
        quant_class(type(conv))  # fail before changing anything
    calls = _dry_run(model, convs, example_inputs)
    first = _matching(convs, qcfg.FIRST_PATTERNS, "FIRST_PATTERNS") if qcfg.FIRST_PATTERNS else list(calls)[:1]
    last = _matching(convs, qcfg.LAST_PATTERNS, None)
    if not last:
        logger.warning("MODEL.QUANT.LAST_PATTERNS %s match no conv: no prediction conv gets FIRST_LAST_BITS",
                       list(qcfg.LAST_PATTERNS))
    for pattern, _, _ in overrides:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in convs):
            logger.warning("MODEL.QUANT.OVERRIDES pattern %r matches no conv", pattern)
    rows = []
    for name, conv in convs:
        pinned = name in first or name in last
        bits = (qcfg.FIRST_LAST_BITS,) * 2 if pinned else (qcfg.WEIGHT_BITS, qcfg.ACT_BITS)
        if qcfg.DEPTHWISE_BITS and not pinned and is_depthwise(conv):
            bits, pinned = (qcfg.DEPTHWISE_BITS,) * 2, True
        for pattern, weight_bits, act_bits in overrides:
            if fnmatch.fnmatchcase(name, pattern):
                bits, pinned = (weight_bits, act_bits), True
        levels = calls.get(name, 1)
        make_weight = partial(_quantizer, qcfg, algorithm, "weight", bits[0], True,
                              conv.out_channels if qcfg.PER_CHANNEL else None, qcfg.WEIGHT_OBSERVER, False)
        make_input = partial(_quantizer, qcfg, algorithm, "input", bits[1], True if name in first else None, None,
                             qcfg.ACT_OBSERVER, name in first)
        weight_quant = _replicate(make_weight, levels if not qcfg.SHARE_HEAD_WEIGHT_QUANTIZER else 1)
        input_quant = _replicate(make_input, levels if qcfg.PER_LEVEL_ACT_QUANTIZER else 1)
        fold_bn = bool(qcfg.FOLD_BN) and name.startswith("backbone.") and can_fold_bn(conv)
        conv.__class__ = quant_class(type(conv))
        conv.attach_quantizers(weight_quant.to(conv.weight.device), input_quant.to(conv.weight.device), fold_bn)
        for qname, quantizer in conv.named_modules(prefix=name):
            if isinstance(quantizer, FakeQuantizer):
                quantizer.qualified_name = qname
                quantizer.follows_schedule = not pinned  # MODEL.QUANT.SCHEDULE.BITS moves only the W/A-bit convs
        rows.append((name, bits[0], bits[1], "signed" if name in first else "at calibration",
                     "per-channel" if qcfg.PER_CHANNEL else "per-tensor", levels, "yes" if fold_bn else "no"))
    if qcfg.FREEZE_FROZEN_QUANTIZERS:
        frozen = freeze_frozen_quantizers(model)
        if frozen:
            logger.info("MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS: %d quantizers of frozen convs keep their calibrated "
                        "parameters", frozen)
        else:
            logger.warning("MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS is on but no conv has frozen weights: nothing frozen")
    model.register_forward_pre_hook(reset_call_counters)
    model.register_forward_pre_hook(open_weight_memos)
    model.register_forward_hook(release_weight_memos)
    table = tabulate(rows, headers=["conv", "W bits", "A bits", "input sign", "weight step", "calls/forward",
                                    "BN folded"], tablefmt="pipe")
    logger.info("Quantized %d convs with %s (W%dA%d, first/last %d bits):\n%s", len(rows), algorithm,
                qcfg.WEIGHT_BITS, qcfg.ACT_BITS, qcfg.FIRST_LAST_BITS, table)
    return model


def parse_override(item):
    """``"pattern:weight_bits:act_bits"`` (an fnmatch pattern over module names) -> (pattern, wbits, abits);
    ValueError when it is not of that form (hqod.engine.validation reports it to the user)."""
    pattern, weight_bits, act_bits = str(item).rsplit(":", 2)
    return pattern, int(weight_bits), int(act_bits)


def is_depthwise(conv) -> bool:
    """Whether ``conv`` filters each input channel on its own (groups == in_channels > 1), for DEPTHWISE_BITS."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def _quantizer(qcfg, algorithm, role, bits, signed, channels, observer, sees_image):
    observer_kwargs = {"candidates": 1} if sees_image and str(observer).upper() == "POT_MODE" else {}
    kwargs = {"TQT": {"freeze": qcfg.TQT_FREEZE_SCALE},
              "DSQ": {"alpha": qcfg.DSQ_ALPHA, "learn_alpha": qcfg.DSQ_LEARN_ALPHA}}.get(algorithm, {})
    return ALGORITHMS[algorithm](bits, signed, channels, build_observer(observer, channels, **observer_kwargs),
                                 role=role, **kwargs)


def _replicate(make, count):
    return make() if count == 1 else nn.ModuleList([make() for _ in range(count)])


def _matching(convs, patterns, key):
    names = [name for name, _ in convs if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if key and not names:
        logger.warning("MODEL.QUANT.%s %s match no conv", key, list(patterns))
    return names


def _dry_run(model, convs, example_inputs):
    """Calls per eval forward of each conv that ran, in order of first call."""
    calls = {}

    def count(name, module, inputs):
        calls[name] = calls.get(name, 0) + 1

    handles = [conv.register_forward_pre_hook(partial(count, name)) for name, conv in convs]
    if example_inputs is None:
        image = torch.zeros(3, DRY_RUN_SIZE, DRY_RUN_SIZE, device=convs[0][1].weight.device)
        example_inputs = [{"image": image, "height": DRY_RUN_SIZE, "width": DRY_RUN_SIZE}]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls
