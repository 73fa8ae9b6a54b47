"""QAT end to end through train_net.py on the built-in shapes data: FP -> calibrate -> QAT with HQOD -> evaluate,
for every dense detector of the table (RetinaNet, FCOS, ATSS); checkpoint/config mismatches; kill -9 and
--resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hqod.engine.checkpoint import read_checkpoint
from hqod.modeling.detectors import DENSE_DETECTORS

pytestmark = pytest.mark.slow

SMALL = [  # a few cheap iterations at 128 px with an 8-image evaluation
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
]
DETECTORS = {  # name -> (FP config, LSQ + HQOD W4A4 config, test-time options)
    name: (f"quickstart_{name}_mnv2_shapes.yaml", f"shapes/{name}_MNV2_lsq_hqod_w4a4.yaml",
           [f"MODEL.{spec.config_node}.SCORE_THRESH_TEST", "0.0",
            f"MODEL.{spec.config_node}.TOPK_CANDIDATES_TEST", "50"])
    for name, spec in DENSE_DETECTORS.items()
}


def args_for(config, tiny_shapes_val, output_dir, *extra, iters=3):
    return ["--config-file", f"configs/{config}", *SMALL, "SOLVER.MAX_ITER", str(iters),
            "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.COCO_FORMAT", f"('{tiny_shapes_val}',)",
            "DATASETS.TEST", "('tiny_shapes_val',)", "OUTPUT_DIR", str(output_dir), *extra]


def check_ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


_RUNS = {}


def fp_and_qat(run_train_net, detector, tiny_shapes_val, tmp_path_factory):
    """(tmp dir, QAT result) after an FP run and a QAT W4A4 + HQOD run from its checkpoint (once per detector)."""
    if detector not in _RUNS:
        fp_config, qat_config, test_opts = DETECTORS[detector]
        tmp = tmp_path_factory.mktemp(detector)
        check_ok(run_train_net(*args_for(fp_config, tiny_shapes_val, tmp / "fp", *test_opts)))
        qat = check_ok(run_train_net(*args_for(qat_config, tiny_shapes_val, tmp / "qat", *test_opts,
                                               "MODEL.WEIGHTS", str(tmp / "fp" / "model_final.pth"),
                                               "MODEL.QUANT.CALIB_IMAGES", "4")))
        _RUNS[detector] = tmp, qat
    return _RUNS[detector]


@pytest.fixture(params=sorted(DETECTORS))
def fp_then_qat(request, run_train_net, tiny_shapes_val, tmp_path_factory):
    """(detector, tmp dir, QAT result, test options) for each dense detector."""
    tmp, qat = fp_and_qat(run_train_net, request.param, tiny_shapes_val, tmp_path_factory)
    return request.param, tmp, qat, DETECTORS[request.param][2]


def test_qat_run_calibrates_trains_with_hqod_and_evaluates(fp_then_qat):
    _, tmp, qat, _ = fp_then_qat
    log = (tmp / "qat" / "log.txt").read_text()
    assert "Calibrated" in log and "Quantized" in log
    rows = [m for m in metrics(tmp / "qat") if "loss_tcorr" in m]
    assert rows and all(m["loss_tcorr"] == m["loss_tcorr"] for m in rows)  # logged and not NaN
    assert all(m["quant/weight_bits"] == 4 and m["quant/fake_quant"] == 1 for m in rows)
    assert all(m["hqod/tcorr_weight"] == 1.0 for m in rows)
    assert [m["quant/calib_images"] for m in metrics(tmp / "qat") if "quant/calib_images" in m] == [4]
    assert "tiny_shapes_val: AP" in qat.stdout and "harmony pearson" in qat.stdout
    checkpoint = read_checkpoint(str(tmp / "qat" / "model_final.pth"))
    assert checkpoint["quant_config"]["WEIGHT_BITS"] == 4
    assert any(k.endswith("input_quant.initialized") or ".input_quant." in k for k in checkpoint["model"])


def test_eval_only_evaluates_the_quantized_model(run_train_net, fp_then_qat, tiny_shapes_val):
    detector, tmp, _, test_opts = fp_then_qat
    weights = str(tmp / "qat" / "model_final.pth")
    result = check_ok(run_train_net("--eval-only", *args_for(DETECTORS[detector][1], tiny_shapes_val, tmp / "ev",
                                                             *test_opts, "MODEL.WEIGHTS", weights)))
    assert "tiny_shapes_val: AP" in result.stdout
    log = (tmp / "ev" / "log.txt").read_text()
    assert "Calibrated" not in log  # the checkpoint's quantizers are used as they are, never re-calibrated
    assert "Quantized" in log  # the quantized model, not the FP one


def test_qat_checkpoint_under_fp_config_or_other_bits_fails_clearly(run_train_net, fp_then_qat, tiny_shapes_val):
    detector, tmp, _, test_opts = fp_then_qat
    weights = str(tmp / "qat" / "model_final.pth")
    fp = run_train_net("--eval-only", *args_for(DETECTORS[detector][0], tiny_shapes_val, tmp / "e1", *test_opts,
                                                "MODEL.WEIGHTS", weights))
    assert fp.returncode != 0 and fp.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "full-precision" in fp.stderr
    w2 = run_train_net("--eval-only", *args_for(DETECTORS[detector][1], tiny_shapes_val, tmp / "e2", *test_opts,
                                                "MODEL.WEIGHTS", weights, "MODEL.QUANT.WEIGHT_BITS", "2"))
    assert w2.returncode != 0 and "WEIGHT_BITS" in w2.stderr.strip().splitlines()[-1]


def test_killed_run_resumes_from_its_last_checkpoint(root, run_train_net, tiny_shapes_val, tmp_path, tmp_path_factory):
    tmp, _ = fp_and_qat(run_train_net, "retinanet", tiny_shapes_val, tmp_path_factory)
    _, qat_config, test_opts = DETECTORS["retinanet"]
    out = tmp_path / "run"
    fp_weights = ["MODEL.WEIGHTS", str(tmp / "fp" / "model_final.pth"), "MODEL.QUANT.CALIB_IMAGES", "4"]
    cmd = [sys.executable, str(root / "train_net.py"), *args_for(qat_config, tiny_shapes_val, out, *test_opts, iters=400),
           *fp_weights, "SOLVER.CHECKPOINT_PERIOD", "4"]
    proc = subprocess.Popen(cmd, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "model_0000007.pth").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "model_0000007.pth").exists(), "no checkpoint written before the deadline"
    saved = read_checkpoint(str(out / (out / "last_checkpoint").read_text()))
    quant_state = {k: v for k, v in saved["model"].items() if "_quant." in k}
    assert quant_state and "optimizer" in saved["trainer"]["_trainer"]
    assert any("LRScheduler" in name for name in saved["trainer"]["hooks"])

    check_ok(run_train_net("--resume", *args_for(qat_config, tiny_shapes_val, out, *test_opts,
                                                 iters=saved["iteration"] + 3), *fp_weights))
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {saved['iteration'] + 1}" in log
    assert "calibration skipped" in log
    assert "Loading trainer from" in log  # optimizer, LR scheduler and iteration
