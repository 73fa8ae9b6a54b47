"""Drawings with Detectron2's ``Visualizer``: detections by class, or by IoU with the inharmonious ones marked."""
import matplotlib
import numpy as np
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

IOU_COLORS = matplotlib.colormaps["RdYlGn"]  # IoU 0 red, 0.5 yellow, 1 green


def draw_detections(image_rgb, instances, class_names, title="") -> np.ndarray:
    """``image_rgb`` with each detection's box and "class score" label in its class's colour."""
    palette = colormap(rgb=True, maximum=1)
    classes = instances.pred_classes.tolist()
    labels = [f"{class_names[c]} {score:.2f}" for c, score in zip(classes, instances.scores.tolist())]
    vis = Visualizer(image_rgb)
    vis.overlay_instances(boxes=instances.pred_boxes, labels=labels,
                          assigned_colors=[palette[c % len(palette)] for c in classes])
    return _finish(vis, title)


def draw_harmony(image_rgb, instances, ious, kinds, class_names, gt_boxes, title="") -> np.ndarray:
    """Ground truth dotted white; detections coloured by IoU and labelled "class score IoU", the inharmonious ones
    (non-empty ``kinds``) with a thick dashed outline and a "!kind" tag."""
    vis = Visualizer(image_rgb)
    for box in gt_boxes.tensor.tolist():
        vis.draw_box(box, alpha=0.9, edge_color="white", line_style=":")
    colors = [IOU_COLORS(iou)[:3] for iou in ious.tolist()]
    labels = [f"{'!' + kind + ' ' if kind else ''}{class_names[c]} {score:.2f} IoU {iou:.2f}"
              for kind, c, score, iou in zip(kinds, instances.pred_classes.tolist(), instances.scores.tolist(),
                                             ious.tolist())]
    vis.overlay_instances(boxes=instances.pred_boxes, labels=labels, assigned_colors=colors)
    height, width = image_rgb.shape[:2]
    mark_width = 2 * max(np.sqrt(height * width) // 90, 10) / 4  # twice the Visualizer's own box lines
    for (x0, y0, x1, y1), color, kind in zip(instances.pred_boxes.tensor.tolist(), colors, kinds):
        if kind:
            vis.draw_line([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color, linestyle="--", linewidth=mark_width)
    return _finish(vis, title)


def _finish(vis, title):
    if title:
        vis.draw_text(title, (4, 4), color="white", horizontal_alignment="left")
    return vis.get_output().get_image()
