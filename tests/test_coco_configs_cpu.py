"""Every entry and COCO config, scaled down to the shapes set, trains on 2 CPU workers over gloo: one launch trains
them all in turn (a few iterations each, QAT ones after calibration), and the user's train_net.py command runs too."""
import json
import math
import os
import pathlib
import re
import shutil

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from torch import nn

from hqod.engine import HQODTrainer, launch, setup_cfg
from hqod.engine.hooks import unwrap
from hqod.modeling.detectors import DENSE_DETECTORS

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]  # needed at collection, for the parametrization
CONFIGS = sorted([*(ROOT / "configs").glob("hqod_*.yaml"), *(ROOT / "configs").glob("Base-*.yaml"),
                  *(ROOT / "configs" / "COCO").rglob("*.yaml")])
MAX_ITER = 2
SCALED_DOWN = [  # shapes data, tiny inputs, random init (the configs' weights are zoo files or the user's FP runs)
    "MODEL.WEIGHTS", "", *[item for spec in DENSE_DETECTORS.values()
                           for item in (f"MODEL.{spec.config_node}.NUM_CLASSES", "4")],
    "DATASETS.TRAIN", "('hqod_shapes_train',)", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.WARMUP_ITERS", "1",
    "MODEL.QUANT.CALIB_IMAGES", "2", "DATALOADER.NUM_WORKERS", "0",
]


def _name(path):
    return str(path.relative_to(ROOT / "configs"))


class _Record(HookBase):
    """The last iteration, its total loss (logged by the main process) and the model's SyncBN layer types."""

    def __init__(self):
        self.record = {}

    def after_step(self):
        if not comm.is_main_process():
            return
        model = unwrap(self.trainer.model)
        self.record = {"iter": self.trainer.iter,
                       "total_loss": self.trainer.storage.history("total_loss").latest(),
                       "naive_sync_bn": sum(type(m) is NaiveSyncBatchNorm for m in model.modules()),
                       "torch_sync_bn": sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())}


def _train_all(configs, out_dir):
    torch.set_num_threads(1)
    for config in configs:
        name = _name(config).replace("/", "_")
        cfg = setup_cfg(str(config), [*SCALED_DOWN, "OUTPUT_DIR", f"{out_dir}/{name}"], validate_data=False)
        head_norms = [cfg.MODEL[spec.config_node][spec.head_norm_key] for spec in DENSE_DETECTORS.values()]
        uses_sync_bn = "SyncBN" in (cfg.MODEL.RESNETS.NORM, cfg.MODEL.MOBILENETV2.NORM, cfg.MODEL.FPN.NORM,
                                    *head_norms)
        record = _Record()
        try:
            trainer = HQODTrainer(cfg)
            trainer.register_hooks([record])
            trainer.resume_or_load(resume=False)
            trainer.train()
        except Exception as e:
            raise RuntimeError(f"{config} failed on CPU workers") from e
        comm.synchronize()
        if comm.is_main_process():
            checkpoint = os.path.isfile(f"{out_dir}/{name}/model_final.pth")
            result = dict(record.record, uses_sync_bn=uses_sync_bn, checkpoint=checkpoint)
            shutil.rmtree(f"{out_dir}/{name}")  # the R50 checkpoints are large
            with open(f"{out_dir}/{name}.json", "w") as f:
                json.dump(result, f)
        comm.synchronize()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("coco_configs")
    launch(_train_all, 2, dist_url="auto", args=(CONFIGS, str(out_dir)))
    return {path: json.loads((out_dir / f"{_name(path).replace('/', '_')}.json").read_text()) for path in CONFIGS}


def test_all_entry_and_coco_configs_are_covered():
    names = {_name(p) for p in CONFIGS}
    assert {"hqod_retinanet_4bit.yaml", "hqod_fcos_2bit.yaml", "COCO/QAT/fcos_R50_tqt_hqod_w4a4.yaml",
            "COCO/retinanet_R18_FPN_fp32.yaml", "hqod_atss_4bit.yaml", "COCO/QAT/atss_R50_tqt_w4a4.yaml",
            "Base-ATSS.yaml"} <= names and len(names) >= 40


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_config_trains_on_two_cpu_workers(trained, path):
    record = trained[path]
    assert record["iter"] == MAX_ITER - 1 and math.isfinite(record["total_loss"]) and record["checkpoint"]
    assert record["torch_sync_bn"] == 0
    assert record["uses_sync_bn"] or not ("QAT" in str(path) or path.name.startswith("hqod_"))  # QAT: SyncBN
    assert (record["naive_sync_bn"] > 0) == record["uses_sync_bn"]


def test_users_command_runs_syncbn_on_cpu(run_train_net, tiny_shapes_val, tmp_path):
    """The command that stopped with 'SyncBatchNorm layers only work with GPU modules', with a tiny evaluation."""
    result = run_train_net("--config-file", "configs/hqod_retinanet_4bit.yaml", "--num-gpus", "2", *SCALED_DOWN,
                           "DATASETS.COCO_FORMAT", f"('{tiny_shapes_val}',)", "DATASETS.TEST", "('tiny_shapes_val',)",
                           "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "50",
                           "OUTPUT_DIR", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log and re.search(r"SyncBN on CPU: \d+ layers use NaiveSyncBatchNorm over gloo", log)
    assert (tmp_path / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any(m.get("iteration") == MAX_ITER - 1 and math.isfinite(m["total_loss"]) for m in metrics)
    assert "tiny_shapes_val: AP" in result.stdout
