"""Every measure that lets one code base run on both Detectron2 v0.6 (pure Python, CPU) and current Detectron2.

Imported first by ``hqod/__init__.py``. It never edits Detectron2's files; each measure is a no-op where
the installed Detectron2 does not need it:

1. ``detectron2._C`` missing (``pb1-detectron2`` has no C++ sources; current Detectron2 used from its unbuilt
   sources, as ``make test-d2main`` does, has none either): a stand-in module is registered so that module-level
   ``from detectron2 import _C`` imports (v0.6's layers, both versions' fast COCO evaluator) succeed; using any
   of its operators (deformable conv, rotated boxes, the fast COCO evaluator) raises an ImportError saying what
   to install. ``HAS_C_EXTENSION`` tells evaluators to use pycocotools' own evaluation (``use_fast_impl=False``).
2. ``create_ddp_model`` (v0.6 and current) passes ``device_ids=[local_rank]`` even on CPU, which
   DistributedDataParallel rejects: on a machine without CUDA it is wrapped to pass ``device_ids=None``.
3. v0.6's ``launch()`` hard-codes NCCL and asserts CUDA: ``hqod.engine.launch`` replaces it on CPU
   (a gloo process group per CPU worker). ``LAUNCH_RUNS_CPU_WORKERS`` is true where Detectron2's own worker
   falls back to gloo without CUDA (current Detectron2); there, and whenever CUDA is present, Detectron2's
   ``launch`` runs unchanged.
4. v0.6's ``DefaultTrainer`` checkpoints no optimizer state (current Detectron2 adds it under ``_trainer``):
   ``DEFAULT_TRAINER_SAVES_OPTIMIZER`` tells ``HQODTrainer`` to add it itself.
5. Detectron2 decorates functions with ``torch.jit.script``, which current torch deprecates with a FutureWarning
   at every import: that one warning is silenced.
6. v0.6's Pascal VOC loader calls ``np.loadtxt(..., dtype=np.str)``, an alias numpy 1.24 removed: ``np.str`` is
   restored as the builtin ``str`` it always was, only when numpy lacks it and the installed loader reads it
   (``VOC_LOADER_READS_NP_STR``; current Detectron2 passes ``str``). The VOC evaluator's ``np.bool`` needs no
   measure: numpy >= 2 defines ``np.bool`` again.
7. v0.6's ``FCOS.label_anchors`` crashes on a training image without boxes and hands its ``losses`` the matched
   boxes as ``Boxes``; current Detectron2 labels such images and hands over Tensors. ``hqod.modeling.fcos`` labels
   images without boxes itself, and ``FCOS_MATCHED_BOXES_ARE_BOXES`` tells it which kind its ``losses`` read.

Measures 3 and 6 look at the bytecode of the Detectron2 function concerned, so they need no source files and
no version string (current Detectron2 still calls itself 0.6).
"""
import dis
import importlib
import importlib.util
import sys
import types
import warnings

import numpy as np
import torch


class _MissingCExtension(types.ModuleType):
    """Stand-in for ``detectron2._C``: importable, answers ``collect_env``'s build questions, and every
    operator says what is missing."""

    def get_compiler_version(self):
        return "none (pure-Python detectron2, no compiled operators)"

    def get_cuda_version(self):
        return "none"

    def has_cuda(self):
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"detectron2._C.{name} needs Detectron2's compiled operators, which this pure-Python install lacks; "
            "build detectron2 from the official repository to use it"
        )


def _has_compiled_detectron2() -> bool:
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        raise ImportError("detectron2 is not installed; run `make setup` (or build it from the official repository)")
    return importlib.util.find_spec("detectron2._C") is not None


warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
HAS_C_EXTENSION = _has_compiled_detectron2()
if not HAS_C_EXTENSION:
    sys.modules.setdefault("detectron2._C", _MissingCExtension("detectron2._C"))


def _patch_create_ddp_model():
    import detectron2.engine.defaults as defaults

    original = defaults.create_ddp_model
    if getattr(original, "_hqod_cpu_safe", False):
        return

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        if not torch.cuda.is_available():
            kwargs.setdefault("device_ids", None)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._hqod_cpu_safe = True
    defaults.create_ddp_model = create_ddp_model
    import detectron2.engine as engine

    engine.create_ddp_model = create_ddp_model


_patch_create_ddp_model()


def _default_trainer_saves_optimizer() -> bool:
    from detectron2.engine import DefaultTrainer

    return "state_dict" in DefaultTrainer.__dict__


DEFAULT_TRAINER_SAVES_OPTIMIZER = _default_trainer_saves_optimizer()


def _bytecode_has(function, opname: str, argval) -> bool:
    """Whether ``function``'s own bytecode (not its callees') has the instruction ``opname argval``."""
    return any(ins.opname == opname and ins.argval == argval for ins in dis.get_instructions(function))


def _launch_runs_cpu_workers() -> bool:
    launch_module = importlib.import_module("detectron2.engine.launch")  # the package re-exports the function
    return _bytecode_has(launch_module._distributed_worker, "LOAD_CONST", "GLOO")


LAUNCH_RUNS_CPU_WORKERS = _launch_runs_cpu_workers()


def _voc_loader_reads_np_str() -> bool:
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    return _bytecode_has(load_voc_instances, "LOAD_ATTR", "str")  # np.str, not the builtin


VOC_LOADER_READS_NP_STR = _voc_loader_reads_np_str()
if VOC_LOADER_READS_NP_STR and "str" not in np.__dict__:
    np.str = str


def _fcos_matched_boxes_are_boxes() -> bool:
    from detectron2.modeling.meta_arch.fcos import FCOS

    return "match_anchors" in FCOS.__dict__  # v0.6's public matcher; current Detectron2 has _match_anchors


FCOS_MATCHED_BOXES_ARE_BOXES = _fcos_matched_boxes_are_boxes()
