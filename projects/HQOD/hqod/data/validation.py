"""Checks run on data before training, so bad input fails in seconds with one line naming the problem and the fix.

Sets registered by HQOD (built in or ``DATASETS.COCO_FORMAT``) get a full check of their COCO json and images.
Detectron2's own sets (COCO, VOC, LVIS, ...) are only checked for their files being where Detectron2 looks,
so that their known quirks (a few degenerate COCO boxes, which Detectron2 drops itself) do not stop training.
"""
import json
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..errors import HQODInputError
from .coco_format import prepare_dataset, registered_here

HEADER_CHECK_LIMIT = 5000  # sets with more images only have the files' existence checked
BOX_TOLERANCE = 1.0  # px a box may reach past the image border (rounding in exported annotations)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that Detectron2's reader turns by 90 degrees


def check_datasets_exist(names):
    """Raise HQODInputError for the first name in ``names`` that is not in Detectron2's DatasetCatalog."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise HQODInputError(
                f"unknown data set '{name}'; registered ones: {', '.join(sorted(registered))}; register it with "
                f"DATASETS.COCO_FORMAT ['{name}:path/to/instances.json:path/to/images'] or fix the name"
            )


def _load_json(json_file):
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except FileNotFoundError:
        raise HQODInputError(f"COCO json {json_file} does not exist; fix the path or create the file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HQODInputError(f"COCO json {json_file} is not valid JSON ({e}); re-export the file") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations")):
        raise HQODInputError(
            f"COCO json {json_file} has no 'images' and 'annotations' lists; export it as COCO instances "
            "(keys images, annotations, categories)"
        )
    return coco


def _check_box(json_file, ann, image):
    bbox = ann.get("bbox")
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
    if not (numbers and all(math.isfinite(v) for v in bbox)):
        raise HQODInputError(
            f"COCO json {json_file}: annotation id {ann.get('id')} has bbox {bbox}, not [x, y, width, height]; "
            "fix or remove that annotation"
        )
    x, y, w, h = bbox
    if not (w > 0 and h > 0):
        raise HQODInputError(
            f"COCO json {json_file}: annotation id {ann.get('id')} has a zero-area box {bbox} "
            "([x, y, width, height]); remove it or give it a positive width and height"
        )
    width, height = image["width"], image["height"]
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        raise HQODInputError(
            f"COCO json {json_file}: annotation id {ann.get('id')} has box {bbox} ([x, y, width, height]) outside "
            f"its {width}x{height} image '{image['file_name']}'; clip the box to the image or remove it"
        )


def _check_image(json_file, path, image, read_header):
    if not os.path.isfile(path):
        raise HQODInputError(
            f"COCO json {json_file}: image {path} does not exist; fix the image folder or copy the image there"
        )
    if not read_header:
        return
    try:
        with Image.open(path) as im:
            im.verify()  # must come first: it leaves the file unusable for anything else
        with Image.open(path) as im:
            size = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                size = size[::-1]
    except Exception as e:
        raise HQODInputError(
            f"COCO json {json_file}: image {path} cannot be read ({e}); replace the file or remove the image "
            "from the json"
        ) from None
    if size != (image["width"], image["height"]):
        raise HQODInputError(
            f"COCO json {json_file}: image {path} is {size[0]}x{size[1]} but the json says "
            f"{image['width']}x{image['height']}; fix the image's width and height in the json"
        )


def validate_coco_json(json_file, image_root):
    """Check a COCO instances json and its images: boxes inside their image with positive area, known image
    and category ids, every image present (and, up to ``HEADER_CHECK_LIMIT`` images, readable and of the
    stated size)."""
    coco = _load_json(json_file)
    images = {}
    for image in coco["images"]:
        if not all(k in image for k in ("id", "file_name", "height", "width")):
            raise HQODInputError(
                f"COCO json {json_file}: image entry {image} lacks one of id, file_name, height, width; add them"
            )
        images[image["id"]] = image
    category_ids = {c.get("id") for c in coco.get("categories", [])}
    for ann in coco["annotations"]:
        image = images.get(ann.get("image_id"))
        if image is None:
            raise HQODInputError(
                f"COCO json {json_file}: annotation id {ann.get('id')} refers to image id {ann.get('image_id')}, "
                "which is not in 'images'; fix its image_id or remove it"
            )
        if ann.get("category_id") not in category_ids:
            raise HQODInputError(
                f"COCO json {json_file}: annotation id {ann.get('id')} has category_id {ann.get('category_id')}, "
                "which is not in 'categories'; add that category or fix the annotation"
            )
        _check_box(json_file, ann, image)
    read_header = len(images) <= HEADER_CHECK_LIMIT
    for image in images.values():
        _check_image(json_file, os.path.join(image_root, image["file_name"]), image, read_header)


def _check_detectron2_paths(name):
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "image_root", "dirname"):
        path = getattr(meta, key, None)
        if isinstance(path, str) and "://" not in path and not os.path.exists(path):
            raise HQODInputError(
                f"data set '{name}': its {key} {path} does not exist; put Detectron2's data sets under "
                f"$DETECTRON2_DATASETS (now '{os.environ.get('DETECTRON2_DATASETS', 'datasets')}') as laid out in "
                "Detectron2's datasets/README.md"
            )


def validate_dataset(name):
    """Check data set ``name`` before training; generates HQOD's built-in sets on first use."""
    check_datasets_exist([name])
    if not registered_here(name):
        _check_detectron2_paths(name)
        return
    prepare_dataset(name)
    meta = MetadataCatalog.get(name)
    validate_coco_json(meta.json_file, meta.image_root)
