"""Convert torchvision's MobileNetV2 ImageNet state dict into a Detectron2 checkpoint of ``MobileNetV2``.

torchvision's ``features.0`` ... ``features.18`` become ``backbone.bottom_up.stem``, ``stage1.0`` ... ``stage5.4``
(in order); inside a block ``conv.*`` becomes ``expand`` / ``depthwise`` / ``project`` with ``.norm`` for its BN.
Every weight, bias and running statistic of ``features`` is used exactly once; the classifier and BN's
``num_batches_tracked`` counters are dropped (no model part uses them; BN fills its counter in when loading).
"""
import io
import os

import torch
from detectron2.layers import Conv2d

from ...errors import HQODInputError
from ...utils.io import atomic_write_bytes
from .mobilenetv2 import MobileNetV2

PREFIX = "backbone.bottom_up."
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


def _units(body):
    """``(name, module)`` of the body's 19 units in torchvision's ``features`` order."""
    for name, child in body.named_children():
        if isinstance(child, torch.nn.Sequential):
            yield from ((f"{name}.{i}", unit) for i, unit in child.named_children())
        else:
            yield name, child


def _torchvision_convs(unit):
    """``(torchvision conv prefix, torchvision norm prefix, our conv name)`` of one unit, in forward order."""
    if isinstance(unit, Conv2d):  # features.0 and features.18: Conv2dNormActivation
        return [("0", "1", "")]
    names = [name for name, child in unit.named_children() if isinstance(child, Conv2d)]
    *activated, project = names  # conv.J = Conv2dNormActivation; the last conv and its BN are conv.J, conv.J+1
    k = len(activated)
    return [(f"conv.{j}.0", f"conv.{j}.1", name) for j, name in enumerate(activated)] + \
        [(f"conv.{k}", f"conv.{k + 1}", project)]


def reference_body() -> MobileNetV2:
    """The body torchvision's ImageNet weights fit: width 1.0, all five stages, BN layout."""
    return MobileNetV2(norm="BN", out_features=("stage5",))


def torchvision_key_map(body: MobileNetV2) -> dict:
    """``{torchvision key: Detectron2 key}`` for every tensor of ``body`` (a ``reference_body()``)."""
    mapping = {}
    for index, (unit_name, unit) in enumerate(_units(body)):
        for tv_conv, tv_norm, ours in _torchvision_convs(unit):
            ours = f"{unit_name}.{ours}".rstrip(".")
            mapping[f"features.{index}.{tv_conv}.weight"] = f"{PREFIX}{ours}.weight"
            mapping.update({f"features.{index}.{tv_norm}.{k}": f"{PREFIX}{ours}.norm.{k}" for k in _NORM_KEYS})
    return mapping


def convert_state_dict(state_dict) -> dict:
    """Rename a torchvision MobileNetV2 (width 1.0) state dict to ``backbone.bottom_up.*`` keys, checking shapes."""
    if not isinstance(state_dict, dict):
        raise HQODInputError(f"expected a state dict, got a {type(state_dict).__name__}; pass torchvision's "
                             "mobilenet_v2-b0353104.pth (a state dict)")
    body = reference_body()
    mapping = torchvision_key_map(body)
    used = {k for k in state_dict if k.startswith("features.") and not k.endswith(".num_batches_tracked")}
    if used != set(mapping):
        raise HQODInputError(
            f"not a torchvision MobileNetV2 (width 1.0) state dict: {len(used - set(mapping))} unknown and "
            f"{len(set(mapping) - used)} missing 'features.*' tensors; pass torchvision's mobilenet_v2-b0353104.pth")
    expected = body.state_dict()
    converted = {}
    for tv_key, key in mapping.items():
        shape, wanted = tuple(state_dict[tv_key].shape), tuple(expected[key[len(PREFIX):]].shape)
        if shape != wanted:
            raise HQODInputError(f"{tv_key} has shape {shape}, not MobileNetV2 width 1.0's {wanted}; "
                                 "pass a width-1.0 torchvision checkpoint")
        converted[key] = state_dict[tv_key]
    return converted


def convert_file(src, dst) -> None:
    """Convert torchvision's ``.pth`` at ``src`` to a Detectron2 checkpoint at ``dst``, written atomically."""
    if not os.path.isfile(src):
        raise HQODInputError(f"{src}: no such file; pass the path of torchvision's mobilenet_v2-b0353104.pth "
                             "(torchvision caches it in ~/.cache/torch/hub/checkpoints/)")
    try:
        state_dict = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise HQODInputError(f"{src}: not a readable PyTorch checkpoint ({type(e).__name__}); "
                             "pass torchvision's mobilenet_v2-b0353104.pth") from None
    buffer = io.BytesIO()
    torch.save({"model": convert_state_dict(state_dict)}, buffer)
    atomic_write_bytes(dst, buffer.getvalue())
