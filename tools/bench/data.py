"""The bench's data: the first N images of a val or test set as a COCO json, and fixed training crops of a one-class
set (every crop holds boxes, which Detectron2 v0.6's FCOS needs)."""
import json
import pathlib

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from hqod.data import validate_dataset
from hqod.data.cache import build_once
from hqod.data.coco_format import write_coco_json
from hqod.data.deepforest import clip_to_tile, tile_origins
from hqod.utils.io import atomic_write_bytes


def write_eval_subset(source: str, num_images: int, out_dir: pathlib.Path):
    """Write the first ``num_images`` images (by id) of registered set ``source`` with their boxes; return the
    DATASETS.COCO_FORMAT entry and the name it registers (``bench_<source>``)."""
    validate_dataset(source)  # builds the cached set on first use
    meta = MetadataCatalog.get(source)
    coco = json.loads(pathlib.Path(meta.json_file).read_text())
    if len(coco["images"]) < num_images:
        raise ValueError(f"{source} has {len(coco['images'])} images, the bench asks for the first {num_images}")
    keep = {img["id"] for img in sorted(coco["images"], key=lambda img: img["id"])[:num_images]}
    coco["images"] = [img for img in coco["images"] if img["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    name = f"bench_{source}"
    path = out_dir / f"{name}.json"
    atomic_write_bytes(path, json.dumps(coco).encode())
    return f"{name}:{path}:{meta.image_root}", name


def write_train_crops(train: str, crop: int, out_dir: pathlib.Path):
    """Cut every image of the one-class registered set ``train`` into ``crop`` x ``crop`` squares that cover it
    (the last one per row and column aligned to the edge, as deepforest's tiling), boxes clipped by deepforest's
    rule, crops without boxes dropped; built once. Return the DATASETS.COCO_FORMAT entry and its name."""
    validate_dataset(train)
    classes = MetadataCatalog.get(train).thing_classes
    if len(classes) != 1:
        raise ValueError(f"training crops are made for one-class sets only, {train} has {len(classes)} classes")
    name = f"bench_{train}_crop{crop}"

    def build(folder):
        (folder / "images").mkdir()
        records = []
        for record in DatasetCatalog.get(train):
            image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
            boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                              for a in record["annotations"]], dtype=np.float64).reshape(-1, 4)
            stem = pathlib.Path(record["file_name"]).stem
            for y0 in tile_origins(image.shape[0], crop):
                for x0 in tile_origins(image.shape[1], crop):
                    kept = clip_to_tile(boxes, x0, y0, crop, crop)
                    if len(kept):
                        file_name = f"{stem}_{x0}_{y0}.png"
                        cv2.imwrite(str(folder / "images" / file_name), image[y0:y0 + crop, x0:x0 + crop])
                        records.append((file_name, crop, crop, kept, [0] * len(kept)))
        write_coco_json(folder / "train.json", records, classes)

    folder = build_once(out_dir / name, build)
    return f"{name}:{folder / 'train.json'}:{folder / 'images'}", name

