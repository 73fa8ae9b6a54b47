"""Per split (val, test): mean ± std over seeds per setting, and the paired per-seed difference HQOD − baseline (or
variant − setting) with its 95% intervals and sign test, per data set and detector and pooled over them."""
import math
import statistics

from .plan import SPLITS, pairs
from .stats import inference

METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "harmony/pearson", "harmony/spearman")
INFERENCE_METRICS = ("bbox/AP", "harmony/pearson")  # paired differences with intervals and sign test
TIMINGS = ("wall_s", "s_per_iter", "calib_s", "train_s", "eval_s", "peak_rss_mb")


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def spread(values) -> dict:
    """n, mean, sample std (0 for one value), min and max of the finite values."""
    values = _finite(values)
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def _metrics(record, split) -> dict:
    return record.get("metrics", {}).get(split, {})


def summarize(records, settings) -> dict:
    """The summary of every split: ``split -> {"groups", "paired", "pooled"}``."""
    result = {}
    for split in SPLITS:
        pairs_of_split = paired(records, settings, split)
        result[split] = {"groups": groups(records, split), "paired": pairs_of_split, "pooled": pooled(pairs_of_split)}
    return result


def groups(records, split) -> dict:
    """``"dataset/detector/setting" -> {"seeds", "failed", "no_detections", metric -> spread, "timing" -> {name ->
    spread}}``, metrics of ``split`` (``no_detections``: the seeds scored AP 0 on it for detecting nothing)."""
    by_group = {}
    for record in records:
        by_group.setdefault(f"{record['dataset']}/{record['detector']}/{record['setting']}", []).append(record)
    result = {}
    for name, members in by_group.items():
        ok = [r for r in members if r["status"] == "ok"]
        entry = {"seeds": [r["seed"] for r in ok], "failed": {r["key"]: r.get("error") for r in members
                                                              if r["status"] != "ok"},
                 "no_detections": [r["seed"] for r in ok if split in r.get("no_detections", ())]}
        entry.update({m: spread([_metrics(r, split).get(m) for r in ok]) for m in METRICS})
        entry["timing"] = {t: spread([r.get(t) for r in members]) for t in TIMINGS}
        result[name] = entry
    return result


def paired(records, settings, split) -> list:
    """Per data set, detector and (baseline, HQOD) pair of ``plan.pairs`` (stored as "baseline" and "hqod"; for a
    variant: the setting and its variant): the difference HQOD − baseline of every metric on ``split``, seed by seed
    (seeds where both runs succeeded), with its spread and how many seeds are positive; for ``INFERENCE_METRICS``
    also its ``inference`` (intervals, sign test)."""
    ok = {(r["dataset"], r["detector"], r["setting"], r["seed"]): _metrics(r, split) for r in records
          if r["status"] == "ok"}
    combos = sorted({(d, det) for d, det, _, _ in ok})
    result = []
    for dataset, detector in combos:
        for base, hqod in pairs(settings):
            seeds = sorted(s for d, det, st, s in ok if (d, det, st) == (dataset, detector, base)
                           and (dataset, detector, hqod, s) in ok)
            if not seeds:
                continue
            entry = {"dataset": dataset, "detector": detector, "baseline": base, "hqod": hqod, "seeds": seeds}
            for m in METRICS:
                diffs = [_diff(ok[dataset, detector, hqod, s].get(m), ok[dataset, detector, base, s].get(m))
                         for s in seeds]
                entry[m] = dict(spread(diffs), per_seed=diffs, positive=sum(1 for d in _finite(diffs) if d > 0))
                if m in INFERENCE_METRICS:
                    entry[m]["inference"] = inference(_finite(diffs))
            result.append(entry)
    return result


def pooled(paired_entries) -> list:
    """Per (baseline, HQOD) pair: the ``INFERENCE_METRICS`` differences of every data set, detector and seed
    together (``combos``: the data set / detector pairs pooled), with their spread and ``inference``."""
    result = []
    for base, hqod in dict.fromkeys((p["baseline"], p["hqod"]) for p in paired_entries):
        members = [p for p in paired_entries if (p["baseline"], p["hqod"]) == (base, hqod)]
        entry = {"baseline": base, "hqod": hqod, "combos": [f"{p['dataset']}/{p['detector']}" for p in members]}
        for m in INFERENCE_METRICS:
            diffs = _finite(d for p in members for d in p[m]["per_seed"])
            entry[m] = dict(spread(diffs), positive=sum(1 for d in diffs if d > 0), inference=inference(diffs))
        result.append(entry)
    return result


def _diff(a, b):
    return a - b if a is not None and b is not None else None
