"""``HQODCheckpointer``: atomic checkpoint writes and a guard against QAT checkpoints that don't fit the config."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..errors import HQODInputError
from ..quantization import is_quantized

QUANT_KEYS = ("ALGORITHM", "WEIGHT_BITS", "ACT_BITS", "FIRST_LAST_BITS", "OVERRIDES", "PER_CHANNEL")


def quant_config_record(cfg) -> dict:
    """What a QAT checkpoint records of MODEL.QUANT, to be compared with the config that loads it."""
    return {key: cfg.MODEL.QUANT[key] for key in QUANT_KEYS}


def is_qat_state(state_dict) -> bool:
    """Whether a model state dict holds fake-quantizer state (a checkpoint of a converted model)."""
    return any(".weight_quant." in key or ".input_quant." in key for key in state_dict)


def check_checkpoint_fits(checkpoint: dict, cfg, source: str) -> None:
    """One-line error when a QAT checkpoint meets a full-precision config, or its quantization differs from cfg."""
    model_state = checkpoint.get("model", {})
    if not is_qat_state(model_state):
        return
    if not cfg.MODEL.QUANT.ENABLED:
        raise HQODInputError(
            f"{source} is a QAT (quantized) checkpoint but the config builds a full-precision model; "
            "use the QAT config it was trained with (MODEL.QUANT.ENABLED True)"
        )
    recorded = checkpoint.get("quant_config")
    if recorded is None:
        return
    expected = quant_config_record(cfg)
    diffs = [f"MODEL.QUANT.{k}={recorded.get(k)!r} in the checkpoint vs {expected[k]!r} in the config"
             for k in QUANT_KEYS if recorded.get(k) != expected[k]]
    if diffs:
        raise HQODInputError(f"{source} does not fit the config: {'; '.join(diffs)}; use matching MODEL.QUANT values")


def check_weights_file(cfg) -> None:
    """Run ``check_checkpoint_fits`` on a local MODEL.WEIGHTS file before any worker starts."""
    path = cfg.MODEL.WEIGHTS
    if path and "://" not in path and os.path.isfile(path):
        check_checkpoint_fits(torch.load(path, map_location="cpu", weights_only=False), cfg, path)


class HQODCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files appear whole or not at all (written under a temporary name, then
    renamed), which records MODEL.QUANT in QAT checkpoints and refuses checkpoints that don't fit the config."""

    def __init__(self, model, save_dir="", *, cfg, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self._cfg = cfg
        self._defer_tag = False

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if is_quantized(self.model):
            kwargs.setdefault("quant_config", quant_config_record(self._cfg))
        partial = f".{name}.partial"
        self._defer_tag = True
        try:
            super().save(partial, **kwargs)
        finally:
            self._defer_tag = False
        basename = f"{name}.pth"
        os.replace(os.path.join(self.save_dir, f"{partial}.pth"), os.path.join(self.save_dir, basename))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str):
        if self._defer_tag:
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        tmp = f"{path}.partial"
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
        os.replace(tmp, path)

    def _load_model(self, checkpoint):
        check_checkpoint_fits(checkpoint, self._cfg, "the checkpoint")
        return super()._load_model(checkpoint)
