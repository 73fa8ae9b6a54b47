"""Validation subsets (the first N images of a registered set) as COCO jsons, and their ground truth by image."""
import json
import os
import pathlib

import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes

from hqod.data import validate_dataset


def write_val_subset(val: str, num_images: int, out_dir: pathlib.Path):
    """Write the first ``num_images`` images (by id) of registered set ``val`` with their boxes; return the
    DATASETS.COCO_FORMAT entry and the name it registers (``bench_<val>``)."""
    validate_dataset(val)  # builds the cached set on first use
    meta = MetadataCatalog.get(val)
    coco = json.loads(pathlib.Path(meta.json_file).read_text())
    keep = {img["id"] for img in sorted(coco["images"], key=lambda img: img["id"])[:num_images]}
    coco["images"] = [img for img in coco["images"] if img["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"bench_{val}"
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, path)
    return f"{name}:{path}:{meta.image_root}", name


def ground_truth(json_file: str) -> dict:
    """``image_id -> (Boxes XYXY, category ids)`` of a COCO json, in the json's own category ids."""
    coco = json.loads(pathlib.Path(json_file).read_text())
    boxes = {img["id"]: ([], []) for img in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]][0].append([x, y, x + w, y + h])
            boxes[a["image_id"]][1].append(a["category_id"])
    return {image_id: (Boxes(torch.tensor(b, dtype=torch.float32).reshape(-1, 4)), torch.tensor(c, dtype=torch.int64))
            for image_id, (b, c) in boxes.items()}
