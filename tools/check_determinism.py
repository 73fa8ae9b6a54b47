#!/usr/bin/env python
"""Train one config twice, each in a fresh process, for the first N iterations of its own schedule, and compare the
total loss iteration by iteration and the weights after N iterations: is training bitwise deterministic here, and
where do two numerics part (``--env-b`` sets environment variables for the second run only, e.g. an ISA pin)?

    python tools/check_determinism.py --config-file CONFIG --iters 100 [KEY VALUE ...]
    python tools/check_determinism.py --config-file CONFIG --iters 100 --env-b ATEN_CPU_CAPABILITY=avx2 \\
        --env-b ONEDNN_MAX_CPU_ISA=AVX2 [KEY VALUE ...]

The runs are set up as train_net.py sets up a run (seeded by SEED) but skip evaluation; ``python
tools/benchmark_hqod.py --dry-run`` prints a bench run's config and overrides. Exit status 0 when both runs agree bit
for bit, 1 when they differ.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # train_net.py, for the same per-run set-up as a real run

import hqod  # noqa: E402,F401  (before any detectron2 import)
import torch  # noqa: E402
import train_net  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402

from hqod.engine import HQODTrainer, setup_cfg  # noqa: E402
from hqod.errors import HQODError  # noqa: E402


@dataclasses.dataclass
class Divergence:
    """Where two loss curves part: the first iteration whose losses are not bitwise equal (None when none is), the
    two losses there and their relative difference, and the relative difference at the last iteration."""
    first_iter: int | None
    first_a: float | None = None
    first_b: float | None = None
    relative: float = 0.0
    last_relative: float = 0.0


def _relative(x: float, y: float) -> float:
    return abs(x - y) / max(abs(x), abs(y))


def compare_losses(a: list, b: list) -> Divergence:
    """Compare two runs' per-iteration losses (index = iteration), bitwise; they must cover the same iterations."""
    if len(a) != len(b):
        raise ValueError(f"the runs trained {len(a)} and {len(b)} iterations; compare runs of the same length")
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None:
        return Divergence(None)
    return Divergence(first, a[first], b[first], _relative(a[first], b[first]), _relative(a[-1], b[-1]))


def weights_digest(model) -> str:
    """sha256 of every parameter and buffer (names, shapes and bytes): equal only for bitwise equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return digest.hexdigest()


def train_worker(config_file: str, opts: list, iters: int) -> dict:
    """In this process: the first ``iters`` iterations of the run train_net.py would make of ``config_file`` +
    ``opts`` (same set-up and seeding, same schedule; no evaluation); its total losses and weight digest."""
    with tempfile.TemporaryDirectory(prefix="hqod-determinism-") as output_dir:
        cfg = setup_cfg(config_file, [*opts, "DATASETS.TEST", "()", "OUTPUT_DIR", output_dir])
        train_net.setup(cfg, default_argument_parser().parse_args(["--config-file", config_file]))
        trainer = HQODTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.max_iter = iters  # stop early; the LR and quantizer schedules keep cfg.SOLVER.MAX_ITER
        trainer.train()
        losses = [value for value, _ in sorted(trainer.storage.history("total_loss").values(), key=lambda v: v[1])]
        return {"total_loss": losses, "weights_sha256": weights_digest(trainer.model)}


def run_twice(args) -> tuple:
    """The two runs, each in a process of its own (the second with ``--env-b``); their worker results."""
    results = []
    for label, extra_env in (("a", {}), ("b", args.env_b)):
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "result.json"
            command = [sys.executable, __file__, "--worker", str(out), "--config-file", args.config_file,
                       "--iters", str(args.iters), *args.opts]
            print(f"run {label}{' with ' + ' '.join(f'{k}={v}' for k, v in extra_env.items()) if extra_env else ''}: "
                  f"{args.iters} iterations", flush=True)
            done = subprocess.run(command, env={**os.environ, **extra_env}, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"error: run {label} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            results.append(json.loads(out.read_text()))
    return tuple(results)


def report(a: dict, b: dict) -> tuple:
    """The verdict lines and exit status for two worker results."""
    divergence = compare_losses(a["total_loss"], b["total_loss"])
    n = len(a["total_loss"])
    same_weights = a["weights_sha256"] == b["weights_sha256"]
    if divergence.first_iter is None:
        lines = [f"total_loss bitwise equal at every iteration 0-{n - 1}"]
    else:
        d = divergence
        lines = [f"total_loss first differs at iteration {d.first_iter}: {d.first_a!r} vs {d.first_b!r} "
                 f"(relative {d.relative:.1e}); at iteration {n - 1} relative {d.last_relative:.1e}"]
    lines.append(f"weights after {n} iterations: {'equal' if same_weights else 'differ'} "
                 f"(sha256 {a['weights_sha256'][:12]}{'' if same_weights else ' vs ' + b['weights_sha256'][:12]})")
    deterministic = divergence.first_iter is None and same_weights
    lines.append("deterministic: the two runs agree bit for bit" if deterministic else "NOT deterministic")
    return lines, 0 if deterministic else 1


def parse_env(items: list) -> dict:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --env-b {item!r} is not KEY=VALUE; pass e.g. --env-b ATEN_CPU_CAPABILITY=avx2")
        env[key] = value
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=100, help="iterations per run (from the start of the schedule)")
    parser.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the second run only (repeatable)")
    parser.add_argument("--worker", metavar="RESULT_JSON", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.worker:
        result = train_worker(args.config_file, args.opts, args.iters)
        pathlib.Path(args.worker).write_text(json.dumps(result))
        return 0
    args.env_b = parse_env(args.env_b)
    if args.iters < 1:
        raise SystemExit(f"error: --iters {args.iters} is not positive; pass the number of iterations to compare")
    try:  # bad config or overrides fail here, before any training
        cfg = setup_cfg(args.config_file, args.opts)
    except HQODError as e:
        raise SystemExit(f"error: {e}") from None
    if args.iters > cfg.SOLVER.MAX_ITER:
        raise SystemExit(f"error: --iters {args.iters} is beyond the schedule's SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}; "
                         "pass fewer iterations")
    lines, status = report(*run_twice(args))
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
