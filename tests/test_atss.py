"""ATSS: the assigner on hand-computed cases (ties, a centre outside its box, several boxes, a level with fewer than
k anchors, an image without boxes), the model's anchors, losses and inference, and its builder's errors."""
import math

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hqod.errors import HQODInputError
from hqod.modeling.atss import centerness_targets
from hqod.modeling.atss_assigner import atss_match


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_equal_distances_pick_the_lower_anchor_index_and_equal_ious_meet_their_mean():
    gt = _t([[8, 8, 24, 24]])  # centre (16, 16)
    # four 16-px anchors at the same distance (squared 32) and with the same IoU 144/368, then a far one
    anchors = _t([[4, 4, 20, 20], [12, 4, 28, 20], [4, 12, 20, 28], [12, 12, 28, 28], [100, 100, 116, 116]])
    assert atss_match([anchors], gt, topk=4).tolist() == [0, 0, 0, 0, -1]  # threshold = mean + 0 = every IoU
    assert atss_match([anchors], gt, topk=2).tolist() == [0, 0, -1, -1, -1]  # candidates: indices 0 and 1


def test_a_candidate_whose_centre_lies_outside_its_box_is_not_positive():
    gt = _t([[0, 0, 20, 20]])  # centre (10, 10)
    far = [[60, 60, 80, 80], [60, 0, 80, 20]]  # IoU 0
    # candidates' IoUs [x, 0, 0]: threshold x/3 + x/sqrt(3) < x, so only the centre decides
    outside = _t([[-2, 0, 46, 20]] + far)  # centre (22, 10) right of the box, IoU 400/960
    inside = _t([[-8, 0, 36, 20]] + far)  # centre (14, 10), IoU 400/880
    assert atss_match([outside], gt, topk=3).tolist() == [-1, -1, -1]
    assert atss_match([inside], gt, topk=3).tolist() == [0, -1, -1]


def test_an_anchor_positive_for_several_boxes_goes_to_the_one_it_overlaps_most():
    anchors = _t([[2, 0, 22, 20], [100, 100, 120, 120], [100, 0, 120, 20]])
    # anchor 0: IoU 360/440 with box 0 and 360/520 with box 1; positive for both (candidates [x, 0, 0])
    gt = _t([[4, 0, 28, 20], [0, 0, 20, 20]])
    assert atss_match([anchors], gt, topk=3).tolist() == [1, -1, -1]
    twins = _t([[0, 0, 20, 20], [0, 0, 20, 20]])  # equal IoUs: the lower box index
    assert atss_match([anchors], twins, topk=3).tolist() == [0, -1, -1]


def test_a_level_with_fewer_than_k_anchors_gives_all_its_anchors():
    gt = _t([[0, 0, 32, 32]])  # centre (16, 16)
    level0 = _t([[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32], [64, 64, 80, 80]])
    level1 = _t([[0, 0, 32, 32], [64, 0, 96, 32]])  # 2 anchors < k = 3
    # candidates: level 0's first three (IoU 1/4 each, squared distance 128 like the fourth), both of level 1
    # (IoU 1 and 0): mean 0.35, sample std sqrt(0.575 / 4) = 0.379, threshold 0.729: only the exact anchor
    assert atss_match([level0, level1], gt, topk=3).tolist() == [-1, -1, -1, -1, -1, 0, -1]
    # without level 1 the candidates are level 0's five: mean 0.2, std 0.112, threshold 0.312 > 1/4: none
    assert atss_match([level0], gt, topk=9).tolist() == [-1, -1, -1, -1, -1]


def test_an_image_without_boxes_is_all_background():
    anchors = _t([[0, 0, 16, 16], [16, 0, 32, 16]])
    assert atss_match([anchors, anchors[:1]], torch.zeros((0, 4)), topk=9).tolist() == [-1, -1, -1]


def test_centerness_targets_by_hand():
    anchors = _t([[0, 0, 16, 16], [8, 0, 24, 16]])  # centres (8, 8) and (16, 8)
    gt = _t([[0, 0, 16, 24], [0, 0, 32, 32]])
    # (8, 8) in [0, 0, 16, 24]: l = r = 8, t = 8, b = 16; (16, 8) in [0, 0, 32, 32]: l = r = 16, t = 8, b = 24
    torch.testing.assert_close(centerness_targets(anchors, gt), torch.tensor([math.sqrt(0.5), math.sqrt(1 / 3)]))


@pytest.fixture
def atss_cfg(tiny_detector_cfg):
    """``atss_cfg(meta_arch="ATSS", **atss_keys)``."""
    return lambda meta_arch="ATSS", **atss: tiny_detector_cfg(meta_arch, ATSS=atss)


def _batch(num_boxes):
    g = torch.Generator().manual_seed(0)
    batch = []
    for n in num_boxes:
        inst = Instances((128, 128))
        xy = torch.rand(n, 2, generator=g) * 60
        inst.gt_boxes = Boxes(torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 40], dim=1))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
        batch.append({"image": torch.randint(0, 256, (3, 128, 128), generator=g).float(), "instances": inst})
    return batch


def test_one_square_anchor_per_location_of_side_scale_times_stride(atss_cfg):
    torch.manual_seed(0)
    model = build_model(atss_cfg())
    features = [torch.zeros(1, 32, 16 // 2 ** i, 16 // 2 ** i) for i in range(5)]
    for stride, anchors in zip((8, 16, 32, 64, 128), model.anchor_generator(features)):
        sides = anchors.tensor[:, 2:] - anchors.tensor[:, :2]
        assert torch.all(sides == 8 * stride)
        assert len(anchors) == features[int(math.log2(stride)) - 3].shape[-1] ** 2


@pytest.mark.parametrize("meta_arch", ["ATSS", "HQODATSS"])
def test_trains_with_an_image_without_boxes_and_on_boxless_batches(meta_arch, atss_cfg):
    torch.manual_seed(0)
    model = build_model(atss_cfg(meta_arch)).train()
    for num_boxes in ((2, 0), (0, 0)):
        with EventStorage():
            losses = model(_batch(num_boxes))
        assert {"loss_atss_cls", "loss_atss_box", "loss_atss_ctr"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    assert model.head.scales.grad is not None


def test_inference_keeps_the_top_probabilities_and_scores_them_with_centerness(atss_cfg):
    torch.manual_seed(0)
    model = build_model(atss_cfg(TOPK_CANDIDATES_TEST=2)).eval()
    anchors = Boxes(_t([[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32]]))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = torch.tensor([[logit(0.9), logit(0.01), logit(0.02)], [logit(0.04), logit(0.6), logit(0.5)],
                           [logit(0.5), logit(0.03), logit(0.01)]])
    deltas = torch.zeros(3, 4)
    centerness = torch.tensor([[0.0], [math.log(3.0)], [0.0]])  # sigmoid: 0.5, 0.75, 0.5
    out = model._decode_level(anchors, logits, deltas, centerness, (32, 32))
    # above 0.05: 0.9 (anchor 0), 0.6 and 0.5 (anchor 1), 0.5 (anchor 2); the best two, times centerness
    torch.testing.assert_close(out.scores, torch.tensor([0.9 * 0.5, 0.6 * 0.75]))
    assert out.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(out.pred_boxes.tensor, anchors.tensor[:2])


def test_bad_in_features_stop_the_build(atss_cfg):
    with pytest.raises(HQODInputError, match=r"MODEL.ATSS.IN_FEATURES \['p2'\] must name backbone outputs"):
        build_model(atss_cfg(IN_FEATURES=["p2"]))
