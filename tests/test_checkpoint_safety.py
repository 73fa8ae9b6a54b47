"""Checkpoints: no code runs from any file read (train_net.py, demo.py, the ONNX export), and faults are survived: a kill while
writing, a failed write, a truncated file and a diverged loss each leave the last good checkpoint usable and say so
in one line."""
import collections
import errno
import os
import pickle

import hqod  # noqa: F401
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from hqod.config import add_hqod_config
from hqod.engine.checkpoint import HQODCheckpointer, read_checkpoint
from hqod.errors import CheckpointSaveError, HQODInputError
from hqod.utils.safe_load import load_pickle, load_torch

QUICKSTART = "configs/quickstart_retinanet_mnv2_shapes.yaml"
QUICK = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "DATASETS.TEST", "()"]
# Runs train_net.py in this process with torch.save replaced: at save number FAULT_AT it writes part of the file,
# then either dies with SIGKILL (FAULT=kill) or fails like a full disk (FAULT=disk_full).
FAULTY_TRAIN_NET = """
import errno, os, runpy, signal, sys
import torch
real_save, saves = torch.save, []

def faulty_save(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == int(os.environ["FAULT_AT"]):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        if os.environ["FAULT"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(obj, f, *args, **kwargs)

torch.save = faulty_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class CodeRunner:
    """Unpickling it runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_files(folder):
    """A .pth and a .pkl checkpoint whose loading would create ``folder/pwned``; returns (marker, pth, pkl)."""
    marker = folder / "pwned"
    pth, pkl = folder / "model.pth", folder / "model.pkl"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": CodeRunner(marker)}, pth)
    pkl.write_bytes(pickle.dumps({"model": {"w": np.zeros(1)}, "__author__": CodeRunner(marker)}))
    return marker, pth, pkl


def error_line(result) -> str:
    """The run's last stderr line, which must be its only error report."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    return lines[-1]


def train_args(output_dir, *opts):
    return ["--config-file", QUICKSTART, *QUICK, "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(output_dir), *opts]


def test_safe_readers_refuse_code_and_keep_numpy(tmp_path):
    marker, pth, pkl = malicious_files(tmp_path)
    for load, path in ((load_torch, pth), (load_pickle, pkl)):
        with pytest.raises(HQODInputError, match=f"checkpoint {path} refused: loading it would call posix.system"):
            load(path)
    assert not marker.exists()
    arrays = {"model": collections.OrderedDict(w=np.arange(3, dtype=np.float32), n=np.int64(2)), "__author__": "d2"}
    for protocol in (2, 4, 5):
        (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(read_checkpoint(str(tmp_path / "zoo.pkl"))["model"]["w"], np.arange(3))
    torch.save({"model": {"w": np.ones(2), "t": torch.ones(2)}}, tmp_path / "numpy.pth")
    assert np.array_equal(read_checkpoint(str(tmp_path / "numpy.pth"))["model"]["w"], np.ones(2))


def test_caffe2_pickles_drop_momentum_and_use_name_matching(tmp_path):
    path = tmp_path / "c2.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(2), "conv1_w_momentum": np.ones(2)}}))
    checkpoint = read_checkpoint(str(path))
    assert list(checkpoint["model"]) == ["conv1_w"] and checkpoint["matching_heuristics"]


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_train_net_refuses_a_checkpoint_that_runs_code(tmp_path, kind, run_train_net):
    marker, pth, pkl = malicious_files(tmp_path)
    weights = pth if kind == "pth" else pkl
    result = run_train_net("--eval-only", *train_args(tmp_path / "out", "MODEL.WEIGHTS", str(weights)))
    assert f"checkpoint {weights} refused" in error_line(result)
    assert not marker.exists()


def test_resume_refuses_a_last_checkpoint_that_runs_code(tmp_path, run_train_net):
    marker, pth, _ = malicious_files(tmp_path)
    (tmp_path / "last_checkpoint").write_text(pth.name)
    result = run_train_net("--resume", *train_args(tmp_path, "SOLVER.MAX_ITER", "1"))
    assert f"checkpoint {pth} refused" in error_line(result)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_demo_refuses_a_checkpoint_that_runs_code(tmp_path, kind, run_python):
    marker, pth, pkl = malicious_files(tmp_path)
    weights = pth if kind == "pth" else pkl
    image = tmp_path / "image.png"
    image.write_bytes(b"")  # never read: the weights are refused first
    result = run_python("demo.py", "--config-file", QUICKSTART, "--input", image, "--output", tmp_path / "out",
                        "--opts", "MODEL.WEIGHTS", weights)
    assert f"checkpoint {weights} refused" in error_line(result)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_onnx_export_refuses_a_checkpoint_that_runs_code(tmp_path, kind, run_python):
    marker, pth, pkl = malicious_files(tmp_path)
    weights = pth if kind == "pth" else pkl
    result = run_python("tools/deploy/export_onnx.py", "--config-file", QUICKSTART, "--output", tmp_path / "onnx",
                        "--opts", "MODEL.WEIGHTS", weights)
    assert f"checkpoint {weights} refused" in error_line(result)
    assert not marker.exists() and not (tmp_path / "onnx" / "model.onnx").exists()


def test_a_kill_while_writing_a_checkpoint_resumes_from_the_last_whole_one(tmp_path, run_train_net, run_python):
    driver = tmp_path / "faulty_train_net.py"
    driver.write_text(FAULTY_TRAIN_NET)
    out = tmp_path / "run"
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1"]
    killed = run_python(driver, "train_net.py", *train_args(out, *opts), env={"FAULT": "kill", "FAULT_AT": "2"})
    assert killed.returncode == -9  # died inside the second save (model_0000001)
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (out / "model_0000001.pth").exists()
    assert read_checkpoint(str(out / "model_0000000.pth"))["iteration"] == 0
    resumed = run_train_net("--resume", *train_args(out, *opts))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 1" in (out / "log.txt").read_text()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial.pth")]  # the killed write's leftovers


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path, run_python):
    driver = tmp_path / "faulty_train_net.py"
    driver.write_text(FAULTY_TRAIN_NET)
    out = tmp_path / "run"
    result = run_python(driver, "train_net.py", *train_args(out, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1"),
                        env={"FAULT": "disk_full", "FAULT_AT": "2"})
    line = error_line(result)
    assert f"could not write checkpoint {out / 'model_0000001.pth'}" in line and "No space left on device" in line
    assert f"last good checkpoint ({out / 'model_0000000.pth'})" in line
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000000.pth"]
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    assert read_checkpoint(str(out / "model_0000000.pth"))["iteration"] == 0


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")])
def test_checkpointer_save_errors_are_one_line(tmp_path, monkeypatch, fault):
    cfg = get_cfg()
    add_hqod_config(cfg)
    model = nn.Linear(2, 2)
    checkpointer = HQODCheckpointer(model, str(tmp_path), cfg=cfg)
    checkpointer.save("model_0000000")
    good = (tmp_path / "model_0000000.pth").read_bytes()

    def failing_open(path, mode="r", **kwargs):
        raise fault

    monkeypatch.setattr(checkpointer.path_manager, "open", failing_open)
    with pytest.raises(CheckpointSaveError, match=str(fault.strerror)) as error:
        checkpointer.save("model_0000001")
    assert "\n" not in str(error.value) and "model_0000000.pth" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "model_0000000.pth").read_bytes() == good
    monkeypatch.undo()
    restored = nn.Linear(2, 2)
    HQODCheckpointer(restored, str(tmp_path), cfg=cfg).resume_or_load("", resume=True)
    assert torch.equal(restored.weight, model.weight)  # resuming finds the whole last good checkpoint


def test_a_truncated_checkpoint_is_one_line_naming_it(tmp_path, run_train_net):
    trained = run_train_net(*train_args(tmp_path, "SOLVER.MAX_ITER", "1"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    resumed = run_train_net("--resume", *train_args(tmp_path, "SOLVER.MAX_ITER", "2"))
    assert f"cannot read checkpoint {final}: it is truncated or corrupt" in error_line(resumed)
    evaluated = run_train_net("--eval-only", *train_args(tmp_path / "eval", "MODEL.WEIGHTS", str(final)))
    assert f"cannot read checkpoint {final}" in error_line(evaluated)


def test_a_diverged_loss_stops_with_one_line_and_no_nan_checkpoint(tmp_path, run_train_net):
    """A huge learning rate makes the loss infinite within a few iterations; the run names that iteration and the
    last good checkpoint, which is finite and was not overwritten."""
    result = run_train_net(*train_args(tmp_path, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "1",
                                                "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_FACTOR", "1.0",
                                                "SOLVER.CLIP_GRADIENTS.ENABLED", "False"))
    line = error_line(result)
    assert "the loss became NaN or infinite at iteration" in line, line
    failed_at = int(line.split("at iteration ")[1].split(";")[0])
    last = (tmp_path / "last_checkpoint").read_text()
    assert f"the last good checkpoint is {tmp_path / last}" in line
    checkpoint = read_checkpoint(str(tmp_path / last))
    assert checkpoint["iteration"] < failed_at
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert not (tmp_path / "model_final.pth").exists()
    assert not list(tmp_path.glob(f"model_{failed_at:07d}.pth"))


def test_a_worker_error_is_the_same_one_line_with_two_workers(tmp_path, run_train_net):
    result = run_train_net("--num-gpus", "2", *train_args(tmp_path, "SOLVER.MAX_ITER", "6",
                                                                 "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_FACTOR",
                                                                 "1.0", "SOLVER.CLIP_GRADIENTS.ENABLED", "False"))
    assert "error: training stopped: the loss became NaN or infinite at iteration" in error_line(result)
    assert "Traceback" not in result.stderr.split("error: training stopped")[0].splitlines()[-1]
