"""convert_to_qat and calibrate on RetinaNet / FCOS with ResNet-18 and MobileNetV2 backbones: tiny CPU models."""
import logging
import pathlib

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn

from hqod.engine import launch
from hqod.errors import HQODInputError
from hqod.quantization import (calibrate, convert_to_qat, is_calibrated, is_quantized, quant_signature, quantizers,
                               set_quant_state)

SMALL = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 2, "MODEL.FCOS.NUM_CONVS", 2,
         "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.FCOS.NUM_CLASSES", 3, "MODEL.WEIGHTS", ""]
R18 = "COCO/retinanet_R18_FPN_fp32.yaml"
MODELS = {  # config: (stem, prediction convs)
    R18: ("backbone.bottom_up.stem.conv1", {"head.cls_score", "head.bbox_pred"}),
    "COCO/retinanet_MNV2_FPN_fp32.yaml": ("backbone.bottom_up.stem", {"head.cls_score", "head.bbox_pred"}),
    "COCO/fcos_R18_FPN_fp32.yaml": ("backbone.bottom_up.stem.conv1", {"head.cls_score", "head.bbox_pred",
                                                                      "head.ctrness"}),
    "COCO/fcos_MNV2_FPN_fp32.yaml": ("backbone.bottom_up.stem", {"head.cls_score", "head.bbox_pred", "head.ctrness"}),
}


@pytest.fixture
def small_cfg(get_config):
    """``small_cfg(config=R18, *opts)``: ``configs/<config>`` with a narrow FPN and head and 3 classes."""

    def load(config=R18, *opts):
        return get_config(config, *SMALL, *opts)

    return load


def build(cfg, convert=True):
    torch.manual_seed(0)
    model = build_model(cfg)
    return convert_to_qat(model, cfg) if convert else model


def images(count=2, size=160, seed=0, gain=1.0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(count):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 50.0], [40.0, 30.0, 120.0, 110.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        image = (torch.rand(3, size, size, generator=g) * 255 * gain).round()
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def conv_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("config", list(MODELS))
def test_every_conv_quantized_with_8_bit_stem_and_predictors_then_trains(small_cfg, config):
    cfg = small_cfg(config)
    fp_model = build(cfg, convert=False)
    names, fp_keys = conv_names(fp_model), set(fp_model.state_dict())
    model = convert_to_qat(fp_model, cfg)
    stem, last = MODELS[config]
    signature = quant_signature(model)
    assert list(signature) == names and len(names) > 20
    assert {n for n, bits in signature.items() if bits == (8, 8)} == {stem} | last
    assert all(bits == (4, 4) for n, bits in signature.items() if n not in {stem} | last)
    keys = set(model.state_dict())
    assert fp_keys <= keys and all(".weight_quant." in k or ".input_quant." in k for k in keys - fp_keys)
    shared = model.head.cls_subnet[0]
    assert len(shared.input_quant) == 5 and not isinstance(shared.weight_quant, nn.ModuleList)

    assert calibrate(model, [images()], 2) == 2 and is_calibrated(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    with EventStorage():
        for _ in range(2):
            losses = model(images())
            assert all(torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert model.head.cls_score.input_quant[0].scale.grad.abs().item() > 0


@pytest.mark.parametrize("algorithm", ["TQT", "DSQ"])
def test_tqt_and_dsq_detectors_train(small_cfg, algorithm):
    model = build(small_cfg(R18, "MODEL.QUANT.ALGORITHM", algorithm, "MODEL.QUANT.TQT_FREEZE_SCALE", False))
    calibrate(model, [images(1)], 1)
    with EventStorage():
        losses = model.train()(images(1))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "_quant." in n and p.requires_grad)


def test_fp_checkpoint_loads_and_qat_state_round_trips(small_cfg, tmp_path):
    cfg = small_cfg()
    fp_state = build(cfg, convert=False).state_dict()
    torch.save({"model": fp_state}, tmp_path / "fp.pth")
    model = build(cfg)
    for p in model.parameters():
        p.data.zero_()
    DetectionCheckpointer(model).load(str(tmp_path / "fp.pth"))
    result = model.load_state_dict(fp_state, strict=False)
    assert not result.unexpected_keys and all("_quant." in k for k in result.missing_keys)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fp_state.items())
    assert not is_calibrated(model)

    calibrate(model, [images()], 2)
    resumed = build(cfg)
    resumed.load_state_dict(model.state_dict())
    assert is_calibrated(resumed) and quant_signature(resumed) == quant_signature(model)
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in model.state_dict().items())
    model.eval(), resumed.eval()
    with torch.no_grad():
        a, b = model(images(1, seed=3))[0]["instances"], resumed(images(1, seed=3))[0]["instances"]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_uncalibrated_model_raises(small_cfg):
    with pytest.raises(HQODInputError, match="backbone.bottom_up.stem.conv1.input_quant.*calibrate"):
        build(small_cfg()).eval()(images(1))


def test_each_level_has_its_own_input_quantizer_and_signedness_follows_the_data(small_cfg):
    model = build(small_cfg(R18, "MODEL.QUANT.ACT_OBSERVER", "MINMAX"))
    batch = images()
    calibrate(model, [batch], 2)
    set_quant_state(model, observe=False, fake_quant=False)
    with torch.no_grad():
        features = model.eval().backbone(model.preprocess_image(batch).tensor)
    for level, quantizer in enumerate(model.head.cls_subnet[0].input_quant):
        assert quantizer.observer.max_val.item() == features[f"p{level + 3}"].max().item()
    signed = {n.rsplit(".input_quant", 1)[0]: bool(q.signed) for n, q in quantizers(model) if ".input_quant" in n}
    assert signed["backbone.bottom_up.stem.conv1"] and signed["backbone.fpn_output3"]  # image, lateral sum
    assert signed["head.cls_subnet.0"]  # FPN output
    assert not signed["backbone.bottom_up.res2.0.conv2"] and not signed["head.cls_subnet.2"]  # after ReLU
    assert not signed["backbone.fpn_lateral3"] and not signed["backbone.top_block.p6"]  # C3, C5 (after ReLU)


def test_sharing_options_per_channel_and_overrides(small_cfg, caplog):
    cfg = small_cfg(R18, "MODEL.QUANT.SHARE_HEAD_WEIGHT_QUANTIZER", False, "MODEL.QUANT.PER_LEVEL_ACT_QUANTIZER", False,
                   "MODEL.QUANT.PER_CHANNEL", True,
                   "MODEL.QUANT.OVERRIDES", ["backbone.bottom_up.res2.*:2:3", "nothing.here:4:4"])
    with caplog.at_level(logging.INFO, logger="hqod.quantization.convert"):
        model = build(cfg)
    conv = model.head.bbox_subnet[0]
    assert len(conv.weight_quant) == 5 and not isinstance(conv.input_quant, nn.ModuleList)
    assert conv.weight_quant[0].scale.shape == (32,)
    assert quant_signature(model)["backbone.bottom_up.res2.1.conv2"] == (2, 3)
    assert "'nothing.here' matches no conv" in caplog.text
    assert f"Quantized {len(conv_names(model))} convs" in caplog.text and "| head.cls_score " in caplog.text


def test_fold_bn_computes_conv_bn_and_freezes_its_statistics(small_cfg):
    model = build(small_cfg(R18, "MODEL.QUANT.FOLD_BN", True))
    conv = model.backbone.bottom_up.res3[0].conv1
    assert conv.fold_bn and not model.head.cls_subnet[0].fold_bn
    conv.norm.running_mean.uniform_(-1, 1)
    conv.norm.running_var.uniform_(0.5, 2)
    conv.norm.weight.data.uniform_(0.5, 2)
    set_quant_state(model, observe=False, fake_quant=False)
    x = torch.randn(2, conv.in_channels, 16, 16)
    reference = conv.norm.eval()(nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding))
    mean = conv.norm.running_mean.clone()
    assert torch.allclose(conv.train()(x), reference, atol=1e-5)
    assert torch.equal(conv.norm.running_mean, mean)


def test_bad_calls(small_cfg):
    cfg = small_cfg()
    model = build(cfg)
    for call, match in [(lambda: convert_to_qat(model, cfg), "already converted"),
                        (lambda: calibrate(model, [images(1)], 0), "positive number of images, got 0"),
                        (lambda: calibrate(model, [], 4), "yielded no images"),
                        (lambda: calibrate(build(cfg, convert=False), [images(1)], 1), "convert_to_qat")]:
        with pytest.raises(HQODInputError, match=match) as error:
            call()
        assert "\n" not in str(error.value)


def _calibrate_on_rank(cfg, out_dir):
    torch.set_num_threads(1)
    rank = comm.get_rank()
    model = build(cfg)
    loader = [images(1, seed=10 * rank + i, gain=1.0 if rank == 0 else 0.3) for i in range(2)]
    seen = calibrate(model, loader, 4)
    state = {k: v.clone() for k, v in model.state_dict().items() if "_quant." in k}
    for _, quantizer in quantizers(model):  # as a schedule re-deriving steps every iteration does
        quantizer.finish_calibration()
    again = {k: v for k, v in model.state_dict().items() if "_quant." in k}
    torch.save({"seen": seen, "state": state, "again": again}, pathlib.Path(out_dir) / f"rank{rank}.pth")


def test_distributed_calibration_gives_identical_quantizers(small_cfg, tmp_path):
    cfg = small_cfg(R18, "MODEL.QUANT.WEIGHT_OBSERVER", "LSQ")
    launch(_calibrate_on_rank, 2, dist_url="auto", args=(cfg, str(tmp_path)))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in (0, 1))
    assert rank0["seen"] == rank1["seen"] == 4  # images x world size
    assert rank0["state"].keys() == rank1["state"].keys()
    assert all(torch.equal(v, rank1["state"][k]) for k, v in rank0["state"].items())
    # re-syncing (as a schedule that keeps observing does every iteration) leaves the steps unchanged
    assert all(torch.allclose(v, rank0["again"][k]) for k, v in rank0["state"].items())
    # rank 0's data alone gives other steps: the ranks did reduce their statistics
    local = build(cfg)
    calibrate(local, [images(1, seed=0), images(1, seed=1)], 2)
    stem_input = "backbone.bottom_up.stem.conv1.input_quant.scale"
    assert not torch.equal(local.state_dict()[stem_input], rank0["state"][stem_input])
