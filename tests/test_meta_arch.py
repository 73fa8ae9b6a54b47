"""The HQOD meta-architectures of every dense detector in the table (HQODRetinaNet, HQODFCOS, HQODATSS): HQOD loss
entries, gradients to both branches, zero positives, exact base losses at weight 0, runtime weights, harmony
logging, training images without boxes, and config errors; tiny R18 models on 128x128 random CPU images."""
import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import EventStorage

from hqod.errors import HQODInputError
from hqod.modeling.detectors import DENSE_DETECTORS
from hqod.modeling.hqod_mixin import HQODInputs, _aligned_iou
from hqod.engine.validation import check_hqod_config

HQOD_KEYS = ("loss_tcorr", "loss_hiou")
ARCHS = {spec.hqod_meta_architecture: spec.meta_architecture for spec in DENSE_DETECTORS.values()}


@pytest.fixture
def tiny_cfg(tiny_detector_cfg):
    """``tiny_cfg(meta_arch, **hqod_keys)``."""
    return lambda meta_arch, **hqod: tiny_detector_cfg(meta_arch, HQOD=hqod)


@pytest.fixture
def tiny_model(tiny_cfg):
    """``tiny_model(meta_arch, seed=0, **hqod_keys)``: the built detector in train mode."""

    def make(meta_arch, seed=0, **hqod):
        torch.manual_seed(seed)
        return build_model(tiny_cfg(meta_arch, **hqod)).train()

    return make


def tiny_batch(num_boxes=(2, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for n in num_boxes:
        inst = Instances((128, 128))
        xy = torch.rand(n, 2, generator=g) * 60
        wh = 20 + torch.rand(n, 2, generator=g) * 40
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
        image = torch.randint(0, 256, (3, 128, 128), generator=g).float()
        batch.append({"image": image, "instances": inst, "height": 128, "width": 128})
    return batch


def run_losses(model, batch):
    with EventStorage() as storage:
        losses = model(batch)
    return losses, storage


@pytest.fixture(params=list(ARCHS))
def arch(request):
    return request.param


def test_loss_entries_finite_and_training_steps(arch, tiny_model):
    model = tiny_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(3):
        losses, storage = run_losses(model, tiny_batch(seed=step))
        assert set(HQOD_KEYS) <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_tcorr"] > 0 and losses["loss_hiou"] > 0
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    scalars = storage.latest()
    assert 0 <= scalars["hqod/rho_mean"][0] <= 1 and -1 <= scalars["hqod/pearson_pu"][0] <= 1


def test_hqod_gradients_reach_cls_and_box_branches(arch, tiny_model):
    model = tiny_model(arch)
    losses, _ = run_losses(model, tiny_batch())
    (losses["loss_tcorr"] + losses["loss_hiou"]).backward()
    for param in (model.head.cls_score.weight, model.head.bbox_pred.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_quantized_model_gets_hqod_gradients(tiny_cfg):
    from hqod.quantization import calibrate, convert_to_qat

    cfg = tiny_cfg("HQODRetinaNet")
    cfg.MODEL.QUANT.WEIGHT_BITS = cfg.MODEL.QUANT.ACT_BITS = 8
    torch.manual_seed(0)
    model = convert_to_qat(build_model(cfg), cfg)
    calibrate(model, [tiny_batch()], 2)
    losses, _ = run_losses(model.train(), tiny_batch(seed=1))
    assert all(torch.isfinite(v) for v in losses.values())
    (losses["loss_tcorr"] + losses["loss_hiou"]).backward()
    for param in (model.head.cls_score.weight, model.head.bbox_pred.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_zero_positives_give_zero_hqod_losses(arch, tiny_model):
    model = tiny_model(arch)
    losses, _ = run_losses(model, tiny_batch(num_boxes=(0, 0)))
    assert all(losses[k] == 0 for k in HQOD_KEYS)
    assert torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()


def test_zero_weights_give_exactly_the_base_losses(arch, tiny_model):
    base = tiny_model(ARCHS[arch])
    model = tiny_model(arch, TCORR_WEIGHT=0.0, HIOU_WEIGHT=0.0)
    model.load_state_dict(base.state_dict())
    batch = tiny_batch()
    base_losses, _ = run_losses(base, batch)
    losses, _ = run_losses(model, batch)
    assert set(losses) == set(base_losses) | set(HQOD_KEYS)
    for key, value in base_losses.items():
        assert torch.equal(losses[key], value), key
    assert all(losses[k] == 0 for k in HQOD_KEYS)


def test_weights_are_read_at_every_step(tiny_model):
    model = tiny_model("HQODRetinaNet")
    inputs = HQODInputs(pos_mask=torch.tensor([[True, False]]), gt_class_logits=torch.tensor([0.3]),
                        pred_boxes=torch.tensor([[0.0, 0.0, 32.0, 32.0]]),
                        gt_boxes=torch.tensor([[2.0, 1.0, 30.0, 34.0]]), normalizer=1.0)
    first = model.hqod_losses(inputs)
    model.tcorr_weight, model.hiou_weight = 2.0, 0.0
    second = model.hqod_losses(inputs)
    torch.testing.assert_close(second["loss_tcorr"], 2 * first["loss_tcorr"])
    assert first["loss_hiou"] > 0 and second["loss_hiou"] == 0


@pytest.mark.parametrize("meta_arch", ["FCOS", "HQODFCOS"])
def test_fcos_trains_on_images_without_boxes(meta_arch, tiny_model):
    """Detectron2 v0.6's FCOS.label_anchors crashed here (IndexError in match_anchors)."""
    model = tiny_model(meta_arch)
    for num_boxes in ((2, 0), (0, 0)):
        losses, _ = run_losses(model, tiny_batch(num_boxes=num_boxes))
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]]))]
    empty = Instances((16, 16), gt_boxes=Boxes(torch.zeros((0, 4))), gt_classes=torch.zeros(0, dtype=torch.long))
    labels, boxes = model.label_anchors(anchors, [empty])
    assert labels[0].tolist() == [3, 3]
    matched = boxes[0].tensor if isinstance(boxes[0], Boxes) else boxes[0]
    assert matched.shape == (2, 4) and not matched.any()


def test_aligned_iou_matches_detectron2():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 25.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [5.0, 5.0, 15.0, 25.0], [2.0, 2.0, 3.0, 3.0]])
    torch.testing.assert_close(_aligned_iou(a, b), matched_pairwise_iou(Boxes(a), Boxes(b)))


@pytest.mark.parametrize(
    "key,value", [("TCORR_WEIGHT", -0.1), ("HIOU_WEIGHT", -1.0), ("HIOU_ALPHA", 0.0), ("HIOU_ALPHA", -1.5)]
)
def test_bad_values_raise_in_validation(key, value, tiny_cfg):
    with pytest.raises(HQODInputError, match=f"MODEL.HQOD.{key}"):
        check_hqod_config(tiny_cfg("HQODRetinaNet", **{key: value}))


def test_hqod_keys_on_a_plain_meta_arch_raise(tiny_cfg):
    check_hqod_config(tiny_cfg("RetinaNet"))  # defaults: fine
    with pytest.raises(HQODInputError, match="MODEL.HQOD.TCORR_WEIGHT=0.5 set but MODEL.META_ARCHITECTURE=RetinaNet .*"
                                             "use one of HQODRetinaNet, HQODFCOS, HQODATSS"):
        check_hqod_config(tiny_cfg("RetinaNet", TCORR_WEIGHT=0.5))
    cfg = tiny_cfg("FCOS")
    cfg.MODEL.HQOD.WEIGHT_SCHEDULE.TYPE = "linear"  # nested keys (of the schedule hooks) are checked too
    with pytest.raises(HQODInputError, match="MODEL.HQOD.WEIGHT_SCHEDULE.TYPE=linear set but"):
        check_hqod_config(cfg)


def test_missing_hqod_keys_raise():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "HQODRetinaNet"
    with pytest.raises(HQODInputError, match="add_hqod_config"):
        check_hqod_config(cfg)
