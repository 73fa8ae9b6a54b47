"""The exported graph in onnxruntime (CPU), wrapped as a Detectron2 model: images are resized, normalised and padded
to the exported size, the graph runs in onnxruntime, and the detector's own Detectron2 code decodes the boxes, runs NMS
and rescales them to the original image (``DenseDetector.forward_inference``, ``detector_postprocess``)."""
import json
import os

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

from ..errors import HQODInputError
from .dense_graph import split_groups
from .export import EXPORT_RECORD, RECORD_FORMAT
from .inputs import FixedSizeInput
from .session import create_session


def read_export_record(model_dir) -> dict:
    """``model_dir/export.json`` as written by ``export_onnx``; one-line error when missing or not ours."""
    path = os.path.join(model_dir, EXPORT_RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
    except OSError as e:
        raise HQODInputError(f"cannot read {path} ({e.strerror}); pass the --output folder of export_onnx.py")
    except json.JSONDecodeError as e:
        raise HQODInputError(f"{path} is not valid JSON ({e.msg}); export the model again")
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise HQODInputError(f"{path} is not an export record of this project ({RECORD_FORMAT}); export again")
    return record


def check_record_fits(record: dict, cfg) -> None:
    """One-line error when the export record was made from a config that decodes differently from ``cfg``."""
    expected = {"meta_architecture": cfg.MODEL.META_ARCHITECTURE,
                "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
                "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD], "format": cfg.INPUT.FORMAT}
    found = {"meta_architecture": record["meta_architecture"], "pixel_mean": record["input"]["pixel_mean"],
             "pixel_std": record["input"]["pixel_std"], "format": record["input"]["format"]}
    diffs = [f"{key} {found[key]!r} in export.json vs {expected[key]!r} in the config"
             for key in expected if found[key] != expected[key]]
    if diffs:
        raise HQODInputError(f"the exported model does not fit the config: {'; '.join(diffs)}; pass the config it "
                             "was exported with")


class OnnxDetector:
    """Runs like a Detectron2 model (``list[dict]`` in, ``[{"instances"}]`` out) with backbone and head in
    onnxruntime. ``cfg`` gives the decoding (anchors, box transform, thresholds, NMS); no weights are loaded."""

    def __init__(self, cfg, model_dir, threads: int = 0):
        self.record = read_export_record(model_dir)
        check_record_fits(self.record, cfg)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.QUANT.ENABLED = False
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = "cpu"
        self.detector = build_model(cfg).eval()
        if self.detector.num_classes != self.record["num_classes"]:
            raise HQODInputError(f"the config has {self.detector.num_classes} classes but the exported model "
                                 f"{self.record['num_classes']}; pass the config it was exported with")
        self.session = create_session(os.path.join(model_dir, self.record["model_file"]), threads)
        self.preprocess = FixedSizeInput(self.detector, *self.record["input"]["shape"][2:])
        self.num_levels = len(self.detector.head_in_features)

    def raw_outputs(self, tensor):
        """The graph's outputs (numpy, in ``record["outputs"]`` order) for a (N, 3, H, W) normalised image batch."""
        return self.session.run(None, {self.record["input"]["name"]: np.ascontiguousarray(tensor.numpy())})

    @torch.no_grad()
    def __call__(self, batched_inputs):
        images = self.preprocess(batched_inputs)
        outputs = [torch.from_numpy(array) for array in self.raw_outputs(images.tensor)]
        predictions = split_groups(outputs, self.num_levels)
        results = self.detector.forward_inference(images, predictions[0], predictions)
        return [{"instances": detector_postprocess(result, x.get("height", size[0]), x.get("width", size[1]))}
                for result, x, size in zip(results, batched_inputs, images.image_sizes)]
