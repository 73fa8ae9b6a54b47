"""LSQ quantizer (Esser et al., ICLR 2020)."""
import math

from .base import LearnedStepQuantizer
from .fake_quant import fake_quantize, positive


class LSQQuantizer(LearnedStepQuantizer):
    """LSQ: x̂ = clamp(round(x/s), Qn, Qp)·s, STE where Qn <= x/s <= Qp, the paper's s gradient times g = 1/sqrt(N·Qp),
    N = numel of the quantized tensor (whole activation batch, or weight); s is used as max(|s|, eps) > 0."""

    algorithm = "LSQ"

    def _fake_quantize(self, x, qmin, qmax):
        grad_factor = 1.0 / math.sqrt(max(x.numel(), 1) * qmax)
        return fake_quantize(x, positive(self.scale), qmin, qmax, grad_factor)
