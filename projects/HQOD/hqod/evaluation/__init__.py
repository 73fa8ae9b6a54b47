"""Evaluators used beside Detectron2's: score–IoU harmony."""
from .harmony import (SCORE_THRESH, HarmonyEvaluator, classify_detections, ground_truth_by_image,  # noqa: F401
                      harmony_statistics, match_detections)
