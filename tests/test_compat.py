"""Compatibility measures that depend on the installed Detectron2 are taken exactly where it needs them, so the same
assertions hold under v0.6 and under current Detectron2."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data.datasets.pascal_voc import load_voc_instances

from conftest import ROOT
from hqod import compat

# Runs Detectron2's own per-process worker on CPU as a world of one: v0.6's asserts CUDA, current Detectron2's opens a
# gloo group and calls the main function.
OWN_WORKER_ON_CPU = """
import socket
import hqod
from detectron2.engine.launch import _distributed_worker
from hqod import compat
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
ran = []
try:
    _distributed_worker(0, ran.append, 1, 1, 0, f"tcp://127.0.0.1:{port}", ("main",))
except AssertionError as error:
    assert "cuda" in str(error).lower(), error
print(bool(ran), compat.LAUNCH_RUNS_CPU_WORKERS)
"""


def test_launch_flag_says_whether_detectron2_runs_cpu_workers_itself():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", OWN_WORKER_ON_CPU], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ran, flag = result.stdout.split()[-2:]
    assert ran == flag


@pytest.mark.parametrize("detectron2_runs_cpu_workers", [True, False])
def test_launch_leaves_cpu_workers_to_detectron2_where_it_runs_them(monkeypatch, detectron2_runs_cpu_workers):
    launch_module = importlib.import_module("hqod.engine.launch")  # hqod.engine re-exports the function
    started = []
    monkeypatch.setattr(launch_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compat, "LAUNCH_RUNS_CPU_WORKERS", detectron2_runs_cpu_workers)
    monkeypatch.setattr(launch_module, "d2_launch", lambda *args, **kwargs: started.append("detectron2"))
    monkeypatch.setattr(launch_module.mp, "spawn", lambda *args, **kwargs: started.append("hqod"))
    launch_module.launch(print, 2, dist_url="auto")
    assert started == ["detectron2" if detectron2_runs_cpu_workers else "hqod"]


def test_np_str_is_restored_only_where_the_voc_loader_reads_it(tmp_path, monkeypatch):
    for sub in ("Annotations", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")  # one id would load as a 0-d array
    for image_id in ("000001", "000002"):
        (tmp_path / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><size><width>100</width><height>80</height></size><object><name>tree</name>"
            "<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>")
    assert ("str" in np.__dict__) == compat.VOC_LOADER_READS_NP_STR  # numpy >= 1.24 has no np.str of its own
    monkeypatch.delattr(np, "str", raising=False)
    try:
        records = load_voc_instances(str(tmp_path), "test", ("tree",))
    except AttributeError as error:
        assert "str" in str(error) and compat.VOC_LOADER_READS_NP_STR  # v0.6: the loader needs the measure
    else:
        assert not compat.VOC_LOADER_READS_NP_STR
        assert [r["image_id"] for r in records] == ["000001", "000002"]
