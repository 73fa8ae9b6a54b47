"""Mean ± std over seeds per setting, and the paired per-seed difference HQOD − baseline (or variant − setting)."""
import math
import statistics

from .plan import pairs

METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "harmony/pearson", "harmony/spearman")
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


def groups(records) -> dict:
    """``"dataset/detector/setting" -> {"seeds", "failed", metric -> spread, "timing" -> {name -> spread}}``."""
    by_group = {}
    for record in records:
        by_group.setdefault(f"{record['dataset']}/{record['detector']}/{record['setting']}", []).append(record)
    result = {}
    for name, members in by_group.items():
        ok = [r for r in members if r["status"] == "ok"]
        entry = {"seeds": [r["seed"] for r in ok], "failed": {r["key"]: r.get("error") for r in members
                                                              if r["status"] != "ok"}}
        entry.update({m: spread([r["metrics"].get(m) for r in ok]) for m in METRICS})
        entry["timing"] = {t: spread([r.get(t) for r in members]) for t in TIMINGS}
        result[name] = entry
    return result


def paired(records, settings) -> list:
    """Per data set, detector and (baseline, HQOD) pair of ``plan.pairs`` (stored as "baseline" and "hqod"; for a
    variant: the setting and its variant): the difference HQOD − baseline of every metric, seed by seed (seeds where
    both runs succeeded), with its spread and how many seeds are positive."""
    ok = {(r["dataset"], r["detector"], r["setting"], r["seed"]): r["metrics"] for r in records if r["status"] == "ok"}
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
            result.append(entry)
    return result


def _diff(a, b):
    return a - b if a is not None and b is not None else None
