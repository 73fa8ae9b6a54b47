"""Installs the ``hqod`` package from ``projects/HQOD`` (``pip install -e .``)."""
from setuptools import find_packages, setup

setup(
    name="hqod",
    version="0.1.0",
    description="HQOD: Harmonious Quantization for Object Detection, as a Detectron2 project",
    package_dir={"": "projects/HQOD"},
    packages=find_packages("projects/HQOD"),
    python_requires=">=3.9",
    install_requires=["torch", "torchvision", "fvcore", "pycocotools", "numpy", "opencv-python-headless"],
    # hqod.deploy and tools/deploy (ONNX export, onnxruntime evaluation): pip install -e .[deploy]
    extras_require={"deploy": ["onnx>=1.20", "onnxruntime>=1.20"]},
)
