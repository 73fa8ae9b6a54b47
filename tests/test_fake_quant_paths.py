"""The fast QAT paths against the computations they replace: the fused fake-quantization op against plain autograd
(also at values exactly on and next to the clipping range), and a weight quantizer shared by the FPN levels run once
per forward against running it at every level."""
import copy
import math

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.layers import Conv2d as D2Conv2d
from torch import nn

from hqod.quantization import ALGORITHMS
from hqod.quantization.base import quant_range
from hqod.quantization.fake_quant import fake_quantize
from hqod.quantization.qconv import open_weight_memos, quant_class, release_memos, reset_call_counters

LEVELS = 3


def plain_autograd(x, step, qmin, qmax, grad_factor, range_on_rounded):
    """clamp(round(x/s))·s with a straight-through round, in autograd's own ops: the gradient passes where x/s (LSQ)
    or round(x/s) (TQT) lies in [qmin, qmax], bounds included (torch.clamp's own backward excludes them); the step's
    gradient is scaled by grad_factor."""
    step.register_hook(lambda grad: grad * grad_factor)
    s = step if step.numel() == 1 else step.reshape(-1, *([1] * (x.dim() - 1)))
    v = x / s
    if range_on_rounded:
        v = v + (v.round() - v).detach()
    inside = (v >= qmin) & (v <= qmax)
    clamped = torch.where(inside, v, v.detach().clamp(qmin, qmax))
    return (clamped + (clamped.round() - clamped).detach()) * s


def edge_inputs(step, qmin, qmax):
    """Per output channel: x/s exactly at every integer of [Qn-2, Qp+2], at the floats next to Qn and Qp, at ±0 and
    at half-integers (ties of round), then random values; channels along dim 0."""
    ks = torch.arange(qmin - 2, qmax + 3, dtype=torch.float32)
    bounds = torch.tensor([float(qmin), float(qmax)])
    near = torch.cat([torch.nextafter(bounds, bounds - 1), torch.nextafter(bounds, bounds + 1)])
    special = torch.tensor([0.0, -0.0, qmin - 0.5, qmax + 0.5, qmin + 0.5, qmax - 0.5])
    v = torch.cat([ks, near, special, torch.randn(40, generator=torch.Generator().manual_seed(0)) * qmax])
    x = v.reshape(1, -1) * step.reshape(-1, 1)  # products: x/s lands on v or next to it, both cases are tested
    return torch.cat([x, -x.flip(1)], dim=1).reshape(len(step), 2, 1, -1)


@pytest.mark.parametrize("range_on_rounded", [False, True], ids=["lsq", "tqt"])
@pytest.mark.parametrize("bits,signed", [(2, True), (4, False), (4, True), (8, False)])
@pytest.mark.parametrize("channels", [None, 3])
def test_fake_quantize_matches_plain_autograd(range_on_rounded, bits, signed, channels):
    qmin, qmax = quant_range(bits, signed)
    step = torch.rand(channels or 1, generator=torch.Generator().manual_seed(1)) + 0.05
    x = edge_inputs(step, qmin, qmax)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    grad_factor = 1 / math.sqrt(x.numel() * qmax)
    results = []
    for op in (fake_quantize, plain_autograd):
        xi, si = x.clone().requires_grad_(), step.clone().requires_grad_()
        out = op(xi, si, qmin, qmax, grad_factor, range_on_rounded)
        out.backward(dy)
        results.append((out.detach(), xi.grad, si.grad))
    (out, dx, ds), (ref_out, ref_dx, ref_ds) = results
    assert torch.equal(out, ref_out)
    assert torch.equal(dx == 0, ref_dx == 0)  # the same elements pass the gradient, at and next to the bounds too
    assert (dx == 0).any() and (dx != 0).any()
    assert torch.allclose(dx, ref_dx, rtol=1e-6, atol=0)  # the reference's dy·s/s differs in the last bit
    assert torch.allclose(ds, ref_ds, rtol=1e-5, atol=1e-7)


class TinyHead(nn.Module):
    """One conv (with BN) called once per FPN level, like a RetinaNet head conv; returns the sum of the levels."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, features):
        return sum(self.conv(f).square().mean() for f in features)


def tiny_head(algorithm, per_channel, fold_bn):
    torch.manual_seed(0)
    make = ALGORITHMS[algorithm]
    extra = {"freeze": False} if algorithm == "TQT" else {}
    conv = D2Conv2d(4, 6, 3, padding=1, bias=False, norm=nn.BatchNorm2d(6))
    with torch.no_grad():
        conv.norm.running_mean.uniform_(-0.2, 0.2)
        conv.norm.running_var.uniform_(0.5, 2.0)
        conv.norm.weight.uniform_(0.5, 1.5)
        conv.norm.bias.uniform_(-0.1, 0.1)
    weight_quant = make(4, True, 6 if per_channel else None, role="weight", **extra)
    input_quant = nn.ModuleList(make(4, True, role="input", **extra) for _ in range(LEVELS))
    conv.__class__ = quant_class(type(conv))
    conv.attach_quantizers(weight_quant, input_quant, fold_bn)
    with torch.no_grad():
        for quantizer in (weight_quant, *input_quant):
            quantizer.observe_enabled, quantizer.fake_quant_enabled = True, False
        TinyHead(conv)(features())  # calibration: every quantizer observes its tensors
        for quantizer in (weight_quant, *input_quant):
            assert quantizer.finish_calibration()
            quantizer.observe_enabled, quantizer.fake_quant_enabled = False, True
    return TinyHead(conv)


def features():
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(2, 4, 16 >> level, 16 >> level, generator=generator) for level in range(LEVELS)]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("fold_bn", [False, True], ids=["bn", "fold_bn"])
def test_shared_weight_quantizer_runs_once_per_forward_with_the_per_level_gradients(algorithm, per_channel, fold_bn):
    per_level = tiny_head(algorithm, per_channel, fold_bn)
    per_level.register_forward_pre_hook(reset_call_counters)  # the old path: the weight quantized at every level
    shared = copy.deepcopy(per_level)
    shared.register_forward_pre_hook(reset_call_counters)  # the model's hooks as convert_to_qat registers them
    shared.register_forward_pre_hook(open_weight_memos)
    shared.register_forward_hook(release_memos)
    runs = []
    for model in (per_level, shared):
        calls = []
        model.conv.weight_quant.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        inputs = [f.clone().requires_grad_() for f in features()]
        for _ in range(2):  # a second step: nothing from the first forward is reused
            model.zero_grad()
            loss = model(inputs)
            loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        runs.append((loss.detach(), [f.grad for f in inputs], grads, len(calls)))
    (loss, input_grads, grads, calls), (ref_loss, ref_input_grads, ref_grads, ref_calls) = runs[1], runs[0]
    assert (calls, ref_calls) == (2, 2 * LEVELS)
    assert shared.conv.weight_memo is None  # released after the forward: the model deep-copies again
    copy.deepcopy(shared)
    assert torch.equal(loss, ref_loss)
    for grad, ref in zip(input_grads, ref_input_grads):
        assert torch.equal(grad, ref)
    expected = {"conv.weight", "conv.weight_quant.scale" if algorithm != "TQT" else "conv.weight_quant.log2_threshold"}
    if fold_bn:
        expected |= {"conv.norm.weight", "conv.norm.bias"}
    assert expected <= set(grads) and set(grads) == set(ref_grads)
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-5, atol=1e-7), name
