"""``HarmonyEvaluator``: how well detection scores agree with localisation quality (the paper's task harmony).

Over detections after NMS with score >= ``SCORE_THRESH`` (0.05, as the authors' analysis tool), each detection
is matched to ground truth by IoU (``classify_detections``):

* true positive: IoU >= 0.5 with a ground-truth box of its class (the IoU used is the best such IoU; the
  authors' tool records a detection once per matching box, so a box matching two same-class boxes counts
  twice there and once here);
* mislocalised: 0 < best same-class IoU < 0.5;
* misclassified: best same-class IoU < 0.5 but IoU >= 0.5 with a box of another class.

Reported: Pearson (the authors' metric) and Spearman correlation of score and IoU over true positives, and
the three counts. A score-vs-IoU hexbin of true positives and misclassified detections is written as PNG.
"""
import io
import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from ..errors import HQODInputError
from ..utils.io import atomic_write_bytes

SCORE_THRESH = 0.05  # detections scoring lower are left out, as in the authors' analysis tool
TP_IOU = 0.5  # a detection with this IoU or more with a ground-truth box of its class is a true positive


def match_detections(pred_boxes: Boxes, pred_classes, gt_boxes: Boxes, gt_classes):
    """Per detection: best IoU with a same-class ground-truth box and best IoU with any other-class box."""
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        zeros = torch.zeros(len(pred_boxes))
        return zeros, zeros.clone()
    iou = pairwise_iou(pred_boxes, gt_boxes)
    same = pred_classes[:, None] == gt_classes[None, :]
    same_iou = torch.where(same, iou, torch.zeros_like(iou)).max(dim=1).values
    other_iou = torch.where(same, torch.zeros_like(iou), iou).max(dim=1).values
    return same_iou, other_iou


def classify_detections(pred_boxes: Boxes, scores, pred_classes, gt_boxes: Boxes, gt_classes,
                        score_thresh=SCORE_THRESH):
    """``[(kind, score, iou)]`` for the detections of one image scoring at least ``score_thresh``, by the rules
    above: kind "tp" or "misloc" with the best same-class IoU, "miscls" with the best other-class IoU, or "other"
    (no overlap with a box of its class; IoU 0)."""
    keep = scores >= score_thresh
    same_iou, other_iou = match_detections(pred_boxes[keep], pred_classes[keep], gt_boxes, gt_classes)
    records = []
    for score, same, other in zip(scores[keep].tolist(), same_iou.tolist(), other_iou.tolist()):
        if same >= TP_IOU:
            records.append(("tp", score, same))
        elif other >= TP_IOU:
            records.append(("miscls", score, other))
        else:
            records.append(("misloc" if same > 0 else "other", score, same))
    return records


def ground_truth_by_image(dataset):
    """``image_id -> (Boxes in XYXY_ABS, class tensor)``, crowd boxes left out, of ``dataset``: the name of a
    registered data set (classes as its contiguous ids) or the path of a COCO json file (classes as the file's
    category ids, the ids of COCO-format detection results)."""
    if dataset in DatasetCatalog.list():
        records = DatasetCatalog.get(dataset)
    elif os.path.isfile(dataset):
        records = load_coco_json(str(dataset), image_root="")
    else:
        raise HQODInputError(f"{str(dataset)!r} is neither a registered data set nor a COCO json file; "
                             "pass a data set name or an existing json")
    result = {}
    for record in records:
        annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
        result[record["image_id"]] = (
            Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
            torch.tensor([a["category_id"] for a in annos], dtype=torch.int64),
        )
    return result


def harmony_statistics(scores, ious, misclassified_scores=(), misclassified_ious=()):
    """The harmony metrics from per-detection arrays of true positives (plus the misclassified count)."""
    scores, ious = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    stats = OrderedDict(pearson=float("nan"), spearman=float("nan"))
    if len(scores) >= 2 and scores.std() > 0 and ious.std() > 0:
        stats["pearson"] = float(np.corrcoef(scores, ious)[0, 1])
        stats["spearman"] = float(np.corrcoef(_ranks(scores), _ranks(ious))[0, 1])
    stats["num_tp"] = float(len(scores))
    stats["num_misclassified"] = float(len(misclassified_scores))
    return stats


def _ranks(values):
    """Average ranks (ties share the mean rank), as Spearman's correlation needs."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end - 1) / 2
    return ranks


class HarmonyEvaluator(DatasetEvaluator):
    """Score–IoU harmony of a detector's outputs on a data set with ground truth."""

    def __init__(self, dataset_name, output_dir=None, score_thresh=SCORE_THRESH, distributed=True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._score_thresh = score_thresh
        self._distributed = distributed
        self._gt = None
        self._logger = logging.getLogger(__name__)

    def reset(self):
        self._records = []  # (kind, score, iou) with kind in {"tp", "misloc", "miscls", "other"}
        if self._gt is None:
            self._gt = ground_truth_by_image(self._dataset_name)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            self._records += classify_detections(instances.pred_boxes, instances.scores, instances.pred_classes,
                                                 *self._gt[inp["image_id"]], score_thresh=self._score_thresh)

    def evaluate(self):
        records = self._records
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return {}
        by_kind = {kind: ([s for k, s, _ in records if k == kind], [i for k, _, i in records if k == kind])
                   for kind in ("tp", "miscls", "misloc")}
        stats = harmony_statistics(*by_kind["tp"], *by_kind["miscls"])
        stats["num_mislocalized"] = float(len(by_kind["misloc"][0]))
        stats["num_detections"] = float(len(records))
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "harmony_hexbin.png")
            save_hexbin(path, *by_kind["tp"], *by_kind["miscls"], title=self._dataset_name)
            self._logger.info("Score-vs-IoU hexbin written to %s", path)
        self._logger.info("Harmony on %s: %s", self._dataset_name, dict(stats))
        return OrderedDict(harmony=stats)


def save_hexbin(path, tp_scores, tp_ious, miscls_scores=(), miscls_ious=(), title=""):
    """Write a score-vs-IoU hexbin (true positives and misclassified detections) as PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.r_[np.asarray(tp_scores, dtype=float), np.asarray(miscls_scores, dtype=float)]
    ious = np.r_[np.asarray(tp_ious, dtype=float), np.asarray(miscls_ious, dtype=float)]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if len(scores):
        ax.hexbin(ious, scores, gridsize=25, extent=(0, 1, 0, 1), mincnt=1, cmap="viridis", bins="log")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("IoU with ground truth")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
