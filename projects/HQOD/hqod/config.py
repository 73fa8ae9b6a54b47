"""All config keys this project adds to Detectron2's defaults, each with a comment. Call ``add_hqod_config(cfg)``."""
from detectron2.config import CfgNode as CN


def add_hqod_config(cfg):
    """Add the HQOD project's keys (data, backbone, FCOS, quantization, HQOD losses, schedules) to ``cfg``."""
    _add_data_config(cfg)
    _add_backbone_config(cfg)
    _add_fcos_config(cfg)
    _add_quant_config(cfg)
    _add_hqod_loss_config(cfg)


def _add_data_config(cfg):
    # --- data (hqod.data) ---
    pass


def _add_backbone_config(cfg):
    # --- backbone (hqod.modeling.backbone) ---
    pass


def _add_fcos_config(cfg):
    # --- FCOS from yacs (hqod.modeling.fcos) ---
    pass


def _add_quant_config(cfg):
    # --- quantization (hqod.quantization) ---
    pass


def _add_hqod_loss_config(cfg):
    # --- HQOD losses (hqod.modeling.hqod) ---
    pass
