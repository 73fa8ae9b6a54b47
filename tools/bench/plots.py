"""The bench figures (PNG, matplotlib Agg): score-vs-IoU hexbins side by side (FP, LSQ, LSQ + HQOD) from the
COCO evaluator's detections, AP against bit width with the spread over seeds and the FP level, and the paired
HQOD − baseline differences with their 95% intervals."""
import io
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402

from hqod.evaluation import classify_detections, harmony_statistics  # noqa: E402
from hqod.utils.io import atomic_write_bytes  # noqa: E402

from .plan import FP_LONGER_SETTING, FP_SETTING, bits_of, split_variant  # noqa: E402

LABELS = {FP_SETTING: "FP32", FP_LONGER_SETTING: "FP32 trained on"}


def label(setting: str) -> str:
    """``lsq_hqod_w4a4`` -> ``LSQ+HQOD W4A4``, ``calib_lsq_w4a4`` -> ``calibration LSQ W4A4``,
    ``lsq_hqod_w4a4_numpos`` -> ``LSQ+HQOD W4A4 numpos``."""
    if setting in LABELS:
        return LABELS[setting]
    if setting.startswith("calib_"):
        return f"calibration {label(setting[len('calib_'):])}"
    plain, variant = split_variant(setting)
    if variant:
        return f"{label(plain)} {variant}"
    name, bits = setting.rsplit("_", 1)
    return f"{name.upper().replace('_', '+')} {bits.upper()}"


def score_iou(detections_json: pathlib.Path, gt: dict):
    """(score, IoU) of true positives and of misclassified detections of a COCO results json, matched as
    HarmonyEvaluator matches them (``gt``: ``ground_truth_by_image`` of the json the detections were made on)."""
    detections = {}
    for d in json.loads(detections_json.read_text()):
        detections.setdefault(d["image_id"], []).append(d)
    points = {"tp": [], "miscls": []}
    for image_id, dets in detections.items():
        x, y, w, h = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32).unbind(1)
        boxes = Boxes(torch.stack([x, y, x + w, y + h], dim=1))
        scores = torch.tensor([d["score"] for d in dets], dtype=torch.float64)
        classes = torch.tensor([d["category_id"] for d in dets])
        for kind, score, iou in classify_detections(boxes, scores, classes, *gt[image_id]):
            if kind in points:
                points[kind].append((score, iou))
    return tuple(np.array(points[kind]).reshape(-1, 2) for kind in ("tp", "miscls"))


def hexbins(path: pathlib.Path, panels, gt: dict, title: str) -> None:
    """One score-vs-IoU hexbin per ``(panel title, detections_json)``, side by side, with each panel's TP Pearson."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), dpi=80, sharey=True, squeeze=False)
    for ax, (name, detections_json) in zip(axes[0], panels):
        tp, miscls = score_iou(detections_json, gt)
        points = np.concatenate([tp, miscls])
        if len(points):
            ax.hexbin(points[:, 1], points[:, 0], gridsize=20, extent=(0, 1, 0, 1), mincnt=1, cmap="viridis",
                      bins="log")
        stats = harmony_statistics(tp[:, 0], tp[:, 1])
        ax.set_title(f"{name}\nPearson {stats['pearson']:.3f}, {len(tp)} TP", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("IoU", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("score", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def ap_vs_bits(path: pathlib.Path, groups: dict, combos, split: str, baselines=("lsq", "tqt")) -> None:
    """AP on ``split`` at W4A4 and W2A2 of each baseline with and without HQOD (error bars: std over seeds, grey
    dots: seeds), the FP model's AP a dashed line, one panel per data set and detector."""
    fig, axes = plt.subplots(1, len(combos), figsize=(3.2 * len(combos), 2.9), dpi=80, squeeze=False)
    algos = [f"{b}{suffix}" for b in baselines for suffix in ("", "_hqod")]
    for ax, (dataset, detector, records) in zip(axes[0], combos):
        fp = groups.get(f"{dataset}/{detector}/{FP_SETTING}", {}).get("bbox/AP", {}).get("mean")
        if fp is not None:
            ax.axhline(fp, color="black", linestyle="--", linewidth=1, label=f"FP32 ({fp:.1f})")
        longer = groups.get(f"{dataset}/{detector}/{FP_LONGER_SETTING}", {}).get("bbox/AP", {}).get("mean")
        if longer is not None:
            ax.axhline(longer, color="grey", linestyle=":", linewidth=1, label=f"FP32 trained on ({longer:.1f})")
        for offset, algo in enumerate(algos):
            shift = (offset - (len(algos) - 1) / 2) * 0.06
            points = [(i + shift, g["mean"], g["std"] or 0.0) for i, bits in enumerate((4, 2)) for g in
                      [groups.get(f"{dataset}/{detector}/{algo}_w{bits}a{bits}", {}).get("bbox/AP", {})]
                      if g.get("mean") is not None]
            if not points:
                continue
            x, m, s = map(list, zip(*points))
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=algo.upper().replace("_", "+"))
            seeds = [(0 if bits_of(r["setting"]) == 4 else 1, r["metrics"][split]["bbox/AP"]) for r in records
                     if r["status"] == "ok" and r["setting"] in (f"{algo}_w4a4", f"{algo}_w2a2")]
            ax.scatter([b + shift for b, _ in seeds], [a for _, a in seeds], s=8, color="grey", zorder=3)
        ax.set_xticks([0, 1], ["W4A4", "W2A2"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylabel(f"box AP ({split})")
        ax.set_title(f"{dataset} / {detector}", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def paired_differences(path: pathlib.Path, summary: dict, split: str) -> None:
    """HQOD − baseline per data set / detector and pooled (``summary``: one split's "paired" and "pooled"): mean
    ΔAP and ΔPearson with their 95% t intervals as error bars (pooled ones red), the seeds' differences as grey dots,
    a line at 0."""
    rows = [(f"{p['dataset']} / {p['detector']}: {label(p['hqod'])} − {label(p['baseline'])}", p, [p], "tab:blue")
            for p in summary["paired"]]
    rows += [(f"pooled: {label(p['hqod'])} − {label(p['baseline'])}", p,
              [m for m in summary["paired"] if (m["baseline"], m["hqod"]) == (p["baseline"], p["hqod"])], "tab:red")
             for p in summary["pooled"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.0 + 0.3 * max(1, len(rows))), dpi=80, sharey=True)
    for ax, metric, name in zip(axes, ("bbox/AP", "harmony/pearson"), ("ΔAP", "ΔPearson")):
        ax.axvline(0, color="black", linewidth=1)
        for y, (_, entry, members, color) in enumerate(rows):
            result = entry[metric]["inference"]
            if result["mean"] is None:
                continue
            low, high = result["t_ci95"] or (result["mean"],) * 2
            ax.errorbar([result["mean"]], [y], xerr=[[result["mean"] - low], [high - result["mean"]]], fmt="o",
                        capsize=3, color=color)
            seeds = [d for m in members for d in m[metric]["per_seed"] if d is not None]
            ax.scatter(seeds, [y] * len(seeds), s=8, color="grey", zorder=3)
        ax.set_xlabel(f"{name} ({split}), mean and 95% t interval", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(rows)), [row[0] for row in rows])
    axes[0].invert_yaxis()
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: pathlib.Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
