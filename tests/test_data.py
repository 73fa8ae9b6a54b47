"""Tests of hqod.data: the built-in data sets, their atomic cache, COCO_FORMAT registration and bad-input errors."""
import json
import math
import os
import subprocess
import sys

import hqod  # noqa: F401  (compat measures and data set registration, before any detectron2 import)
import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.structures import BoxMode

from hqod.config import add_hqod_config
from hqod.data import (
    check_datasets_exist, deepforest, register_coco_format_datasets, shapes, validate_coco_json, validate_dataset,
)
from hqod.data.cache import COMPLETE_MARKER, build_once
from hqod.data.coco_format import registered_here
from hqod.errors import HQODInputError
from hqod.utils.assets import fetch_wheel

# Measured once and fixed: the generator and the tiling are deterministic, so a change here is a change of the
# data (bump the module's VERSION so that old caches are not used).
SHAPES_COUNTS = {"hqod_shapes_train": (400, 1177), "hqod_shapes_val": (100, 299),  # images, boxes
                 "hqod_shapes_test": (200, 616)}
DEEPFOREST_COUNTS = {"deepforest_train": (43, 742), "deepforest_val": (7, 237), "deepforest_test": (6, 216)}


def _check_dicts(dicts, num_classes):
    """Detectron2's dataset-dict fields are there and every box lies inside its image with positive area."""
    assert len({d["image_id"] for d in dicts}) == len(dicts)
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        assert d["height"] > 0 and d["width"] > 0
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < num_classes
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= d["width"] and y + h <= d["height"]


@pytest.mark.parametrize("name", sorted(SHAPES_COUNTS))
def test_shapes_registered_with_counts(name):
    dicts = DatasetCatalog.get(name)
    num_images, num_boxes = SHAPES_COUNTS[name]
    assert len(dicts) == num_images
    assert sum(len(d["annotations"]) for d in dicts) == num_boxes
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(shapes.THING_CLASSES) and meta.evaluator_type == "coco"
    assert os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)
    _check_dicts(dicts, len(shapes.THING_CLASSES))
    assert all((d["height"], d["width"]) == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) for d in dicts)
    validate_dataset(name)


def test_shapes_content_is_varied():
    dicts = DatasetCatalog.get("hqod_shapes_train")
    anns = [a for d in dicts for a in d["annotations"]]
    counts = np.bincount([a["category_id"] for a in anns], minlength=len(shapes.THING_CLASSES))
    assert counts.min() > 0.15 * len(anns)  # every class is common
    longer_sides = [max(a["bbox"][2:]) for a in anns]
    assert 23 <= min(longer_sides) and max(longer_sides) <= 121 and np.std(longer_sides) > 15
    aspects = [a["bbox"][2] / a["bbox"][3] for a in anns]
    assert min(aspects) < 0.7 and max(aspects) > 1.4

    def overlapping(boxes):
        return any(min(p[0] + p[2], q[0] + q[2]) > max(p[0], q[0]) and min(p[1] + p[3], q[1] + q[3]) > max(p[1], q[1])
                   for i, p in enumerate(boxes) for q in boxes[i + 1:])
    assert sum(overlapping([a["bbox"] for a in d["annotations"]]) for d in dicts) >= 10


def test_shapes_are_deterministic(tmp_path):
    for run in ("a", "b"):
        shapes.write_split(tmp_path / run, "val", 12)
    assert (tmp_path / "a" / "val.json").read_bytes() == (tmp_path / "b" / "val.json").read_bytes()
    for i in range(12):
        name = f"{i:06d}.jpg"
        assert (tmp_path / "a" / "val" / name).read_bytes() == (tmp_path / "b" / "val" / name).read_bytes()
    # a smaller set is a prefix of the registered one
    small = json.loads((tmp_path / "a" / "val.json").read_text())["annotations"]
    full = json.loads(open(MetadataCatalog.get("hqod_shapes_val").json_file).read())["annotations"]
    assert small == full[:len(small)] and len(small) > 12
    # and different images differ
    assert (tmp_path / "a" / "val" / "000000.jpg").read_bytes() != (tmp_path / "a" / "val" / "000001.jpg").read_bytes()


def test_import_does_not_generate_and_cache_follows_hqod_cache(tmp_path):
    code = ("import hqod; from detectron2.data import MetadataCatalog; "
            "print(MetadataCatalog.get('hqod_shapes_train').json_file)")
    env = dict(os.environ, HQOD_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path / "datasets" / "hqod_shapes" / f"v{shapes.VERSION}" / "train.json")
    assert list(tmp_path.iterdir()) == []


def test_shapes_cache_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("HQOD_CACHE", str(tmp_path))
    monkeypatch.setattr(shapes, "NUM_IMAGES", {"train": 6, "val": 3})
    root = shapes.shapes_root()
    assert str(root).startswith(str(tmp_path))

    original = shapes.generate_image

    def interrupted(split, index):
        if split == "val":
            raise KeyboardInterrupt
        return original(split, index)

    monkeypatch.setattr(shapes, "generate_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shapes.prepare_shapes()
    assert not root.exists() and list(root.parent.iterdir()) == []  # nothing half-written is left
    monkeypatch.setattr(shapes, "generate_image", original)

    # a temporary folder left by a killed run and a folder without the marker are never trusted
    leftover = root.parent / f".{root.name}.tmp-killed"
    leftover.mkdir()
    (leftover / "train.json").write_text("{")
    root.mkdir()
    (root / "train.json").write_text("{")
    assert shapes.prepare_shapes() == root
    assert (root / COMPLETE_MARKER).is_file()
    assert len(json.loads((root / "train.json").read_text())["images"]) == 6
    assert len(list((root / "val").glob("*.jpg"))) == 3

    # a finished build is reused, not rebuilt
    monkeypatch.setattr(shapes, "generate_image", interrupted)
    assert shapes.prepare_shapes() == root


def test_build_once_survives_a_concurrent_winner(tmp_path):
    target = tmp_path / "set"

    def build_after_another_process(tmp):
        (tmp / "mine").write_text("late")
        build_once(target, lambda other: (other / "theirs").write_text("first"))

    assert build_once(target, build_after_another_process) == target
    assert (target / "theirs").is_file() and not (target / "mine").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


@pytest.fixture(scope="module")
def deepforest_sources():
    return deepforest.read_sources(fetch_wheel(*deepforest.WHEEL))


def test_deepforest_sources_have_951_boxes(deepforest_sources):
    counts = {name: len(boxes) for name, (_, boxes) in deepforest_sources.items()}
    assert counts == deepforest.SOURCE_IMAGES
    assert sum(counts.values()) == 951
    for image, boxes in deepforest_sources.values():
        height, width = image.shape[:2]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


@pytest.mark.parametrize("name", sorted(DEEPFOREST_COUNTS))
def test_deepforest_registered_tiles(name, deepforest_sources):
    split = name.split("_")[1]
    dicts = DatasetCatalog.get(name)
    expected_tiles = sum(math.ceil(((end or image.shape[1]) - start) / 400) * math.ceil(image.shape[0] / 400)
                         for src, (image, _) in deepforest_sources.items()
                         for region, start, end in deepforest.SPLIT_REGIONS[src] if region == split)
    assert len(dicts) == expected_tiles == DEEPFOREST_COUNTS[name][0]
    assert sum(len(d["annotations"]) for d in dicts) == DEEPFOREST_COUNTS[name][1]
    assert MetadataCatalog.get(name).thing_classes == ["tree"]
    _check_dicts(dicts, 1)
    for d in dicts:
        assert d["height"] <= deepforest.TILE_SIZE and d["width"] <= deepforest.TILE_SIZE
        assert all(min(a["bbox"][2:]) >= deepforest.MIN_SIDE for a in d["annotations"])
    # the cached tiles are the source pixels at the offsets in their names
    d = max(dicts, key=lambda d: len(d["annotations"]))
    src, x0, y0 = os.path.basename(d["file_name"])[:-4].rsplit("_", 2)
    image, boxes = deepforest_sources[src + ".png"]
    tile = cv2.imread(d["file_name"])
    assert np.array_equal(tile, image[int(y0):int(y0) + 400, int(x0):int(x0) + 400])
    kept = deepforest.clip_to_tile(boxes, int(x0), int(y0), 400, 400)
    assert np.allclose(sorted(map(list, kept)),
                       sorted([x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in d["annotations"])))
    validate_dataset(name)


def test_deepforest_test_split_is_held_out(deepforest_sources):
    """No test tile shares a pixel with a val tile, and at least 150 distinct trees are mostly (>= half) in test."""
    def rectangles(split):
        return [(name, x0, y0, x0 + tile.shape[1], y0 + tile.shape[0])
                for name, x0, y0, tile, _ in deepforest.split_tiles(deepforest_sources, split)]

    for name, *test in rectangles("test"):
        for other, *val in rectangles("val"):
            overlap = name == other and test[0] < val[2] and val[0] < test[2] and test[1] < val[3] and val[1] < test[3]
            assert not overlap, (name, test, val)
    image, boxes = deepforest_sources["2019_YELL_2_541000_4977000_image_crop.png"]
    in_test = np.clip(boxes[:, 2], deepforest.TEST_CUT, None) - np.clip(boxes[:, 0], deepforest.TEST_CUT, None)
    assert (in_test >= 0.5 * (boxes[:, 2] - boxes[:, 0])).sum() >= 150


def test_deepforest_without_the_wheel_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HQOD_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip download fails at once, as it does offline
    with pytest.raises(HQODInputError, match=r"pip download --no-deps deepforest==2.1.0 -d .*wheels"):
        deepforest.prepare_deepforest()
    assert not deepforest.deepforest_root().exists()


def test_tiling_rule():
    assert deepforest.tile_origins(2299) == [0, 400, 800, 1200, 1600, 1899]
    assert deepforest.tile_origins(400) == [0] and deepforest.tile_origins(250) == [0]
    for length in (401, 799, 800, 1035, 2472):
        origins = deepforest.tile_origins(length)
        assert len(origins) == math.ceil(length / 400) and origins[-1] + 400 == length
        assert all(b - a <= 400 for a, b in zip(origins, origins[1:]))  # no gap between tiles
    boxes = np.array([
        [380.0, 10, 420, 50],  # half inside tile 0 (and half inside tile 1): kept in both, clipped
        [384.0, 60, 424, 100],  # 40% inside tile 0: dropped there, kept in tile 1
        [100.0, 398, 140, 440],  # 2 px sliver in tile 0 (5%): dropped
        [10.0, 10, 30, 30],  # fully inside: unchanged
    ])
    assert deepforest.clip_to_tile(boxes, 0, 0, 400, 400).tolist() == [[380, 10, 400, 50], [10, 10, 30, 30]]
    assert deepforest.clip_to_tile(boxes, 400, 0, 400, 400).tolist() == [[0, 10, 20, 50], [0, 60, 24, 100]]
    thin = np.array([[0.0, 0, 1.5, 30], [0.0, 40, 2, 70]])  # whole boxes, but under / at MIN_SIDE wide
    assert deepforest.clip_to_tile(thin, 0, 0, 400, 400).tolist() == [[0, 40, 2, 70]]


def _write_coco(folder, boxes=((4, 6, 20, 10),), sizes=((64, 48),)):
    """A tiny COCO set in ``folder``: one PNG per entry of ``sizes`` (width, height), ``boxes`` on image 1."""
    (folder / "images").mkdir(parents=True)
    images = []
    for i, (width, height) in enumerate(sizes, start=1):
        cv2.imwrite(str(folder / "images" / f"{i}.png"), np.full((height, width, 3), 90, np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "width": width, "height": height})
    anns = [{"id": 7 + i, "image_id": 1, "category_id": 3, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)]
    coco = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "widget"}]}
    (folder / "train.json").write_text(json.dumps(coco))
    return folder / "train.json", folder / "images"


def _cfg(*entries):
    cfg = get_cfg()
    add_hqod_config(cfg)
    cfg.merge_from_list(["DATASETS.COCO_FORMAT", str(list(entries))])
    return cfg


def test_coco_format_registration(tmp_path):
    json_file, image_root = _write_coco(tmp_path, sizes=((64, 48), (32, 32)))
    cfg = _cfg(f"widgets_train:{json_file}:{image_root}")
    register_coco_format_datasets(cfg)
    register_coco_format_datasets(cfg)  # again: a no-op
    check_datasets_exist(["widgets_train"])
    validate_dataset("widgets_train")
    dicts = DatasetCatalog.get("widgets_train")
    assert len(dicts) == 2 and dicts[0]["annotations"][0]["bbox"] == [4, 6, 20, 10]
    _check_dicts(dicts, 1)
    meta = MetadataCatalog.get("widgets_train")
    assert meta.thing_classes == ["widget"] and meta.evaluator_type == "coco" and meta.json_file == str(json_file)


@pytest.mark.parametrize("entry, message", [
    ("only:two", "is not of the form"),
    ("coco_2017_val:{json}:{root}", "already taken"),
    ("w_missing_json:{root}/nope.json:{root}", "nope.json does not exist"),
    ("w_missing_root:{json}:{root}/nope", "nope does not exist"),
])
def test_coco_format_entry_errors(tmp_path, entry, message):
    json_file, image_root = _write_coco(tmp_path)
    with pytest.raises(HQODInputError, match=message) as e:
        register_coco_format_datasets(_cfg(entry.format(json=json_file, root=image_root)))
    assert "\n" not in str(e.value)


def test_unknown_dataset():
    with pytest.raises(HQODInputError, match="unknown data set 'no_such_set'.*hqod_shapes_train.*DATASETS.COCO_FORMAT"):
        check_datasets_exist(["hqod_shapes_val", "no_such_set"])
    with pytest.raises(HQODInputError, match="unknown data set"):
        validate_dataset("no_such_set")


def _edit_json(json_file, edit):
    coco = json.loads(json_file.read_text())
    edit(coco)
    json_file.write_text(json.dumps(coco))


_BREAKAGES = {  # case -> (how to break the tiny set of _write_coco, the error it must give)
    "outside": (lambda j, r: _edit_json(j, lambda c: c["annotations"][0].update(bbox=[50, 6, 20, 10])),
                r"annotation id 7 has box \[50, 6, 20, 10\].*outside its 64x48 image '1.png'; clip"),
    "zero_area": (lambda j, r: _edit_json(j, lambda c: c["annotations"][0].update(bbox=[4, 6, 0, 10])),
                  r"annotation id 7 has a zero-area box .*positive width and height"),
    "unknown_image": (lambda j, r: _edit_json(j, lambda c: c["annotations"][0].update(image_id=9)),
                      r"annotation id 7 refers to image id 9"),
    "unknown_category": (lambda j, r: _edit_json(j, lambda c: c["annotations"][0].update(category_id=5)),
                         r"annotation id 7 has category_id 5"),
    "wrong_size": (lambda j, r: _edit_json(j, lambda c: c["images"][1].update(width=40)),
                   r"2.png is 32x32 but the json says 40x32"),
    "missing_image": (lambda j, r: (r / "2.png").unlink(), r"image .*2.png does not exist"),
    "corrupt_image": (lambda j, r: (r / "2.png").write_bytes(b"\x89PNG not really"), r"image .*2.png cannot be read"),
    "not_json": (lambda j, r: j.write_text('{"images": ['), r"is not valid JSON"),
    "not_coco": (lambda j, r: j.write_text('{"images": []}'), r"has no 'images' and 'annotations' lists"),
    "no_json": (lambda j, r: j.unlink(), r"train.json does not exist"),
}


@pytest.mark.parametrize("case", sorted(_BREAKAGES))
def test_coco_json_errors(tmp_path, case):
    json_file, image_root = _write_coco(tmp_path, sizes=((64, 48), (32, 32)))
    validate_coco_json(json_file, image_root)  # valid before it is broken
    breakage, message = _BREAKAGES[case]
    breakage(json_file, image_root)
    with pytest.raises(HQODInputError, match=message) as e:
        validate_coco_json(json_file, image_root)
    assert "\n" not in str(e.value) and str(json_file) in str(e.value)


def test_coco_format_set_is_validated_before_training(tmp_path):
    json_file, image_root = _write_coco(tmp_path, boxes=((4, 6, 20, 10), (60, 6, 20, 10)))
    register_coco_format_datasets(_cfg(f"widgets_bad:{json_file}:{image_root}"))
    with pytest.raises(HQODInputError, match=r"train.json: annotation id 8 .* outside"):
        validate_dataset("widgets_bad")


def test_detectron2_builtin_sets_still_work(tmp_path, monkeypatch):
    """COCO 2017 keeps Detectron2's own registration: its loader reads $DETECTRON2_DATASETS (here the default
    relative ``datasets/``), and validation only asks for its files."""
    assert not registered_here("coco_2017_val_100") and not registered_here("voc_2007_test")
    assert MetadataCatalog.get("voc_2007_test").evaluator_type == "pascal_voc"
    meta = MetadataCatalog.get("coco_2017_val_100")
    if os.path.isabs(meta.json_file):
        pytest.skip("DETECTRON2_DATASETS is set to an absolute folder")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HQODInputError, match="DETECTRON2_DATASETS"):
        validate_dataset("coco_2017_val_100")
    (tmp_path / meta.json_file).parent.mkdir(parents=True)
    (tmp_path / meta.image_root).mkdir(parents=True)
    coco = {"images": [{"id": 5, "file_name": "5.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 18, "bbox": [1, 2, 30, 20], "area": 600,
                             "iscrowd": 0}],
            "categories": [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]}
    (tmp_path / meta.json_file).write_text(json.dumps(coco))
    validate_dataset("coco_2017_val_100")
    dicts = DatasetCatalog.get("coco_2017_val_100")
    assert dicts[0]["annotations"][0]["category_id"] == meta.thing_classes.index("dog")  # COCO id 18
