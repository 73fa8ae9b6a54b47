#!/usr/bin/env python
"""Draw a full-precision or quantized (HQOD) detector's detections on images, beside a second model's with
--compare, or on a data set's images coloured by IoU with the score–IoU inharmonious detections marked.

    python demo.py --config-file CONFIG --input images/ --output out/ --opts MODEL.WEIGHTS model_final.pth
    python demo.py --config-file FP_CONFIG --compare QAT_CONFIG QAT_WEIGHTS --dataset hqod_shapes_val \
        --max-images 8 --output out/ --opts MODEL.WEIGHTS fp_model_final.pth
"""
import argparse
import sys

import hqod  # noqa: F401  (Detectron2 compatibility measures and registrations come first)
from detectron2.data import MetadataCatalog

from hqod.data import validate_dataset
from hqod.demo import (HarmonyThresholds, Predictor, class_names, dataset_inputs, expand_inputs, output_paths,
                       run_demo)
from hqod.engine import setup_cfg
from hqod.errors import HQODError, HQODInputError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config of the (first) model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders of images or quoted globs")
    source.add_argument("--dataset", metavar="NAME", help="a registered data set with ground truth, e.g. "
                        "hqod_shapes_val: boxes coloured by IoU, inharmonious detections marked and listed")
    parser.add_argument("--output", required=True, help="an image file (one input) or a folder")
    parser.add_argument("--max-images", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="lowest score drawn (inharmonious detections are drawn whatever their score)")
    parser.add_argument("--compare", nargs=2, metavar=("CONFIG", "WEIGHTS"),
                        help="a second model, drawn beside the first (on the first model's MODEL.DEVICE)")
    for flag, default, meaning in [("--high-score", 0.5, "score>IoU: score at least this"),
                                   ("--low-iou", 0.5, "score>IoU: IoU below this"),
                                   ("--low-score", 0.3, "IoU>score: score below this"),
                                   ("--high-iou", 0.75, "IoU>score: IoU at least this")]:
        parser.add_argument(flag, type=float, default=default, help=f"{meaning} (default {default})")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides of the first model, e.g. MODEL.WEIGHTS model_final.pth")
    return parser.parse_args(argv)


def main(args):
    if args.max_images is not None and args.max_images < 1:
        raise HQODInputError(f"--max-images must be at least 1, got {args.max_images}")
    thresholds = HarmonyThresholds(args.high_score, args.low_iou, args.low_score, args.high_iou)
    cfg = setup_cfg(args.config_file, args.opts, validate_data=False)
    cfgs = [cfg]
    if args.compare:
        config_file, weights = args.compare
        cfgs.append(setup_cfg(config_file, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", cfg.MODEL.DEVICE],
                              validate_data=False))
    ground_truth = None
    if args.dataset:
        validate_dataset(args.dataset)
        ground_truth = dataset_inputs(args.dataset, args.max_images)
        inputs, metadata = list(ground_truth), MetadataCatalog.get(args.dataset)
    else:
        inputs = expand_inputs(args.input, args.max_images)
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    outputs = output_paths(inputs, args.output)
    predictors = [Predictor(c, args.confidence_threshold) for c in cfgs]
    for predictor in predictors:  # every model must predict the classes drawn
        names = class_names(metadata, predictor.num_classes)
    run_demo(predictors, inputs, outputs, names, args.confidence_threshold, ground_truth, thresholds)


if __name__ == "__main__":
    try:
        main(parse_args())
    except HQODError as e:
        sys.exit(f"error: {e}")
