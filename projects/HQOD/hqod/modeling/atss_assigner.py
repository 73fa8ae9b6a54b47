"""Adaptive Training Sample Selection (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020): which ground-truth box each anchor is assigned to."""
from typing import List

import torch
from detectron2.structures import Boxes, pairwise_iou

INSIDE_MARGIN = 0.01  # an anchor centre must lie more than this many pixels inside the box (the reference's margin)


def _centers(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def atss_match(anchors_per_level: List[torch.Tensor], gt_boxes: torch.Tensor, topk: int) -> torch.Tensor:
    """Index of the box in ``gt_boxes`` (M, 4; XYXY) each anchor is assigned to, -1 for background; anchors are the
    rows of ``anchors_per_level`` (one (R_l, 4) XYXY tensor per level) in that order.

    Per box and level, the ``topk`` anchors whose centres are closest to the box centre (all of them on a level with
    fewer; equal distances: the lower anchor index first) are its candidates. Its IoU threshold is the mean plus the
    sample standard deviation of the candidates' IoUs (0 for a single candidate), computed in float64 so that equal
    IoUs meet their own mean exactly. A candidate is positive for the box when its IoU reaches the threshold and its
    centre lies inside the box. An anchor positive for several boxes goes to the one it overlaps most (equal IoUs:
    the lower box index).
    """
    num_anchors = sum(len(a) for a in anchors_per_level)
    device = gt_boxes.device
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    if len(gt_boxes) == 0 or num_anchors == 0:
        return matched
    anchors = torch.cat(anchors_per_level)
    ious = pairwise_iou(Boxes(gt_boxes), Boxes(anchors))  # (M, R)
    anchor_centers = _centers(anchors)
    sq_dist = (_centers(gt_boxes)[:, None, :] - anchor_centers[None, :, :]).square().sum(dim=2)  # (M, R)

    candidates, start = [], 0
    for level in anchors_per_level:
        count = len(level)
        if count:
            order = torch.sort(sq_dist[:, start:start + count], dim=1, stable=True).indices
            candidates.append(order[:, :min(topk, count)] + start)
        start += count
    candidates = torch.cat(candidates, dim=1)  # (M, C)
    candidate_ious = ious.gather(1, candidates)

    wide = candidate_ious.double()
    std = wide.std(dim=1) if wide.shape[1] > 1 else torch.zeros_like(wide[:, 0])
    threshold = wide.mean(dim=1) + std
    is_positive = wide >= threshold[:, None]

    centers = anchor_centers[candidates]  # (M, C, 2)
    inside = torch.stack([centers[..., 0] - gt_boxes[:, None, 0], centers[..., 1] - gt_boxes[:, None, 1],
                          gt_boxes[:, None, 2] - centers[..., 0], gt_boxes[:, None, 3] - centers[..., 1]],
                         dim=2).min(dim=2).values > INSIDE_MARGIN
    is_positive &= inside

    claims = torch.full_like(ious, -1.0)  # IoU where the anchor is positive for the box, else -1
    claims.scatter_(1, candidates, torch.where(is_positive, candidate_ious, torch.full_like(candidate_ious, -1.0)))
    best_box = claims.argmax(dim=0)  # the first of equal maxima
    claimed = claims.max(dim=0).values >= 0
    matched[claimed] = best_box[claimed]
    return matched
