"""HarmonyEvaluator: matching rules, correlations and the hexbin PNG on hand-made detections."""

import json

import hqod  # noqa: F401
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from hqod.errors import HQODInputError
from hqod.evaluation import HarmonyEvaluator, ground_truth_by_image, harmony_statistics
from hqod.evaluation.harmony import _ranks

GT = [  # one image, two classes
    {"bbox": [0, 0, 100, 100], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
    {"bbox": [200, 200, 300, 300], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
]


@pytest.fixture(scope="module")
def dataset_name():
    name = "test_harmony_tiny"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [{"image_id": 7, "height": 400, "width": 400, "annotations": GT}])
    return name


def _outputs(boxes, scores, classes):
    inst = Instances((400, 400))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(classes)
    return [{"instances": inst}]


def test_counts_and_correlation(dataset_name, tmp_path):
    boxes = [
        [0, 0, 100, 100],      # TP, IoU 1.0
        [0, 0, 100, 80],       # TP, IoU 0.8
        [0, 0, 100, 60],       # TP, IoU 0.6
        [0, 0, 100, 30],       # mislocalised, IoU 0.3
        [200, 200, 300, 300],  # class 0 on the class-1 box: misclassified
        [350, 350, 390, 390],  # background
        [0, 0, 100, 100],      # below the 0.05 score threshold: ignored
    ]
    scores = [0.9, 0.7, 0.5, 0.8, 0.6, 0.3, 0.01]
    evaluator = HarmonyEvaluator(dataset_name, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    evaluator.process([{"image_id": 7}], _outputs(boxes, scores, [0, 0, 0, 0, 0, 0, 0]))
    stats = evaluator.evaluate()["harmony"]
    assert stats["num_tp"] == 3
    assert stats["num_mislocalized"] == 1
    assert stats["num_misclassified"] == 1
    assert stats["num_detections"] == 6
    # TP scores rise with IoU: perfect rank agreement, Pearson of (0.9,0.7,0.5) vs (1,0.8,0.6) is 1.
    assert stats["pearson"] == pytest.approx(1.0)
    assert stats["spearman"] == pytest.approx(1.0)
    png = tmp_path / "harmony_hexbin.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inharmonious_detections_give_negative_correlation():
    stats = harmony_statistics([0.9, 0.6, 0.3], [0.55, 0.75, 0.95])
    assert stats["pearson"] == pytest.approx(-1.0)
    assert stats["spearman"] == pytest.approx(-1.0)


def test_spearman_ranks_average_ties():
    assert _ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_fewer_than_two_true_positives_gives_nan_not_error():
    stats = harmony_statistics([0.9], [0.8])
    assert np.isnan(stats["pearson"]) and stats["num_tp"] == 1


def test_ground_truth_of_a_registered_set_or_a_coco_json(dataset_name, tmp_path):
    boxes, classes = ground_truth_by_image(dataset_name)[7]
    assert boxes.tensor.tolist() == [[0, 0, 100, 100], [200, 200, 300, 300]] and classes.tolist() == [0, 1]
    coco = {"images": [{"id": 4, "file_name": "a.png", "height": 400, "width": 400}],
            "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 4, "category_id": 9, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                            {"id": 2, "image_id": 4, "category_id": 5, "bbox": [0, 0, 400, 400], "iscrowd": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    boxes, classes = ground_truth_by_image(str(tmp_path / "gt.json"))[4]
    assert boxes.tensor.tolist() == [[10, 20, 40, 60]] and classes.tolist() == [9]  # crowd left out, ids kept
    with pytest.raises(HQODInputError, match="neither a registered data set nor a COCO json file"):
        ground_truth_by_image("no_such_set")
