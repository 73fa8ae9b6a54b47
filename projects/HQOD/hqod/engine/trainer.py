"""``HQODTrainer``: Detectron2's ``DefaultTrainer`` with the project's evaluators (and, later, QAT and HQOD hooks)."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator

from .. import compat
from ..evaluation import HarmonyEvaluator


class HQODTrainer(DefaultTrainer):
    """Trains and evaluates full-precision or quantized RetinaNet/FCOS detectors."""

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

    def train(self):
        """Train, then return the last evaluation results (``None`` when no evaluation ran)."""
        super().train()
        results = getattr(self, "_last_eval_results", None)
        if results:
            logging.getLogger(__name__).info("Final evaluation: %s", dict(results))
        return results


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
