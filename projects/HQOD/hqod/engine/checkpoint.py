"""``HQODCheckpointer``: checkpoints read without running code, written whole or not at all, never written from a
diverged model, and checked against the config that loads them."""
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer

from ..errors import CheckpointSaveError, HQODInputError
from ..quantization import is_quantized, is_quantizer_key
from ..utils.io import atomic_path, atomic_write_bytes
from ..utils.safe_load import load_pickle, load_torch

QUANT_KEYS = ("ALGORITHM", "WEIGHT_BITS", "ACT_BITS", "FIRST_LAST_BITS", "DEPTHWISE_BITS", "OVERRIDES", "PER_CHANNEL",
              "PLACEMENT")
UNRECORDED = {"DEPTHWISE_BITS": 0, "PLACEMENT": "conv_input"}  # what checkpoints written before a key existed used
logger = logging.getLogger(__name__)


def quant_config_record(cfg) -> dict:
    """What a QAT checkpoint records of MODEL.QUANT, to be compared with the config that loads it."""
    return {key: cfg.MODEL.QUANT[key] for key in QUANT_KEYS}


def is_qat_state(state_dict) -> bool:
    """Whether a model state dict holds fake-quantizer state (a checkpoint of a converted model), by its keys: the
    key pattern comes from the quantizer interface (``is_quantizer_key``), so QAT checkpoints written before any
    record of it, and state dicts from other tools, are recognised alike."""
    return any(is_quantizer_key(key) for key in state_dict)


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
    recorded = {k: recorded.get(k, UNRECORDED.get(k)) for k in QUANT_KEYS}
    diffs = [f"MODEL.QUANT.{k}={recorded[k]!r} in the checkpoint vs {expected[k]!r} in the config"
             for k in QUANT_KEYS if recorded[k] != expected[k]]
    if diffs:
        raise HQODInputError(f"{source} does not fit the config: {'; '.join(diffs)}; use matching MODEL.QUANT values")


def read_checkpoint(path: str) -> dict:
    """The checkpoint dict in ``path`` as Detectron2's checkpointer uses it, read without running code: ``.pkl``
    model-zoo pickles through an arrays-only unpickler, any other file with ``torch.load(weights_only=True)``."""
    if path.endswith(".pyth"):
        raise HQODInputError(f"{path}: pycls (.pyth) checkpoints are not supported; convert it to a .pth state dict")
    if not path.endswith(".pkl"):
        data = load_torch(path)
        return data if isinstance(data, dict) and "model" in data else {"model": data}
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise HQODInputError(f"{path} holds a {type(data).__name__}, not a dict of weights; pass a model-zoo .pkl")
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo layout
        return data
    # Caffe2 / Detectron1 layout: a flat dict of arrays (detection models keep them under "blobs"), matched to the
    # model by name heuristics; the solver's momentum buffers are not weights.
    weights = data.get("blobs", data)
    weights = {key: value for key, value in weights.items() if not key.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def checkpoint_to_load(cfg, resume: bool):
    """The local file a run will load: the last checkpoint of OUTPUT_DIR when resuming from one, else MODEL.WEIGHTS
    when it is a local file; None for nothing or a URL (fetched by Detectron2)."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.OUTPUT_DIR, f.read().strip())
    path = cfg.MODEL.WEIGHTS
    return path if path and "://" not in path else None


def check_weights_file(cfg, resume: bool = False) -> None:
    """Read the file ``checkpoint_to_load`` names (safely) and check it fits cfg, before any worker starts."""
    path = checkpoint_to_load(cfg, resume)
    if path:
        check_checkpoint_fits(read_checkpoint(path), cfg, path)


class _WeightsOnlyTorchFiles(Checkpointer):
    """Sits under DetectionCheckpointer in the MRO: the plain torch files it hands to fvcore load weights-only."""

    def _load_file(self, f):
        return load_torch(f)


class HQODCheckpointer(DetectionCheckpointer, _WeightsOnlyTorchFiles):
    """DetectionCheckpointer that reads files without running code, writes them whole or not at all (under a
    temporary name, then renamed; ``last_checkpoint`` likewise), records MODEL.QUANT in QAT checkpoints, refuses
    checkpoints that don't fit the config, and never writes a model with NaN or infinite tensors."""

    def __init__(self, model, save_dir="", *, cfg, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self._cfg = cfg
        self._defer_tag = False
        self._stopped_because = None

    def stop_saving(self, reason: str) -> None:
        """Write no further checkpoint (e.g. after the loss diverged), so the last good one stays the last."""
        self._stopped_because = reason

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if self._stopped_because is None and not _all_finite(self.model):
            self._stopped_because = "the model has NaN or infinite tensors"
        if self._stopped_because is not None:
            logger.warning("Not saving %s.pth: %s; the last good checkpoint stays %s.", name, self._stopped_because,
                           self.last_good_checkpoint())
            return
        if is_quantized(self.model):
            kwargs.setdefault("quant_config", quant_config_record(self._cfg))
        path = os.path.join(self.save_dir, f"{name}.pth")
        self._remove_partial_files()
        try:
            with atomic_path(path) as tmp:
                self._defer_tag = True
                try:
                    super().save(os.path.basename(tmp)[: -len(".pth")], **kwargs)
                finally:
                    self._defer_tag = False
            self.tag_last_checkpoint(os.path.basename(path))
        except (OSError, RuntimeError) as e:
            reason = " ".join(str(e).split())[:200]
            raise CheckpointSaveError(
                f"could not write checkpoint {path} ({reason}); the last good checkpoint "
                f"({self.last_good_checkpoint()}) and last_checkpoint are unchanged: free disk space or fix the "
                f"permissions of {self.save_dir}, then continue with --resume"
            ) from None

    def _remove_partial_files(self):
        """Delete what a killed process left of its checkpoint writes (temporary files, never named in
        last_checkpoint); only the main process writes checkpoints, one at a time."""
        for name in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else ():
            if name.startswith(".") and name.endswith(".partial.pth"):
                os.remove(os.path.join(self.save_dir, name))

    def tag_last_checkpoint(self, last_filename_basename: str):
        if not self._defer_tag:
            atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode())

    def last_good_checkpoint(self) -> str:
        """The path ``last_checkpoint`` names, or "none" before the first save."""
        try:
            with open(os.path.join(self.save_dir, "last_checkpoint")) as f:
                return os.path.join(self.save_dir, f.read().strip())
        except OSError:
            return "none"

    def _load_file(self, filename):
        if filename.endswith((".pkl", ".pyth")):
            return read_checkpoint(filename)
        return super()._load_file(filename)  # Detectron2's handling, reading through _WeightsOnlyTorchFiles

    def _load_model(self, checkpoint):
        check_checkpoint_fits(checkpoint, self._cfg, "the checkpoint")
        return super()._load_model(checkpoint)


class StrictHQODCheckpointer(HQODCheckpointer):
    """Also refuses weights that leave detector tensors (not quantizer state) unset or mis-shaped: for inference
    (demo, export), where such weights would silently run random ones."""

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        unset = [key for key in incompatible.missing_keys if not is_quantizer_key(key)]
        unset += [key for key, *_ in incompatible.incorrect_shapes]
        if unset:
            raise HQODInputError(f"MODEL.WEIGHTS {self._cfg.MODEL.WEIGHTS!r} does not fit the config's model: "
                                 f"{len(unset)} tensors missing or mis-shaped (e.g. {unset[0]}); pass a checkpoint "
                                 "trained with this config")
        return incompatible


def _all_finite(model) -> bool:
    return all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
