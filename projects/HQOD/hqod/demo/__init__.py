"""The visualization demo (``demo.py``): detectors run on images, drawn alone, side by side, or with their inharmony."""
from .files import dataset_inputs, expand_inputs, output_paths, read_rgb, write_image  # noqa: F401
from .inharmony import HarmonyThresholds, assess  # noqa: F401
from .predictor import Predictor, class_names, model_label  # noqa: F401
from .render import draw_detections, draw_harmony  # noqa: F401
from .runner import format_cases, run_demo  # noqa: F401
