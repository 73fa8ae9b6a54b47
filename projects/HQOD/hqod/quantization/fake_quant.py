"""The uniform fake-quantization op shared by LSQ and TQT, clamp(round(x/s), Qn, Qp)·s, and small autograd helpers."""
import functools

import torch

EPS = torch.finfo(torch.float32).eps


def positive(step):
    """max(|step|, eps) with the gradient passed through the clamp: the step size stays positive and never stalls."""
    magnitude = step.abs()
    return magnitude + (magnitude.clamp(min=EPS) - magnitude).detach()


def grad_scaled(t, factor: float):
    """``t`` in the forward pass; its gradient multiplied by ``factor`` in the backward pass."""
    scaled = t * factor
    return scaled + (t - scaled).detach()


def channel_view(step, x):
    """A per-tensor step (shape (1,)) as is; a per-channel step (shape (C,)) viewed along dim 0 of ``x``."""
    return step if step.numel() == 1 else step.reshape(-1, *([1] * (x.dim() - 1)))


@functools.lru_cache(maxsize=None)
def open_bounds(dtype, low: int, high: int):
    """(a, b) with a < v < b exactly when low <= v <= high for every finite ``dtype`` value v: the floats next to
    ``low`` and ``high``, for hardtanh_backward, which passes the gradient on the open interval in one fused pass."""
    low_t, high_t = torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype)
    return (torch.nextafter(low_t, low_t - 1).item(), torch.nextafter(high_t, high_t + 1).item())


class _UniformFakeQuantize(torch.autograd.Function):
    """Forward clamp(round(x/s), Qn, Qp)·s; backward STE for in-range x and the step-size gradient of LSQ / TQT.
    Keeps only x and the step and recomputes v = x/s in backward, updating the temporaries in place (on the CPU each
    fresh large tensor costs page faults); the STE mask and the masking are one hardtanh_backward pass."""

    @staticmethod
    def forward(ctx, x, step, qmin, qmax, grad_factor, range_on_rounded):
        ctx.save_for_backward(x, step)
        ctx.qrange, ctx.grad_factor, ctx.range_on_rounded = (qmin, qmax), grad_factor, range_on_rounded
        s = channel_view(step, x)
        return torch.div(x, s).round_().clamp_(qmin, qmax).mul_(s)

    @staticmethod
    def backward(ctx, grad_out):
        x, step = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        v = x / channel_view(step, x)
        if ctx.range_on_rounded:  # round(v) is an integer: in range iff qmin - 1 < round(v) < qmax + 1
            q = torch.round(v)
            grad_x = torch.ops.aten.hardtanh_backward(grad_out, q, qmin - 1, qmax + 1)
        else:
            q = None
            grad_x = torch.ops.aten.hardtanh_backward(grad_out, v, *open_bounds(v.dtype, qmin, qmax))
        grad_step = None
        if ctx.needs_input_grad[1]:
            # d(out)/ds = clamp(round(v)) - v inside the range, Qn or Qp outside: sum dy·q - sum_inside dy·v
            inner = grad_x * v if step.numel() > 1 else grad_x.reshape(-1).dot(v.reshape(-1))
            q = (v.round_() if q is None else q).clamp_(qmin, qmax)
            if step.numel() == 1:
                grad_step = grad_out.reshape(-1).dot(q.reshape(-1)) - inner
            else:
                grad_step = (grad_out * q - inner).sum(dim=tuple(range(1, x.dim())))
            grad_step = grad_step.reshape(step.shape) * ctx.grad_factor
        return grad_x if ctx.needs_input_grad[0] else None, grad_step, None, None, None, None


def fake_quantize(x, step, qmin: int, qmax: int, grad_factor: float = 1.0, range_on_rounded: bool = False):
    """Fake-quantize ``x`` with positive ``step`` ((1,), or (C,) along dim 0) onto [qmin, qmax]; STE for x in range,
    LSQ's step gradient times ``grad_factor``; "in range" tests x/s, or round(x/s) if ``range_on_rounded`` (TQT)."""
    return _UniformFakeQuantize.apply(x, step, qmin, qmax, grad_factor, range_on_rounded)
