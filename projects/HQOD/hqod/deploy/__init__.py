"""Deployment: ONNX export of full-precision and QAT dense detectors (QuantizeLinear / DequantizeLinear for every
fake quantizer) and their evaluation in onnxruntime with the detector's own Detectron2 decoding and NMS."""
from .dense_graph import DenseHeadGraph
from .export import EXPORT_RECORD, MODEL_FILE, export_onnx
from .fusion import integer_nodes
from .runtime import OnnxDetector, read_export_record
from .session import create_session

__all__ = [
    "DenseHeadGraph", "EXPORT_RECORD", "MODEL_FILE", "OnnxDetector", "create_session", "export_onnx",
    "integer_nodes", "read_export_record",
]
