"""Run one train_net.py subprocess of the plan (or find it already done) and turn its outputs into a record:
final AP and harmony per split (val, test), seconds per iteration and calibration seconds from metrics.json,
training and evaluation seconds from log.txt, peak RSS from the child's rusage."""
import copy
import datetime
import json
import math
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

import yaml

from hqod.utils.io import atomic_write_bytes

from .plan import merged_config

COMMAND_FILE = "bench_command.json"
_LIVE = set()  # train_net.py children now running (execute may run in several threads)
_STAMP = re.compile(r"^\[(\d\d/\d\d \d\d:\d\d:\d\d)\]")


def command(run) -> list:
    return [sys.executable, "train_net.py", "--config-file", run.config, *run.opts]


def final_evaluation(run):
    """The evaluation metrics.json holds for the last iteration of ``run`` on every one of its splits (Detectron2
    keys the metrics of several test sets ``<test set>/bbox/AP``), or None."""
    path = pathlib.Path(run.output_dir) / "metrics.json"
    if not run.evaluates or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    finals = [r for r in rows if r.get("iteration", -1) >= run.max_iter - 1
              and all(f"{name}/bbox/AP" in r for _, name in run.splits)]
    return finals[-1] if finals else None


def finished(run) -> bool:
    """Evaluated after its last iteration, or (a run without evaluation) its final checkpoint written."""
    if run.evaluates:
        return final_evaluation(run) is not None
    return (pathlib.Path(run.output_dir) / "model_final.pth").is_file()


def is_complete(run) -> bool:
    """Finished, by the same command (so a run with changed settings runs again), after its MODEL.WEIGHTS file was
    last written (so a run whose FP or calibration run was redone runs again)."""
    done = pathlib.Path(run.output_dir) / COMMAND_FILE
    if not (done.is_file() and json.loads(done.read_text()) == command(run)[1:] and finished(run)):
        return False
    weights = pathlib.Path(run.weights)
    return not weights.is_file() or weights.stat().st_mtime <= done.stat().st_mtime


def execute(run, timeout_s: float, threads: str) -> dict:
    """Run ``run`` from scratch with ``threads`` OpenMP threads; return its record (status "ok" or "failed" with the
    error)."""
    out = pathlib.Path(run.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = command(run)
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    start = time.monotonic()
    with open(out / "stdout.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _LIVE.add(proc)
        try:
            status, rusage = _wait(proc, timeout_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            _LIVE.discard(proc)
    wall = time.monotonic() - start
    rc = os.waitstatus_to_exitcode(status) if status is not None else None
    record = {"wall_s": wall, "peak_rss_mb": rusage.ru_maxrss / 1024 if rusage else None, "rc": rc}
    atomic_write_bytes(out / COMMAND_FILE, json.dumps(cmd[1:]).encode())
    record.update(describe(run))
    if status is None:
        record.update(status="failed", error=f"timed out after {timeout_s:.0f} s")
    elif rc != 0:
        record.update(status="failed", error=_error_line(out / "stdout.txt", rc))
    elif not finished(run):
        record.update(status="failed", error="exited without its final evaluation or checkpoint")
    return record


def kill_running() -> None:
    """Kill every train_net.py child still running (the bench was interrupted)."""
    for proc in list(_LIVE):
        proc.kill()


def _wait(proc, timeout_s):
    """``(wait status, rusage)`` of the finished child, or ``(None, None)`` after killing it at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    return None, None


def _error_line(path: pathlib.Path, rc) -> str:
    """The last line of the child's output that names an error, else its last line."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"^error: |\w+Error\b", line)]
    return f"exit code {rc}: " + (errors[-1] if errors else lines[-1] if lines else "no output")[-500:]


def describe(run) -> dict:
    """The record of a run from its output folder: the test set of each split (``splits``), the metrics of its
    final evaluation per split (``metrics``: split -> ``bbox/AP``, ... ``harmony/pearson``, ...) and its timings."""
    record = {"key": run.key, "dataset": run.dataset, "detector": run.detector, "setting": run.setting,
              "seed": run.seed, "output_dir": run.output_dir, "status": "ok", "splits": dict(run.splits)}
    final = final_evaluation(run) or {}
    record["metrics"] = {split: {k[len(name) + 1:]: v for k, v in final.items()
                                 if k.startswith((f"{name}/bbox/", f"{name}/harmony/"))}
                         for split, name in run.splits} if final else {}
    record.update(_timings(run))
    record["config"] = effective_config(pathlib.Path(run.output_dir) / "config.yaml")
    _score_no_detections(record)
    return record


def scored(record) -> dict:
    """A copy of ``record`` scored as ``describe`` scores a run now, so that a record written before a scoring rule
    compares with a folder described today: a run failed by the old rule "no detections on ... (AP is NaN)" is ok
    with AP 0 there."""
    record = copy.deepcopy(record)
    if record.get("status") == "failed" and record.get("error", "").startswith("no detections on "):
        record["status"] = "ok"
        del record["error"]
    _score_no_detections(record)
    return record


def _score_no_detections(record):
    """A run that trained to the end but detects nothing above the score threshold scores AP 0 on that split: no
    box found means recall 0 at every IoU threshold (pycocotools cannot load an empty result list, so Detectron2's
    COCOEvaluator reports NaN). Leaving the run out would drop a collapse from the comparison. Listed in
    ``no_detections``; its harmony stays NaN (undefined). Any other NaN AP fails the run."""
    # records from before the test split hold flat metrics (no split level): nothing to score there
    per_split = {split: m for split, m in record.get("metrics", {}).items() if isinstance(m, dict)}
    for split, metrics in per_split.items():
        if _is_nan(metrics.get("bbox/AP")) and metrics.get("harmony/num_detections") == 0:
            metrics.update({k: 0.0 for k in ("bbox/AP", "bbox/AP50", "bbox/AP75")})
            record.setdefault("no_detections", []).append(split)
    undefined = [split for split, metrics in per_split.items() if _is_nan(metrics.get("bbox/AP"))]
    if undefined:
        record.update(status="failed", error=f"AP is NaN on {', '.join(undefined)} although the model detected boxes")


def _is_nan(value) -> bool:
    return value is not None and math.isnan(value)


def effective_config(path: pathlib.Path) -> dict:
    """The settings a run used, from the config.yaml Detectron2 wrote into its output folder."""
    return settings_of(yaml.safe_load(path.read_text())) if path.is_file() else {}


def planned_config(run) -> dict:
    """The settings ``run`` will use (``effective_config`` of the config.yaml it would write), without running it or
    needing its inputs."""
    return settings_of(yaml.safe_load(merged_config(run.config, run.opts).dump()))


def settings_of(cfg: dict) -> dict:
    """The settings the bench records of a run's full config (a dict as config.yaml holds it)."""
    solver, inp, quant = cfg["SOLVER"], cfg["INPUT"], cfg["MODEL"]["QUANT"]
    result = {k.lower(): solver[k] for k in ("IMS_PER_BATCH", "BASE_LR", "MAX_ITER", "STEPS", "WARMUP_ITERS",
                                             "WARMUP_FACTOR", "WEIGHT_DECAY", "MOMENTUM")}
    result.update(min_size_train=inp["MIN_SIZE_TRAIN"], max_size_train=inp["MAX_SIZE_TRAIN"],
                  min_size_test=inp["MIN_SIZE_TEST"], max_size_test=inp["MAX_SIZE_TEST"],
                  train_sets=cfg["DATASETS"]["TRAIN"], test_sets=cfg["DATASETS"]["TEST"],
                  meta_architecture=cfg["MODEL"]["META_ARCHITECTURE"], weights=cfg["MODEL"]["WEIGHTS"],
                  seed=cfg["SEED"], device=cfg["MODEL"]["DEVICE"],
                  clip_gradients=solver["CLIP_GRADIENTS"]["CLIP_VALUE"] if solver["CLIP_GRADIENTS"]["ENABLED"]
                  else None)
    if quant["ENABLED"]:
        result.update(algorithm=quant["ALGORITHM"], weight_bits=quant["WEIGHT_BITS"], act_bits=quant["ACT_BITS"],
                      first_last_bits=quant["FIRST_LAST_BITS"], depthwise_bits=quant["DEPTHWISE_BITS"],
                      per_channel=quant["PER_CHANNEL"], calib_images=quant["CALIB_IMAGES"],
                      weight_observer=quant["WEIGHT_OBSERVER"], act_observer=quant["ACT_OBSERVER"],
                      freeze_frozen_quantizers=quant["FREEZE_FROZEN_QUANTIZERS"],
                      bit_schedule=quant["SCHEDULE"]["BITS"])
    return result


def _timings(run) -> dict:
    """From metrics.json: seconds per training iteration (median of ``time``) and calibration seconds
    (``quant/calib_seconds``, 0 when the run did not calibrate); from log.txt's timestamps (1 s resolution): training
    seconds (from the start of training to the first inference, less the calibration) and evaluation seconds (every
    split)."""
    out = pathlib.Path(run.output_dir)
    result = {}
    metrics = out / "metrics.json"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        times = [r["time"] for r in rows if "time" in r]
        result["s_per_iter"] = statistics.median(times) if times else None
        result["calib_s"] = next((r["quant/calib_seconds"] for r in rows if "quant/calib_seconds" in r), 0.0)
    log = out / "log.txt"
    if not log.is_file():
        return result
    marks = {}
    for line in log.read_text(errors="replace").splitlines():
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        t = datetime.datetime.strptime(stamp.group(1), "%m/%d %H:%M:%S")
        marks["last"] = t
        for name, text in (("start", "Starting training from iteration"), ("inference", "Start inference on")):
            if text in line:
                marks.setdefault(name, t)
    if "start" in marks and "inference" in marks:
        result["train_s"] = (marks["inference"] - marks["start"]).total_seconds() - result.get("calib_s", 0.0)
        result["eval_s"] = (marks["last"] - marks["inference"]).total_seconds()
    return result
