"""Register the COCO-format data sets listed in ``DATASETS.COCO_FORMAT``, so a new data set needs no code.

Each entry is ``"name:json_file:image_root"`` (exactly two colons, so no colon inside the paths; relative
paths are taken from the working directory). Called after the config is merged, before
``DATASETS.TRAIN`` / ``DATASETS.TEST`` are checked; calling it again with the same entries is a no-op.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import HQODInputError
from .coco_format import register_coco_dataset, registered_here

_FORMAT = "name:path/to/instances.json:path/to/images"


def parse_coco_format_entry(entry):
    """Split one ``DATASETS.COCO_FORMAT`` entry into ``(name, json_file, image_root)`` (absolute paths)."""
    parts = str(entry).split(":")
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise HQODInputError(
            f"DATASETS.COCO_FORMAT entry '{entry}' is not of the form '{_FORMAT}'; write it as three fields "
            "separated by colons, with no colon inside the paths"
        )
    name, json_file, image_root = (part.strip() for part in parts)
    return name, os.path.abspath(json_file), os.path.abspath(image_root)


def register_coco_format_datasets(cfg):
    """Register every entry of ``cfg.DATASETS.COCO_FORMAT`` in Detectron2's DatasetCatalog and MetadataCatalog."""
    for entry in cfg.DATASETS.COCO_FORMAT:
        name, json_file, image_root = parse_coco_format_entry(entry)
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if registered_here(name) and (meta.json_file, meta.image_root) == (json_file, image_root):
                continue
            raise HQODInputError(
                f"DATASETS.COCO_FORMAT entry '{entry}': the name '{name}' is already taken by another data set; "
                "choose a different name"
            )
        if not os.path.isfile(json_file):
            raise HQODInputError(
                f"DATASETS.COCO_FORMAT entry '{entry}': the json file {json_file} does not exist; "
                "fix its path (the second field)"
            )
        if not os.path.isdir(image_root):
            raise HQODInputError(
                f"DATASETS.COCO_FORMAT entry '{entry}': the image folder {image_root} does not exist; "
                "fix its path (the third field)"
            )
        register_coco_dataset(name, json_file, image_root)
