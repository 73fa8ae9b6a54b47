"""``HQODTrainer``: Detectron2's ``DefaultTrainer`` for full-precision and quantization-aware (HQOD) training."""
import logging
import os
import weakref

import torch
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm

from .. import compat
from ..errors import TrainingDivergedError
from ..evaluation import HarmonyEvaluator
from ..modeling.sync_bn import convert_naive_sync_batchnorm
from ..quantization import convert_to_qat
from .checkpoint import HQODCheckpointer
from .hooks import HQODLossWeightScheduler, QuantCalibration, QuantScheduler
from .optimizer import build_optimizer


class HQODTrainer(DefaultTrainer):
    """Builds (and, with MODEL.QUANT.ENABLED, converts) the detector, calibrates it before the first iteration,
    runs the quantizer and HQOD-weight schedules, checkpoints atomically and evaluates AP plus harmony."""

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        if torch.device(cfg.MODEL.DEVICE).type == "cpu":  # torch's SyncBatchNorm runs on GPUs only
            model = convert_naive_sync_batchnorm(model)
        if cfg.MODEL.QUANT.ENABLED:
            convert_to_qat(model, cfg)
        logging.getLogger(__name__).info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO-style AP for COCO-format sets, VOC AP for Pascal VOC sets, and score–IoU harmony for both."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "pascal_voc":
            evaluators = [PascalVOCDetectionEvaluator(dataset_name)]
        else:
            # Without Detectron2's compiled ops, pycocotools' own (slower) evaluation is used.
            evaluators = [COCOEvaluator(dataset_name, output_dir=output_folder,
                                        use_fast_impl=compat.HAS_C_EXTENSION)]
        evaluators.append(HarmonyEvaluator(dataset_name, output_dir=output_folder))
        return DatasetEvaluators(evaluators)

    def build_hooks(self):
        cfg = self.cfg
        self.checkpointer = HQODCheckpointer(self.model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self))
        schedule_hooks = [HQODLossWeightScheduler(cfg)]
        if cfg.MODEL.QUANT.ENABLED:
            schedule_hooks = [QuantCalibration(lambda: self.build_calibration_loader(cfg),
                                               cfg.MODEL.QUANT.CALIB_IMAGES),
                              QuantScheduler(cfg)] + schedule_hooks
        return schedule_hooks + super().build_hooks()

    @classmethod
    def build_calibration_loader(cls, cfg):
        """The training pipeline (augmentation included) with one image per process, as the authors calibrated."""
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.IMS_PER_BATCH = comm.get_world_size()
        cfg.DATALOADER.NUM_WORKERS = 0
        return build_detection_train_loader(cfg)

    def state_dict(self):
        state = super().state_dict()
        if not compat.DEFAULT_TRAINER_SAVES_OPTIMIZER:
            state["_trainer"] = self._trainer.state_dict()  # the optimizer, so that --resume restores it
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not compat.DEFAULT_TRAINER_SAVES_OPTIMIZER and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError:  # Detectron2 found a NaN or infinite loss: keep the last good checkpoint the last
            self.checkpointer.stop_saving(f"the loss became NaN or infinite at iteration {self.iter}")
            raise

    def train(self):
        """Train, then return the last evaluation results (``None`` when no evaluation ran); a NaN or infinite loss
        ends training with a one-line TrainingDivergedError."""
        try:
            super().train()
        except FloatingPointError:
            last = self.checkpointer.last_good_checkpoint()
            advice = "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS"
            then = (f"no checkpoint was written yet. {advice} and start again" if last == "none"
                    else f"the last good checkpoint is {last}. {advice}, then continue from it with --resume")
            raise TrainingDivergedError(
                f"training stopped: the loss became NaN or infinite at iteration {self.iter}; {then}") from None
        return getattr(self, "_last_eval_results", None)


def summarize_results(cfg, results) -> str:
    """One line per test set with its box AP and score–IoU harmony, for the end of a run."""
    if not results:
        return "no evaluation results"
    per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
    lines = []
    for name, res in per_dataset.items():
        bbox = res.get("bbox", {})
        harmony = res.get("harmony", {})
        parts = [f"{k} {bbox[k]:.1f}" for k in ("AP", "AP50", "AP75") if k in bbox]
        parts += [f"harmony pearson {harmony['pearson']:.3f}"] if "pearson" in harmony else []
        lines.append(f"{name}: " + ", ".join(parts))
    return "\n".join(lines)
