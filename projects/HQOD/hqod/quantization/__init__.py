"""Quantization-aware training: LSQ / TQT / DSQ fake quantizers, observers, module swap of every conv, calibration.
Use: ``convert_to_qat(model, cfg)`` before the optimizer, load weights, ``calibrate(...)`` unless ``is_calibrated``."""
from .base import FakeQuantizer
from .calibrate import calibrate
from .convert import ALGORITHMS, convert_to_qat
from .dsq import DSQQuantizer
from .lsq import LSQQuantizer
from .observers import OBSERVERS, build_observer
from .qconv import QuantConvMixin
from .state import is_calibrated, is_quantized, quant_signature, quantizers, set_quant_state
from .tqt import TQTQuantizer

__all__ = [
    "ALGORITHMS", "DSQQuantizer", "FakeQuantizer", "LSQQuantizer", "OBSERVERS", "QuantConvMixin", "TQTQuantizer",
    "build_observer", "calibrate", "convert_to_qat", "is_calibrated", "is_quantized", "quant_signature",
    "quantizers", "set_quant_state",
]
