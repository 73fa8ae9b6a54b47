"""demo.py and hqod.demo: drawings of FP and QAT checkpoints, side by side, inharmony marks, and bad input."""
import io
import os
import subprocess
import sys

import hqod  # noqa: F401
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from hqod.data import validate_dataset
from hqod.demo import HarmonyThresholds, Predictor, assess, draw_detections, read_rgb, run_demo, write_image
from hqod.engine import HQODTrainer, setup_cfg
from hqod.engine.checkpoint import HQODCheckpointer
from hqod.modeling.detectors import DENSE_DETECTORS
from hqod.quantization import calibrate, is_calibrated

QUICKSTART = "configs/quickstart_retinanet_mnv2_shapes.yaml"
SMALL = ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "128", "TEST.DETECTIONS_PER_IMAGE", "3"]
QAT_YAML = """_BASE_: "{base}"
MODEL:
  WEIGHTS: ""
  QUANT:
    ENABLED: True
  RETINANET:
    SCORE_THRESH_TEST: 0.0
TEST:
  DETECTIONS_PER_IMAGE: 3
"""
CLASSES = ["ellipse", "rectangle", "triangle", "star"]


@pytest.fixture(scope="module")
def image_path():
    validate_dataset("hqod_shapes_val")
    return DatasetCatalog.get("hqod_shapes_val")[5]["file_name"]


@pytest.fixture(scope="module")
def checkpoints(root, tmp_path_factory, image_path):
    """A fresh FP checkpoint, a calibrated QAT one (256 px input: not resized) with its config, and its detections."""
    folder = tmp_path_factory.mktemp("demo_ckpt")
    torch.manual_seed(0)
    fp_cfg = setup_cfg(QUICKSTART, SMALL, validate_data=False)
    HQODCheckpointer(vary_scores(HQODTrainer.build_model(fp_cfg)), str(folder), cfg=fp_cfg).save("fp")
    qat_yaml = folder / "qat.yaml"
    qat_yaml.write_text(QAT_YAML.format(base=root / QUICKSTART))
    qat_cfg = setup_cfg(str(qat_yaml), validate_data=False)
    model = vary_scores(HQODTrainer.build_model(qat_cfg))
    image = torch.as_tensor(read_rgb(image_path).astype("float32").transpose(2, 0, 1))
    calibrate(model, [[{"image": image, "height": 256, "width": 256}]], 1)
    HQODCheckpointer(model, str(folder), cfg=qat_cfg).save("qat")
    with torch.no_grad():
        qat_detections = model.eval()([{"image": image, "height": 256, "width": 256}])[0]["instances"]
    return {"fp": str(folder / "fp.pth"), "qat": str(folder / "qat.pth"), "qat_yaml": str(qat_yaml),
            "qat_detections": qat_detections}


def vary_scores(model):
    """Spread the class logits of a fresh model (all scores are 0.01 at initialisation) so its top-k is unique."""
    torch.nn.init.normal_(model.head.cls_score.weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def run_demo_cli(root):
    """``run_demo_cli(*args)``: ``demo.py *args`` in a subprocess from the repository root."""

    def run(*args):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, str(root / "demo.py"), *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)

    return run


def ring(shape, boxes, width=2):
    """Mask of the pixels within ``width`` of the edges of ``boxes``, inside the image."""
    mask = np.zeros(shape[:2], dtype=bool)
    for x0, y0, x1, y1 in np.round(boxes).astype(int).tolist():
        outer = np.zeros_like(mask)
        outer[max(y0 - width, 0):y1 + width + 1, max(x0 - width, 0):x1 + width + 1] = True
        outer[y0 + width + 1:max(y1 - width, 0), x0 + width + 1:max(x1 - width, 0)] = False
        mask |= outer
    return mask


def changed(a, b):
    return np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 30


def instances(boxes, scores, classes, size=(256, 256)):
    result = Instances(size)
    result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    result.scores = torch.tensor(scores, dtype=torch.float32)
    result.pred_classes = torch.tensor(classes)
    return result


def test_draws_the_model_boxes_at_input_size(run_demo_cli, checkpoints, image_path, tmp_path):
    out = tmp_path / "out.png"
    result = run_demo_cli("--config-file", QUICKSTART, "--input", image_path, "--output", str(out),
                          "--confidence-threshold", "0", "--opts", *SMALL[2:], "MODEL.WEIGHTS", checkpoints["fp"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RetinaNet FP32: 3 detections" in result.stdout
    drawn, source = read_rgb(str(out)), read_rgb(image_path)
    assert drawn.shape == source.shape
    cfg = setup_cfg(QUICKSTART, [*SMALL[2:], "MODEL.WEIGHTS", checkpoints["fp"]], validate_data=False)
    boxes = Predictor(cfg, 0.0)(source).pred_boxes.tensor.numpy()
    diff, edges = changed(drawn, source), ring(source.shape, boxes)
    assert diff[edges].mean() > 0.5  # the box outlines are drawn where the model put its boxes
    assert diff[~ring(source.shape, boxes, width=30)].mean() < 0.05  # and little elsewhere


@pytest.mark.parametrize("name", DENSE_DETECTORS)
def test_the_confidence_threshold_reaches_every_dense_detector(get_config, name):
    cfg = get_config(f"quickstart_{name}_mnv2_shapes.yaml", "MODEL.WEIGHTS", "")
    assert Predictor(cfg, 0.01).model.test_score_thresh == 0.01
    assert Predictor(cfg, 0.9).model.test_score_thresh == cfg.MODEL[DENSE_DETECTORS[name].config_node].SCORE_THRESH_TEST


def test_draw_detections_outlines_the_boxes():
    gray = np.full((256, 256, 3), 128, dtype=np.uint8)
    boxes = [[150, 150, 230, 230]]
    drawn = draw_detections(gray, instances(boxes, [0.9], [1]), CLASSES)
    assert drawn.shape == gray.shape
    assert changed(drawn, gray)[ring(gray.shape, np.array(boxes), width=1)].mean() > 0.8
    assert not changed(drawn, gray)[:100, :100].any()


def test_qat_checkpoint_loads_without_calibration(checkpoints, image_path):
    cfg = setup_cfg(checkpoints["qat_yaml"], ["MODEL.WEIGHTS", checkpoints["qat"]], validate_data=False)
    predictor = Predictor(cfg, 0.0)
    assert is_calibrated(predictor.model) and predictor.label == "RetinaNet LSQ W4A4"
    detections, expected = predictor(read_rgb(image_path)), checkpoints["qat_detections"]
    assert len(detections) == len(expected) > 0
    assert torch.allclose(detections.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(detections.scores, expected.scores, atol=1e-5)


def test_compare_fp_and_qat_side_by_side(run_demo_cli, checkpoints, image_path, tmp_path):
    out = tmp_path / "compare.png"
    result = run_demo_cli("--config-file", QUICKSTART, "--input", image_path, "--output", str(out),
                          "--compare", checkpoints["qat_yaml"], checkpoints["qat"], "--confidence-threshold", "0",
                          "--opts", *SMALL[2:], "MODEL.WEIGHTS", checkpoints["fp"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RetinaNet FP32: 3 detections" in result.stdout and "RetinaNet LSQ W4A4: 3 detections" in result.stdout
    drawn, source = read_rgb(str(out)), read_rgb(image_path)
    assert drawn.shape == (256, 512, 3)
    for panel in (drawn[:, :256], drawn[:, 256:]):
        assert changed(panel, source)[:12, :60].mean() > 0.2  # the panel's title at its top left


def test_run_demo_lists_the_marked_detections(tmp_path):
    class Fixed:
        label = "Stub W4A4"

        def __call__(self, image):
            return instances([[20, 20, 100, 100], [150, 20, 230, 100], [20, 150, 100, 230], [150, 150, 230, 230]],
                             [0.9, 0.9, 0.1, 0.2], [0, 0, 1, 3])

    gray_path = str(tmp_path / "gray.png")
    gray = np.full((256, 256, 3), 128, dtype=np.uint8)
    write_image(gray_path, gray)
    gt = (Boxes(torch.tensor([[20.0, 20, 100, 100], [20, 150, 100, 230]])), torch.tensor([0, 1]))
    stream, out = io.StringIO(), str(tmp_path / "out" / "gray.png")
    cases = run_demo([Fixed()], [gray_path], [out], CLASSES, 0.5, {gray_path: gt}, HarmonyThresholds(), stream)
    # Harmonious (0.9, IoU 1); score>IoU (0.9, no box there); IoU>score (0.1, IoU 1); 0.2 without a box: not drawn.
    assert [(c[2], c[5]) for c in cases] == [("ellipse", "score>IoU"), ("rectangle", "IoU>score")]
    rows = stream.getvalue().splitlines()[-3:]
    assert rows[0].split() == ["image", "model", "class", "score", "IoU", "kind"]
    assert rows[1].split() == ["gray.png", "Stub", "W4A4", "ellipse", "0.90", "0.00", "score>IoU"]
    assert rows[2].split() == ["gray.png", "Stub", "W4A4", "rectangle", "0.10", "1.00", "IoU>score"]
    drawn = read_rgb(out)
    red, green = drawn[:, :, 0].astype(int) - drawn[:, :, 1], drawn[:, :, 1].astype(int) - drawn[:, :, 0]
    assert (red[60:90, 226:234] > 40).any() and (green[60:90, 96:104] > 40).any()  # colour by IoU: red 0, green 1
    assert not changed(drawn, gray)[170:, 140:].any()  # the 0.2 detection without ground truth is left out
    assert (changed(drawn, gray)[ring(gray.shape, np.array([[150, 20, 230, 100]]), width=5)]).mean() > \
        (changed(drawn, gray)[ring(gray.shape, np.array([[20, 20, 100, 100]]), width=5)]).mean()  # thicker mark


def test_assess_keeps_confident_and_inharmonious():
    dets = instances([[0, 0, 50, 50], [0, 0, 50, 20], [0, 0, 50, 50], [0, 0, 50, 50]], [0.8, 0.7, 0.1, 0.4],
                     [0, 0, 0, 1])
    gt = (Boxes(torch.tensor([[0.0, 0, 50, 50]])), torch.tensor([0]))
    kept, ious, kinds = assess(dets, *gt, HarmonyThresholds(), confidence=0.5)
    assert kept.scores.tolist() == pytest.approx([0.8, 0.7, 0.1])  # 0.4 is below 0.5 and in harmony (other class)
    assert ious.tolist() == pytest.approx([1.0, 0.4, 1.0])
    assert kinds == ["", "score>IoU", "IoU>score"]


def test_dataset_run_prints_one_row_per_marked_detection(run_demo_cli, checkpoints, tmp_path):
    result = run_demo_cli("--config-file", QUICKSTART, "--dataset", "hqod_shapes_val", "--max-images", "2",
                          "--output", str(tmp_path), "--confidence-threshold", "0", "--high-score", "0",
                          "--low-score", "0", "--low-iou", "1", "--high-iou", "1",
                          "--opts", *SMALL[2:], "MODEL.WEIGHTS", checkpoints["fp"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["000000.jpg", "000001.jpg"]
    lines = result.stdout.splitlines()
    assert lines[2].startswith("6 inharmonious detections")  # every detection has IoU < 1: all 2 x 3 are marked
    rows = [line.split() for line in lines[4:]]
    assert [row[0] for row in rows] == ["000000.jpg"] * 3 + ["000001.jpg"] * 3
    assert all(row[-1] == "score>IoU" and row[1:3] == ["RetinaNet", "FP32"] for row in rows)


@pytest.mark.parametrize("case", ["no_match", "unreadable", "qat_under_fp", "fp_under_qat"])
def test_bad_input_gives_one_line_error(run_demo_cli, case, checkpoints, image_path, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    config, weights, inputs, expected = {
        "no_match": (QUICKSTART, "", str(tmp_path / "nothing" / "*.jpg"), "matches no image file"),
        "unreadable": (QUICKSTART, "", str(bad), "cannot read image"),
        "qat_under_fp": (QUICKSTART, checkpoints["qat"], image_path, "is a QAT (quantized) checkpoint"),
        "fp_under_qat": (checkpoints["qat_yaml"], checkpoints["fp"], image_path, "is not a QAT checkpoint"),
    }[case]
    result = run_demo_cli("--config-file", config, "--input", inputs, "--output", str(tmp_path / "out.png"),
                          "--opts", "MODEL.WEIGHTS", weights)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines[-1].startswith("error: ") and expected in lines[-1], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.png").exists()
