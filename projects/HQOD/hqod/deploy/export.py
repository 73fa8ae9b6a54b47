"""``export_onnx``: a Detectron2 dense detector (full precision or QAT) to ``model.onnx`` + ``export.json``.

The graph is backbone + FPN + head for one fixed input size (any batch size), traced with torch.onnx's TorchScript
exporter at opset 17, converted to opset 21 (25 when a weight has 2 bits), every fake quantizer lowered to
QuantizeLinear / DequantizeLinear (``qdq``). ``export.json`` records what a runtime needs around the graph: input size
and pixel normalisation, output names and strides, bits and every quantizer's scale and zero point, and the tensors
between quantized ops that stay float (``placement``)."""
import contextlib
import io
import json
import math
import os
import warnings

import onnx
import torch
from onnx import TensorProto, version_converter

from ..errors import HQODInputError
from ..quantization import is_calibrated, is_quantized, set_quant_state
from ..utils.io import atomic_path, atomic_write_bytes
from .agreement import compare_outputs, noise_floor, output_steps
from .dense_graph import DenseHeadGraph
from .markers import MARKER_DOMAIN, quantizer_markers
from .placement import float_op_counts, float_tensors
from .qdq import carrier, lower_markers, required_opset
from .session import create_session

MODEL_FILE = "model.onnx"
EXPORT_RECORD = "export.json"
RECORD_FORMAT = "hqod-onnx/1"
INPUT_NAME = "images"
TRACE_OPSET = 17  # the TorchScript exporter's well-trodden opset; converted afterwards


def default_input_size(cfg, size_divisibility: int):
    """(height, width) of a square image at test time, padded as Detectron2 pads it: min(MIN_SIZE_TEST,
    MAX_SIZE_TEST) on both sides, rounded up to the backbone's size divisibility. Padding beyond what Detectron2 adds
    changes the outputs near the image's bottom and right (the network's biases make the padding non-zero inside),
    so the default fits square data sets exactly; other aspect ratios want --height/--width (larger images are
    shrunk to fit, smaller ones padded)."""
    side = _round_up(int(min(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)), size_divisibility)
    return side, side


def _round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / max(divisor, 1)) * max(divisor, 1))


def check_output_dir(output_dir) -> None:
    """One-line error unless ``output_dir`` can be created and written, checked before any long work."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise HQODInputError(f"cannot create output folder {output_dir!r} ({e.strerror}); pass a writable --output")
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise HQODInputError(f"output folder {output_dir!r} is not writable; pass a writable --output")


def check_input_size(height: int, width: int, size_divisibility: int) -> None:
    """The fixed input must be positive multiples of the backbone's size divisibility (the FPN needs it)."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % max(size_divisibility, 1):
            suggestion = _round_up(max(value, 1), size_divisibility)
            raise HQODInputError(f"input {name} {value} must be a positive multiple of the backbone's size "
                                 f"divisibility {size_divisibility}; e.g. {suggestion}")


def export_onnx(cfg, model, output_dir, height: int, width: int, sample=None) -> dict:
    """Write ``output_dir/model.onnx`` and ``output_dir/export.json`` for ``model`` (built from ``cfg``, weights
    loaded, eval mode, CPU); returns the export record. A QAT model must be calibrated or loaded from QAT.
    ``sample``: a normalised (1, 3, height, width) image; the record then holds the agreement of onnxruntime with
    the PyTorch model on it (``agreement.compare_outputs``)."""
    graph_module = DenseHeadGraph(model).eval()
    check_input_size(height, width, model.backbone.size_divisibility)
    quantized = is_quantized(model)
    if quantized and not is_calibrated(model):
        raise HQODInputError("the QAT model's quantizers are not initialised: export the model_final.pth of a QAT "
                             "run (MODEL.WEIGHTS), not full-precision weights")
    if quantized:
        set_quant_state(model, observe=False, fake_quant=True)
    example = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    with torch.no_grad():
        shapes = [tuple(t.shape[1:]) for t in graph_module(example)]
    names = graph_module.output_names(len(shapes) // len(graph_module.in_features))
    with quantizer_markers(model) if quantized else contextlib.nullcontext([]) as records:
        onnx_model = _trace(graph_module, example, names, {MARKER_DOMAIN: 1} if quantized else {})
    opset = required_opset(records)
    onnx_model = version_converter.convert_version(onnx_model, opset)
    quant_record, steps = None, {}
    if quantized:
        floats = float_tensors(onnx_model)
        lowered = lower_markers(onnx_model, records)
        quant_record = _quant_record(cfg, records, floats, lowered)
        steps = output_steps(onnx_model, records)
    onnx.checker.check_model(onnx_model)
    record = _export_record(cfg, model, graph_module, names, shapes, (height, width), opset, quant_record, steps)
    if sample is not None:
        session = create_session(onnx_model.SerializeToString())
        with torch.no_grad():
            reference = [t.cpu().numpy() for t in graph_module(sample)]
        found = session.run(None, {INPUT_NAME: sample.cpu().numpy()})
        record["agreement"] = compare_outputs(names, found, reference, steps, noise_floor(graph_module, sample))
    with atomic_path(os.path.join(output_dir, MODEL_FILE)) as tmp:
        onnx.save_model(onnx_model, tmp)
    atomic_write_bytes(os.path.join(output_dir, EXPORT_RECORD), (json.dumps(record, indent=1) + "\n").encode())
    return record


def _trace(graph_module, example, names, custom_opsets) -> onnx.ModelProto:
    """The TorchScript-exported graph (markers for quantizers), batch size dynamic, as an in-memory ModelProto."""
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on constant shapes
        torch.onnx.export(graph_module, (example,), buffer, dynamo=False, opset_version=TRACE_OPSET,
                          input_names=[INPUT_NAME], output_names=names, dynamic_axes=dynamic,
                          custom_opsets=custom_opsets, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _quant_record(cfg, records, floats, lowered) -> dict:
    qcfg = cfg.MODEL.QUANT
    quantizers = []
    for record in records:
        spec = record.spec
        shifted = spec.name in lowered.shifted
        kind = lowered.shifted.get(spec.name, carrier(spec))
        quantizers.append({
            "name": spec.name, "role": spec.role, "bits": spec.bits, "signed": spec.signed, "axis": spec.axis,
            "qmin": spec.qmin, "qmax": spec.qmax, "scale": spec.scale.tolist(), "zero_point": spec.zero_point.tolist(),
            "onnx_type": TensorProto.DataType.Name(kind.data_type), "onnx_zero_point_offset": 128 if shifted else 0,
            "clip": spec.role != "weight" and spec.bits != kind.width,
        })
    return {
        "algorithm": str(qcfg.ALGORITHM).upper(), "weight_bits": qcfg.WEIGHT_BITS, "act_bits": qcfg.ACT_BITS,
        "first_last_bits": qcfg.FIRST_LAST_BITS, "overrides": list(qcfg.OVERRIDES), "per_channel": qcfg.PER_CHANNEL,
        "fold_bn": qcfg.FOLD_BN, "placement": qcfg.PLACEMENT,
        "carriers": "weights: stored integers in INT8 (5-8 bits), INT4 (3-4 bits) or INT2 (2 bits) -> "
                    "DequantizeLinear; activations: QuantizeLinear -> DequantizeLinear in INT8/UINT8, below 8 bits "
                    "after a Clip to [qmin*scale, qmax*scale] (exact clamping); zero points 0, but 128 for a signed "
                    "activation that several ops read, carried as UINT8 (onnx_zero_point_offset); conv biases int32 "
                    "at scale input_scale*weight_scale",
        "quantizers": quantizers,
        "float_biases": lowered.float_biases,
        "float_ops": float_op_counts(floats),
        "float_tensors": floats,
    }


def _export_record(cfg, model, graph_module, names, shapes, size, opset, quant_record, steps) -> dict:
    strides = {f: s.stride for f, s in model.backbone.output_shape().items()}
    levels = graph_module.in_features
    return {
        "format": RECORD_FORMAT,
        "model_file": MODEL_FILE,
        "opset": opset,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "num_classes": int(model.num_classes),
        "weights": cfg.MODEL.WEIGHTS,
        "input": {
            "name": INPUT_NAME, "shape": ["batch", 3, *size], "format": cfg.INPUT.FORMAT,
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "preprocessing": "resize the shortest edge to min_size_test (longest at most max_size_test), shrink "
                             "further to fit the input if needed, (image - pixel_mean) / pixel_std per channel in the "
                             "given format, zero padding at the bottom and right",
        },
        "outputs": [{"name": name, "shape": ["batch", *shape], "stride": strides[levels[i % len(levels)]],
                     "step": steps.get(name)} for i, (name, shape) in enumerate(zip(names, shapes))],
        "quantization": quant_record,
        "config": cfg.dump(),
    }
