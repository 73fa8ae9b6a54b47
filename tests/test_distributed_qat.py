"""Two CPU workers over gloo train a QAT detector with the real HQODTrainer: after calibration and after training
steps every quantizer parameter and buffer is identical on both ranks, although each rank sees different images."""
import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from hqod.engine import HQODTrainer, launch, setup_cfg
from hqod.engine.hooks import unwrap

pytestmark = pytest.mark.slow


class _DumpQuantState(HookBase):
    """Saves this rank's quantizer state right after calibration (before step 0) and after the last step."""

    def __init__(self, out_dir):
        self._out_dir = out_dir

    def _dump(self, tag):
        state = {k: v.detach().clone() for k, v in unwrap(self.trainer.model).state_dict().items() if "_quant." in k}
        torch.save(state, f"{self._out_dir}/{tag}_rank{comm.get_rank()}.pth")

    def before_step(self):
        if self.trainer.iter == self.trainer.start_iter:
            self._dump("calibrated")

    def after_train(self):
        self._dump("trained")


def _train(config, opts, out_dir):
    cfg = setup_cfg(config, opts)
    trainer = HQODTrainer(cfg)
    trainer.register_hooks([_DumpQuantState(out_dir)])
    trainer.resume_or_load(resume=False)
    trainer.train()


def test_quantizers_identical_on_both_ranks(root, tmp_path):
    opts = ["MODEL.WEIGHTS", "hqod://imagenet/mobilenet_v2.pth", "MODEL.QUANT.CALIB_IMAGES", "4",
            "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1",
            "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)", "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "-1"]
    config = str(root / "configs" / "shapes" / "retinanet_MNV2_lsq_hqod_w4a4.yaml")
    launch(_train, 2, dist_url="auto", args=(config, opts, str(tmp_path)))
    for tag in ("calibrated", "trained"):
        rank0 = torch.load(tmp_path / f"{tag}_rank0.pth")
        rank1 = torch.load(tmp_path / f"{tag}_rank1.pth")
        assert rank0.keys() == rank1.keys() and any(k.endswith(".scale") for k in rank0)
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{tag}: {key} differs between ranks"
    before, after = torch.load(tmp_path / "calibrated_rank0.pth"), torch.load(tmp_path / "trained_rank0.pth")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith(".scale"))  # steps were trained
