#!/usr/bin/env python
"""Evaluate an exported model (tools/deploy/export_onnx.py) in onnxruntime on the CPU: the graph runs in onnxruntime,
the detector's own Detectron2 code decodes boxes and runs NMS, and COCOEvaluator plus HarmonyEvaluator score it;
prints the same copypaste lines as train_net.py.

    python tools/deploy/evaluate_onnx.py --config-file CONFIG --model DIR [--dataset NAME] [--threads N]
"""
import argparse
import os
import sys

import hqod  # noqa: F401  (Detectron2 compatibility measures and registrations come first)
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils.logger import setup_logger

from hqod.deploy import OnnxDetector, read_export_record
from hqod.engine import HQODTrainer, setup_cfg
from hqod.engine.trainer import summarize_results
from hqod.errors import HQODError, HQODInputError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was exported with")
    parser.add_argument("--model", required=True, metavar="DIR", help="the --output folder of export_onnx.py")
    parser.add_argument("--dataset", metavar="NAME", help="registered data set to evaluate (default: DATASETS.TEST[0])")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(args):
    read_export_record(args.model)  # a wrong folder fails before the data set is prepared
    opts = list(args.opts) + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]  # the weights are in model.onnx
    if args.dataset:
        opts += ["DATASETS.TEST", f"('{args.dataset}',)"]
    cfg = setup_cfg(args.config_file, opts)
    if not cfg.DATASETS.TEST:
        raise HQODInputError("no data set to evaluate: pass --dataset NAME or set DATASETS.TEST")
    if args.threads < 0:
        raise HQODInputError(f"--threads must be 0 (onnxruntime's default) or more, got {args.threads}")
    setup_logger()
    setup_logger(name="hqod")
    detector = OnnxDetector(cfg, args.model, args.threads)
    name = cfg.DATASETS.TEST[0]
    evaluator = HQODTrainer.build_evaluator(cfg, name, os.path.join(args.model, "inference", name))
    results = inference_on_dataset(detector, build_detection_test_loader(cfg, name), evaluator)
    if detector.preprocess.shrunk:
        print(f"{detector.preprocess.shrunk} images were larger than the exported input and were shrunk to fit")
    print_csv_format(results)
    print(summarize_results(cfg, results), flush=True)
    return results


if __name__ == "__main__":
    try:
        main(parse_args())
    except HQODError as e:
        sys.exit(f"error: {e}")
