"""HQOD's data sets, registered with Detectron2's catalogs on import, and the checks run on data before training.

Built in: ``hqod_shapes_train`` / ``hqod_shapes_val`` (synthetic, ``shapes``) and ``deepforest_train`` /
``deepforest_val`` (aerial tree crowns, ``deepforest``). Any COCO-format set is added through the config key
``DATASETS.COCO_FORMAT`` (``register_coco_format_datasets``); Detectron2's own COCO and VOC sets stay as they are.
"""
from . import deepforest, shapes  # noqa: F401  (registration side effects)
from .coco_format import prepare_dataset, register_coco_dataset  # noqa: F401
from .custom import register_coco_format_datasets  # noqa: F401
from .validation import check_datasets_exist, validate_coco_json, validate_dataset  # noqa: F401
