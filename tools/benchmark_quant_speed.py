#!/usr/bin/env python
"""Speed of fake quantization: one W4A4 QAT training step of a converted RetinaNet over the FP step of the same
model (target <= 1.3x), and the LSQ op (forward + backward) as PyTorch's fused kernel, hqod's and plain autograd.
The fused kernel (torch._fake_quantize_learnable_per_tensor_affine) clips on round(x/s): for x/s in (Qp, Qp+0.5) and
(Qn-0.5, Qn) it passes x's gradient and gives s the gradient round(x/s)-x/s, where LSQ's formula clips.

    python tools/benchmark_quant_speed.py [--device cpu|cuda] [--threads 1] [--image-size 320] [--batch 2]
"""
import argparse
import copy
import math
import statistics
import time
from typing import NamedTuple

import hqod  # noqa: F401  (before any detectron2 import)
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hqod.quantization import calibrate, convert_to_qat
from hqod.quantization.fake_quant import fake_quantize, grad_scaled, positive
from hqod.engine.validation import validate_config


def retinanet_r18_cfg(device, bits):
    cfg = get_cfg()
    hqod.add_hqod_config(cfg)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in [32, 64, 128, 256, 512]]
    cfg.MODEL.QUANT.WEIGHT_BITS = cfg.MODEL.QUANT.ACT_BITS = bits
    validate_config(cfg)
    return cfg


def synthetic_batch(batch, size, device):
    generator = torch.Generator().manual_seed(0)
    images = []
    for _ in range(batch):
        instances = Instances((size, size))
        corners = torch.rand(4, 2, generator=generator) * size / 2
        instances.gt_boxes = Boxes(torch.cat([corners, corners + size / 3], dim=1))
        instances.gt_classes = torch.randint(0, 80, (4,), generator=generator)
        image = torch.rand(3, size, size, generator=generator) * 255
        images.append({"image": image.to(device), "height": size, "width": size, "instances": instances.to(device)})
    return images


def timed(fn, device, iters, warmup):
    """Median wall time of ``fn()`` in ms."""
    times = []
    for i in range(warmup + iters):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def train_step(model, optimizer, batch):
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


def lsq_plain_autograd(x, step, qmin, qmax, grad_factor):
    """LSQ as in the paper's pseudo-code: gradient-scaled step, round with a straight-through estimator."""
    s = grad_scaled(positive(step), grad_factor)
    v = torch.clamp(x / s, qmin, qmax)
    return (v + (v.round() - v).detach()) * s


class OpResult(NamedTuple):
    """One LSQ implementation on one input: median ms of forward + backward, its gradients, backward memory."""
    ms: float
    grad_x: torch.Tensor
    grad_step: torch.Tensor
    saved_mb: float


def op_benchmark(args, shape) -> dict:
    x = torch.randn(shape, device=args.device, requires_grad=True)
    qmin, qmax = -(2 ** (args.bits - 1)), 2 ** (args.bits - 1) - 1
    step = torch.tensor([3.0 / qmax], device=args.device, requires_grad=True)
    zero_point = torch.zeros(1, device=args.device)
    grad_factor = 1.0 / math.sqrt(x.numel() * qmax)
    dy = torch.randn_like(x)
    impls = {
        "fused kernel":
            lambda: torch._fake_quantize_learnable_per_tensor_affine(x, step, zero_point, qmin, qmax, grad_factor),
        "hqod autograd.Function": lambda: fake_quantize(x, positive(step), qmin, qmax, grad_factor),
        "plain autograd": lambda: lsq_plain_autograd(x, step, qmin, qmax, grad_factor),
    }
    results = {}
    for name, impl in impls.items():
        def run():
            x.grad = step.grad = None
            impl().backward(dy)
        ms = timed(run, args.device, args.iters * 3, args.warmup)
        run()
        results[name] = OpResult(ms, x.grad.clone(), step.grad.clone(), saved_for_backward_mb(impl, x))
    return results


def saved_for_backward_mb(fn, x) -> float:
    """MB that ``fn()``'s autograd graph keeps for backward beyond the input ``x`` (distinct storages): the
    activation memory the op adds to a training step."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    storages.pop(x.untyped_storage().data_ptr(), None)
    return sum(storages.values()) / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids thread contention)")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = retinanet_r18_cfg(args.device, args.bits)
    fp_model = build_model(cfg)
    qat_model = convert_to_qat(copy.deepcopy(fp_model), cfg)
    batch = synthetic_batch(args.batch, args.image_size, args.device)
    calibrate(qat_model, [batch], args.batch)
    fp_model.train()
    qat_model.train()
    with EventStorage(0):
        fp_opt = torch.optim.SGD(fp_model.parameters(), lr=1e-4, momentum=0.9)
        qat_opt = torch.optim.SGD(qat_model.parameters(), lr=1e-4, momentum=0.9)
        for _ in range(args.warmup):
            train_step(fp_model, fp_opt, batch)
            train_step(qat_model, qat_opt, batch)
        fp_times, qat_times = [], []
        for _ in range(args.iters):  # interleaved, so that load changes on a shared machine hit both alike
            fp_times.append(timed(lambda: train_step(fp_model, fp_opt, batch), args.device, 1, 0))
            qat_times.append(timed(lambda: train_step(qat_model, qat_opt, batch), args.device, 1, 0))
        fp_ms, qat_ms = statistics.median(fp_times), statistics.median(qat_times)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"RetinaNet-R18-FPN, {args.batch} x {args.image_size}^2 images, {device_name}, torch {torch.__version__}")
    print(f"train step: FP {fp_ms:.1f} ms, W{args.bits}A{args.bits} LSQ {qat_ms:.1f} ms, "
          f"ratio {qat_ms / fp_ms:.2f}x (target <= 1.3x)")
    shape = (args.batch, 256, args.image_size // 8, args.image_size // 8)
    results = op_benchmark(args, shape)
    fused_gx = results["fused kernel"].grad_x
    for name, r in results.items():
        differ = int(((r.grad_x - fused_gx).abs() > 1e-5).sum())
        print(f"LSQ fwd+bwd {tuple(shape)}, {name}: {r.ms:.2f} ms, keeps {r.saved_mb:.1f} MB for backward beyond x, "
              f"grad_step {r.grad_step.item():+.5f}, grad_x != fused at {differ} elements")

if __name__ == "__main__":
    main()
