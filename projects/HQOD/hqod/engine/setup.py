"""Builds the config from the command line and rejects bad input with one-line errors before training starts."""
import logging
import os

import torch
import yaml
from detectron2.config import get_cfg

from ..config import add_hqod_config
from ..data import check_datasets_exist, register_coco_format_datasets, validate_dataset
from ..errors import HQODInputError
from .validation import validate_config


def setup_cfg(config_file: str, opts=(), validate_data: bool = True):
    """Return the frozen config of ``config_file`` + ``opts`` (``KEY VALUE`` pairs), validated.

    With ``validate_data`` every data set of the config is prepared (built-in sets generated or converted
    into the cache) and checked (json, boxes, images), so bad data fails here and not mid-training.
    """
    if not config_file:
        raise HQODInputError("no config file given; pass --config-file configs/<name>.yaml")
    if not os.path.isfile(config_file):
        raise HQODInputError(f"config file {config_file!r} does not exist; pass an existing yaml from configs/")
    cfg = get_cfg()
    add_hqod_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:
        problem = str(e).replace("\n", " ")
        raise HQODInputError(f"config file {config_file!r} is not valid YAML ({problem}); fix its syntax") from None
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise HQODInputError(f"config file {config_file!r}: {_one_line(e)}; fix or remove that key") from None
    if len(opts) % 2:
        raise HQODInputError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise HQODInputError(f"command-line override: {_one_line(e)}; check the key name and value type") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    validate_config(cfg)
    register_coco_format_datasets(cfg)
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_datasets_exist(names)
    if validate_data:
        for name in names:
            validate_dataset(name)
    cfg.freeze()
    return cfg


def _one_line(error: Exception) -> str:
    return " ".join(str(error.args[0] if error.args else error).split())
