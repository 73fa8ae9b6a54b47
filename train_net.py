#!/usr/bin/env python
"""Train or evaluate full-precision and quantized (HQOD) RetinaNet/FCOS detectors with Detectron2.

    python train_net.py --config-file configs/hqod_retinanet_4bit.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth

Without CUDA, ``--num-gpus N`` starts N CPU worker processes over gloo.
"""
import sys

import hqod  # noqa: F401  (Detectron2 compatibility measures and registrations come first)
import torch
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hqod.data import register_coco_format_datasets
from hqod.engine import HQODTrainer, launch, setup_cfg
from hqod.engine.checkpoint import HQODCheckpointer, check_weights_file
from hqod.engine.trainer import summarize_results
from hqod.errors import HQODError, HQODInputError
from hqod.quantization import is_calibrated, is_quantized


def setup(cfg, args):
    """Per-worker set-up of the config validated before launch: data sets, output folder, logging, threads."""
    register_coco_format_datasets(cfg)  # a spawned worker starts with Detectron2's registries only
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hqod")
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads() // comm.get_local_size()))
    return cfg


def main(cfg, args):
    cfg = setup(cfg, args)
    if args.eval_only:
        model = HQODTrainer.build_model(cfg)
        HQODCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if is_quantized(model) and not is_calibrated(model):
            raise HQODInputError("--eval-only of a QAT config needs a QAT checkpoint in MODEL.WEIGHTS (its quantizers "
                                 "are not initialised); pass the model_final.pth of a QAT run")
        results = HQODTrainer.test(cfg, model)
    else:
        trainer = HQODTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.is_main_process():
        print(summarize_results(cfg, results), flush=True)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        cfg = setup_cfg(args.config_file, args.opts)  # the one validation pass: bad input fails before any worker
        check_weights_file(cfg, resume=args.resume)  # read without running code, and checked against cfg
        print("Command Line Args:", args)
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(cfg, args))
    except HQODError as e:
        sys.exit(f"error: {e}")
