#!/usr/bin/env python
"""Export a full-precision or QAT (fake-quantized) detector to ONNX for onnxruntime: DIR/model.onnx (backbone + FPN +
head for one fixed input size; every fake quantizer a QuantizeLinear/DequantizeLinear pair) and DIR/export.json.

    python tools/deploy/export_onnx.py --config-file CONFIG --output DIR [--height H --width W] \
        [--opts MODEL.WEIGHTS output/.../model_final.pth ...]
"""
import argparse
import os
import sys

import hqod  # noqa: F401  (Detectron2 compatibility measures and registrations come first)

from hqod.deploy import MODEL_FILE, export_onnx
from hqod.deploy.export import check_input_size, check_output_dir, default_input_size
from hqod.deploy.inputs import FixedSizeInput, first_test_image
from hqod.deploy.loading import load_trained_model
from hqod.engine import setup_cfg
from hqod.errors import HQODError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the weights were trained with")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for model.onnx and export.json")
    parser.add_argument("--height", type=int, help="input height (default: the padded test-time size of a square "
                        "image, min(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST) rounded up to the size divisibility)")
    parser.add_argument("--width", type=int, help="input width (default: as the height)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS output/.../model_final.pth")
    return parser.parse_args(argv)


def summary(record, output_dir) -> str:
    """What was written, the quantization and the agreement with PyTorch, in a few lines."""
    path = os.path.join(output_dir, MODEL_FILE)
    _, _, height, width = record["input"]["shape"]
    lines = [f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.2f} MB, opset {record['opset']}) and "
             f"{os.path.join(output_dir, 'export.json')}",
             f"input {record['input']['name']}: batch x 3 x {height} x {width}, {record['input']['format']}, "
             f"(image - pixel_mean) / pixel_std, zero padding; outputs: "
             f"{', '.join(o['name'] for o in record['outputs'])}"]
    quant = record["quantization"]
    if quant:
        types = sorted({f"{q['role']} {q['bits']}-bit in {q['onnx_type']}" for q in quant["quantizers"]})
        floats = ", ".join(f"{op} {n}" for op, n in quant["float_ops"].items())
        lines.append(f"{len(quant['quantizers'])} quantizers ({'; '.join(types)}); {len(quant['float_tensors'])} "
                     f"tensors between quantized ops stay float, read by {floats}")
    if "agreement" not in record:
        lines.append("no test image on this machine (DATASETS.TEST): agreement with PyTorch not checked")
    else:
        worst = max(record["agreement"], key=lambda row: row["max_diff_in_tolerances"])
        lines.append(f"onnxruntime vs PyTorch on the first test image: largest difference {worst['max_abs_diff']:.3g} "
                     f"= {worst['max_diff_in_tolerances']:.2f} x the tolerance {worst['tolerance']:.3g} "
                     f"({worst['output']}; output step {worst['output_step'] or 0:.3g}, rounding-noise floor "
                     f"{worst['noise_floor']:.3g}; see export.json)")
    return "\n".join(lines)


def main(args):
    cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"], validate_data=False)
    check_output_dir(args.output)
    model = load_trained_model(cfg)
    divisibility = model.backbone.size_divisibility
    height, width = default_input_size(cfg, divisibility)
    height, width = args.height or height, args.width or width
    check_input_size(height, width, divisibility)
    image = first_test_image(cfg)
    sample = None if image is None else FixedSizeInput(model, height, width)([image]).tensor
    record = export_onnx(cfg, model, args.output, height, width, sample)
    print(summary(record, args.output), flush=True)


if __name__ == "__main__":
    try:
        main(parse_args())
    except HQODError as e:
        sys.exit(f"error: {e}")
