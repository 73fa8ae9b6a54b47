"""Calibration: observe activations and weights on a few images, initialise every quantizer, switch to QAT."""
import logging

import torch

from ..errors import HQODInputError
from .distributed import all_reduce_
from .state import quantizers, set_quant_state

logger = logging.getLogger(__name__)


def calibrate(model, data_loader, num_images: int) -> int:
    """Observe ``num_images`` images of ``data_loader`` over all ranks (images x world size) in eval mode without fake
    quantization, reduce the statistics over ranks, initialise every quantizer, switch to QAT; returns images seen."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images <= 0:
        raise HQODInputError(f"calibration needs a positive number of images, got {num_images!r}")
    found = [quantizer for _, quantizer in quantizers(model)]
    if not found:
        raise HQODInputError("calibrate() got a model without quantizers: call convert_to_qat(model, cfg) first")
    for quantizer in found:
        quantizer.reset_observation()
    was_training = model.training
    set_quant_state(model, observe=True, fake_quant=False)
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in data_loader:
                model(batch)
                seen += int(all_reduce_(torch.tensor(float(len(batch)), device=found[0].initialized.device)))
                if seen >= num_images:
                    break
        if seen == 0:
            raise HQODInputError("calibration data loader yielded no images")
        missed = [quantizer.qualified_name for quantizer in found if not quantizer.finish_calibration()]
    finally:
        set_quant_state(model, observe=False, fake_quant=True)
        model.train(was_training)
    if seen < num_images:
        logger.warning("Calibration data ran out after %d of %d images.", seen, num_images)
    if missed:
        logger.warning("Calibration never ran %d quantizers (they stay uninitialised): %s", len(missed), missed)
    logger.info("Calibrated %d quantizers on %d images.", len(found), seen)
    return seen
