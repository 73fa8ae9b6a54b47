"""The demo loop: each image through one or two detectors, drawn side by side, written, inharmony listed."""
import os
import time

import numpy as np

from .files import read_rgb, write_image
from .inharmony import HarmonyThresholds, assess
from .render import draw_detections, draw_harmony


def run_demo(predictors, inputs, outputs, class_names, confidence, ground_truth=None,
             thresholds=HarmonyThresholds(), stream=None) -> list:
    """Draw every input with every predictor (panels side by side, titled, when several) into its output path; with
    ``ground_truth`` (``path -> (Boxes, classes)``) colour by IoU, then print and return the inharmonious cases."""
    titled = len(predictors) > 1
    cases = []
    for path, out_path in zip(inputs, outputs):
        image = read_rgb(path)
        panels, notes = [], []
        for predictor in predictors:
            start = time.perf_counter()
            instances = predictor(image)
            seconds = time.perf_counter() - start
            title = predictor.label if titled else ""
            if ground_truth is None:
                instances = instances[instances.scores >= confidence]
                panels.append(draw_detections(image, instances, class_names, title))
            else:
                gt_boxes, gt_classes = ground_truth[path]
                instances, ious, kinds = assess(instances, gt_boxes, gt_classes, thresholds, confidence)
                panels.append(draw_harmony(image, instances, ious, kinds, class_names, gt_boxes, title))
                cases += [(os.path.basename(path), predictor.label, class_names[c], score, iou, kind)
                          for c, score, iou, kind in zip(instances.pred_classes.tolist(), instances.scores.tolist(),
                                                         ious.tolist(), kinds) if kind]
            notes.append(f"{predictor.label}: {len(instances)} detections in {seconds:.2f} s")
        write_image(out_path, np.concatenate(panels, axis=1))
        print(f"{path} -> {out_path} ({'; '.join(notes)})", file=stream, flush=True)
    if ground_truth is not None:
        print(format_cases(cases, thresholds), file=stream, flush=True)
    return cases


def format_cases(cases, thresholds: HarmonyThresholds) -> str:
    """A table of inharmonious detections, one ``(image, model, class, score, IoU, kind)`` row each."""
    t = thresholds
    title = (f"{len(cases)} inharmonious detections (score>IoU: score >= {t.high_score:g} with IoU < {t.low_iou:g}; "
             f"IoU>score: score < {t.low_score:g} with IoU >= {t.high_iou:g})")
    if not cases:
        return title
    rows = [("image", "model", "class", "score", "IoU", "kind")]
    rows += [(image, model, name, f"{score:.2f}", f"{iou:.2f}", kind) for image, model, name, score, iou, kind in cases]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join([title] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows])
