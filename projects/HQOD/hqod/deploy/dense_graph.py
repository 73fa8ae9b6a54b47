"""``DenseHeadGraph``: the part of a Detectron2 dense detector that runs as one graph (backbone, FPN, head) on a
normalised, padded image batch, returning the head's raw per-level outputs as a flat tuple."""
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import nn

from ..errors import HQODInputError
from ..quantization.qconv import reset_call_counters

# Names of the head's output groups, in the order Detectron2's heads return them (RetinaNet: the first two).
OUTPUT_GROUPS = ("cls_logits", "bbox_deltas", "centerness")


class DenseHeadGraph(nn.Module):
    """backbone -> ``head_in_features`` -> head of ``detector``; outputs ``group_level`` tensors, e.g.
    ``cls_logits_p3`` ... ``bbox_deltas_p7`` (+ ``centerness_p*`` for FCOS), group by group, level by level."""

    def __init__(self, detector):
        super().__init__()
        if not isinstance(detector, DenseDetector):
            raise HQODInputError(f"ONNX export supports Detectron2's dense detectors (RetinaNet, FCOS); got "
                                 f"{type(detector).__name__}")
        self.detector = detector
        self.in_features = list(detector.head_in_features)

    def forward(self, images):
        reset_call_counters(self.detector)  # each conv's first call is the first FPN level, as in a detector forward
        features = self.detector.backbone(images)
        groups = self.detector.head([features[f] for f in self.in_features])
        return tuple(tensor for group in groups for tensor in group)

    def output_names(self, num_groups: int):
        """``group_level`` names of the flat outputs of a head returning ``num_groups`` groups."""
        if num_groups > len(OUTPUT_GROUPS):
            raise HQODInputError(f"the head returns {num_groups} output groups; export knows {OUTPUT_GROUPS}")
        return [f"{group}_{level}" for group in OUTPUT_GROUPS[:num_groups] for level in self.in_features]


def split_groups(outputs, num_levels: int):
    """The flat outputs of ``DenseHeadGraph`` back as the head's per-group lists (what forward_inference takes)."""
    return [list(outputs[i:i + num_levels]) for i in range(0, len(outputs), num_levels)]
