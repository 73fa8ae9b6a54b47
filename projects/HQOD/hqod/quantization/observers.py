"""Observers: calibration statistics (per tensor, or per output channel) turned into an initial step size;
``sync()`` reduces them over ranks so that every rank computes the same step."""
import math

import torch
from torch import nn

from ..errors import HQODInputError
from .distributed import all_reduce_, world_size
from .fake_quant import EPS


def range_to_step(lo, hi, qmin: int, qmax: int):
    """Symmetric step for the range [lo, hi]: max(|lo|, |hi|)/((Qp-Qn)/2) if signed, max/(2^b-1) if unsigned."""
    if qmin < 0:
        step = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
    else:
        step = hi / (qmax - qmin)
    return step.clamp(min=EPS)


class Observer(nn.Module):
    """Base: ``forward(x, qmin, qmax)`` records statistics, ``compute_step`` returns the step (None if nothing seen)."""

    def __init__(self, channels=None):
        super().__init__()
        self.channels = channels

    def _rows(self, x):
        """``x`` as a (C, -1) matrix per channel, or (1, -1) per tensor."""
        return x.reshape(x.shape[0] if self.channels else 1, -1)

    def _stat(self, fill: float):
        return torch.full((self.channels or 1,), fill)

    def extra_repr(self):
        return f"channels={self.channels}" if self.channels else "per-tensor"


class MinMaxObserver(Observer):
    """Running min and max over all batches."""

    def __init__(self, channels=None):
        super().__init__(channels)
        self.register_buffer("min_val", self._stat(math.inf), persistent=False)
        self.register_buffer("max_val", self._stat(-math.inf), persistent=False)

    def reset(self):
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)

    @torch.no_grad()
    def forward(self, x, qmin, qmax):
        lo, hi = torch.aminmax(self._rows(x).float(), dim=1)
        torch.minimum(self.min_val, lo, out=self.min_val)
        torch.maximum(self.max_val, hi, out=self.max_val)

    def sync(self):
        all_reduce_(self.min_val, "min")
        all_reduce_(self.max_val, "max")

    def compute_step(self, qmin, qmax):
        if not bool((self.min_val <= self.max_val).all()):
            return None
        return range_to_step(self.min_val, self.max_val, qmin, qmax)


class EMAMSEObserver(Observer):
    """Per batch the range [min, max]·f, f in 1.00, 0.99, ..., 0.06, of least fake-quant MSE; EMA over batches."""

    def __init__(self, channels=None, ema_ratio: float = 0.9, num_factors: int = 95):
        super().__init__(channels)
        self.ema_ratio = ema_ratio
        self.factors = [1.0 - 0.01 * i for i in range(num_factors)]
        self.register_buffer("min_val", self._stat(0.0), persistent=False)
        self.register_buffer("max_val", self._stat(0.0), persistent=False)
        self.register_buffer("batches", torch.zeros(()), persistent=False)

    def reset(self):
        self.min_val.zero_()
        self.max_val.zero_()
        self.batches.zero_()

    @torch.no_grad()
    def forward(self, x, qmin, qmax):
        rows = self._rows(x).float()
        lo, hi = torch.aminmax(rows, dim=1)
        best_err = torch.full_like(lo, math.inf)
        best_factor = torch.ones_like(lo)
        for factor in self.factors:
            step = range_to_step(lo * factor, hi * factor, qmin, qmax)[:, None]
            err = torch.div(rows, step).round_().clamp_(qmin, qmax).mul_(step).sub_(rows).square_().mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_factor = torch.where(better, torch.full_like(lo, factor), best_factor)
        lo, hi = lo * best_factor, hi * best_factor
        if self.batches.item() == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.mul_(self.ema_ratio).add_(lo, alpha=1 - self.ema_ratio)
            self.max_val.mul_(self.ema_ratio).add_(hi, alpha=1 - self.ema_ratio)
        self.batches += 1

    def sync(self):
        """Average the per-rank EMAs over the ranks that observed anything."""
        seen = (self.batches > 0).float()
        stats = torch.cat([self.min_val * seen, self.max_val * seen, seen.reshape(1)])
        all_reduce_(stats)
        ranks = stats[-1]
        if ranks > 0:
            self.min_val.copy_(stats[: len(self.min_val)] / ranks)
            self.max_val.copy_(stats[len(self.min_val): -1] / ranks)
        self.batches.fill_(ranks)

    def compute_step(self, qmin, qmax):
        if self.batches.item() == 0:
            return None
        return range_to_step(self.min_val, self.max_val, qmin, qmax)


class LSQObserver(Observer):
    """LSQ's initialisation s = 2·mean|x|/sqrt(Qp), the mean taken over every element seen."""

    def __init__(self, channels=None):
        super().__init__(channels)
        self.register_buffer("abs_sum", self._stat(0.0), persistent=False)
        self.register_buffer("count", torch.zeros(()), persistent=False)

    def reset(self):
        self.abs_sum.zero_()
        self.count.zero_()

    @torch.no_grad()
    def forward(self, x, qmin, qmax):
        rows = self._rows(x).float()
        self.abs_sum += rows.abs().sum(dim=1)
        self.count += rows.shape[1]

    def sync(self):
        """Average over ranks (the mean is that of all data; repeated syncs leave it unchanged)."""
        for stat in (self.abs_sum, self.count):
            all_reduce_(stat).div_(world_size())

    def compute_step(self, qmin, qmax):
        if self.count.item() == 0:
            return None
        return (2 * self.abs_sum / self.count / math.sqrt(qmax)).clamp(min=EPS)


class PoTModeObserver(Observer):
    """The authors' TQT initialisation: per batch the power-of-two step 2^-e of least squared error, e among
    ``candidates`` exponents from floor(log2(1/s_minmax)) up; the most frequent step wins."""

    EXPONENTS = range(-32, 64)

    def __init__(self, channels=None, candidates: int = 5):
        super().__init__(channels)
        self.candidates = candidates
        self.register_buffer("votes", torch.zeros(channels or 1, len(self.EXPONENTS)), persistent=False)

    def reset(self):
        self.votes.zero_()

    @torch.no_grad()
    def forward(self, x, qmin, qmax):
        rows = self._rows(x).float()
        lo, hi = torch.aminmax(rows, dim=1)
        minmax_step = torch.maximum(lo / qmin if qmin < 0 else torch.zeros_like(lo), hi / qmax).clamp(min=EPS)
        first = torch.floor(torch.log2(1 / minmax_step))
        best_err = torch.full_like(lo, math.inf)
        best_exp = first.clone()
        for k in range(self.candidates):
            exponent = first + k
            step = torch.exp2(-exponent)[:, None]
            err = torch.div(rows, step).round_().clamp_(qmin, qmax).mul_(step).sub_(rows).square_().sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_exp = torch.where(better, exponent, best_exp)
        index = (best_exp - self.EXPONENTS.start).clamp(0, len(self.EXPONENTS) - 1).long()
        self.votes.scatter_add_(1, index[:, None], torch.ones_like(best_exp)[:, None])

    def sync(self):
        all_reduce_(self.votes).div_(world_size())

    def compute_step(self, qmin, qmax):
        if self.votes.sum().item() == 0:
            return None
        exponent = self.votes.argmax(dim=1).float() + self.EXPONENTS.start  # ties: the larger step
        return torch.exp2(-exponent)

    def extra_repr(self):
        return f"{super().extra_repr()}, candidates={self.candidates}"


OBSERVERS = {"MINMAX": MinMaxObserver, "EMA_MSE": EMAMSEObserver, "LSQ": LSQObserver, "POT_MODE": PoTModeObserver}


def build_observer(name: str, channels=None, **kwargs) -> Observer:
    """The observer called ``name`` (a key of OBSERVERS, case-insensitive)."""
    cls = OBSERVERS.get(str(name).upper())
    if cls is None:
        raise HQODInputError(f"unknown quantization observer {name!r}: use one of {', '.join(OBSERVERS)}")
    return cls(channels, **kwargs)
