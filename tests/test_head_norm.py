"""The per-level head norm ("LevelBN", AQD's multi-level BN) of RetinaNet, FCOS and ATSS: one BatchNorm per FPN level
after each shared tower conv, through QAT conversion, FOLD_BN and checkpoints; tiny CPU models."""
import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from hqod.engine import HQODTrainer
from hqod.engine.validation import validate_config
from hqod.errors import HQODInputError
from hqod.modeling.head_norm import LevelBatchNorm
from hqod.quantization import calibrate, convert_to_qat, quantizers

HEADS = {  # meta-architecture: (config node, head-norm key)
    "HQODRetinaNet": ("RETINANET", "NORM"),
    "FCOS": ("FCOS", "HEAD_NORM"),
    "ATSS": ("ATSS", "HEAD_NORM"),
}
LEVELS = 5  # p3..p7


@pytest.fixture
def level_bn_cfg(tiny_detector_cfg):
    """``level_bn_cfg(meta_arch, norm="LevelBN", **quant)``: the tiny detector with that head norm."""

    def make(meta_arch, norm="LevelBN", **quant):
        node, key = HEADS[meta_arch]
        cfg = tiny_detector_cfg(meta_arch, **{node: {key: norm}}, QUANT=quant)
        cfg.MODEL.QUANT.CALIB_IMAGES = 2
        return cfg

    return make


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def images(count=2, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(count):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 50.0, 44.0], [30.0, 20.0, 90.0, 80.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        batch.append({"image": (torch.rand(3, size, size, generator=g) * 255).round(), "instances": inst,
                      "height": size, "width": size})
    return batch


def train_step(model, batch):
    total = sum(train_step_losses(model, batch).values())
    total.backward()
    return total


def settle_batch_norms(model, batch):
    """Every BatchNorm's running statistics set to those of ``batch`` in a training forward, as in a trained model
    (fresh ones, mean 0 and variance 1, would calibrate the quantizers for other activations than training gives)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        train_step_losses(model, batch)
    for bn in bns:
        bn.momentum = 0.1


def train_step_losses(model, batch):
    model.train()
    with EventStorage():
        return model(batch)


def level_norms(model):
    return [m for m in model.head.modules() if isinstance(m, LevelBatchNorm)]


def head_convs(model):
    return [m for m in model.head.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("meta_arch", list(HEADS))
def test_each_level_keeps_its_own_statistics_and_affine_while_convs_stay_shared(level_bn_cfg, meta_arch):
    model = build(level_bn_cfg(meta_arch))
    plain = build(level_bn_cfg(meta_arch, norm=""))
    norms = level_norms(model)
    assert len(norms) == 2 and all(len(n) == LEVELS and all(type(bn) is nn.BatchNorm2d for bn in n) for n in norms)
    assert [tuple(c.weight.shape) for c in head_convs(model)] == [tuple(c.weight.shape) for c in head_convs(plain)]

    train_step(model, images())
    for norm in norms:  # the levels see different feature maps: each level's statistics moved, and differently
        means = torch.stack([bn.running_mean for bn in norm])
        assert all(m.abs().sum() > 0 for m in means)
        assert all(not torch.allclose(means[i], means[j]) for i in range(LEVELS) for j in range(i + 1, LEVELS))
    cls_grads = torch.stack([bn.weight.grad for bn in norms[0]])  # one affine per level (the classification loss
    assert all(g.abs().sum() > 0 for g in cls_grads)  # reaches every level), each with its own gradient
    assert all(not torch.equal(cls_grads[i], cls_grads[j]) for i in range(LEVELS) for j in range(i + 1, LEVELS))

    model.eval()  # inference normalises level i with level i's statistics
    bn = norms[0]
    for level in range(LEVELS):
        bn.calls = level
        x = torch.randn(1, bn[0].num_features, 4, 4)
        assert torch.allclose(bn(x), bn[level](x))


def test_level_sync_bn_runs_on_cpu_as_naive_sync_bn(level_bn_cfg):
    model = HQODTrainer.build_model(level_bn_cfg("ATSS", norm="LevelSyncBN"))
    norms = level_norms(model)
    assert len(norms) == 2 and all(type(bn) is NaiveSyncBatchNorm for norm in norms for bn in norm)
    assert torch.isfinite(train_step(model, images()))
    assert all(bn.running_mean.abs().sum() > 0 for norm in norms for bn in norm)


def test_detectron2_retinanet_cannot_build_it(tiny_detector_cfg):
    cfg = tiny_detector_cfg("RetinaNet", RETINANET={"NORM": "LevelBN"})
    with pytest.raises(HQODInputError, match="MODEL.RETINANET.NORM 'LevelBN' is built by the project's RetinaNet"):
        validate_config(cfg)
    validate_config(tiny_detector_cfg("ATSS", ATSS={"HEAD_NORM": "LevelSyncBN"}))


@pytest.mark.parametrize("meta_arch", ["HQODRetinaNet", "FCOS"])
def test_trains_after_qat_conversion_and_calibration(level_bn_cfg, meta_arch):
    cfg = level_bn_cfg(meta_arch)
    model = build(cfg)
    settle_batch_norms(model, images())
    model = convert_to_qat(model, cfg)
    tower_conv = model.head.cls_subnet[0]
    assert len(tower_conv.input_quant) == LEVELS and not isinstance(tower_conv.weight_quant, nn.ModuleList)
    assert calibrate(model, [images()], 2) == 2
    total = train_step(model, images())
    assert torch.isfinite(total)
    norm = model.head.cls_subnet[1]
    assert isinstance(norm, LevelBatchNorm) and all(bn.weight.grad.abs().sum() > 0 for bn in norm)
    scales = [q for name, q in quantizers(model) if name.startswith("head.cls_subnet.0.input_quant")]
    assert len(scales) == LEVELS and all(q.scale.grad is not None and q.scale.grad.abs().sum() > 0 for q in scales)


def test_fold_bn_folds_the_backbone_and_leaves_the_level_norms(level_bn_cfg):
    cfg = level_bn_cfg("FCOS", FOLD_BN=True)
    model = convert_to_qat(build(cfg), cfg)
    assert model.backbone.bottom_up.stem.conv1.fold_bn
    assert not any(getattr(conv, "fold_bn", False) for conv in head_convs(model))
    assert len(level_norms(model)) == 2
    assert calibrate(model, [images()], 2) == 2
    assert torch.isfinite(train_step(model, images()))


def test_checkpoint_round_trip_and_a_checkpoint_without_level_norms(level_bn_cfg, tmp_path):
    cfg = level_bn_cfg("FCOS")
    model = build(cfg)
    train_step(model, images())
    DetectionCheckpointer(model, str(tmp_path)).save("level_bn")
    loaded = build(cfg, seed=1)
    DetectionCheckpointer(loaded).load(str(tmp_path / "level_bn.pth"))
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys() and any(".1.4.running_mean" in k for k in state)
    assert all(torch.equal(state[k], reloaded[k]) for k in state)
    model.eval(), loaded.eval()
    with torch.no_grad():
        scores = [m(images(count=1))[0]["instances"].scores for m in (model, loaded)]
    assert torch.equal(*scores)

    gn_model = build(level_bn_cfg("FCOS", norm="GN"))  # today's FP checkpoints: GroupNorm head
    DetectionCheckpointer(gn_model, str(tmp_path)).save("gn")
    fresh = build(cfg, seed=2)
    DetectionCheckpointer(fresh).load(str(tmp_path / "gn.pth"))  # loads; the per-level BNs start fresh
    assert torch.equal(fresh.head.cls_subnet[0].weight, gn_model.head.cls_subnet[0].weight)
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.running_var,
                                                                                   torch.ones_like(bn.running_var))
               for norm in level_norms(fresh) for bn in norm)
