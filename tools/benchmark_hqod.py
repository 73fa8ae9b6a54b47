#!/usr/bin/env python
"""Does HQOD help? FP vs LSQ vs LSQ + HQOD at W4A4 and W2A2 (and TQT vs TQT + HQOD at W4A4) on hqod_shapes and
deepforest (MobileNetV2-FPN RetinaNet / FCOS / ATSS), every run a train_net.py subprocess evaluated on val and
test; AP, harmony, paired per-seed differences with 95% intervals and sign tests, speed, plots.

    python tools/benchmark_hqod.py --mode quick   # make bench-quick: short QAT, RetinaNet on shapes, LSQ, 2 seeds
    python tools/benchmark_hqod.py --mode full    # make bench: the converged recipe, RetinaNet and FCOS on shapes,
                                                  # LSQ at W4A4 and W2A2, 3 seeds
    python tools/benchmark_hqod.py --mode hqod    # make bench-hqod: the converged recipe on both data sets, LSQ
                                                  # and TQT, 5 seeds (hours; full's runs are its runs)
    python tools/benchmark_hqod.py --mode ablation    # MODEL.HQOD.NORMALIZER detector vs num_pos (short QAT)
    python tools/benchmark_hqod.py --mode full --detectors atss --name atss
    python tools/benchmark_hqod.py --mode full --tqt --seeds 5    # TQT too, seeds 1..5 instead of the mode's

Resumable: a run whose output folder holds the final evaluation of the same command is not run again, and the
runs of a smaller selection of the same recipe are the same runs. Runs go to output/bench/ (FP runs shared, QAT
runs per recipe: short/ or converged/); results_<name>.json, results_<name>.md and the PNGs (<name> defaults to
the mode) go to benchmarks/. The JSON keeps both splits' metrics; the report and the figures show
``--report-split`` (test: settings are chosen on val). On a CUDA machine every run gets MODEL.DEVICE cuda.
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import os
import pathlib
import platform
import shlex
import signal
import sys
import time

import hqod  # noqa: F401  (before any detectron2 import)
import torch
from hqod.evaluation import ground_truth_by_image
from hqod.utils.io import atomic_write_bytes

from bench import plots, report, speed, store
from bench.data import write_eval_subset, write_train_crops
from bench.plan import BATCH, CALIB_IMAGES, DATA, FP_SETTING, MODES, SPLITS, build_plan, select
from bench.runs import describe, execute, is_complete, kill_running, planned_config, scored
from bench.summary import summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench_sets(spec, data_dir: pathlib.Path) -> dict:
    """The val and test subsets and (with ``spec.crop``) the training crops: COCO_FORMAT ``entries``, the name of
    each split and of the training set, and ``json``: split -> its COCO json."""
    sets = {"entries": [], "json": {}}
    for split in SPLITS:
        entry, sets[split] = write_eval_subset(getattr(spec, split), getattr(spec, f"{split}_images"), data_dir)
        sets["entries"].append(entry)
        sets["json"][split] = entry.split(":")[1]
    train_entry, sets["train"] = write_train_crops(spec.train, spec.crop, data_dir) if spec.crop else (None, None)
    sets["entries"] += [train_entry] if train_entry else []
    return sets


def earlier_records(out_dir: pathlib.Path, json_path: pathlib.Path) -> list:
    """The run records of each earlier bench in ``out_dir`` (key -> record per results file), this mode's file last.
    Kept per file: a record stands for its run only beside the record of the FP run it started from, which is the
    one in its own file (another file may hold the same FP run trained again, with other numbers)."""
    return [store.load(path).get("runs", {})
            for path in sorted(out_dir.glob("results_*.json"), key=lambda p: p == json_path)]


def records_of(earlier: list, key: str) -> list:
    """The records of ``key`` in ``earlier`` (``earlier_records``), in file order."""
    return [file_runs[key] for file_runs in earlier if key in file_runs]


def matching_record(earlier: list, output_dir: str, config: dict):
    """The last of ``earlier`` (``records_of`` one key) with this output folder and settings, one with a measured wall
    time first; None if there is none."""
    same = [r for r in earlier if r.get("output_dir") == output_dir and r.get("config") == config]
    timed = [r for r in same if r.get("wall_s") is not None]
    return (timed or same or [None])[-1]


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with family and model: FP training on deepforest differs between CPUs of
    one ISA (BENCHMARKS.md), so a record says which one made it."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{fields.get('model name', 'unknown')} (family {family}, model {model})"


def host_info(device: str) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "device": name, "load_before": [round(v, 2) for v in os.getloadavg()]}


def run_all(runs, results, json_path, timeout_s, jobs=1, reuse_records=False, report_only=False):
    """Run (or reuse) every run, up to ``jobs`` at a time, each as soon as the run making its MODEL.WEIGHTS has
    finished (in plan order otherwise), saving the results after each; a run whose MODEL.WEIGHTS come from a failed
    run fails too. ``results["runs"]`` holds ``earlier_records`` on entry; each record is stamped with
    ``results["report_split"]``. With ``reuse_records`` a run whose output folder is gone is taken from its earlier
    record (``from_record``) when ``reusable_record`` allows. With ``report_only`` nothing runs: a run not done is
    listed in ``results["not_run"]``. Interrupted (e.g. SystemExit on SIGTERM), it kills the running children."""
    previous = results["runs"]
    results["runs"] = {}
    makers = {f"{run.output_dir}/model_final.pth": run for run in runs}
    needed = {run.weights for run in runs}
    made, failed, not_run = set(), set(), set()  # model_final.pth paths by what became of their run
    results["not_run"] = []
    cores = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)  # what the bench may use, shared by jobs
    threads = str(max(1, cores // jobs))

    def finish(i, run, record):
        (made if record["status"] == "ok" else failed).add(f"{run.output_dir}/model_final.pth")
        record["report_split"] = results["report_split"]
        results["runs"][run.key] = record
        store.save(json_path, results)
        print(f"[{i}/{len(runs)}] {progress_line(record)}", flush=True)

    def reusable_record(run):
        """The earlier ok record of ``run`` (same output folder and settings) if no run of the plan starts from its
        checkpoint and, in the record's own results file, every evaluated run it descends from (its FP run) has the
        metrics that run gave now: the same start, so the record stands for the run. Else None. With
        ``report_only`` nothing runs, so any run (FP and calibration too) is taken from its record: the report of
        what the records hold. The record is scored by today's rules (``scored``)."""
        if not report_only and (not run.evaluates or f"{run.output_dir}/model_final.pth" in needed):
            return None
        record = matching_record(same_start_records(run), run.output_dir, planned_config(run))
        if record is None:
            return None
        record = scored(record)
        return record if record.get("status") == "ok" else None

    def same_start_records(run):
        """The earlier records of ``run`` from the results files that record its start as it is now."""
        return records_of([file_runs for file_runs in previous if started_as_now(run, file_runs)], run.key)

    def started_as_now(run, file_runs):
        """Whether ``file_runs`` (one results file) records every evaluated run ``run`` descends from with the
        settings and metrics recorded for it now."""
        ancestor = makers.get(run.weights)
        while ancestor is not None:
            if ancestor.evaluates:
                now = results["runs"].get(ancestor.key, {})
                then = matching_record(records_of([file_runs], ancestor.key), ancestor.output_dir, now.get("config"))
                if then is None or not store.same_metrics(then["metrics"], now["metrics"]):
                    return False
            ancestor = makers.get(ancestor.weights)
        return True

    def maker_record(run, record):
        """The earlier record of the run that made ``run``'s complete folder (``record``: what the folder holds): same
        settings and start and, for an evaluated run, the folder's metrics; else {}. Another file may record the same
        run made on another machine, with other numbers and times."""
        made_it = [r for r in same_start_records(run)
                   if not run.evaluates or store.same_metrics(scored(r).get("metrics"), record["metrics"])]
        return matching_record(made_it, run.output_dir, record["config"]) or {}

    def without_running(i, run):
        """Record ``run`` if it needs no running: its input failed, or it is complete (or, with ``reuse_records``,
        recorded); else return False."""
        if run.weights in failed:
            finish(i, run, dict(describe(run), status="failed", error=f"{run.weights} was not made (that run failed)"))
        elif is_complete(run):
            record = describe(run)
            measured = {k: v for k, v in maker_record(run, record).items() if k in ("wall_s", "peak_rss_mb", "rc")}
            finish(i, run, dict(record, **measured, reused=True))
        elif reuse_records and (record := reusable_record(run)) is not None:
            finish(i, run, dict(record, reused=True, from_record=True))
        elif report_only:
            not_run.add(f"{run.output_dir}/model_final.pth")
            results["not_run"].append(run.key)
            print(f"[{i}/{len(runs)}] {run.key}: not run (--report-only)", flush=True)
        else:
            return False
        return True

    pending, running = list(enumerate(runs, 1)), {}
    to_run = set()  # ready runs found to need running, waiting for a free job (not looked at again)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while pending or running:
                settled = made | failed | not_run
                ready = [(i, run) for i, run in pending if run.weights not in makers or run.weights in settled]
                if not ready and not running:
                    raise RuntimeError(f"{pending[0][1].key}: its MODEL.WEIGHTS are made by no run of the plan")
                recorded = False
                for i, run in (item for item in ready if item[0] not in to_run):
                    if without_running(i, run):
                        pending.remove((i, run))
                        recorded = True
                    else:
                        to_run.add(i)
                if recorded:  # look again before starting any: a recorded run may be the input of runs planned earlier
                    continue
                for i, run in ready[:jobs - len(running)]:
                    pending.remove((i, run))
                    print(f"[{i}/{len(runs)}] {run.key} ...", flush=True)
                    running[pool.submit(execute, run, timeout_s, threads)] = (i, run)
                if running:
                    done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        i, run = running.pop(future)
                        finish(i, run, dict(future.result(), reused=False))
        except BaseException:
            kill_running()
            raise


def progress_line(record) -> str:
    """``key: status, val AP and Pearson, wall time`` (or the error) of one run. Only val: while runs go, the
    split settings are chosen on is what anyone watching should see; test is for the report."""
    parts = [f"{record['key']}: {record['status']}"]
    metrics = record.get("metrics", {}).get("val", {})
    for name, digits in (("bbox/AP", 1), ("harmony/pearson", 3)):
        if metrics.get(name) is not None:
            parts.append(f"val {name.split('/')[1]} {metrics[name]:.{digits}f}")
    if record.get("wall_s") is not None:
        parts.append(f"{record['wall_s']:.0f} s")
    if "val" in record.get("no_detections", ()):
        parts.append("no detections on val: AP 0")
    if record.get("error"):
        parts.append(record["error"])
    return ", ".join(parts)


def draw(runs, records, summary, split, data_sets, mode, name, out_dir):
    """On ``split`` (``summary``: that split's "groups", "paired" and "pooled"): the hexbin figure of each data set
    and detector (first successful seed), AP against bits and the paired differences."""
    figures, combos = [], []
    for dataset in mode.datasets:
        test_set = data_sets[dataset][split]
        gt = ground_truth_by_image(data_sets[dataset]["json"][split])
        for detector in mode.detectors:
            first = {}  # setting -> (seed, detections) of its first successful run whose folder is here
            for run in runs:
                detections = pathlib.Path(run.output_dir) / "inference" / test_set / "coco_instances_results.json"
                if ((run.dataset, run.detector) == (dataset, detector) and detections.is_file()
                        and records.get(run.key, {}).get("status") == "ok"):
                    first.setdefault(run.setting, (run.seed, detections))
            panels = [(plots.label(s) + ("" if s == FP_SETTING else f", seed {first[s][0]}"), first[s][1])
                      for s in (FP_SETTING,) + mode.settings if s in first]
            if panels:
                figure = f"{name}_hexbin_{dataset}_{detector}.png"
                plots.hexbins(out_dir / figure, panels, gt, f"{dataset} / {detector}: score vs IoU on "
                              f"{test_set} (true positives and misclassified)")
                figures.append(figure)
            combos.append((dataset, detector, [r for r in records.values()
                                               if (r["dataset"], r["detector"]) == (dataset, detector)]))
    figure, differences = f"{name}_ap_vs_bits.png", f"{name}_paired_differences.png"
    plots.ap_vs_bits(out_dir / figure, summary["groups"], combos, split)
    if summary["paired"]:
        plots.paired_differences(out_dir / differences, summary, split)
        figures.insert(0, differences)
    return [figure] + figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--tqt", action="store_true", help="also TQT W4A4 with and without HQOD")
    parser.add_argument("--detectors", nargs="+", help="these dense detectors (hqod's table names), not the mode's")
    parser.add_argument("--datasets", nargs="+", help="these data sets (shapes, deepforest), not the mode's")
    parser.add_argument("--settings", nargs="+", help="these QAT settings instead of the mode's, e.g. lsq_w4a4")
    parser.add_argument("--seeds", type=int, help="seeds 1 to N of every QAT setting (default: the mode's)")
    parser.add_argument("--report-split", choices=SPLITS[::-1], default="test",
                        help="the split the report and figures show (every run is evaluated on both)")
    parser.add_argument("--name", help="results_<name>.json / .md and <name>_*.png (default: the mode's name)")
    parser.add_argument("--runs-dir", default="output/bench", help="train_net.py outputs (shared by the modes)")
    parser.add_argument("--out-dir", default="benchmarks", help="results JSON, markdown and PNGs")
    parser.add_argument("--run-timeout", type=float, default=14400,
                        help="seconds before a run is killed as failed: a guard against a hung run, far above the "
                             "longest run's time (a 2400-iteration shapes QAT run took up to 26 min on 2 loaded "
                             "cores)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each with OMP_NUM_THREADS (else the CPU count) / jobs threads")
    parser.add_argument("--reuse-records", action="store_true",
                        help="take a run whose output folder is gone from its ok record in --out-dir's results_*.json "
                             "(same folder and settings) when no run starts from it and its FP run, run again, gives "
                             "the recorded metrics (a bench spread over sessions that lose output/)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: summarise and report the runs already done (e.g. of an interrupted bench); "
                             "the report lists the runs of the plan not run")
    parser.add_argument("--skip-speed", action="store_true", help="leave out the speed and memory comparison")
    parser.add_argument("--dry-run", action="store_true", help="print the train_net.py commands and stop")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SystemExit: the running train_net.py is killed too
    os.chdir(ROOT)
    started, start = datetime.datetime.now().isoformat(timespec="seconds"), time.monotonic()
    try:
        mode = select(MODES[args.mode], args.detectors, args.datasets, args.settings, args.seeds)
    except ValueError as e:
        parser.error(str(e))
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more runs at a time")
    name = args.name or mode.name
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs_root = pathlib.Path(args.runs_dir)
    out_dir = pathlib.Path(args.out_dir)
    json_path = out_dir / f"results_{name}.json"
    data_sets = {d: bench_sets(DATA[d], runs_root / "data") for d in mode.datasets}
    runs = build_plan(mode, str(runs_root), device, data_sets, tqt=args.tqt)
    if args.dry_run:
        for run in runs:
            print(shlex.join(["python", "train_net.py", "--config-file", run.config, *run.opts]))
        return
    data = {d: dataclasses.asdict(DATA[d]) for d in mode.datasets}
    results = {"schema": 2, "mode": mode.name, "name": name, "started": started, "host": host_info(device),
               "report_split": args.report_split, "json": str(json_path),
               "command": shlex.join(["python", "tools/benchmark_hqod.py", *sys.argv[1:]]),
               "plan": {"mode": dataclasses.asdict(mode), "data": data, "batch": BATCH, "calib_images": CALIB_IMAGES,
                        "tqt": args.tqt},
               "runs": earlier_records(out_dir, json_path)}
    run_all(runs, results, json_path, args.run_timeout, args.jobs, args.reuse_records, args.report_only)
    measure_speed = not (args.skip_speed or args.report_only) and mode.speed_iters
    if measure_speed and set(speed.SPEED_SETTINGS) <= {r.setting for r in runs}:
        print("speed and memory: FP, LSQ W4A4, LSQ + HQOD W4A4 ...", flush=True)
        results["speed"] = speed.measure(runs, mode.speed_iters, 2, args.run_timeout)
    records = list(results["runs"].values())
    settings = tuple(dict.fromkeys(r.setting for r in runs if r.evaluates and not r.is_fp))
    results["summary"] = summarize(records, settings)
    figures = draw(runs, results["runs"], results["summary"][args.report_split], args.report_split, data_sets, mode,
                   name, out_dir)
    results["host"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    results["wall_s"] = time.monotonic() - start
    results["runs_wall_s"] = sum(r.get("wall_s") or 0 for r in records)
    store.save(json_path, results)
    markdown = out_dir / f"results_{name}.md"
    atomic_write_bytes(markdown, report.render(results, figures).encode())
    print(f"wrote {json_path}, {markdown} and {len(figures)} figures in {results['wall_s'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
