"""Speed and memory side by side on the same model, weights and input batch: seconds per training step of FP,
LSQ W4A4 and LSQ + HQOD W4A4 (ratios to FP), each in its own process (speed_worker.py) for its peak memory, and
the LSQ op as used (hqod's autograd.Function) against plain autograd and PyTorch's fused kernel."""
import json
import os
import subprocess
import sys

from .plan import FP_SETTING

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "speed_worker.py")
SPEED_SETTINGS = (FP_SETTING, "lsq_w4a4", "lsq_hqod_w4a4")


def measure(runs, iters: int, warmup: int, timeout_s: float) -> dict:
    """Run the worker for the FP run and the W4A4 LSQ / LSQ + HQOD runs of the first data set and detector in
    ``runs``: the FP checkpoint, and for QAT the calibration run's checkpoint made from it; SEED 0 for the same
    batch."""
    first = runs[0]
    chosen = {}
    for r in runs:
        if (r.dataset, r.detector) == (first.dataset, first.detector) and r.setting in SPEED_SETTINGS:
            chosen.setdefault(r.setting, r)
    result = {"dataset": first.dataset, "detector": first.detector, "iters": iters, "warmup": warmup, "models": {}}
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    for setting in SPEED_SETTINGS:
        run = chosen[setting]
        cmd = [sys.executable, WORKER, "--config-file", run.config, "--iters", str(iters), "--warmup", str(warmup),
               *(["--op-bench"] if setting == "lsq_w4a4" else []), *run.opts, "SEED", "0"]
        if run.is_fp:
            cmd += ["MODEL.WEIGHTS", f"{run.output_dir}/model_final.pth"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            result["models"][setting] = {"error": f"timed out after {timeout_s:.0f} s"}
            continue
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            result["models"][setting] = {"error": f"exit code {proc.returncode}: {tail[-500:]}"}
            continue
        result["models"][setting] = json.loads(lines[-1])
    fp = result["models"][FP_SETTING].get("s_per_iter")
    for entry in result["models"].values():
        if fp and entry.get("s_per_iter"):
            entry["ratio_to_fp"] = entry["s_per_iter"] / fp
    return result
