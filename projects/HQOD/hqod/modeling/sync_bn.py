"""SyncBN on CPU workers: torch's ``nn.SyncBatchNorm`` needs GPUs (DistributedDataParallel rejects it on CPU), so a
model on the CPU gets Detectron2's ``NaiveSyncBatchNorm`` instead, which all-reduces the batch statistics (over gloo
between CPU workers) and holds the same parameters and buffers, so checkpoints load either way."""
import logging

from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

logger = logging.getLogger(__name__)


def convert_naive_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` in ``module`` by a ``NaiveSyncBatchNorm`` that takes over its parameter and
    buffer tensors and its train/eval mode; returns ``module`` (or the replacement when it is a SyncBN itself)."""
    replaced = {}

    def naive(bn):
        if bn not in replaced:
            layer = NaiveSyncBatchNorm(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                                       track_running_stats=bn.track_running_stats)
            for name, tensor in [*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)]:
                setattr(layer, name, tensor)
            replaced[bn] = layer.train(bn.training)
        return replaced[bn]

    if isinstance(module, nn.SyncBatchNorm):
        module = naive(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, naive(child))
    if replaced:
        logger.info("SyncBN on CPU: %d layers use NaiveSyncBatchNorm over gloo", len(replaced))
    return module
