"""LSQ quantizer (Esser et al., ICLR 2020)."""
import math

import torch
from torch import nn

from .base import FakeQuantizer
from .fake_quant import fake_quantize, positive


class LSQQuantizer(FakeQuantizer):
    """LSQ: x̂ = clamp(round(x/s), Qn, Qp)·s, STE where Qn <= x/s <= Qp, the paper's s gradient times g = 1/sqrt(N·Qp),
    N = numel of the quantized tensor (whole activation batch, or weight); s is used as max(|s|, eps) > 0."""

    algorithm = "LSQ"

    def __init__(self, bits: int, signed, channels=None, observer=None):
        super().__init__(bits, signed, channels, observer)
        self.scale = nn.Parameter(torch.ones(channels or 1))

    @property
    def step_size(self):
        return positive(self.scale).detach()

    def _set_step(self, step, qmin, qmax):
        self.scale.copy_(step.reshape(self.scale.shape))

    def _rescale_step(self, factor):
        self.scale.mul_(factor)

    def _fake_quantize(self, x, qmin, qmax):
        grad_factor = 1.0 / math.sqrt(max(x.numel(), 1) * qmax)
        return fake_quantize(x, positive(self.scale), qmin, qmax, grad_factor)
