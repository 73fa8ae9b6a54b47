"""The HQOD meta-architectures: Detectron2's dense detectors plus the HQOD losses (``HQODLossMixin``)."""
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from .fcos import FCOS
from .hqod_mixin import HQODLossMixin


@META_ARCH_REGISTRY.register()
class HQODRetinaNet(HQODLossMixin, RetinaNet):
    """Detectron2's RetinaNet with ``loss_tcorr`` and ``loss_hiou`` added; built from ``MODEL.RETINANET/HQOD.*``."""


@META_ARCH_REGISTRY.register()
class HQODFCOS(HQODLossMixin, FCOS):
    """The project's yacs-buildable FCOS plus ``loss_tcorr`` and ``loss_hiou``; built from ``MODEL.FCOS/HQOD.*``."""
