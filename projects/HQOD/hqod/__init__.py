"""HQOD: Harmonious Quantization for Object Detection, as a Detectron2 project.

Importing this package applies the Detectron2 compatibility measures (``hqod.compat``) and registers the
project's data sets, backbones and meta-architectures with Detectron2's registries.
"""
from . import compat  # noqa: F401  (must run before any detectron2.modeling import)
from . import data, modeling  # noqa: F401  (registration side effects)
from .config import add_hqod_config  # noqa: F401
