"""The ResNet-18-FPN configs of the CPU data sets (shapes, deepforest): a from-scratch full-precision model (trainable
BN, nothing frozen, no weights) and LSQ (+ HQOD) W4A4 / W2A2 QAT from its run; each validates, builds and trains one
iteration on tiny inputs."""
import pathlib

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from hqod.engine import HQODTrainer
from hqod.engine.validation import validate_config
from hqod.quantization import calibrate, is_calibrated, is_quantized

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT / "configs")) for data in ("shapes", "deepforest")
                 for p in (ROOT / "configs" / data).glob("*_R18_*.yaml"))
TINY = ["MODEL.QUANT.CALIB_IMAGES", 2]


def images(size=64):
    batch = []
    for seed in range(2):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[6.0, 8.0, 40.0, 36.0]]))
        inst.gt_classes = torch.tensor([0])
        image = (torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).round()
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def test_every_detector_and_setting_has_a_config():
    stems = {pathlib.Path(c).stem for c in CONFIGS}
    settings = ["FPN_fp32", "lsq_w4a4", "lsq_w2a2", "lsq_hqod_w4a4", "lsq_hqod_w2a2"]
    assert stems == {f"{det}_R18_{s}" for det in ("retinanet", "fcos") for s in settings}
    assert len(CONFIGS) == 20


@pytest.mark.parametrize("config", CONFIGS)
def test_r18_config_validates_builds_and_trains_one_iteration(get_config, config):
    cfg = get_config(config, *TINY)
    data, name = config.split("/")
    fp_name = name.split("_")[0] + "_R18_FPN_fp32.yaml"
    if cfg.MODEL.QUANT.ENABLED:  # QAT starts from the FP run of its base config
        assert cfg.MODEL.WEIGHTS == f"{get_config(f'{data}/{fp_name}').OUTPUT_DIR}/model_final.pth"
        cfg.MODEL.WEIGHTS = ""
    else:
        assert cfg.MODEL.WEIGHTS == "" and name == fp_name  # from scratch: no ImageNet ResNet offline
    validate_config(cfg)
    torch.manual_seed(0)
    model = HQODTrainer.build_model(cfg)

    body = model.backbone.bottom_up
    assert [type(b) for b in body.res2] == [BasicBlock, BasicBlock] and body.res2[0].conv1.out_channels == 64
    assert [len(body.res3), len(body.res4), len(body.res5)] == [2, 2, 2]  # ResNet-18
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in body.modules()) == 20
    assert all(p.requires_grad for p in model.parameters())
    assert is_quantized(model) == cfg.MODEL.QUANT.ENABLED
    if is_quantized(model):
        assert calibrate(model, [images()], 2) == 2 and is_calibrated(model)

    model.train()
    before = body.stem.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage():
        losses = model(images())
    total = sum(losses.values())
    total.backward()
    optimizer.step()
    assert torch.isfinite(total) and not torch.equal(before, body.stem.conv1.weight)
    assert ("loss_tcorr" in losses) == ("hqod" in name)
