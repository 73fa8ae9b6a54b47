#!/usr/bin/env python
"""Time training steps of one detector config on one fixed training batch, in a process of its own so that its
peak memory is its own; with --op-bench also the LSQ op at the model's largest quantized activation. A QAT config
needs calibrated MODEL.WEIGHTS (a bench calibration run). Prints one JSON line. Started by tools/bench/speed.py.

    python tools/bench/speed_worker.py --config-file CONFIG [--iters 10] [--warmup 2] [--op-bench] [KEY VALUE ...]
"""
import argparse
import json
import pathlib
import resource
import sys
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tools/, for benchmark_quant_speed

import hqod  # noqa: E402,F401  (before any detectron2 import)
import torch  # noqa: E402
from detectron2.data import build_detection_train_loader  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmark_quant_speed import op_benchmark, timed, train_step  # noqa: E402
from hqod.engine import HQODTrainer, setup_cfg  # noqa: E402
from hqod.engine.checkpoint import HQODCheckpointer  # noqa: E402
from hqod.quantization import is_calibrated, is_quantized, quantizers  # noqa: E402


def largest_activation(model, batch):
    """Shape of the largest input any activation quantizer sees in one inference pass."""
    shapes = []
    handles = [q.register_forward_pre_hook(lambda m, inp: shapes.append(tuple(inp[0].shape)))
               for _, q in quantizers(model) if q.role != "weight"]
    model.eval()
    with torch.no_grad():
        model(batch)
    model.train()
    for handle in handles:
        handle.remove()
    return max(shapes, key=lambda s: torch.Size(s).numel())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--op-bench", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg = setup_cfg(args.config_file, args.opts)
    device = cfg.MODEL.DEVICE
    seed_all_rng(cfg.SEED)  # the same first batch for every config run with the same SEED
    model = HQODTrainer.build_model(cfg)
    HQODCheckpointer(model, cfg=cfg).load(cfg.MODEL.WEIGHTS)
    batch = next(iter(build_detection_train_loader(cfg)))
    if is_quantized(model) and not is_calibrated(model):
        raise SystemExit(f"error: {cfg.MODEL.WEIGHTS} is not a calibrated QAT checkpoint")
    result = {"config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "device": device,
              "threads": torch.get_num_threads(), "batch": len(batch), "image_hw": list(batch[0]["image"].shape[1:])}
    model.train()
    optimizer = HQODTrainer.build_optimizer(cfg, model)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with EventStorage(0):
        step_ms = timed(lambda: train_step(model, optimizer, batch), device, args.iters, args.warmup)
    result["s_per_iter"] = step_ms / 1e3
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if args.op_bench and is_quantized(model):
        shape = largest_activation(model, batch)
        ns = types.SimpleNamespace(device=device, bits=cfg.MODEL.QUANT.ACT_BITS, iters=args.iters, warmup=args.warmup)
        result["op_shape"] = list(shape)
        ops = op_benchmark(ns, shape)
        result["op_ms"] = {name: r.ms for name, r in ops.items()}
        result["op_saved_mb"] = {name: r.saved_mb for name, r in ops.items()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
