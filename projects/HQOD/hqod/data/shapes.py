"""``hqod_shapes_train`` / ``hqod_shapes_val`` / ``hqod_shapes_test``: a built-in synthetic detection set, small
enough for a CPU quickstart; test is held out (its own seed) for reporting what was chosen on val.

Each 256x256 JPEG holds 1-5 filled shapes of four classes (``THING_CLASSES``); the class is the shape alone:
colours are random (kept far from the background under the shape), sizes 24-120 px (longer box side,
log-uniform), stretched by 0.6-1.7 before a random rotation (rectangles within 20 degrees). Shapes may overlap
(IoU <= 0.25, at most 40% of the smaller box covered). Backgrounds are blurred colour noise, linear gradients
or stripes, with fine grain over the whole image.

The set is generated on first use (in the DatasetCatalog loader, in a few seconds) into
``cache_dir()/datasets/hqod_shapes/v<VERSION>`` and published atomically (``hqod.data.cache``). It is
deterministic: image ``i`` of a split is drawn from its own ``numpy.random.RandomState`` seeded with
``(SEED, split, i)`` (the legacy generator, whose streams numpy keeps stable across versions), so the same
files come out every time and a smaller set is a prefix of the full one.
"""
import math

import cv2
import numpy as np

from ..utils.assets import cache_dir
from .cache import build_once
from .coco_format import register_coco_dataset, write_coco_json

THING_CLASSES = ("ellipse", "rectangle", "triangle", "star")
IMAGE_SIZE = 256
NUM_IMAGES = {"train": 400, "val": 100, "test": 200}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # part of each image's seed
SEED = 20240
VERSION = 2  # bump when the generator changes, so old caches are not used (2: the test split; train, val unchanged)
_SIZE_RANGE = (24.0, 120.0)
_ASPECT_RANGE = (0.6, 1.7)
_MAX_OBJECTS = 5
_MIN_COLOUR_DISTANCE = 100.0


def shapes_root():
    """Folder of the generated set (one sub-folder of images and one json per split)."""
    return cache_dir() / "datasets" / "hqod_shapes" / f"v{VERSION}"


def _unit_polygon(category_id, rng):
    """Outline of a shape centred on the origin, and the angle (radians) to rotate it by."""
    name = THING_CLASSES[category_id]
    if name == "rectangle":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), math.radians(rng.uniform(-20, 20))
    count, inner_radius = {"ellipse": (64, 1.0), "triangle": (3, 1.0), "star": (10, 0.45)}[name]
    angles = math.pi / 2 + np.arange(count) * (2.0 * math.pi / count)
    radii = np.where(np.arange(count) % 2 == 1, inner_radius, 1.0)  # a star's inner vertices are the odd ones
    return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1), rng.uniform(0.0, 2.0 * math.pi)


def _sample_polygon(category_id, rng):
    """A shape's outline in image pixels (OpenCV coordinates: pixel centres at integers) inside the image."""
    points, angle = _unit_polygon(category_id, rng)
    aspect = math.exp(rng.uniform(*np.log(_ASPECT_RANGE)))
    points = points * [math.sqrt(aspect), 1.0 / math.sqrt(aspect)]
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = points @ rotation.T
    size = math.exp(rng.uniform(*np.log(_SIZE_RANGE)))
    points = (points - points.min(0)) * (size / (points.max(0) - points.min(0)).max())
    extent = points.max(0)
    offset = rng.uniform(0.0, 1.0, 2) * (IMAGE_SIZE - 1 - extent)
    return points + offset


def _overlaps_too_much(box, boxes):
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (box, other)]
        if inter / (sum(areas) - inter) > 0.25 or inter / min(areas) > 0.4:
            return True
    return False


def _background(rng):
    """A float RGB image: blurred colour noise, a linear gradient or stripes."""
    size = IMAGE_SIZE
    kind = rng.randint(3)
    base = rng.uniform(0, 255, 3)
    if kind == 0:
        blobs = rng.normal(0.0, 1.0, (size // 16, size // 16, 3)).astype(np.float32)
        return base + 30.0 * cv2.resize(blobs, (size, size), interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    along = (xs * math.cos(angle) + ys * math.sin(angle))[..., None]
    if kind == 1:
        other = rng.uniform(0, 255, 3)
        t = (along - along.min()) / (along.max() - along.min())
        return base * (1.0 - t) + other * t
    period = rng.uniform(8.0, 32.0)
    other = base + rng.uniform(-50.0, 50.0, 3)
    return np.where(np.sin(along * (2.0 * math.pi / period)) > 0, base, other)


def generate_image(split, index):
    """Draw image ``index`` of ``split``: returns a BGR uint8 image, boxes (XYXY pixels) and category ids."""
    rng = np.random.RandomState([SEED, _SPLIT_IDS[split], index])
    image = np.clip(_background(rng), 0, 255).astype(np.uint8)
    boxes, category_ids = [], []
    for _ in range(rng.randint(1, _MAX_OBJECTS + 1)):
        category_id = rng.randint(len(THING_CLASSES))
        for _attempt in range(30):
            polygon = _sample_polygon(category_id, rng)
            # a polygon vertex at OpenCV coordinate x covers pixels up to x + 0.5 in Detectron2's coordinates
            box = [*(polygon.min(0) + 0.5), *(polygon.max(0) + 0.5)]
            if not _overlaps_too_much(box, boxes):
                break
        else:
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        under = image[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).mean(0)
        colour = rng.uniform(0, 255, 3)
        while np.linalg.norm(colour - under) < _MIN_COLOUR_DISTANCE:
            colour = rng.uniform(0, 255, 3)
        cv2.fillPoly(image, [np.round(polygon * 16).astype(np.int32)], colour.tolist(), cv2.LINE_AA, shift=4)
        boxes.append(box)
        category_ids.append(category_id)
    image = np.clip(image + rng.normal(0.0, 5.0, image.shape), 0, 255).astype(np.uint8)
    return image, boxes, category_ids


def write_split(root, split, num_images):
    """Write ``num_images`` images of ``split`` to ``root/split/`` and their annotations to ``root/split.json``."""
    (root / split).mkdir(parents=True)
    records = []
    for index in range(num_images):
        image, boxes, category_ids = generate_image(split, index)
        file_name = f"{index:06d}.jpg"
        cv2.imwrite(str(root / split / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        records.append((file_name, IMAGE_SIZE, IMAGE_SIZE, boxes, category_ids))
    write_coco_json(root / f"{split}.json", records, THING_CLASSES)


def prepare_shapes(root=None):
    """Generate the set into ``root`` (default ``shapes_root()``) unless a finished copy is there; return it."""
    def build(tmp):
        for split, num_images in NUM_IMAGES.items():
            write_split(tmp, split, num_images)

    return build_once(root or shapes_root(), build)


for _split in NUM_IMAGES:
    register_coco_dataset(
        f"hqod_shapes_{_split}", shapes_root() / f"{_split}.json", shapes_root() / _split,
        prepare=prepare_shapes, thing_classes=list(THING_CLASSES),
    )
