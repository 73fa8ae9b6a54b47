"""freeze_frozen_quantizers: the quantizers of a conv whose weight is frozen keep their calibrated parameters, so that
autograd stops at the first trainable layer as in full precision (MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS)."""
from .base import ROLES
from .qconv import QuantConvMixin


def freeze_frozen_quantizers(model) -> int:
    """Set ``requires_grad`` False on the parameters (step sizes, DSQ alpha, TQT thresholds) of the quantizers of
    every role (weight, input, output) of every converted conv whose weight does not require gradients (e.g. frozen by
    MODEL.BACKBONE.FREEZE_AT), so that the optimizer builder leaves them out as it does the frozen weights; calibration
    and checkpoint loading write them in place and keep the flag. Returns how many quantizers were frozen."""
    frozen = 0
    for module in model.modules():
        if isinstance(module, QuantConvMixin) and not module.weight.requires_grad:
            for role in ROLES:
                for quantizer in module.role_quantizers(role):
                    quantizer.requires_grad_(False)
                    frozen += 1
    return frozen
