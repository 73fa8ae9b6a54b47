"""The per-architecture table: what the config defaults, the checks, the demo and the bench need to know about each
dense detector the project ships, so that none of them names a detector.

Adding a dense detector: one module that defines and registers (``META_ARCH_REGISTRY``) the detector and its HQOD
variant (``HQODLossMixin`` first in the bases, plus an ``hqod_inputs`` method), calls ``register_dense_detector``
once, and is imported by ``hqod/modeling/__init__.py``; then its yaml files, named after ``DenseDetectorSpec.name``.
"""
from dataclasses import dataclass

from ..errors import HQODInputError


@dataclass(frozen=True)
class DenseDetectorSpec:
    """One dense detector as the rest of the project sees it."""
    name: str  # short name in config file names and in the bench: configs/shapes/<name>_MNV2_lsq_w4a4.yaml
    meta_architecture: str  # its MODEL.META_ARCHITECTURE without HQOD, e.g. "RetinaNet"
    hqod_meta_architecture: str  # with the HQOD losses, e.g. "HQODRetinaNet"
    config_node: str  # cfg.MODEL.<config_node> holds NUM_CLASSES, SCORE_THRESH_TEST and TOPK_CANDIDATES_TEST
    head_norm_key: str  # the key under cfg.MODEL.<config_node> naming the head's norm ("NORM", "HEAD_NORM")
    prediction_convs: tuple  # module names of the convs that make its predictions (kept at FIRST_LAST_BITS)


DENSE_DETECTORS = {}  # name -> DenseDetectorSpec, in registration order


def register_dense_detector(spec: DenseDetectorSpec) -> DenseDetectorSpec:
    """Add ``spec`` to the table (once per name)."""
    if spec.name in DENSE_DETECTORS:
        raise ValueError(f"dense detector {spec.name!r} is registered twice")
    DENSE_DETECTORS[spec.name] = spec
    return spec


def dense_detector_of(meta_architecture: str):
    """The spec whose plain or HQOD meta-architecture is ``meta_architecture``, or None."""
    for spec in DENSE_DETECTORS.values():
        if meta_architecture in (spec.meta_architecture, spec.hqod_meta_architecture):
            return spec
    return None


def dense_detector(name: str) -> DenseDetectorSpec:
    """The spec called ``name``; an HQODInputError naming the known ones otherwise."""
    if name not in DENSE_DETECTORS:
        raise HQODInputError(f"unknown dense detector {name!r}: use one of {', '.join(DENSE_DETECTORS)}")
    return DENSE_DETECTORS[name]


def hqod_meta_architectures() -> list:
    """The HQOD meta-architectures of every registered dense detector."""
    return [spec.hqod_meta_architecture for spec in DENSE_DETECTORS.values()]
