"""Fake-quantized convolutions: subclasses of nn.Conv2d and Detectron2's Conv2d with the same parameters."""
import torch
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from ..errors import HQODInputError


# The one definition of where a quantized conv keeps its quantizers, by role (hqod.quantization.base.ROLES): module
# names, state-dict keys ("<conv>.input_quant.scale", "<conv>.input_quant.2.scale" per FPN level) and the checkpoint
# guard (hqod.quantization.state.is_quantizer_key) all derive from it. "output" exists only with PLACEMENT "tensor".
QUANTIZER_ATTRIBUTES = {"weight": "weight_quant", "input": "input_quant", "output": "output_quant"}
# Roles a conv's quantizers may have: under PLACEMENT "tensor" a conv reading another conv's quantized output uses
# that output quantizer as its input quantizer.
_ACCEPTED_ROLES = {"weight": ("weight",), "input": ("input", "output"), "output": ("output",)}


def _members(quantizers):
    """A conv's quantizers of one role as a list: a ModuleList's members, the one quantizer, or none."""
    if quantizers is None:
        return []
    return list(quantizers) if isinstance(quantizers, nn.ModuleList) else [quantizers]


def _pick(quantizer, call: int):
    return quantizer[call % len(quantizer)] if isinstance(quantizer, nn.ModuleList) else quantizer


class QuantConvMixin:
    """Fake-quantizes weight and input, then convolves; Detectron2's norm and activation run as before (BN folded into
    the weight if ``fold_bn``), then the output quantizer if any. A ModuleList of quantizers is indexed by the call
    number (FPN level) in a forward; a weight quantizer shared by all calls runs once per forward of the converted
    model (``quantized_weight_bias``). ``activation_memo`` (PLACEMENT "tensor"): input and output quantizers shared
    between convs run through it, so that each tensor is quantized once per forward."""

    def attach_quantizers(self, weight_quant: nn.Module, input_quant: nn.Module, fold_bn: bool = False,
                          output_quant=None, activation_memo=None):
        for role, quantizers in (("weight", weight_quant), ("input", input_quant), ("output", output_quant)):
            if any(q.role not in _ACCEPTED_ROLES[role] for q in _members(quantizers)):
                raise HQODInputError(f"a {role} quantizer of {type(self).__name__} was built with another role")
            setattr(self, QUANTIZER_ATTRIBUTES[role], quantizers)
        self.fold_bn = fold_bn
        self.activation_memo = activation_memo
        self.calls = 0
        self.weight_memo = None  # a list during a forward of the converted model: [(weight, bias)] once computed

    def quantizer(self, role: str, call: int = 0):
        """The ``role`` quantizer ("weight", "input" or "output") used by call ``call`` (FPN level) of a forward pass;
        None for a conv without output quantizer."""
        quantizers = getattr(self, QUANTIZER_ATTRIBUTES[role], None)
        return None if quantizers is None else _pick(quantizers, call)

    def role_quantizers(self, role: str):
        """Every ``role`` quantizer of this conv (one, or one per FPN level; none for a missing output quantizer)."""
        return _members(getattr(self, QUANTIZER_ATTRIBUTES[role], None))

    def forward(self, x):
        call, self.calls = self.calls, self.calls + 1
        x = self._conv_forward(self._quantize_activation("input", call, x), *self.quantized_weight_bias(call))
        norm, activation = getattr(self, "norm", None), getattr(self, "activation", None)
        if norm is not None and not self.fold_bn:
            x = norm(x)
        x = activation(x) if activation is not None else x
        return self._quantize_activation("output", call, x)

    def _quantize_activation(self, role, call, x):
        quantizer = self.quantizer(role, call)
        if quantizer is None:
            return x
        return quantizer(x) if self.activation_memo is None else self.activation_memo(quantizer, x)

    def quantized_weight_bias(self, call: int = 0):
        """The fake-quantized weight and the bias of call ``call``. Within a forward of the converted model a weight
        quantizer shared by all calls (FPN levels) runs at the first call only and the later calls reuse its output:
        the same values, and autograd sums the calls' weight gradients before one backward through the quantizer,
        which equals the sum of the per-call backwards. Not while observing (every call is observed, as before) or
        tracing (each call keeps its own quantizer node in an exported graph)."""
        memo = self.weight_memo
        if memo:
            return memo[0]
        quantizer = self.quantizer("weight", call)
        weight, bias = self.effective_weight_bias()
        result = quantizer(weight), bias
        shared = not isinstance(getattr(self, QUANTIZER_ATTRIBUTES["weight"]), nn.ModuleList)
        if memo is not None and shared and not quantizer.observe_enabled and not torch.jit.is_tracing():
            memo.append(result)
        return result

    def effective_weight_bias(self):
        """The float weight and bias the weight quantizer and the convolution see (BN folded in if ``fold_bn``)."""
        return self._folded() if self.fold_bn else (self.weight, self.bias)

    def _folded(self):
        bn = self.norm
        gamma = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * gamma
        if self.bias is not None:
            bias = bias + self.bias * gamma
        return self.weight * gamma.reshape(-1, 1, 1, 1), bias


class QuantConv2d(QuantConvMixin, nn.Conv2d):
    """Fake-quantized ``torch.nn.Conv2d``."""


class QuantD2Conv2d(QuantConvMixin, D2Conv2d):
    """Fake-quantized ``detectron2.layers.Conv2d`` (keeps its norm and activation)."""


_QUANT_CLASSES = {nn.Conv2d: QuantConv2d, D2Conv2d: QuantD2Conv2d}


def quant_class(cls):
    """The fake-quantized subclass of conv class ``cls`` (created once for subclasses that keep the base forward)."""
    if cls not in _QUANT_CLASSES:
        if cls.forward not in (nn.Conv2d.forward, D2Conv2d.forward):
            raise HQODInputError(f"cannot quantize {cls.__module__}.{cls.__qualname__}: it overrides Conv2d.forward")
        _QUANT_CLASSES[cls] = type(f"Quant{cls.__name__}", (QuantConvMixin, cls), {"__module__": __name__})
    return _QUANT_CLASSES[cls]


def can_fold_bn(conv) -> bool:
    """Whether ``conv`` carries an affine BatchNorm that ``fold_bn`` can fold: BN, FrozenBN and SyncBN, which is
    torch's on GPUs and Detectron2's ``NaiveSyncBatchNorm`` (a BatchNorm2d) on CPU, so both fold alike."""
    norm = getattr(conv, "norm", None)
    foldable = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
    return isinstance(norm, foldable) and getattr(norm, "weight", None) is not None


def reset_call_counters(model, inputs=None):
    """Forward pre-hook of the converted model: the next call of each conv is call 0 (the first FPN level), and no
    activation is memoised yet."""
    for module in model.modules():
        if isinstance(module, QuantConvMixin):
            module.calls = 0
            if module.activation_memo is not None:
                module.activation_memo.clear()


def open_weight_memos(model, inputs=None):
    """Forward pre-hook of the converted model: each conv may keep its quantized weight for the later calls."""
    for module in model.modules():
        if isinstance(module, QuantConvMixin):
            module.weight_memo = []


def release_memos(model, inputs=None, outputs=None):
    """Forward hook of the converted model: the convs drop the quantized weights and activations kept during the
    forward, so that nothing of the pass outlives it."""
    for module in model.modules():
        if isinstance(module, QuantConvMixin):
            module.weight_memo = None
            if module.activation_memo is not None:
                module.activation_memo.clear()
