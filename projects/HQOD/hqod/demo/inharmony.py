"""Score–IoU inharmony of single detections: a high score on a poor box, or a low score on a good one."""
from dataclasses import dataclass

import torch

from ..errors import HQODInputError
from ..evaluation.harmony import match_detections

OVERCONFIDENT = "score>IoU"
UNDERCONFIDENT = "IoU>score"


@dataclass(frozen=True)
class HarmonyThresholds:
    """Inharmonious: score >= high_score with IoU < low_iou ("score>IoU"), or score < low_score with IoU >= high_iou
    ("IoU>score"); IoU is the best with a ground-truth box of the detection's class."""

    high_score: float = 0.5
    low_iou: float = 0.5
    low_score: float = 0.3
    high_iou: float = 0.75

    def __post_init__(self):
        if not (0 <= self.low_score <= self.high_score <= 1 and 0 <= self.low_iou <= self.high_iou <= 1):
            raise HQODInputError(f"harmony thresholds need 0 <= low score <= high score <= 1 and 0 <= low IoU <= "
                                 f"high IoU <= 1, got {self}")

    def kind(self, score: float, iou: float) -> str:
        """``"score>IoU"``, ``"IoU>score"``, or ``""`` for a detection in harmony."""
        if score >= self.high_score and iou < self.low_iou:
            return OVERCONFIDENT
        if score < self.low_score and iou >= self.high_iou:
            return UNDERCONFIDENT
        return ""


def assess(instances, gt_boxes, gt_classes, thresholds: HarmonyThresholds, confidence: float):
    """The detections worth drawing (score >= ``confidence``, or inharmonious), their IoUs and inharmony kinds."""
    ious = match_detections(instances.pred_boxes, instances.pred_classes, gt_boxes, gt_classes)[0]
    kinds = [thresholds.kind(score, iou) for score, iou in zip(instances.scores.tolist(), ious.tolist())]
    keep = [i for i, (score, kind) in enumerate(zip(instances.scores.tolist(), kinds)) if score >= confidence or kind]
    keep_index = torch.tensor(keep, dtype=torch.long)
    return instances[keep_index], ious[keep_index], [kinds[i] for i in keep]
