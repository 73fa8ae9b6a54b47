"""Evaluators used beside Detectron2's: score–IoU harmony."""
from .harmony import HarmonyEvaluator, harmony_statistics, match_detections  # noqa: F401
