"""DSQ quantizer (Gong et al., ICCV 2019)."""
import math

import torch
from torch import nn

from ..errors import HQODInputError
from .base import LearnedStepQuantizer
from .fake_quant import EPS, channel_view, grad_scaled, positive


def _check_alpha(alpha) -> float:
    if not 0 < float(alpha) <= 0.5:
        raise HQODInputError(f"DSQ alpha must be in (0, 0.5], got {alpha!r}")
    return float(alpha)


class DSQQuantizer(LearnedStepQuantizer):
    """DSQ: hard-rounded forward, gradient through φ(v) = ⌊v⌋ + 0.5 + 0.5·tanh(k(v-⌊v⌋-0.5))/(1-α), k = ln(2/α-1),
    v = clamp(x/s, Qn, Qp); α learned or set by ``set_alpha``; s trained as LSQ's (max(|s|, eps), grad·1/sqrt(N·Qp))."""

    algorithm = "DSQ"

    def __init__(self, bits: int, signed, channels=None, observer=None, role: str = "input", alpha: float = 0.4,
                 learn_alpha: bool = True):
        super().__init__(bits, signed, channels, observer, role)
        self.alpha = nn.Parameter(torch.tensor(_check_alpha(alpha)), requires_grad=learn_alpha)

    @torch.no_grad()
    def set_alpha(self, alpha: float):
        """Set α, e.g. from an annealing schedule."""
        self.alpha.fill_(_check_alpha(alpha))

    def _fake_quantize(self, x, qmin, qmax):
        step = channel_view(grad_scaled(positive(self.scale), 1.0 / math.sqrt(max(x.numel(), 1) * qmax)), x)
        alpha = self.alpha + (self.alpha.clamp(EPS, 0.5) - self.alpha).detach()
        v = torch.clamp(x / step, qmin, qmax)
        floor = v.detach().floor()
        soft = floor + 0.5 + 0.5 / (1 - alpha) * torch.tanh(torch.log(2 / alpha - 1) * (v - floor - 0.5))
        hard = soft + (v.detach().round() - soft).detach()
        return hard * step

    def extra_repr(self):
        return f"{super().extra_repr()}, alpha={self.alpha.item():.4g}, learn_alpha={self.alpha.requires_grad}"
