"""Deployment end to end: FP -> QAT W4A4 + HQOD through train_net.py, export_onnx.py, evaluate_onnx.py; onnxruntime
gives the detections and the AP of train_net.py's fake-quantized evaluation."""
import json
import re

import pytest

pytestmark = pytest.mark.slow

SMALL = [  # short runs at 128 px, 8 evaluation images, every candidate kept
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "20", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "50",
    "SEED", "1",  # the same models on every run: the comparison below is not left to a random draw
]


def check_ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def ap_line(stdout):
    """The AP of the ``tiny_shapes_val: AP ...`` summary line."""
    found = re.search(r"tiny_shapes_val: AP ([\d.]+)", stdout)
    assert found, stdout[-2000:]
    return float(found.group(1))


def matching(expected, found):
    """How many of ``expected`` have their own detection in ``found`` with the same class, a score within 1e-3 and
    box corners within 0.5 px (each found one used once): near-equal scores may come out in either order."""
    unused = list(found)
    count = 0
    for a in expected:
        for b in unused:
            if (a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-3
                    and max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) < 0.5):
                unused.remove(b)
                count += 1
                break
    return count


def detections(folder):
    """COCOEvaluator's detections of an evaluation folder, by image, highest score first."""
    by_image = {}
    for d in json.loads((folder / "inference" / "tiny_shapes_val" / "coco_instances_results.json").read_text()):
        by_image.setdefault(d["image_id"], []).append(d)
    return {k: sorted(v, key=lambda d: -d["score"]) for k, v in by_image.items()}


def test_qat_model_in_onnxruntime_has_the_pytorch_detections_and_ap(root, run_train_net, run_python,
                                                                    tiny_shapes_val, tmp_path):
    data = ["DATASETS.COCO_FORMAT", f"('{tiny_shapes_val}',)", "DATASETS.TEST", "('tiny_shapes_val',)"]
    fp, qat, onnx_dir = tmp_path / "fp", tmp_path / "qat", tmp_path / "onnx"
    check_ok(run_train_net("--config-file", "configs/quickstart_retinanet_mnv2_shapes.yaml", *SMALL, *data,
                           "SOLVER.MAX_ITER", "300", "SOLVER.BASE_LR", "0.01", "SOLVER.STEPS", "(1000,)",
                           "OUTPUT_DIR", str(fp)))
    config = "configs/shapes/retinanet_MNV2_lsq_hqod_w4a4.yaml"
    trained = check_ok(run_train_net("--config-file", config, *SMALL, *data, "SOLVER.MAX_ITER", "20",
                                     "MODEL.QUANT.CALIB_IMAGES", "4", "MODEL.WEIGHTS", str(fp / "model_final.pth"),
                                     "OUTPUT_DIR", str(qat)))
    exported = check_ok(run_python(root / "tools" / "deploy" / "export_onnx.py", "--config-file", config,
                                   "--output", str(onnx_dir), "--opts", *SMALL, *data,
                                   "MODEL.WEIGHTS", str(qat / "model_final.pth")))
    assert "input images: batch x 3 x 128 x 128" in exported.stdout and "onnxruntime vs PyTorch" in exported.stdout
    evaluated = check_ok(run_python(root / "tools" / "deploy" / "evaluate_onnx.py", "--config-file", config,
                                    "--model", str(onnx_dir), "--opts", *SMALL, *data))
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in evaluated.stdout + evaluated.stderr
    assert abs(ap_line(evaluated.stdout) - ap_line(trained.stdout)) <= 0.2
    expected, found = detections(qat), detections(onnx_dir)
    assert expected.keys() == found.keys()
    # Per image: where a value sits on a 4-bit rounding boundary, float (PyTorch) and integer (onnxruntime)
    # accumulation can round it to neighbouring steps, which reshuffles that image's weak detections (seen on 2 of 8
    # images for SEED 1); a wrong scale, zero point or layout would change every image.
    agreeing = [image for image in expected
                if matching(expected[image], found[image]) >= 0.95 * len(expected[image])]
    assert sum(map(len, expected.values())) > 100 and len(agreeing) >= 0.75 * len(expected), agreeing
