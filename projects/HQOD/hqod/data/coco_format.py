"""Write and register COCO-format detection sets: the one format every HQOD data set is stored and loaded in.

Data sets registered here are loaded by Detectron2's ``load_coco_json`` and evaluated by its COCO evaluator.
A set whose files are generated on first use passes a ``prepare`` function, run inside the DatasetCatalog
loader (never at import time) and by ``prepare_dataset`` (before validation or evaluation).
"""
import json

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

_PREPARE = {}  # name of every data set registered here -> its prepare function (or None)


def write_coco_json(path, images, thing_classes) -> None:
    """Write a COCO instances json for boxes only.

    ``images`` yields ``(file_name, height, width, boxes, category_ids)``: boxes as ``[x0, y0, x1, y1]`` in
    pixels, category ids contiguous from 0 (written as ``id + 1``, as COCO numbers categories from 1).
    """
    coco = {"images": [], "annotations": [], "categories": [
        {"id": i + 1, "name": name} for i, name in enumerate(thing_classes)]}
    for image_id, (file_name, height, width, boxes, category_ids) in enumerate(images, start=1):
        coco["images"].append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for (x0, y0, x1, y1), category_id in zip(boxes, category_ids):
            w, h = round(float(x1 - x0), 2), round(float(y1 - y0), 2)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": int(category_id) + 1,
                "bbox": [round(float(x0), 2), round(float(y0), 2), w, h], "area": round(w * h, 2), "iscrowd": 0,
            })
    with open(path, "w") as f:
        json.dump(coco, f)


def register_coco_dataset(name, json_file, image_root, prepare=None, **metadata) -> None:
    """Register ``name`` in Detectron2's catalogs as the COCO json ``json_file`` with images under ``image_root``.

    ``prepare()``, if given, creates the files; ``metadata`` (e.g. ``thing_classes``) is added to the
    MetadataCatalog entry beside ``json_file``, ``image_root`` and ``evaluator_type="coco"``.
    """
    json_file, image_root = str(json_file), str(image_root)

    def load():
        if prepare is not None:
            prepare()
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)
    _PREPARE[name] = prepare


def registered_here(name) -> bool:
    """Whether ``name`` was registered by ``register_coco_dataset`` (an HQOD or DATASETS.COCO_FORMAT set)."""
    return name in _PREPARE


def prepare_dataset(name) -> None:
    """Create the files of a data set generated on first use (no-op for every other set)."""
    if _PREPARE.get(name) is not None:
        _PREPARE[name]()
