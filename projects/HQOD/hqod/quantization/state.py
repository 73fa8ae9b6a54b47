"""Queries and mode switches over the quantizers of a converted model."""
from .base import FakeQuantizer
from .qconv import QUANTIZER_ATTRIBUTES, QuantConvMixin


def quantizers(model):
    """Iterate ``(name, quantizer)`` over every fake quantizer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantizer):
            yield name, module


def set_quant_state(model, observe: bool, fake_quant: bool):
    """Switch every quantizer: ``observe`` feeds its observer, ``fake_quant`` quantizes (else passes x through)."""
    for _, quantizer in quantizers(model):
        quantizer.observe_enabled = observe
        quantizer.fake_quant_enabled = fake_quant


def is_quantizer_key(key: str) -> bool:
    """Whether state-dict ``key`` belongs to a quantizer of a converted model (keys only, no model needed)."""
    return any(f".{attribute}." in f".{key}" for attribute in QUANTIZER_ATTRIBUTES.values())


def is_quantized(model) -> bool:
    """Whether ``convert_to_qat`` was applied to ``model``."""
    return any(isinstance(module, QuantConvMixin) for module in model.modules())


def is_calibrated(model) -> bool:
    """Whether every quantizer is initialised (calibrated, or loaded from a QAT checkpoint): skip calibration."""
    found = list(quantizers(model))
    return bool(found) and all(bool(quantizer.initialized) for _, quantizer in found)


def quant_signature(model) -> dict:
    """``{conv name: (weight bits, input bits)}`` of a converted model, to check a checkpoint against a config."""
    return {name: (module.quantizer("weight").bits, module.quantizer("input").bits)
            for name, module in model.named_modules() if isinstance(module, QuantConvMixin)}
