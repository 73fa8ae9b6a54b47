"""Trainer pieces: schedule hooks, quantizer parameter group, atomic checkpoints, VOC + harmony evaluation, and bad
QAT/HQOD config values rejected before training."""
import json
import math
import pathlib
import types

import hqod  # noqa: F401
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hqod.engine import HQODTrainer, setup_cfg
from hqod.engine.checkpoint import HQODCheckpointer
from hqod.engine.hooks import HQODLossWeightScheduler, QuantScheduler
from hqod.engine.schedules import ramp
from hqod.quantization import calibrate, quantizers

SHAPES = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart_retinanet_mnv2_shapes.yaml")


def small_cfg(*opts):
    return setup_cfg(SHAPES, ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "64", "MODEL.MOBILENETV2.NORM", "BN",
                              "MODEL.BACKBONE.FREEZE_AT", "0", *opts], validate_data=False)


def run_hook(hook, model, iters):
    """Run ``hook`` over ``iters`` on a stand-in trainer; returns the storage's latest scalars per iteration."""
    trainer = types.SimpleNamespace(model=model, iter=0)
    hook.trainer = trainer
    seen = {}
    with EventStorage() as storage:
        trainer.storage = storage
        hook.before_train()
        for it in iters:
            trainer.iter = storage.iter = it
            hook.before_step()
            seen[it] = {k: v[0] for k, v in storage.latest().items()}
    return seen


def test_ramps():
    assert ramp("constant", 5, 0, 10, 0.0, 1.0) == 1.0
    assert ramp("linear", 5, 0, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert ramp("cosine", 5, 0, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert ramp("cosine", 2, 0, 10, 0.0, 1.0) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.2)))
    assert ramp("linear", 20, 0, 10, 0.0, 1.0) == 1.0 and ramp("linear", 0, 2, 10, 0.3, 1.0) == 0.3


def test_loss_weight_ramp_sets_model_weights_and_logs_them():
    cfg = small_cfg("MODEL.META_ARCHITECTURE", "HQODRetinaNet", "MODEL.HQOD.TCORR_WEIGHT", "2.0",
                    "MODEL.HQOD.WEIGHT_SCHEDULE.TYPE", "linear", "MODEL.HQOD.WEIGHT_SCHEDULE.END_ITER", "10")
    model = HQODTrainer.build_model(cfg)
    seen = run_hook(HQODLossWeightScheduler(cfg), model, [0, 5, 12])
    assert seen[5]["hqod/tcorr_weight"] == pytest.approx(1.0) and seen[5]["hqod/hiou_weight"] == pytest.approx(0.5)
    assert seen[0]["hqod/tcorr_weight"] == 0.0 and seen[12]["hqod/tcorr_weight"] == 2.0
    assert model.tcorr_weight == 2.0 and model.hiou_weight == 1.0  # what the model reads at the next step


def calibrated_model(cfg):
    model = HQODTrainer.build_model(cfg)
    image = torch.rand(3, 64, 64) * 255
    calibrate(model, [[{"image": image, "height": 64, "width": 64}]], 1)
    return model


def test_quant_schedule_fake_quant_start_bn_freeze_and_bits():
    cfg = small_cfg("MODEL.QUANT.ENABLED", "True", "MODEL.QUANT.SCHEDULE.FAKE_QUANT_START_ITER", "2",
                    "MODEL.QUANT.SCHEDULE.BN_FREEZE_ITER", "3", "MODEL.QUANT.SCHEDULE.BITS", "['0:8:8', '2:4:4']")
    model = calibrated_model(cfg).train()
    scheduled = [q for _, q in quantizers(model) if q.follows_schedule]
    pinned = [q for _, q in quantizers(model) if not q.follows_schedule]
    assert scheduled and pinned and all(q.bits == 8 for q in pinned)
    from hqod.quantization import LSQQuantizer

    probe = next(q for q in scheduled if isinstance(q, LSQQuantizer))
    hook = QuantScheduler(cfg)
    seen = run_hook(hook, model, [0])
    threshold_8bit = float(probe.step_size.max()) * 2 ** (8 - 1 if bool(probe.signed) else 8)
    assert seen[0]["quant/fake_quant"] == 0.0 and seen[0]["quant/weight_bits"] == 8 and probe.bits == 8
    seen.update(run_hook(hook, model, [2, 3]))
    assert seen[2]["quant/fake_quant"] == 1.0 and seen[2]["quant/weight_bits"] == 4 and probe.bits == 4
    threshold_4bit = float(probe.step_size.max()) * 2 ** (4 - 1 if bool(probe.signed) else 4)
    assert threshold_4bit == pytest.approx(threshold_8bit, rel=1e-5)  # the clipping range is kept
    assert all(q.bits == 8 for q in pinned)  # stem and predictors keep FIRST_LAST_BITS
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns) and seen[3]["quant/bn_frozen"] == 1.0


def test_quant_schedule_anneals_dsq_alpha_and_freezes_observers():
    cfg = small_cfg("MODEL.QUANT.ENABLED", "True", "MODEL.QUANT.ALGORITHM", "DSQ",
                    "MODEL.QUANT.SCHEDULE.DSQ_ALPHA.TYPE", "linear", "MODEL.QUANT.SCHEDULE.DSQ_ALPHA.END_ITER", "10",
                    "MODEL.QUANT.SCHEDULE.DSQ_ALPHA.END_VALUE", "0.1", "MODEL.QUANT.SCHEDULE.OBSERVER_FREEZE_ITER", "2")
    model = calibrated_model(cfg).train()
    seen = run_hook(QuantScheduler(cfg), model, [0, 5, 10, 12])
    assert seen[5]["quant/dsq_alpha"] == pytest.approx(0.25) and seen[12]["quant/dsq_alpha"] == pytest.approx(0.1)
    assert all(q.alpha.item() == pytest.approx(0.1) for _, q in quantizers(model))
    assert seen[0]["quant/observing"] == 1.0 and seen[5]["quant/observing"] == 0.0
    assert not any(q.observe_enabled for _, q in quantizers(model))


def test_quantizer_parameters_get_their_own_group():
    cfg = small_cfg("MODEL.QUANT.ENABLED", "True", "SOLVER.QUANT_LR_FACTOR", "0.1", "SOLVER.QUANT_WEIGHT_DECAY", "0.0")
    model = HQODTrainer.build_model(cfg)
    optimizer = HQODTrainer.build_optimizer(cfg, model)
    quant_ids = {id(p) for _, q in quantizers(model) for p in q.parameters()}
    quant_groups = [g for g in optimizer.param_groups if g.get("quantizer")]
    assert {id(p) for g in quant_groups for p in g["params"]} == quant_ids
    assert all(g["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * 0.1) and g["weight_decay"] == 0.0 for g in quant_groups)
    others = [p for g in optimizer.param_groups if not g.get("quantizer") for p in g["params"]]
    assert not {id(p) for p in others} & quant_ids


def test_calibration_seconds_and_images_land_in_metrics_json(run_train_net, tmp_path):
    result = run_train_net("--config-file", "configs/shapes/retinanet_MNV2_lsq_hqod_w4a4.yaml", "MODEL.WEIGHTS", "",
                           "MODEL.QUANT.CALIB_IMAGES", "3", "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1",
                           "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)", "DATASETS.TEST", "()",
                           "OUTPUT_DIR", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    calibration = [row for row in rows if "quant/calib_seconds" in row]
    assert len(calibration) == 1 and calibration[0]["iteration"] == 0
    assert calibration[0]["quant/calib_images"] == 3 and calibration[0]["quant/calib_seconds"] > 0


VOC_XML = """<annotation><size><width>100</width><height>80</height><depth>3</depth></size>
<object><name>tree</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>"""


def test_voc_and_harmony_evaluators_work_with_current_numpy(tmp_path):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True)
    for image_id in ("000001", "000002"):
        (root / "Annotations" / f"{image_id}.xml").write_text(VOC_XML)
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    name = "tiny_voc_2007_test"
    if name not in DatasetCatalog.list():
        register_pascal_voc(name, str(root), "test", 2007, class_names=("tree",))
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"  # as Detectron2's builtin VOC registration does
    evaluator = HQODTrainer.build_evaluator(small_cfg(), name, output_folder=str(tmp_path / "eval"))
    evaluator.reset()
    for image_id in ("000001", "000002"):
        inst = Instances((80, 100))
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 60.0], [60.0, 5.0, 90.0, 30.0]]))
        inst.scores = torch.tensor([0.9, 0.4])
        inst.pred_classes = torch.tensor([0, 0])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP50"] == pytest.approx(100.0)
    assert results["harmony"]["num_tp"] == 2 and results["harmony"]["num_detections"] == 4


@pytest.mark.parametrize("opts, message", [
    (["MODEL.QUANT.WEIGHT_BITS", "9"], "MODEL.QUANT.WEIGHT_BITS"),
    (["MODEL.QUANT.ALGORITHM", "XNOR"], "XNOR"),
    (["MODEL.QUANT.SCHEDULE.BITS", "['0:8:8']"], "SCHEDULE.BITS"),
    (["MODEL.HQOD.TCORR_WEIGHT", "-1.0"], "TCORR_WEIGHT"),
    (["MODEL.HQOD.WEIGHT_SCHEDULE.TYPE", "step"], "WEIGHT_SCHEDULE"),
])
def test_bad_qat_values_fail_before_training(run_train_net, opts, message):
    result = run_train_net("--config-file", "configs/shapes/retinanet_MNV2_lsq_hqod_w4a4.yaml",
                           "MODEL.WEIGHTS", "", *opts)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("error: ") and message in last
