"""SyncBN on CPU: every ``nn.SyncBatchNorm`` becomes Detectron2's ``NaiveSyncBatchNorm`` with the same state, and
between two gloo workers it normalises with the statistics of both ranks' batches together."""
import logging

import hqod  # noqa: F401
import torch
from detectron2.layers import Conv2d, NaiveSyncBatchNorm
from detectron2.utils import comm
from torch import nn

from hqod.engine import HQODTrainer, launch, setup_cfg
from hqod.modeling.sync_bn import convert_naive_sync_batchnorm
from hqod.quantization import is_quantized
from hqod.quantization.qconv import QuantConvMixin, can_fold_bn


def _randomized(bn):
    with torch.no_grad():
        for tensor in (bn.weight, bn.bias, bn.running_mean):
            tensor.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def test_conversion_keeps_parameters_buffers_and_outputs(caplog):
    torch.manual_seed(0)
    shared = _randomized(nn.SyncBatchNorm(8))
    model = nn.Sequential(Conv2d(3, 8, 3, padding=1, norm=_randomized(nn.SyncBatchNorm(8)), activation=nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 8, 1), shared), nn.Conv2d(8, 8, 1), shared)
    model[0].norm.weight.requires_grad_(False)
    weight = model[0].norm.weight
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    expected = model.eval()(x)
    model.train()
    with caplog.at_level(logging.INFO, logger="hqod.modeling.sync_bn"):
        converted = convert_naive_sync_batchnorm(model)
    assert "SyncBN on CPU: 2 layers use NaiveSyncBatchNorm over gloo" in caplog.text
    assert converted is model and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert type(model[0].norm) is NaiveSyncBatchNorm and model[1][1] is model[3]  # sharing kept
    assert model[0].norm.weight is weight and not weight.requires_grad and model[0].norm.training
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.eval()(x), expected)
    assert isinstance(model[3], nn.modules.batchnorm._BatchNorm)  # QuantScheduler's BN freezing sees it
    assert can_fold_bn(model[0]) and can_fold_bn(Conv2d(3, 8, 1, bias=False, norm=nn.SyncBatchNorm(8)))
    assert type(convert_naive_sync_batchnorm(nn.SyncBatchNorm(4))) is NaiveSyncBatchNorm


def test_world_size_one_trains_like_batchnorm():
    torch.manual_seed(0)
    naive, plain = convert_naive_sync_batchnorm(nn.SyncBatchNorm(4)), nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(naive(x), plain(x))
    assert torch.allclose(naive.running_mean, plain.running_mean) and torch.allclose(naive.running_var, plain.running_var)


def test_coco_qat_config_builds_on_cpu_with_naive_sync_bn(root):
    config = root / "configs" / "COCO" / "QAT" / "retinanet_R18_lsq_w4a4.yaml"  # RESNETS.NORM SyncBN
    cfg = setup_cfg(str(config), ["MODEL.WEIGHTS", ""], validate_data=False)
    model = HQODTrainer.build_model(cfg)
    assert is_quantized(model) and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    norms = [m.norm for m in model.backbone.bottom_up.modules() if isinstance(m, QuantConvMixin)]
    assert norms and all(type(norm) is NaiveSyncBatchNorm for norm in norms)


def _sync_step(out_dir):
    """One training-mode forward per rank on rank-specific data, through a converted SyncBN and a plain BN."""
    rank = comm.get_rank()
    torch.manual_seed(rank)
    x = torch.randn(2, 3, 4, 4) * (rank + 1) + 3 * rank
    naive = convert_naive_sync_batchnorm(nn.SyncBatchNorm(3, momentum=1.0))
    plain = nn.BatchNorm2d(3, momentum=1.0)
    y = naive(x)
    plain(x)
    torch.save({"x": x, "y": y.detach(), "naive": naive.state_dict(), "plain": plain.state_dict()},
               f"{out_dir}/rank{rank}.pth")


def test_two_gloo_workers_normalise_with_both_ranks_statistics(tmp_path):
    launch(_sync_step, 2, dist_url="auto", args=(str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pth") for r in range(2)]
    both = torch.cat([r["x"] for r in ranks])
    mean, var = both.mean(dim=(0, 2, 3)), both.var(dim=(0, 2, 3), unbiased=False)
    for r in ranks:
        assert torch.allclose(r["naive"]["running_mean"], mean, atol=1e-5)
        assert torch.allclose(r["naive"]["running_var"], var, atol=1e-4)
        expected = (r["x"] - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
        assert torch.allclose(r["y"], expected, atol=1e-4)
        assert not torch.allclose(r["plain"]["running_mean"], mean, atol=1e-2)  # a plain BN sees only its rank
