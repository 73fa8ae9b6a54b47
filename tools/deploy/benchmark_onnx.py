#!/usr/bin/env python
"""Latency of exported models in onnxruntime on this CPU, measured side by side in one process: batch 1, a fixed
number of intra-op threads, the models' runs interleaved round by round (so that load from other processes hits them
alike), median of --runs runs each after --warmup runs; also the model file sizes and the integer nodes of each
optimised graph. Prints a markdown table, and JSON with --json FILE; --profile also prints where each model's
time goes (onnxruntime's profiler: kernel time per op type, per run).

    python tools/deploy/benchmark_onnx.py --models DIR [DIR ...] [--threads 2] [--runs 30] [--warmup 5] [--profile]
"""
import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import hqod  # noqa: F401
import numpy as np

from hqod.deploy import create_session, integer_nodes, read_export_record
from hqod.errors import HQODError, HQODInputError
from hqod.utils.io import atomic_write_bytes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="DIR", help="export_onnx.py output folders")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model (at least 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per model first")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--profile", action="store_true", help="also profile each model (kernel ms per op type)")
    return parser.parse_args(argv)


def measure(models, threads: int, runs: int, warmup: int) -> list:
    """Per model folder: size, integer nodes and the median / min / max latency (ms) of ``runs`` interleaved runs."""
    entries = []
    for model_dir in models:
        record = read_export_record(model_dir)
        path = os.path.join(model_dir, record["model_file"])
        shape = [1, *record["input"]["shape"][1:]]
        nodes = integer_nodes(path)
        entries.append({"model": model_dir, "detector": record["meta_architecture"], "input": shape[2:],
                        "size_mb": os.path.getsize(path) / 2 ** 20,
                        "quantized": record["quantization"] is not None, "integer_nodes": len(nodes["integer"]),
                        "float_convs": len(nodes["float_convs"]), "op_counts": nodes["op_counts"],
                        "session": create_session(path, threads), "name": record["input"]["name"],
                        "image": np.random.default_rng(0).standard_normal(shape, dtype=np.float32), "ms": []})
    for round_ in range(warmup + runs):
        for entry in entries:
            start = time.perf_counter()
            entry["session"].run(None, {entry["name"]: entry["image"]})
            if round_ >= warmup:
                entry["ms"].append((time.perf_counter() - start) * 1e3)
    for entry in entries:
        entry.update(median_ms=statistics.median(entry["ms"]), min_ms=min(entry["ms"]), max_ms=max(entry["ms"]))
        for key in ("session", "name", "image"):
            del entry[key]
    return entries


def profile(model_dir, threads: int, runs: int, warmup: int) -> dict:
    """``{op type: kernel ms per run}`` of ``runs`` runs (after ``warmup``) under onnxruntime's profiler."""
    record = read_export_record(model_dir)
    feed = {record["input"]["name"]: np.random.default_rng(0).standard_normal([1, *record["input"]["shape"][1:]],
                                                                              dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        session = create_session(os.path.join(model_dir, record["model_file"]), threads,
                                 profile_prefix=os.path.join(tmp, "profile"))
        for _ in range(warmup + runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    times = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / 1e3 / (warmup + runs)
    return dict(times.most_common())


def table(entries) -> str:
    """Markdown table; speed-up relative to the first model of the same detector and input size."""
    first = {}
    lines = ["| model | input | size (MB) | integer nodes | float convs | median ms | min–max ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        base = first.setdefault((e["detector"], *e["input"]), e["median_ms"])
        lines.append(f"| {e['model']} | {e['input'][0]}×{e['input'][1]} | {e['size_mb']:.2f} | {e['integer_nodes']} | "
                     f"{e['float_convs']} | {e['median_ms']:.1f} | {e['min_ms']:.1f}–{e['max_ms']:.1f} | "
                     f"{base / e['median_ms']:.2f}× |")
    return "\n".join(lines)


def main(args):
    if args.runs < 20:
        raise HQODInputError(f"--runs must be at least 20 for a median, got {args.runs}")
    if args.threads < 1 or args.warmup < 0:
        raise HQODInputError("--threads must be at least 1 and --warmup at least 0")
    entries = measure(args.models, args.threads, args.runs, args.warmup)
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
               "load_average_after": os.getloadavg()}
    print(f"{machine['cpus']} CPUs ({machine['processor']}), {args.threads} onnxruntime threads, batch 1, median of "
          f"{args.runs} interleaved runs after {args.warmup} warm-up runs; load average afterwards "
          f"{', '.join(f'{v:.2f}' for v in machine['load_average_after'])}")
    print(table(entries), flush=True)
    if args.profile:
        for entry in entries:
            times = profile(entry["model"], args.threads, args.runs, args.warmup)
            entry["profile_ms"] = times
            print(f"{entry['model']}: kernels {sum(times.values()):.1f} ms per run: "
                  + ", ".join(f"{op} {ms:.1f}" for op, ms in times.items()), flush=True)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps({"machine": machine, "models": entries}, indent=1) + "\n").encode())


if __name__ == "__main__":
    try:
        main(parse_args())
    except HQODError as e:
        sys.exit(f"error: {e}")
