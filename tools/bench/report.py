"""The bench's markdown report: settings, AP and harmony per setting, paired HQOD − baseline differences with
their 95% intervals and sign tests, per-run timings, the speed comparison and the figures, rendered from the results
dict. Metrics are those of the report split (``results["report_split"]``, test by default), with the other split's
AP beside them."""
from .plan import SPLITS, bits_of
from .plots import label


def _pm(entry, digits=1) -> str:
    """``mean ± std`` of a spread, or a dash when it has no values."""
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _num(value, digits=1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(bounds, digits) -> str:
    return "–" if bounds is None else f"[{bounds[0]:+.{digits}f}, {bounds[1]:+.{digits}f}]"


def _table(columns, rows) -> list:
    """A markdown table: the header of ``columns``, then one line per row of cells."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(map(str, cells)) + " |" for cells in rows]


def _settings_table(results) -> list:
    rows, seen = [], set()
    for record in results["runs"].values():
        if record["setting"].startswith("calib_"):
            continue
        bits = bits_of(record["setting"])
        kind = record["setting"] if bits == 32 else f"QAT W{bits}"
        c = record.get("config")
        if not c or (record["dataset"], record["detector"], kind) in seen:
            continue
        seen.add((record["dataset"], record["detector"], kind))
        rows.append([f"{record['dataset']} / {record['detector']}", kind, c["train_sets"][0], ", ".join(c["test_sets"]),
                     f"{c['min_size_train'][0]} / {c['min_size_test']}", c["ims_per_batch"], c["max_iter"],
                     f"{c['base_lr']:g}", f"{c['warmup_iters']} ({c['warmup_factor']:g})",
                     ", ".join(map(str, c["steps"])), c.get("calib_images", "–"), _quantizers(c)])
    lines = _table(["data set / detector", "run", "train set", "evaluated on", "train / test size", "batch", "iters",
                    "LR", "warm-up (factor)", "LR steps", "calib images", "quantizers"], rows)
    configs = [r["config"] for r in results["runs"].values() if r.get("config")]
    if configs:
        c = configs[0]
        lines += ["", f"Every run: SGD momentum {c['momentum']:g}, weight decay {c['weight_decay']:g}, gradient "
                      f"clipping {c['clip_gradients'] or 'off'} (per-parameter L2 norm), warm-up and LR steps ×0.1 "
                      f"as listed; QAT runs start from their calibration run's checkpoint (calibrated on the "
                      f"listed number of training images, then one iteration at LR 0)."]
    return lines


def _quantizers(config) -> str:
    """The QAT recipe's quantizer settings of a run ("–" for FP): weight steps per channel or tensor, depthwise
    convs' bits, frozen convs' quantizers kept, progressive bits."""
    if "weight_bits" not in config:
        return "–"
    parts = ["per-channel" if config.get("per_channel") else "per-tensor"]
    if config.get("depthwise_bits"):
        parts.append(f"depthwise {config['depthwise_bits']} bits")
    if config.get("freeze_frozen_quantizers"):
        parts.append("frozen convs' kept")
    if config.get("bit_schedule"):
        parts.append("bits " + " → ".join(config["bit_schedule"]))
    return ", ".join(parts)


def _other_split(results) -> str:
    return next(s for s in SPLITS if s != results["report_split"])


def _results_table(results) -> list:
    split, other = results["report_split"], _other_split(results)
    other_groups = results["summary"][other]["groups"]
    rows = []
    for name, g in results["summary"][split]["groups"].items():
        dataset, detector, setting = name.split("/")
        if setting.startswith("calib_"):
            continue
        notes = ([f"{len(g['failed'])} failed"] if g["failed"] else []) + (
            [f"{len(g['no_detections'])} without detections: AP 0"] if g.get("no_detections") else [])
        seeds = f"{len(g['seeds'])} ({', '.join(notes)})" if notes else f"{len(g['seeds'])}"
        rows.append([f"{dataset} / {detector}", label(setting), seeds, _pm(g["bbox/AP"]),
                     _pm(g["bbox/AP50"]), _pm(g["bbox/AP75"]), _pm(g["harmony/pearson"], digits=3),
                     _pm(g["harmony/spearman"], digits=3), _pm(other_groups[name]["bbox/AP"])])
    return _table(["data set / detector", "setting", "seeds", "AP", "AP50", "AP75", "Pearson", "Spearman",
                   f"AP ({other})"], rows)


def _paired_table(results) -> list:
    split, other = results["report_split"], _other_split(results)
    other_paired = {(p["dataset"], p["detector"], p["hqod"]): p for p in results["summary"][other]["paired"]}
    rows = [[f"{p['dataset']} / {p['detector']}", f"{label(p['hqod'])} − {label(p['baseline'])}",
             ", ".join(_num(d) for d in p["bbox/AP"]["per_seed"]), _pm(p["bbox/AP"]), _pm(p["bbox/AP50"]),
             _pm(p["bbox/AP75"]), _pm(p["harmony/pearson"], digits=3),
             f"{p['bbox/AP']['positive']} / {p['bbox/AP']['n']}",
             _pm(other_paired.get((p["dataset"], p["detector"], p["hqod"]), {}).get("bbox/AP"))]
            for p in results["summary"][split]["paired"]]
    return _table(["data set / detector", "compared − reference", "ΔAP per seed", "ΔAP", "ΔAP50", "ΔAP75", "ΔPearson",
                   "seeds with ΔAP > 0", f"ΔAP ({other})"], rows)


def _inference_cells(result, digits) -> list:
    """Mean, t interval, bootstrap interval and sign test (``+ / − / 0, p``) of one ``stats.inference``."""
    sign = result["sign_test"]
    mean = "–" if result["mean"] is None else f"{result['mean']:+.{digits}f}"
    return [mean, _interval(result["t_ci95"], digits), _interval(result["bootstrap_ci95"], digits),
            f"{sign['positive']} / {sign['negative']} / {sign['ties']}, p = {sign['p']:.3g}"]


def _statistics_table(results) -> list:
    summary = results["summary"][results["report_split"]]
    scoped = [(f"{p['dataset']} / {p['detector']}", p) for p in summary["paired"]]
    scoped += [(f"pooled ({len(p['combos'])} data set / detector)", p) for p in summary["pooled"]]
    rows = [[scope, f"{label(p['hqod'])} − {label(p['baseline'])}", p["bbox/AP"]["inference"]["n"]]
            + _inference_cells(p["bbox/AP"]["inference"], 2) + _inference_cells(p["harmony/pearson"]["inference"], 3)
            for scope, p in scoped]
    return _table(["scope", "compared − reference", "pairs", "ΔAP", "95% t", "95% bootstrap",
                   "sign test ΔAP (+ / − / 0, p)", "ΔPearson", "95% t", "95% bootstrap",
                   "sign test ΔPearson (+ / − / 0, p)"], rows)


def _timing_table(results) -> list:
    rows = []
    for name, g in results["summary"][results["report_split"]]["groups"].items():
        dataset, detector, setting = name.split("/")
        t = g["timing"]
        rows.append([f"{dataset} / {detector}", label(setting), t["wall_s"]["n"], _pm(t["wall_s"], digits=0),
                     _pm(t["s_per_iter"], digits=2)] + [_pm(t[timing], digits=0) for timing in
                                                        ("calib_s", "train_s", "eval_s", "peak_rss_mb")])
    return _table(["data set / detector", "setting", "runs", "wall s per run", "s per iter", "calibration s",
                   "training s", "evaluation s", "peak RSS MB"], rows)


def _speed_lines(speed) -> list:
    if not speed:
        return ["(not measured)"]
    models = speed["models"]
    first = next((m for m in models.values() if "batch" in m), {})
    lines = [f"{speed['dataset']} / {speed['detector']}, batch {first.get('batch')} × {first.get('image_hw')} px, "
             f"{first.get('device')}, {first.get('threads')} thread(s); median of {speed['iters']} steps after "
             f"{speed['warmup']} warm-up steps on one fixed training batch; FP: the bench's FP checkpoint, QAT: the "
             f"calibration run's checkpoint made from it.", ""]
    rows = [[label(setting), f"failed: {m['error']}", "", "", ""] if "error" in m else
            [label(setting), f"{m['s_per_iter']:.3f}", f"{_num(m.get('ratio_to_fp'), 2)}×", f"{m['peak_rss_mb']:.0f}",
             _num(m.get("cuda_peak_mb"), 0)] for setting, m in models.items()]
    lines += _table(["model", "s per train step", "ratio to FP", "peak RSS MB", "CUDA peak MB"], rows)
    op = models.get("lsq_w4a4", {})
    if op.get("op_ms"):
        lines += ["", f"LSQ W4 op, forward + backward, on the model's largest quantized activation "
                      f"{tuple(op['op_shape'])} (the model uses `hqod autograd.Function`); memory: what its "
                      f"autograd graph keeps for backward beyond the input:", ""]
        saved = op.get("op_saved_mb", {})
        lines += [f"- {name}: {ms:.2f} ms, {_num(saved.get(name))} MB" for name, ms in op["op_ms"].items()]
    return lines


def render(results, figures) -> str:
    """The whole report as markdown; ``figures`` are paths relative to the report's folder."""
    host = results["host"]
    split, other = results["report_split"], _other_split(results)
    failed = [r for r in results["runs"].values() if r["status"] != "ok"]
    reused = sum(1 for r in results["runs"].values() if r.get("reused"))
    from_records = sum(1 for r in results["runs"].values() if r.get("from_record"))
    not_run = results.get("not_run", [])
    cpu = f" ({host['cpu']}, ATen {host['cpu_capability']})" if "cpu" in host else ""  # older results lack it
    lines = [f"# HQOD bench, {results['mode']} mode", "",
             f"Command: `{results['command']}`. Started {results['started']}, {results['wall_s'] / 60:.1f} min in "
             f"all. {host['cpus']} CPU(s){cpu}, torch {host['torch']}, device {host['device']}; load average "
             f"{host['load_before']} before, {host['load_after']} after. {len(results['runs'])} runs, "
             f"{reused} of them done by an earlier invocation (their times are from then; {from_records} taken from "
             f"their records, their folders gone), {results['runs_wall_s'] / 60:.1f} min of run time in all. "
             f"Results: `{results['json']}`.", ""]
    if not_run:
        lines += [f"**Not run** ({len(not_run)} runs of the plan; the report covers the rest): "
                  + ", ".join(f"`{key}`" for key in not_run) + ".", ""]
    lines += [f"Every run is evaluated on its data set's val and test subsets; **the tables and figures show the "
              f"{split} split**, the {other} split's AP is beside them (settings are chosen on val, reported on "
              f"test); both splits' metrics are in the JSON.", "",
              "## Settings", ""] + _settings_table(results)
    lines += ["", f"## AP and harmony on {split} (mean ± std over seeds; FP: one run)", ""] + _results_table(results)
    lines += ["", f"## Paired difference on {split}, same seed (HQOD − baseline; a variant − its setting)", ""]
    lines += _paired_table(results)
    lines += ["", f"## Statistics of the paired differences on {split}", "",
              "Mean difference with its 95% Student t interval and its paired bootstrap 95% percentile interval "
              "(10000 resamples of the seeds' differences, fixed RNG seed), and the exact two-sided sign test "
              "(ties dropped); pooled: every data set, detector and seed of the comparison together. The seeds "
              "of a pair share the FP and calibrated checkpoints, so the intervals are conditional on them.", ""]
    lines += _statistics_table(results)
    lines += ["", "## Time and memory per run", ""] + _timing_table(results)
    lines += ["", "## Speed", ""] + _speed_lines(results.get("speed"))
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r['key']}`: {r.get('error')}" for r in failed]
    empty = [r for r in results["runs"].values() if r["status"] == "ok" and r.get("no_detections")]
    if empty:
        lines += ["", "## Runs without detections", "", "Trained to the end, but no box scored above the test "
                  "threshold on these splits: AP 0 there (recall 0 at every IoU threshold), harmony undefined.", ""]
        lines += [f"- `{r['key']}`: {', '.join(r['no_detections'])}" for r in empty]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
