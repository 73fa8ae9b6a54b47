"""Shared fixtures: the repository root, train_net.py in a subprocess, project configs on the CPU, a small
COCO-format subset of the built-in shapes validation set for quick evaluations, tools/ scripts as modules, and
random images and weights for tiny untrained detectors."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import detectron2
import hqod  # noqa: F401
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from torch import nn

from hqod.config import add_hqod_config
from hqod.data import validate_dataset
from hqod.modeling.detectors import DENSE_DETECTORS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--detectron2-from", metavar="DIR", help="stop unless detectron2 is imported from DIR")


def pytest_configure(config):
    """``make test-d2main`` names its Detectron2, so a PYTHONPATH that misses it cannot silently test v0.6 (both
    report ``__version__`` 0.6, so the check is by path)."""
    expected = config.getoption("--detectron2-from")
    imported = pathlib.Path(detectron2.__file__).resolve().parent
    if expected and imported != pathlib.Path(expected).resolve():
        raise pytest.UsageError(f"detectron2 is imported from {imported}, not {expected}; put "
                                f"{pathlib.Path(expected).parent} first on PYTHONPATH")

@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Small tensors on a 2-core machine: one intra-op thread avoids OpenMP contention (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_shapes_val(tmp_path_factory):
    """``name:json:image_root`` of the first 8 images of ``hqod_shapes_val``, for DATASETS.COCO_FORMAT."""
    validate_dataset("hqod_shapes_val")  # builds the cached set if needed
    meta = MetadataCatalog.get("hqod_shapes_val")
    coco = json.loads(pathlib.Path(meta.json_file).read_text())
    keep = {img["id"] for img in coco["images"][:8]}
    coco["images"] = [img for img in coco["images"] if img["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    path = tmp_path_factory.mktemp("tiny") / "tiny_shapes_val.json"
    path.write_text(json.dumps(coco))
    return f"tiny_shapes_val:{path}:{meta.image_root}"


@pytest.fixture(scope="session")
def root():
    """The repository root: configs/, tools/, train_net.py, demo.py."""
    return ROOT


@pytest.fixture(scope="session")
def run_python(root):
    """``run_python(script, *args, env=None, timeout=600)``: ``python script *args`` in a subprocess from the
    repository root with one OpenMP thread (plus ``env``); returns the CompletedProcess (stdout and stderr as text)."""

    def run(script, *args, env=None, timeout=600):
        env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def run_train_net(root, run_python):
    """``run_train_net(*args, env=None, timeout=600)``: ``train_net.py *args`` through ``run_python``."""

    def run(*args, env=None, timeout=600):
        return run_python(root / "train_net.py", *args, env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def get_config(root):
    """``get_config(path, *opts)``: the project config (HQOD keys added) of ``configs/<path>`` with ``KEY VALUE``
    overrides, on the CPU and not frozen, without the checks and data preparation of ``setup_cfg``."""

    def load(path, *opts):
        cfg = get_cfg()
        add_hqod_config(cfg)
        cfg.merge_from_file(str(root / "configs" / path))
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = "cpu"
        return cfg

    return load


@pytest.fixture(scope="session")
def tiny_detector_cfg():
    """``tiny_detector_cfg(meta_arch, **sections)``: a CPU config of ``meta_arch`` on a ResNet-18-FPN of width 32
    with 3 classes and one conv per head tower (every dense detector), weights unset; ``sections`` such as
    ``HQOD={"TCORR_WEIGHT": 0.5}`` set keys of ``cfg.MODEL.<section>``."""

    def make(meta_arch, **sections):
        cfg = get_cfg()
        add_hqod_config(cfg)
        cfg.MODEL.META_ARCHITECTURE = meta_arch
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.DEPTH = 18
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.NORM = "BN"
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        for spec in DENSE_DETECTORS.values():
            cfg.MODEL[spec.config_node].NUM_CLASSES = 3
            cfg.MODEL[spec.config_node].NUM_CONVS = 1
        for section, values in sections.items():
            for key, value in values.items():
                cfg.MODEL[section][key] = value
        return cfg

    return make


@pytest.fixture(scope="session")
def tool_module(root):
    """``tool_module(path)``: tools/<path>.py (e.g. ``"check_determinism"``) imported as a module."""

    def load(path):
        file = root / "tools" / f"{path}.py"
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def deploy_tool(tool_module):
    """``deploy_tool(name)``: tools/deploy/<name>.py imported as a module."""
    return lambda name: tool_module(f"deploy/{name}")


@pytest.fixture(scope="session")
def lively():
    """``lively(model)``: random weights of moderate gain, biases and BN statistics and affines, so that every layer
    of an untrained detector carries a signal (seeded); returns the model."""

    def randomize(model):
        torch.manual_seed(0)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.weight.data.mul_(0.5)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
            if getattr(module, "running_var", None) is not None:
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.normal_(0, 0.1)
        return model

    return randomize


@pytest.fixture(scope="session")
def random_images():
    """``random_images(count, seed, size)``: Detectron2 inputs of ``count`` random size x size RGB images."""

    def make(count, seed, size):
        g = torch.Generator().manual_seed(seed)
        return [{"image": (torch.rand(3, size, size, generator=g) * 255).round(), "height": size, "width": size}
                for _ in range(count)]

    return make
