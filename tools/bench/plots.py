"""The bench figures (PNG, matplotlib Agg): score-vs-IoU hexbins side by side (FP, LSQ, LSQ + HQOD) from the
COCO evaluator's detections, and AP against bit width with the spread over seeds."""
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

from .plan import FP_SETTING, bits_of, split_variant  # noqa: E402

LABELS = {FP_SETTING: "FP32"}


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


def ap_vs_bits(path: pathlib.Path, groups: dict, combos, baselines=("lsq",)) -> None:
    """AP at 32 / 4 / 2 bits for each baseline with and without HQOD; error bars: std over seeds, dots: seeds."""
    fig, axes = plt.subplots(1, len(combos), figsize=(3.2 * len(combos), 2.9), dpi=80, squeeze=False)
    for ax, (dataset, detector, records) in zip(axes[0], combos):
        fp = groups.get(f"{dataset}/{detector}/{FP_SETTING}", {}).get("bbox/AP", {}).get("mean")
        for offset, algo in enumerate(f"{b}{suffix}" for b in baselines for suffix in ("", "_hqod")):
            xs, means, stds = [0], [fp], [0.0]
            for i, bits in enumerate((4, 2), start=1):
                g = groups.get(f"{dataset}/{detector}/{algo}_w{bits}a{bits}", {}).get("bbox/AP", {})
                xs.append(i)
                means.append(g.get("mean"))
                stds.append(g.get("std") or 0.0)
            shift = (offset - 0.5) * 0.08
            valid = [(x + shift, m, s) for x, m, s in zip(xs, means, stds) if m is not None]
            if valid:
                x, m, s = map(list, zip(*valid))
                ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=algo.upper().replace("_", "+"))
            seeds = [(bits_of(r["setting"]), r["metrics"]["bbox/AP"]) for r in records
                     if r["status"] == "ok" and r["setting"] in (f"{algo}_w4a4", f"{algo}_w2a2")]
            ax.scatter([(0 if b == 32 else 1 if b == 4 else 2) + shift for b, _ in seeds], [a for _, a in seeds],
                       s=8, color="grey", zorder=3)
        ax.set_xticks([0, 1, 2], ["FP32", "W4A4", "W2A2"])
        ax.set_ylabel("box AP")
        ax.set_title(f"{dataset} / {detector}", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: pathlib.Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
