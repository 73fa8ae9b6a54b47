"""Quantization-aware training: LSQ / TQT / DSQ fake quantizers, observers, module swap of every conv, calibration.
Use: ``convert_to_qat(model, cfg)`` before the optimizer, load weights, ``calibrate(...)`` unless ``is_calibrated``.
Read quantizers through their declared interface: ``role``, ``bits``, ``spec()`` (``QuantSpec``)."""
from .base import ROLES, FakeQuantizer, QuantSpec
from .calibrate import calibrate
from .convert import ALGORITHMS, convert_to_qat
from .dsq import DSQQuantizer
from .lsq import LSQQuantizer
from .observers import OBSERVERS, build_observer
from .qconv import QUANTIZER_ATTRIBUTES, QuantConvMixin
from .state import (is_calibrated, is_quantized, is_quantizer_key, quant_signature, quantizers,
                    set_quant_state)
from .tqt import TQTQuantizer

__all__ = [
    "ALGORITHMS", "DSQQuantizer", "FakeQuantizer", "LSQQuantizer", "OBSERVERS", "QUANTIZER_ATTRIBUTES",
    "QuantConvMixin", "QuantSpec", "ROLES", "TQTQuantizer", "build_observer", "calibrate", "convert_to_qat",
    "is_calibrated", "is_quantized", "is_quantizer_key", "quant_signature", "quantizers", "set_quant_state",
]
