"""``deepforest_train`` / ``deepforest_val`` / ``deepforest_test``: real NEON aerial RGB images with 951 tree-crown
boxes, one class "tree".

Source: the four annotated images in ``deepforest/data/`` of the PyPI wheel ``deepforest==2.1.0`` (fetched by
``pip download --no-deps`` and checked by sha256, never installed), each with a Pascal VOC xml; SOAP_061's
"Alive"/"Dead" labels both become "tree". VOC boxes (1-based, inclusive) become ``[xmin - 1, ymin - 1, xmax,
ymax]`` in pixels. The wheel holds no other annotated image (its CSV files repeat these annotations), so the
splits are by image for train and by region for val and test (``SPLIT_REGIONS``): the image
2019_YELL_2_541000_4977000 is cut at column ``TEST_CUT``, its left part joins SOAP_061 in val and its right part is
the test split; each region is tiled on its own, so no tile holds pixels of two splits.

Tiling: each image (or region) is cut into ``TILE_SIZE`` squares with stride ``TILE_SIZE``; the last tile of a row or
column is aligned to the image's edge (overlapping its neighbour), so ``ceil(W / 400) * ceil(H / 400)`` tiles
cover the image (an image smaller than a tile is one tile). A box crossing a tile border is clipped to the
tile and kept when the kept part has at least ``MIN_KEPT_FRACTION`` of the box's area and both sides
>= ``MIN_SIDE`` px; so a box may appear in two tiles (each holding half of it, or in the overlap of an edge
tile) or in none of them (a sliver in each). Tiles without boxes are kept (Detectron2 drops them in training
by ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``).

Converted on first use into ``cache_dir()/datasets/deepforest/v<VERSION>`` (PNG tiles + COCO json per split),
published atomically (``hqod.data.cache``).
"""
import xml.etree.ElementTree as ET
import zipfile

import cv2
import numpy as np

from ..utils.assets import cache_dir, fetch_wheel
from .cache import build_once
from .coco_format import register_coco_dataset, write_coco_json

WHEEL = ("deepforest", "2.1.0", "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54")
SOURCE_DIR = "deepforest/data/"
# image in the wheel's data folder (its xml has the same stem) -> number of boxes
SOURCE_IMAGES = {
    "2019_YELL_2_528000_4978000_image_crop2.png": 574,
    "OSBS_029.png": 61,
    "2019_YELL_2_541000_4977000_image_crop.png": 279,
    "SOAP_061.png": 37,
}
SPLITS = ("train", "val", "test")
TEST_CUT = 520  # column of 2019_YELL_2_541000_4977000 (1249 px wide) where test begins: >= 150 test boxes
# image -> [(split, first column, end column or None for the image's width)], each range tiled on its own
SPLIT_REGIONS = {
    "2019_YELL_2_528000_4978000_image_crop2.png": [("train", 0, None)],
    "OSBS_029.png": [("train", 0, None)],
    "2019_YELL_2_541000_4977000_image_crop.png": [("val", 0, TEST_CUT), ("test", TEST_CUT, None)],
    "SOAP_061.png": [("val", 0, None)],
}
THING_CLASSES = ("tree",)
TILE_SIZE = 400
MIN_KEPT_FRACTION = 0.5
MIN_SIDE = 2.0
VERSION = 2  # bump when the conversion changes, so old caches are not used (2: val cut into val and test)


def deepforest_root():
    """Folder of the converted set (one sub-folder of tiles and one json per split)."""
    return cache_dir() / "datasets" / "deepforest" / f"v{VERSION}"


def read_voc_boxes(xml_text):
    """Boxes of a Pascal VOC annotation as an (N, 4) float array ``[x0, y0, x1, y1]`` in pixels."""
    boxes = []
    for box in ET.fromstring(xml_text).iter("bndbox"):
        xmin, ymin, xmax, ymax = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def read_sources(wheel):
    """``{image name: (BGR image, boxes)}`` for ``SOURCE_IMAGES``, read from the wheel without extracting it."""
    sources = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in SOURCE_IMAGES:
            image = cv2.imdecode(np.frombuffer(zf.read(SOURCE_DIR + name), np.uint8), cv2.IMREAD_COLOR)
            xml_text = zf.read(SOURCE_DIR + name.rsplit(".", 1)[0] + ".xml")
            sources[name] = (image, read_voc_boxes(xml_text))
    return sources


def tile_origins(length, tile=TILE_SIZE):
    """Start of each tile along one axis: stride ``tile``, the last tile ending at ``length``."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile)) + [length - tile]


def clip_to_tile(boxes, x0, y0, width, height):
    """Boxes kept in the tile ``[x0, x0 + width) x [y0, y0 + height)`` by the rule above, in tile pixels."""
    clipped = boxes - [x0, y0, x0, y0]
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    sides = clipped[:, 2:] - clipped[:, :2]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (sides.min(1) >= MIN_SIDE) & (sides.prod(1) >= MIN_KEPT_FRACTION * area)
    return clipped[keep]


def tile_image(image, boxes):
    """Yield ``(x0, y0, tile, tile_boxes)`` for every tile of ``image``."""
    height, width = image.shape[:2]
    for y0 in tile_origins(height):
        for x0 in tile_origins(width):
            tile = image[y0:y0 + TILE_SIZE, x0:x0 + TILE_SIZE]
            yield x0, y0, tile, clip_to_tile(boxes, x0, y0, tile.shape[1], tile.shape[0])


def split_tiles(sources, split):
    """Yield ``(name, x0, y0, tile, tile_boxes)`` for every tile of ``split``; ``x0, y0``: the tile's offset in its
    source image (a region's tiles are cut from the region alone, boxes kept by the rule above)."""
    for name, (image, boxes) in sources.items():
        for region_split, start, end in SPLIT_REGIONS[name]:
            if region_split != split:
                continue
            region = image[:, start:end]
            for x0, y0, tile, tile_boxes in tile_image(region, boxes - [start, 0, start, 0]):
                yield name, start + x0, y0, tile, tile_boxes


def _build(folder):
    sources = read_sources(fetch_wheel(*WHEEL))
    for split in SPLITS:
        (folder / split).mkdir()
        records = []
        for name, x0, y0, tile, tile_boxes in split_tiles(sources, split):
            file_name = f"{name.rsplit('.', 1)[0]}_{x0}_{y0}.png"
            cv2.imwrite(str(folder / split / file_name), tile)
            records.append((file_name, tile.shape[0], tile.shape[1], tile_boxes, [0] * len(tile_boxes)))
        write_coco_json(folder / f"{split}.json", records, THING_CLASSES)


def prepare_deepforest():
    """Download (if needed) and convert the set unless a finished copy is cached; return its folder."""
    return build_once(deepforest_root(), _build)


for _split in SPLITS:
    register_coco_dataset(
        f"deepforest_{_split}", deepforest_root() / f"{_split}.json", deepforest_root() / _split,
        prepare=prepare_deepforest, thing_classes=list(THING_CLASSES),
    )
