"""Export mode for fake quantizers: while tracing for ONNX, each quantizer computes clamp(round(x / s), qmin, qmax)·s
from its ``spec()`` (what QuantizeLinear -> DequantizeLinear compute) but appears in the graph as one
``hqod::FakeQuant`` marker node naming it, which ``qdq.lower_markers`` then turns into QuantizeLinear /
DequantizeLinear. Weight quantizers carry the integer weights of their conv (BN folded in if ``fold_bn``)."""
import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch

from ..quantization import QuantConvMixin, QuantSpec
from ..quantization.fake_quant import channel_view

MARKER_DOMAIN = "hqod"
MARKER_OP = "FakeQuant"


@dataclass
class MarkedQuantizer:
    """A quantizer of the exported model: its interface and, for weights, the integers its forward pass uses."""

    spec: QuantSpec
    integers: Optional[torch.Tensor] = None


def integer_values(x, spec: QuantSpec):
    """clamp(round(x / scale), qmin, qmax) as the fake-quantization forward computes it (same ops, same floats)."""
    scale = channel_view(spec.scale.to(x.device), x)
    return torch.round(x / scale).clamp_(spec.qmin, spec.qmax)


class _Marker(torch.autograd.Function):
    """Forward: x fake-quantized with step sizes ``steps`` (Python floats: the tracer mishandles a tensor captured
    by two calls) onto [qmin, qmax]; in the ONNX graph: ``hqod::FakeQuant[index](x)`` with x's type and shape."""

    @staticmethod
    def forward(ctx, x, index, steps, qmin, qmax):
        scale = channel_view(torch.tensor(steps, dtype=x.dtype, device=x.device), x)
        return torch.round(x / scale).clamp_(qmin, qmax) * scale

    @staticmethod
    def symbolic(g, x, index, steps, qmin, qmax):
        marked = g.op(f"{MARKER_DOMAIN}::{MARKER_OP}", x, index_i=index)
        marked.setType(x.type())
        return marked


def _marked_forward(index, spec, x):
    return _Marker.apply(x, index, tuple(spec.scale.tolist()), spec.qmin, spec.qmax)


@contextlib.contextmanager
def quantizer_markers(model):
    """Within the context every quantizer of ``model``'s quantized convs runs as a marker (one per quantizer, also
    when convs share it); yields the ``MarkedQuantizer`` list that the markers' ``index`` attributes point into.
    Every quantizer must be initialised."""
    records, patched = [], []
    try:
        with torch.no_grad():
            for conv in (m for m in model.modules() if isinstance(m, QuantConvMixin)):
                weight = conv.effective_weight_bias()[0].detach()
                for role in ("input", "output", "weight"):
                    for quantizer in conv.role_quantizers(role):
                        if any(quantizer is other for other in patched):  # shared by several convs
                            continue
                        spec = quantizer.spec()
                        integers = integer_values(weight, spec).cpu() if role == "weight" else None
                        quantizer.forward = partial(_marked_forward, len(records), spec)
                        records.append(MarkedQuantizer(spec, integers))
                        patched.append(quantizer)
        yield records
    finally:
        for quantizer in patched:
            del quantizer.forward
