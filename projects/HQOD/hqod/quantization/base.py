"""FakeQuantizer: the base of LSQ, TQT and DSQ (integer range, calibration / QAT modes, the ``initialized`` flag) and
its declared interface, ``QuantSpec``: what export, checkpoints, schedules and tools read of a quantizer."""
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..errors import HQODInputError
from .distributed import all_reduce_
from .fake_quant import positive
from .observers import MinMaxObserver


def check_bits(bits, what: str = "quantization bits") -> int:
    """``bits`` if it is an integer from 2 to 8, else HQODInputError naming ``what``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise HQODInputError(f"{what} must be an integer from 2 to 8, got {bits!r}")
    return bits


def quant_range(bits: int, signed: bool):
    """Integer grid: [-2^(b-1), 2^(b-1)-1] if signed, [0, 2^b-1] if unsigned."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


# "weight" of a conv, "input": the activation a conv reads, "output": a conv's output after its norm and activation
# (MODEL.QUANT.PLACEMENT "tensor").
ROLES = ("weight", "input", "output")


class QuantSpec(NamedTuple):
    """One quantizer as a runtime sees it: q = clamp(round(x / scale) + zero_point, qmin, qmax), x̂ = (q - zero_point)
    · scale, with scale and zero_point per tensor (shape (1,)) or per channel along ``axis`` (shape (C,))."""

    name: str  # qualified module name, e.g. "head.cls_subnet.0.input_quant.2"
    role: str  # "weight" (of a conv), "input" (the activation a conv reads) or "output" (a conv's output)
    bits: int
    signed: bool
    axis: Optional[int]  # per-channel axis of the quantized tensor (0: a conv weight's output channels), or None
    scale: torch.Tensor  # float32 step sizes, as the forward pass uses them (max(|s|, eps), TQT's power of two)
    zero_point: torch.Tensor  # int64, same shape; 0: every quantizer here is symmetric or unsigned from 0
    qmin: int
    qmax: int


class FakeQuantizer(nn.Module):
    """Fake quantizer on a b-bit grid, per tensor or per output channel; ``signed=None``: signed iff a calibration
    input was negative on any rank. Fake quantization (default mode) raises until calibrated or loaded from QAT.
    ``role`` declares what it quantizes (one of ``ROLES``); ``spec()`` gives its runtime parameters."""

    algorithm = ""

    def __init__(self, bits: int, signed, channels=None, observer=None, role: str = "input"):
        super().__init__()
        if role not in ROLES:
            raise HQODInputError(f"quantizer role must be one of {ROLES}, got {role!r}")
        self.role = role
        self.bits = check_bits(bits)
        self.channels = channels
        self.auto_signed = signed is None
        self.register_buffer("num_bits", torch.tensor(bits))  # persisted: a bit schedule may change it
        self.register_buffer("signed", torch.tensor(bool(signed)))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("negative_seen", torch.tensor(False), persistent=False)
        self.observer = observer if observer is not None else MinMaxObserver(channels)
        self.observe_enabled = False
        self.fake_quant_enabled = True
        self.qualified_name = ""  # set at conversion, for error messages
        self.follows_schedule = False  # set at conversion: whether a bit-width schedule applies to it
        self._qrange = None  # (qmin, qmax), cached once the quantizer is known to be initialised

    def forward(self, x):
        if self.observe_enabled and x.numel() > 0:
            self._observe(x.detach())
        if not self.fake_quant_enabled:
            return x
        if self._qrange is None:
            self._qrange = self._checked_range()
        return self._fake_quantize(x, *self._qrange)

    def _observe(self, x):
        if self.auto_signed:
            self.negative_seen.logical_or_(x.min() < 0)
            signed = bool(self.negative_seen)
        else:
            signed = bool(self.signed)
        self.observer(x, *quant_range(self.bits, signed))

    def _checked_range(self):
        if not bool(self.initialized):
            raise HQODInputError(
                f"quantizer {self.qualified_name or type(self).__name__} fake-quantizes before it was initialised: "
                "run hqod.quantization.calibrate(model, ...) first, or load a QAT checkpoint"
            )
        return quant_range(self.bits, bool(self.signed))

    @torch.no_grad()
    def set_bits(self, bits: int):
        """Switch to ``bits`` bits keeping the clipping threshold s·2^(b-1) (s·2^b unsigned) of an initialised step."""
        check_bits(bits)
        if bool(self.initialized):
            self._rescale_step(2.0 ** (self.bits - bits))
        self.bits = bits
        self.num_bits.fill_(bits)
        self._qrange = None

    def _rescale_step(self, factor: float):
        """Multiply the step size by ``factor`` (TQT keeps its threshold, so its step follows the bits by itself)."""

    def reset_observation(self):
        """Forget what was observed (called when a calibration starts)."""
        self.observer.reset()
        self.negative_seen.zero_()

    @torch.no_grad()
    def finish_calibration(self) -> bool:
        """Reduce the statistics over ranks and initialise the step size; False if no rank observed anything."""
        if self.auto_signed:
            negative = all_reduce_(self.negative_seen.float(), "max")
            self.signed.fill_(bool(negative))
        qmin, qmax = quant_range(self.bits, bool(self.signed))
        self.observer.sync()
        step = self.observer.compute_step(qmin, qmax)
        self._qrange = None
        if step is None:
            return False
        self._set_step(step.to(self.signed.device), qmin, qmax)
        self.initialized.fill_(True)
        return True

    @property
    def axis(self):
        """The per-channel axis (0, a conv weight's output channels) or None for a per-tensor quantizer."""
        return 0 if self.channels else None

    def spec(self) -> QuantSpec:
        """This quantizer's declared interface with the step sizes its forward pass uses; it must be initialised."""
        qmin, qmax = self._checked_range()
        scale = self.step_size.detach().float().reshape(-1).cpu().clone()
        return QuantSpec(self.qualified_name, self.role, self.bits, bool(self.signed), self.axis, scale,
                         torch.zeros(scale.shape, dtype=torch.int64), qmin, qmax)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.bits = int(self.num_bits)
        self._qrange = None

    def extra_repr(self):
        signed = "auto" if self.auto_signed and not bool(self.initialized) else str(bool(self.signed))
        granularity = f"per-channel({self.channels})" if self.channels else "per-tensor"
        initialized = bool(self.initialized)
        return (f"{self.algorithm}, {self.role}, bits={self.bits}, signed={signed}, {granularity}, "
                f"initialized={initialized}")


class LearnedStepQuantizer(FakeQuantizer):
    """A fake quantizer whose state is a learned step size ``scale`` (LSQ and DSQ), used as max(|s|, eps) > 0."""

    def __init__(self, bits: int, signed, channels=None, observer=None, role: str = "input"):
        super().__init__(bits, signed, channels, observer, role)
        self.scale = nn.Parameter(torch.ones(channels or 1))

    @property
    def step_size(self):
        return positive(self.scale).detach()

    def _set_step(self, step, qmin, qmax):
        self.scale.copy_(step.reshape(self.scale.shape))

    def _rescale_step(self, factor):
        self.scale.mul_(factor)
