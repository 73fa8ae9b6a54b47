"""convert_to_qat: swap every conv of a built Detectron2 model, in place, for its fake-quantized subclass."""
import contextlib
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
from .placement import ActivationMemo, DataflowRecorder, Slot, plan_placement
from .qconv import can_fold_bn, open_weight_memos, quant_class, release_memos, reset_call_counters
from .state import is_quantized
from .tqt import TQTQuantizer

ALGORITHMS = {"LSQ": LSQQuantizer, "TQT": TQTQuantizer, "DSQ": DSQQuantizer}
DRY_RUN_SIZE = 256
logger = logging.getLogger(__name__)


def convert_to_qat(model, cfg, example_inputs=None):
    """Fake-quantize weight and input of every nn.Conv2d of ``model`` in place per cfg.MODEL.QUANT (ENABLED unread;
    the config is trusted: hqod.engine.validation.validate_config checked it);
    an eval dry run on ``example_inputs`` (default: a blank 256² image) finds the stem and per-FPN-level convs, and
    with PLACEMENT "tensor" the dataflow that places shared input and output quantizers
    (hqod.quantization.placement); FREEZE_FROZEN_QUANTIZERS freezes the quantizers of convs whose weights are frozen
    (freeze_frozen_quantizers)."""
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
    recorder = DataflowRecorder(convs) if qcfg.PLACEMENT == "tensor" else None
    calls = _dry_run(model, convs, example_inputs, recorder)
    first = _matching(convs, qcfg.FIRST_PATTERNS, "FIRST_PATTERNS") if qcfg.FIRST_PATTERNS else list(calls)[:1]
    last = _matching(convs, qcfg.LAST_PATTERNS, None)
    if not last:
        logger.warning("MODEL.QUANT.LAST_PATTERNS %s match no conv: no prediction conv gets FIRST_LAST_BITS",
                       list(qcfg.LAST_PATTERNS))
    for pattern, _, _ in overrides:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in convs):
            logger.warning("MODEL.QUANT.OVERRIDES pattern %r matches no conv", pattern)
    settings = {}  # conv name -> (weight bits, act bits, pinned)
    for name, conv in convs:
        pinned = name in first or name in last
        bits = (qcfg.FIRST_LAST_BITS,) * 2 if pinned else (qcfg.WEIGHT_BITS, qcfg.ACT_BITS)
        if qcfg.DEPTHWISE_BITS and not pinned and is_depthwise(conv):
            bits, pinned = (qcfg.DEPTHWISE_BITS,) * 2, True
        for pattern, weight_bits, act_bits in overrides:
            if fnmatch.fnmatchcase(name, pattern):
                bits, pinned = (weight_bits, act_bits), True
        settings[name] = (*bits, pinned)
    shared = None
    if recorder is not None:
        slots = {name: calls.get(name, 1) if qcfg.PER_LEVEL_ACT_QUANTIZER else 1 for name, _ in convs}
        placement = plan_placement(recorder, slots)
        shared = _shared_activation_quantizers(qcfg, algorithm, placement, settings, first)
    memo = ActivationMemo() if shared is not None else None
    rows = []
    for name, conv in convs:
        weight_bits, act_bits, pinned = settings[name]
        levels = calls.get(name, 1)
        make_weight = partial(_quantizer, qcfg, algorithm, "weight", weight_bits, True,
                              conv.out_channels if qcfg.PER_CHANNEL else None, qcfg.WEIGHT_OBSERVER, False)
        weight_quant = _replicate(make_weight, levels if not qcfg.SHARE_HEAD_WEIGHT_QUANTIZER else 1)
        make_input = partial(_quantizer, qcfg, algorithm, "input", act_bits, True if name in first else None,
                             None, qcfg.ACT_OBSERVER, name in first)
        input_quant, output_quant = None, None
        if shared is not None:  # a conv the dry run did not reach gets its own input quantizer below
            input_quant, output_quant = (_collect(shared, role, name, slots[name]) for role in ("input", "output"))
        if input_quant is None:
            input_quant = _replicate(make_input, levels if qcfg.PER_LEVEL_ACT_QUANTIZER else 1)
        fold_bn = bool(qcfg.FOLD_BN) and name.startswith("backbone.") and can_fold_bn(conv)
        conv.__class__ = quant_class(type(conv))
        device = conv.weight.device
        conv.attach_quantizers(weight_quant.to(device), input_quant.to(device), fold_bn,
                               None if output_quant is None else output_quant.to(device), memo)
        for qname, quantizer in conv.named_modules(prefix=name):
            if isinstance(quantizer, FakeQuantizer) and (shared is None or quantizer.role == "weight"
                                                         or Slot("input", name, 0) not in shared):
                quantizer.qualified_name = qname
                quantizer.follows_schedule = not pinned  # MODEL.QUANT.SCHEDULE.BITS moves only the W/A-bit convs
        rows.append((name, weight_bits, act_bits, "signed" if name in first else "at calibration",
                     "per-channel" if qcfg.PER_CHANNEL else "per-tensor", levels, "yes" if fold_bn else "no")
                    + (() if shared is None else _placement_columns(shared, name)))
    if shared is not None:
        for qname, quantizer in model.named_modules():  # a shared quantizer is named where it is first reached
            if isinstance(quantizer, FakeQuantizer) and quantizer.role != "weight":
                quantizer.qualified_name = qname
    if qcfg.FREEZE_FROZEN_QUANTIZERS:
        frozen = freeze_frozen_quantizers(model)
        if frozen:
            logger.info("MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS: %d quantizers of frozen convs keep their calibrated "
                        "parameters", frozen)
        else:
            logger.warning("MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS is on but no conv has frozen weights: nothing frozen")
    model.register_forward_pre_hook(reset_call_counters)
    model.register_forward_pre_hook(open_weight_memos)
    model.register_forward_hook(release_memos)
    headers = ["conv", "W bits", "A bits", "input sign", "weight step", "calls/forward", "BN folded"]
    if shared is not None:
        headers += ["input quantizer", "output quantizer"]
    table = tabulate(rows, headers=headers, tablefmt="pipe")
    logger.info("Quantized %d convs with %s (W%dA%d, first/last %d bits, placement %s):\n%s", len(rows), algorithm,
                qcfg.WEIGHT_BITS, qcfg.ACT_BITS, qcfg.FIRST_LAST_BITS, qcfg.PLACEMENT, table)
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


def _shared_activation_quantizers(qcfg, algorithm, placement, settings, first) -> dict:
    """{Slot: quantizer} for the "tensor" placement: one quantizer per class of slots, with the most activation bits
    of its members, signed if it reads the image, pinned to its bits if any member is."""
    shared = {}
    for members in placement.classes:
        convs = {slot.conv for slot in members}
        sees_image = any(slot.role == "input" and slot.conv in first for slot in members)
        role = "output" if any(slot.role == "output" for slot in members) else "input"
        quantizer = _quantizer(qcfg, algorithm, role, max(settings[c][1] for c in convs), True if sees_image else None,
                               None, qcfg.ACT_OBSERVER, sees_image)
        quantizer.follows_schedule = not any(settings[c][2] for c in convs)
        shared.update((slot, quantizer) for slot in members)
    return shared


def _collect(shared, role, conv, count):
    """The ``role`` quantizer (or per-level ModuleList) of ``conv`` from the shared slots; None if it has none."""
    found = [shared.get(Slot(role, conv, slot)) for slot in range(count)]
    if None in found:
        return None
    return found[0] if count == 1 else nn.ModuleList(found)


def _placement_columns(shared, conv):
    """How the "tensor" placement equipped ``conv`` (first FPN level): where its input quantizer comes from, and
    whether it quantizes its own output."""
    quantizer = shared.get(Slot("input", conv, 0))
    members = [slot for slot, other in shared.items() if other is quantizer]
    producer = next((slot.conv for slot in members if slot.role == "output"), None)
    readers = len({slot.conv for slot in members if slot.role == "input"})
    source = (f"output quantizer of {producer}" if producer else f"shared by {readers} convs" if readers > 1
              else "own")
    return source, "yes" if Slot("output", conv, 0) in shared else "no"


def _replicate(make, count):
    return make() if count == 1 else nn.ModuleList([make() for _ in range(count)])


def _matching(convs, patterns, key):
    names = [name for name, _ in convs if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if key and not names:
        logger.warning("MODEL.QUANT.%s %s match no conv", key, list(patterns))
    return names


def _dry_run(model, convs, example_inputs, recorder=None):
    """Calls per eval forward of each conv that ran, in order of first call; ``recorder``: a DataflowRecorder that
    watches the pass (PLACEMENT "tensor")."""
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
        with torch.no_grad(), recorder if recorder is not None else contextlib.nullcontext():
            model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls
