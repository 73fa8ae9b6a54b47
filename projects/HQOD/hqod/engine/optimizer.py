"""SGD with Detectron2's parameter groups plus one hyper-parameter set for the quantizers' own parameters."""
import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..quantization import quantizers


def build_optimizer(cfg, model):
    """Detectron2's default SGD (norm/bias groups, SOLVER.CLIP_GRADIENTS) with step sizes, DSQ alpha and TQT
    thresholds at lr = BASE_LR x SOLVER.QUANT_LR_FACTOR and weight decay SOLVER.QUANT_WEIGHT_DECAY."""
    quant_params = {id(p) for _, q in quantizers(model) for p in q.parameters()}
    quant_wd = cfg.SOLVER.WEIGHT_DECAY if cfg.SOLVER.QUANT_WEIGHT_DECAY < 0 else cfg.SOLVER.QUANT_WEIGHT_DECAY
    groups = []
    for group in get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    ):
        plain = [p for p in group["params"] if id(p) not in quant_params]
        quant = [p for p in group["params"] if id(p) in quant_params]
        if plain:
            groups.append({**group, "params": plain})
        if quant:
            groups.append({**group, "params": quant, "lr": cfg.SOLVER.BASE_LR * cfg.SOLVER.QUANT_LR_FACTOR,
                           "weight_decay": quant_wd, "quantizer": True})
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
        groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
