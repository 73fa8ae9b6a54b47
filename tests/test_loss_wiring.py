"""What feeds HQOD, checked against hand-computed values on tiny inputs for RetinaNet, FCOS and ATSS: which anchors
or points are positives (ignored ones excluded), p = sigmoid of the ground-truth-class logit (not the max class),
u = IoU of the box decoded from the positive's own anchor with its ground-truth box (gradient kept), the normaliser
(the detector's, or the exact positive count), and the resulting loss_tcorr and loss_hiou.

Each case is a batch of three images on one level of hand-placed anchors: two positives in image 0, one in image 1,
none in image 2 (no boxes). Logits put a larger logit on another class than the ground truth's, so a max-class p
differs; deltas are non-zero, so a box decoded from another anchor, or the anchor itself, gives another IoU."""
import math

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hqod.config import add_hqod_config
from hqod.losses import harmonious_iou_loss, tcorr_loss
from hqod.modeling.detectors import dense_detector
from hqod.modeling.hqod_mixin import _aligned_iou

K = 3  # classes; label K is background


def _logit(p):
    return math.log(p / (1 - p))


RETINANET = dict(
    name="retinanet",
    anchors=[[0, 0, 8, 8], [0, 0, 8, 16], [0, 0, 8, 18], [20, 20, 28, 28]],
    boxes=[([[0, 0, 8, 8]], [2]), ([[16, 16, 28, 28]], [0]), ([], [])],
    # IoU with [0, 0, 8, 8]: 1, 1/2 (>= 0.5: positive), 64/144 (in [0.4, 0.5): ignored), 0; anchor 3 has IoU 64/144
    # with [16, 16, 28, 28], below 0.4 but the box's best anchor: a low-quality positive
    labels=[[2, 2, -1, K], [K, K, K, 0], [K, K, K, K]],
    positives=[(0, 0), (0, 1), (1, 3)],
    # Box2BoxTransform (1, 1, 1, 1): dw = ln 0.5 halves anchor 0 to [2, 0, 6, 8]; dx = 1/4 moves anchor 1 to
    # [2, 0, 10, 16]; dw = ln 2 widens anchor 3 to [16, 20, 32, 28]
    deltas={(0, 0): [0, 0, math.log(0.5), 0], (0, 1): [0.25, 0, 0, 0], (1, 3): [0, 0, math.log(2.0), 0]},
    u=[32 / 64, 48 / 144, 96 / 176],
    detector_normalizer=0.9 * 100 + 0.1 * 3,  # Detectron2's EMA of the positive count, from its initial 100
)
FCOS = dict(
    name="fcos",
    # points (box of side = stride 8 around them): (8, 8), (16, 16), (24, 8), (40, 40)
    anchors=[[4, 4, 12, 12], [12, 12, 20, 20], [20, 4, 28, 12], [36, 36, 44, 44]],
    boxes=[([[0, 0, 24, 24]], [1]), ([[32, 32, 48, 48]], [0]), ([], [])],
    # positive: inside the box (not on its border) and within 1.5 strides of its centre; (24, 8) lies on the border
    labels=[[1, 1, K, K], [K, K, K, 0], [K, K, K, K]],
    positives=[(0, 0), (0, 1), (1, 3)],
    # Box2BoxTransformLinear, normalised by the stride: (l, t, r, b) / 8
    deltas={(0, 0): [1, 1, 1, 1], (0, 1): [2, 2, 0.5, 1], (1, 3): [1, 1, 0.5, 0.5]},
    u=[256 / 576, 480 / 576, 144 / 256],
    detector_normalizer=0.9 * 300 + 0.1 * 3,  # Detectron2's EMA, initial value 300 in FCOS
)
ATSS = dict(
    name="atss",
    anchors=[[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32], [40, 0, 56, 16], [56, 0, 72, 16],
             [40, 16, 56, 32]],
    boxes=[([[0, 0, 16, 24], [40, 0, 56, 16]], [1, 2]), ([[16, 16, 32, 32]], [0]), ([], [])],
    # top 3: box [0, 0, 16, 24] (centre (8, 12)): anchors 0, 2, 1 with IoUs 2/3, 1/4, 0: mean 0.306, std 0.337,
    # threshold 0.642: anchor 0. The other boxes coincide with anchors 4 and 3; their candidates' IoUs [1, 0, 0]
    labels=[[1, K, K, K, 2, K, K], [K, K, K, 0, K, K, K], [K] * 7],
    positives=[(0, 0), (0, 4), (1, 3)],
    # Box2BoxTransform (10, 10, 5, 5): dw = 5 ln 0.5 halves anchor 0 to [4, 0, 12, 16]; dx = 2.5 moves anchor 4 by 4 px
    # to [44, 0, 60, 16]; dw = 5 ln 0.75 narrows anchor 3 to [18, 16, 30, 32]
    deltas={(0, 0): [0, 0, 5 * math.log(0.5), 0], (0, 4): [2.5, 0, 0, 0], (1, 3): [0, 0, 5 * math.log(0.75), 0]},
    u=[128 / 384, 192 / 320, 192 / 256],
    # the sum of the positives' centerness targets: sqrt(8/16) for anchor 0 in [0, 0, 16, 24], 1 and 1
    detector_normalizer=math.sqrt(0.5) + 2.0,
)
CASES = {case["name"]: case for case in (RETINANET, FCOS, ATSS)}
P = [0.5, 0.75, 0.25]  # each positive's ground-truth-class probability
NUM_POS = 2 + 1 + 1  # Σ over images of max(positives, 1)


def _model(name, normalizer="detector"):
    spec = dense_detector(name)
    cfg = get_cfg()
    add_hqod_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = spec.hqod_meta_architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL[spec.config_node].NUM_CLASSES = K
    cfg.MODEL[spec.config_node].NUM_CONVS = 1
    cfg.MODEL.HQOD.NORMALIZER = normalizer
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if name == "atss":
        model.topk = 3
    return model


def _instances(boxes, classes):
    inst = Instances((64, 64))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def _inputs(case):
    """The arguments of the detector's ``losses``: hand anchors, labels from its own ``label_anchors``, logits with
    the ground-truth class at P and another class higher, the hand deltas (logits and deltas require grad)."""
    anchors = [Boxes(torch.tensor(case["anchors"], dtype=torch.float32))]
    n, r = len(case["boxes"]), len(case["anchors"])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, r, K, generator=g)
    deltas = torch.randn(n, r, 4, generator=g) * 0.1
    return anchors, logits, deltas


def _losses(model, case):
    anchors, logits, deltas = _inputs(case)
    gt_labels, gt_boxes = model.label_anchors(anchors, [_instances(*b) for b in case["boxes"]])
    for (img, anchor), p in zip(case["positives"], P):
        label = int(gt_labels[img][anchor])
        logits[img, anchor] = _logit(p) + 3.0  # every other class above the ground truth's
        logits[img, anchor, label] = _logit(p)
        deltas[img, anchor] = torch.tensor(case["deltas"][img, anchor])
    logits.requires_grad_()
    deltas.requires_grad_()
    centerness = [[torch.zeros(len(case["boxes"]), len(case["anchors"]), 1)]]  # one level
    extra = centerness if case["name"] != "retinanet" else []
    args = (anchors, [logits], gt_labels, [deltas], gt_boxes, *extra)
    with EventStorage() as storage:
        losses = model.losses(*args)
    return losses, args, logits, deltas, storage


def _expected(case, normalizer):
    p, u = torch.tensor(P), torch.tensor(case["u"])
    return tcorr_loss(p, u).sum() / normalizer, harmonious_iou_loss(u).sum() / normalizer


@pytest.mark.parametrize("name", CASES)
def test_positives_are_the_hand_computed_anchors(name):
    case = CASES[name]
    model = _model(name)
    anchors, _, _ = _inputs(case)
    labels, _ = model.label_anchors(anchors, [_instances(*b) for b in case["boxes"]])
    assert [lab.tolist() for lab in labels] == case["labels"]


@pytest.mark.parametrize("name", CASES)
def test_hqod_gets_gt_class_p_decoded_iou_and_the_detectors_normaliser(name):
    case = CASES[name]
    model = _model(name)
    handed = []  # what hqod_inputs hands to the HQOD losses during the step
    hqod_inputs = model.hqod_inputs
    model.hqod_inputs = lambda *args: handed.append(hqod_inputs(*args)) or handed[-1]
    _losses(model, case)
    _, _, _, _, storage = _losses(model, case)  # a second step: the EMA normalisers move on
    first, inputs = handed
    if name != "atss":  # the EMA computed by the project equals the divisor Detectron2's losses() keep
        assert float(inputs.normalizer) == pytest.approx(model.loss_normalizer, rel=1e-9)
        assert float(first.normalizer) == pytest.approx(case["detector_normalizer"], rel=1e-6)
        case = dict(case, detector_normalizer=0.9 * case["detector_normalizer"] + 0.1 * len(case["positives"]))
    assert inputs.pos_mask.nonzero().tolist() == [list(p) for p in case["positives"]]
    torch.testing.assert_close(inputs.gt_class_logits.sigmoid(), torch.tensor(P))
    torch.testing.assert_close(_aligned_iou(inputs.pred_boxes, inputs.gt_boxes), torch.tensor(case["u"]))
    assert float(inputs.normalizer) == pytest.approx(case["detector_normalizer"], rel=1e-6)
    assert storage.latest()["hqod/normalizer"][0] == pytest.approx(case["detector_normalizer"], rel=1e-6)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("normalizer", ["detector", "num_pos"])
def test_loss_values_are_the_hand_computed_ones(name, normalizer):
    case = CASES[name]
    losses, *_ = _losses(_model(name, normalizer), case)
    tcorr, hiou = _expected(case, case["detector_normalizer"] if normalizer == "detector" else NUM_POS)
    torch.testing.assert_close(losses["loss_tcorr"], tcorr)
    torch.testing.assert_close(losses["loss_hiou"], hiou)


@pytest.mark.parametrize("name", CASES)
def test_gradients_reach_only_the_positives_gt_class_logit_and_their_deltas(name):
    case = CASES[name]
    losses, _, logits, deltas, _ = _losses(_model(name), case)
    logit_grad, = torch.autograd.grad(losses["loss_tcorr"], logits, retain_graph=True)
    delta_grad, = torch.autograd.grad(losses["loss_hiou"], deltas)
    expected = torch.zeros_like(logit_grad, dtype=torch.bool)
    for img, anchor in case["positives"]:
        expected[img, anchor, case["labels"][img][anchor]] = True
    assert torch.equal(logit_grad != 0, expected)
    rows = torch.zeros(deltas.shape[:2], dtype=torch.bool)
    for img, anchor in case["positives"]:
        rows[img, anchor] = True
    assert torch.all(delta_grad[~rows] == 0) and torch.all(delta_grad[rows].abs().sum(dim=1) > 0)


def test_retinanet_normaliser_is_the_divisor_of_its_box_loss():
    case = RETINANET
    model = _model("retinanet")
    model.smooth_l1_beta = 0.0  # L1, as Base-RetinaNet.yaml
    losses, (anchors, _, _, _, gt_boxes), _, deltas, _ = _losses(model, case)
    l1 = 0.0
    for img, anchor in case["positives"]:
        target = model.box2box_transform.get_deltas(anchors[0].tensor[[anchor]], gt_boxes[img][[anchor]])
        l1 += (deltas[img, anchor] - target[0]).abs().sum()
    torch.testing.assert_close(losses["loss_box_reg"] * case["detector_normalizer"], l1.detach())


def test_atss_box_loss_is_centerness_weighted_giou_over_their_sum():
    losses, *_ = _losses(_model("atss"), ATSS)
    ctr = torch.tensor([math.sqrt(0.5), 1.0, 1.0])
    giou = torch.tensor(ATSS["u"])  # each pair's union is a box (its enclosing box): GIoU = IoU
    torch.testing.assert_close(losses["loss_atss_box"], 2.0 * (ctr * (1 - giou)).sum() / ctr.sum())
