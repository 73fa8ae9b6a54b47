"""Deployment end to end: FP -> QAT W4A4 + HQOD through train_net.py, export_onnx.py, evaluate_onnx.py; the AP in
onnxruntime equals train_net.py's fake-quantized AP."""
import re

import pytest

pytestmark = pytest.mark.slow

SMALL = [  # a few cheap iterations at 128 px, 8 evaluation images, every candidate kept
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "50",
]


def check_ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def ap_line(stdout):
    """(AP, harmony pearson) of the ``tiny_shapes_val: AP ...`` summary line."""
    found = re.search(r"tiny_shapes_val: AP ([\d.]+).*harmony pearson (-?[\d.]+|nan)", stdout)
    assert found, stdout[-2000:]
    return float(found.group(1)), found.group(2)


def test_qat_model_in_onnxruntime_has_the_pytorch_ap(root, run_train_net, run_python, tiny_shapes_val, tmp_path):
    data = ["DATASETS.COCO_FORMAT", f"('{tiny_shapes_val}',)", "DATASETS.TEST", "('tiny_shapes_val',)"]
    fp, qat = tmp_path / "fp", tmp_path / "qat"
    check_ok(run_train_net("--config-file", "configs/quickstart_retinanet_mnv2_shapes.yaml", *SMALL, *data,
                           "SOLVER.MAX_ITER", "40", "OUTPUT_DIR", str(fp)))
    config = "configs/shapes/retinanet_MNV2_lsq_hqod_w4a4.yaml"
    trained = check_ok(run_train_net("--config-file", config, *SMALL, *data, "SOLVER.MAX_ITER", "10",
                                     "MODEL.QUANT.CALIB_IMAGES", "4", "MODEL.WEIGHTS", str(fp / "model_final.pth"),
                                     "OUTPUT_DIR", str(qat)))
    exported = check_ok(run_python(root / "tools" / "deploy" / "export_onnx.py", "--config-file", config,
                                   "--output", str(tmp_path / "onnx"), "--height", "128", "--width", "128", "--opts",
                                   *SMALL, *data, "MODEL.WEIGHTS", str(qat / "model_final.pth")))
    assert "onnxruntime vs PyTorch" in exported.stdout and (tmp_path / "onnx" / "model.onnx").is_file()
    evaluated = check_ok(run_python(root / "tools" / "deploy" / "evaluate_onnx.py", "--config-file", config,
                                    "--model", str(tmp_path / "onnx"), "--opts", *SMALL, *data))
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in evaluated.stdout + evaluated.stderr
    (ap_torch, _), (ap_onnx, pearson) = ap_line(trained.stdout), ap_line(evaluated.stdout)
    assert abs(ap_onnx - ap_torch) <= 0.2 and pearson != "nan", (ap_torch, ap_onnx)
