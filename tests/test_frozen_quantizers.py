"""MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS on a tiny MobileNetV2 RetinaNet (stem and stages 1-2 frozen by FREEZE_AT 2):
the frozen convs' quantizers keep their calibrated parameters through checkpoint loading and a training step, and the
backward stops at the first trainable conv; off, they are learned as before."""
import logging

import hqod  # noqa: F401  (before any detectron2 import)
import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from hqod.engine import HQODTrainer
from hqod.engine.checkpoint import HQODCheckpointer
from hqod.quantization import QuantConvMixin, calibrate

CONFIG = "COCO/retinanet_MNV2_FPN_fp32.yaml"  # MODEL.BACKBONE.FREEZE_AT 2
SMALL = ["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.RETINANET.NUM_CLASSES", 3,
         "MODEL.WEIGHTS", "", "MODEL.QUANT.ENABLED", True]
ALGORITHM_OPTS = {"LSQ": [], "TQT": ["MODEL.QUANT.TQT_FREEZE_SCALE", False], "DSQ": []}


def images(count=2, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(count):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 50.0], [30.0, 20.0, 90.0, 80.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        batch.append({"image": (torch.rand(3, size, size, generator=g) * 255).round(), "instances": inst,
                      "height": size, "width": size})
    return batch


def split_quantizer_params(model):
    """({name: parameter} of the quantizers of convs with frozen weights, the same of the other convs)."""
    frozen, trainable = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, QuantConvMixin):
            side = trainable if module.weight.requires_grad else frozen
            side.update((f"{name}.{n}", p) for n, p in module.named_parameters() if "_quant." in n)
    return frozen, trainable


def build(get_config, freeze, *opts):
    cfg = get_config(CONFIG, *SMALL, "MODEL.QUANT.FREEZE_FROZEN_QUANTIZERS", freeze, *opts)
    torch.manual_seed(0)
    return cfg, HQODTrainer.build_model(cfg)


def train_step_from_checkpoint(get_config, tmp_path, freeze):
    """As the trainer: build, optimizer, load a calibrated QAT checkpoint, one step. Returns the model, the optimizer,
    the frozen and trainable quantizer parameters before the step, the input of the first trainable conv and the
    frozen convs whose backward ran."""
    cfg, source = build(get_config, freeze)
    calibrate(source, [images()], 2)
    torch.save({"model": source.state_dict()}, tmp_path / "calibrated.pth")
    _, model = build(get_config, freeze)
    optimizer = HQODTrainer.build_optimizer(cfg, model)
    HQODCheckpointer(model, cfg=cfg).load(str(tmp_path / "calibrated.pth"))
    frozen, trainable = split_quantizer_params(model)
    before = {name: p.detach().clone() for name, p in {**frozen, **trainable}.items()}
    assert all(torch.equal(before[n], source.state_dict()[n]) for n in before)  # loaded
    inputs, backward_ran = [], []

    def record_input(module, args):
        if module.weight.requires_grad and not inputs:
            inputs.append(args[0])

    def hook_output(name, module, args, output):
        if output.requires_grad:
            output.register_hook(lambda grad: backward_ran.append(name))

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, QuantConvMixin):
            handles.append(module.register_forward_pre_hook(record_input))
            if not module.weight.requires_grad:
                handles.append(module.register_forward_hook(lambda m, a, o, name=name: hook_output(name, m, a, o)))
    model.train()
    with EventStorage():
        losses = model(images(seed=1))
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    for handle in handles:
        handle.remove()
    return model, optimizer, frozen, trainable, before, inputs[0], backward_ran


@pytest.mark.parametrize("algorithm", list(ALGORITHM_OPTS))
def test_option_freezes_exactly_the_quantizers_of_frozen_convs(get_config, caplog, algorithm):
    with caplog.at_level(logging.INFO, logger="hqod.quantization.convert"):
        _, model = build(get_config, True, "MODEL.QUANT.ALGORITHM", algorithm, *ALGORITHM_OPTS[algorithm])
    frozen_convs = [m for m in model.modules() if isinstance(m, QuantConvMixin) and not m.weight.requires_grad]
    frozen, trainable = split_quantizer_params(model)
    assert frozen_convs and frozen and trainable
    assert not any(p.requires_grad for p in frozen.values())
    assert all(p.requires_grad for p in trainable.values())  # TQT thresholds and DSQ alpha learned as configured
    assert f"{2 * len(frozen_convs)} quantizers of frozen convs" in caplog.text


def test_frozen_quantizers_stay_calibrated_and_their_backward_is_skipped(get_config, tmp_path):
    _, optimizer, frozen, trainable, before, first_input, backward_ran = \
        train_step_from_checkpoint(get_config, tmp_path, True)
    assert frozen and not any(p.requires_grad for p in frozen.values())  # after loading the checkpoint
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in frozen.values()}
    assert {id(p) for p in trainable.values()} <= in_optimizer
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in frozen.items())
    assert all(p.grad is not None and not torch.equal(p, before[n]) for n, p in trainable.items())
    assert first_input.grad_fn is None and not first_input.requires_grad  # autograd stops at the first trainable conv
    assert backward_ran == []


def test_without_option_frozen_convs_quantizers_are_learned(get_config, tmp_path):
    model, optimizer, frozen, trainable, before, first_input, backward_ran = \
        train_step_from_checkpoint(get_config, tmp_path, False)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert frozen and {id(p) for p in {**frozen, **trainable}.values()} <= in_optimizer
    assert all(p.grad is not None and not torch.equal(p, before[n]) for n, p in frozen.items())
    assert first_input.grad_fn is not None
    frozen_convs = {n for n, m in model.named_modules() if isinstance(m, QuantConvMixin) and not m.weight.requires_grad}
    assert set(backward_ran) == frozen_convs
