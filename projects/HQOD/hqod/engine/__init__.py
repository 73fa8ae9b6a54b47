"""Training: the trainer, its hooks and a CPU-capable ``launch``."""
from .launch import launch  # noqa: F401
from .setup import setup_cfg  # noqa: F401
from .trainer import HQODTrainer  # noqa: F401
