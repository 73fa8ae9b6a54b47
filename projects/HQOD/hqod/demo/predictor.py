"""``Predictor``: a full-precision or QAT detector loaded from its config and weights, run on single RGB images."""
import numpy as np
import torch
from detectron2.data import transforms as T

from ..engine import HQODTrainer
from ..engine.checkpoint import StrictHQODCheckpointer
from ..errors import HQODInputError
from ..modeling.detectors import dense_detector_of
from ..quantization import is_calibrated, is_quantized


def model_label(cfg) -> str:
    """Meta-architecture and bits, e.g. ``"RetinaNet FP32"`` or ``"HQODRetinaNet LSQ W4A4"``."""
    quant = cfg.MODEL.QUANT
    bits = f"{quant.ALGORITHM} W{quant.WEIGHT_BITS}A{quant.ACT_BITS}" if quant.ENABLED else "FP32"
    return f"{cfg.MODEL.META_ARCHITECTURE} {bits}"


def class_names(metadata, num_classes: int) -> list:
    """The ``thing_classes`` of ``metadata`` (``class k`` without them); an error when their number differs."""
    names = metadata.get("thing_classes", None)
    if names is None:
        return [f"class {k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise HQODInputError(f"the model predicts {num_classes} classes but data set {metadata.name!r} has "
                             f"{len(names)}; use the data set the model was trained on")
    return list(names)


class Predictor:
    """The detector of ``cfg`` (QAT-converted with MODEL.QUANT.ENABLED, weights from MODEL.WEIGHTS) in eval mode on
    one image at a time, resized as at test time, keeping detections down to ``score_thresh`` (or the config's)."""

    def __init__(self, cfg, score_thresh: float):
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise HQODInputError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} is not supported by the demo; use RGB or BGR")
        cfg = cfg.clone()
        cfg.defrost()
        spec = dense_detector_of(cfg.MODEL.META_ARCHITECTURE)
        if spec is not None:
            head = cfg.MODEL[spec.config_node]
            head.SCORE_THRESH_TEST = min(head.SCORE_THRESH_TEST, score_thresh)
        cfg.freeze()
        self.label = model_label(cfg)
        self.model = HQODTrainer.build_model(cfg).eval()
        weights = cfg.MODEL.WEIGHTS
        if weights:  # read without running code; a damaged file is a one-line HQODInputError
            StrictHQODCheckpointer(self.model, cfg=cfg).load(weights)
        if is_quantized(self.model) and not is_calibrated(self.model):
            raise HQODInputError(f"{self.label}: the quantizers are not initialised, MODEL.WEIGHTS {weights!r} is not "
                                 "a QAT checkpoint; pass the model_final.pth of a QAT run, or use the full-precision "
                                 "config for full-precision weights")
        self.num_classes = self.model.num_classes
        self._resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self._bgr = cfg.INPUT.FORMAT == "BGR"

    @torch.no_grad()
    def __call__(self, image_rgb):
        """Detections (``Instances`` on the CPU, in the image's own coordinates) of an HxWx3 uint8 RGB image."""
        height, width = image_rgb.shape[:2]
        image = np.ascontiguousarray(image_rgb[:, :, ::-1]) if self._bgr else image_rgb
        image = self._resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")
