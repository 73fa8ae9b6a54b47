"""MODEL.QUANT.DEPTHWISE_BITS: exactly the depthwise convs (groups == in_channels > 1) get those bits, pinned against
the bit schedule, below FIRST/LAST_PATTERNS and OVERRIDES; QAT checkpoints record it. Tiny MobileNetV2 RetinaNet."""
import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from hqod.engine.checkpoint import check_checkpoint_fits, quant_config_record
from hqod.errors import HQODInputError
from hqod.quantization import convert_to_qat, quant_signature

SMALL = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.RETINANET.NUM_CLASSES", 3,
         "MODEL.WEIGHTS", "", "MODEL.QUANT.ENABLED", True]
MNV2 = "COCO/retinanet_MNV2_FPN_fp32.yaml"
STEM, LAST = "backbone.bottom_up.stem", {"head.cls_score", "head.bbox_pred"}


@pytest.fixture(scope="module")
def depthwise_names(get_config):
    """Names of the depthwise convs of the tiny MobileNetV2 RetinaNet, found from the float model."""
    model = build_model(get_config(MNV2, *SMALL))
    return {name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1}


def convert(get_config, *opts):
    cfg = get_config(MNV2, *SMALL, *opts)
    torch.manual_seed(0)
    return convert_to_qat(build_model(cfg), cfg)


def follows_schedule(model, name):
    conv = model.get_submodule(name)
    return {q.follows_schedule for role in ("weight", "input") for q in conv.role_quantizers(role)}


def test_depthwise_convs_and_only_they_get_the_bits_pinned(get_config, depthwise_names):
    assert len(depthwise_names) >= 17  # one per inverted-residual block of MobileNetV2
    off = quant_signature(convert(get_config))
    model = convert(get_config, "MODEL.QUANT.DEPTHWISE_BITS", 6)
    on = quant_signature(model)
    assert {name for name, bits in on.items() if bits == (6, 6)} == depthwise_names
    assert {name: bits for name, bits in on.items() if name not in depthwise_names} == {
        name: bits for name, bits in off.items() if name not in depthwise_names}
    assert all(off[name] == (4, 4) for name in depthwise_names)
    dw, plain = sorted(depthwise_names)[0], "head.cls_subnet.0"
    assert follows_schedule(model, dw) == {False} and follows_schedule(model, plain) == {True}
    assert follows_schedule(convert(get_config), dw) == {True}


def test_overrides_win_and_first_last_keep_their_bits(get_config, depthwise_names):
    first, overridden, *_ = sorted(depthwise_names)
    model = convert(get_config, "MODEL.QUANT.DEPTHWISE_BITS", 6, "MODEL.QUANT.FIRST_PATTERNS", [STEM, first],
                    "MODEL.QUANT.OVERRIDES", [f"{overridden}:3:5"])
    signature = quant_signature(model)
    assert signature[first] == (8, 8) and signature[overridden] == (3, 5)
    assert {name for name, bits in signature.items() if bits == (6, 6)} == depthwise_names - {first, overridden}
    assert all(signature[name] == (8, 8) for name in LAST | {STEM})


def test_qat_checkpoints_record_it(get_config):
    on, off = get_config(MNV2, *SMALL, "MODEL.QUANT.DEPTHWISE_BITS", 6), get_config(MNV2, *SMALL)
    checkpoint = {"model": {"head.cls_score.input_quant.scale": torch.ones(1)}, "quant_config": quant_config_record(on)}
    check_checkpoint_fits(checkpoint, on, "the checkpoint")
    with pytest.raises(HQODInputError, match="MODEL.QUANT.DEPTHWISE_BITS=6 in the checkpoint vs 0 in the config"):
        check_checkpoint_fits(checkpoint, off, "the checkpoint")
    older = {k: v for k, v in quant_config_record(off).items() if k != "DEPTHWISE_BITS"}  # written before the key
    check_checkpoint_fits({**checkpoint, "quant_config": older}, off, "the checkpoint")
