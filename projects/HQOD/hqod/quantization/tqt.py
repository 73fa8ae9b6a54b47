"""TQT quantizer (Jain et al., MLSys 2020)."""
import torch
from torch import nn

from .base import FakeQuantizer, quant_range
from .fake_quant import fake_quantize


class TQTQuantizer(FakeQuantizer):
    """TQT: step s = 2^ceil(log2 t)/2^(b-1) (2^b if unsigned) from a learned log2 t; clipping, STE and log2 t gradient
    on round(x/s) as in the paper, ceil passed straight through; ``freeze`` keeps the calibrated t (authors' code)."""

    algorithm = "TQT"

    def __init__(self, bits: int, signed, channels=None, observer=None, role: str = "input", freeze: bool = False):
        super().__init__(bits, signed, channels, observer, role)
        self.freeze = freeze
        self.log2_threshold = nn.Parameter(torch.zeros(channels or 1), requires_grad=not freeze)

    def _step(self, qmax):
        log2_t = self.log2_threshold
        log2_t = log2_t + (torch.ceil(log2_t) - log2_t).detach()
        return torch.exp2(log2_t) / (qmax + 1)  # 2^(b-1) signed, 2^b unsigned

    @property
    def step_size(self):
        return self._step(quant_range(self.bits, bool(self.signed))[1]).detach()

    def _set_step(self, step, qmin, qmax):
        self.log2_threshold.copy_(torch.log2(step * (qmax + 1)).reshape(self.log2_threshold.shape))

    def _fake_quantize(self, x, qmin, qmax):
        return fake_quantize(x, self._step(qmax), qmin, qmax, range_on_rounded=True)

    def extra_repr(self):
        return f"{super().extra_repr()}, freeze={self.freeze}"
