"""MobileNetV2 body as a Detectron2 ``Backbone``, laid out like torchvision's so its ImageNet weights load.

Modules: ``stem`` (3x3 conv, stride 2), then ``stage1`` ... ``stage5``; ``stageK`` ends at stride ``2**K`` and is
an ``nn.Sequential`` of ``InvertedResidual`` blocks (``stage5`` ends with the 1x1 conv to 1280 channels, torchvision's
``features.18``). Every conv is a ``detectron2.layers.Conv2d`` holding its norm and ReLU6, and the output features
are named after their stage: ``stage3`` (stride 8, 32 channels), ``stage4`` (16, 96), ``stage5`` (32, 1280).
"""
import math

from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...errors import HQODInputError

# torchvision's MobileNetV2 blocks: (expansion, output channels, repeats, stride of the first repeat).
BLOCK_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
STAGE_NAMES = tuple(f"stage{k}" for k in range(1, 6))


def scaled_channels(channels: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8 as torchvision does (never below 90%)."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


def conv_norm(in_channels, out_channels, kernel_size, norm, *, stride=1, groups=1, relu6=True):
    """Conv (no bias) + norm (+ ReLU6) as one Detectron2 ``Conv2d``, so quantization passes see a single conv."""
    return Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                  bias=False, norm=get_norm(norm, out_channels), activation=nn.ReLU6() if relu6 else None)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 ``expand`` (absent at expansion 1), 3x3 ``depthwise``, linear 1x1 ``project``."""

    def __init__(self, in_channels, out_channels, stride, expansion, norm):
        super().__init__()
        hidden = int(round(in_channels * expansion))
        self.expand = conv_norm(in_channels, hidden, 1, norm) if expansion != 1 else None
        self.depthwise = conv_norm(hidden, hidden, 3, norm, stride=stride, groups=hidden)
        self.project = conv_norm(hidden, out_channels, 1, norm, relu6=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.use_residual else y


class MobileNetV2(Backbone):
    """MobileNetV2 body whose outputs are ``stageK`` features; stages after the last requested one are not built."""

    def __init__(self, *, norm="FrozenBN", width_mult=1.0, out_features=("stage3", "stage4", "stage5"),
                 freeze_at=0):
        super().__init__()
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise HQODInputError(f"MobileNetV2 output features {list(out_features)} are invalid; "
                                 f"choose from {list(STAGE_NAMES)}")
        last_stage = max(STAGE_NAMES.index(f) for f in out_features) + 1
        channels = scaled_channels(STEM_CHANNELS * width_mult)
        self.stem = conv_norm(3, channels, 3, norm, stride=2)
        stride = 2
        stages = {name: [] for name in STAGE_NAMES}
        stage_channels = {}
        for expansion, out, repeats, first_stride in BLOCK_SETTINGS:
            out = scaled_channels(out * width_mult)
            for i in range(repeats):
                block_stride = first_stride if i == 0 else 1
                stride *= block_stride
                stage = f"stage{int(math.log2(stride))}"
                stages[stage].append(InvertedResidual(channels, out, block_stride, expansion, norm))
                channels = stage_channels[stage] = out
        stage_channels["stage5"] = scaled_channels(LAST_CHANNELS * max(1.0, width_mult))
        stages["stage5"].append(conv_norm(channels, stage_channels["stage5"], 1, norm))
        self.stage_names = STAGE_NAMES[:last_stage]
        for name in self.stage_names:
            self.add_module(name, nn.Sequential(*stages[name]))
        self._out_features = list(out_features)
        self._out_feature_strides = {name: 2 ** (STAGE_NAMES.index(name) + 1) for name in out_features}
        self._out_feature_channels = {name: stage_channels[name] for name in out_features}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int):
        """Freeze (weights and BN statistics) the stem if ``freeze_at >= 1`` and stages 1..``freeze_at``."""
        if freeze_at <= 0:
            return self
        for module in [self.stem, *(getattr(self, name) for name in self.stage_names[:freeze_at])]:
            for p in module.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self

    def forward(self, x):
        x = self.stem(x)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg, input_shape: ShapeSpec):
    """MobileNetV2 body from ``MODEL.MOBILENETV2.*`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    if input_shape.channels != 3:
        raise HQODInputError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels} "
                             "(len(MODEL.PIXEL_MEAN)); set 3 means and stds")
    if cfg.MODEL.MOBILENETV2.NORM == "GN":
        raise HQODInputError("MODEL.MOBILENETV2.NORM 'GN' needs channel counts divisible by 32, which MobileNetV2's "
                             "16/24/144-channel layers are not; use FrozenBN, BN or SyncBN")
    return MobileNetV2(norm=cfg.MODEL.MOBILENETV2.NORM, width_mult=cfg.MODEL.MOBILENETV2.WIDTH_MULT,
                       out_features=cfg.MODEL.MOBILENETV2.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
