"""What onnxruntime runs as integer kernels: the node types of its optimised graph (after QDQ fusion)."""
import collections
import os
import re
import tempfile

import onnx

from .session import create_session

# onnxruntime's CPU ops that compute on integers (QDQ fusion produces them from DequantizeLinear -> op -> Quantize).
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
               "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearMatMul", "MatMulInteger",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm")


def integer_nodes(model_path) -> dict:
    """``{"op_counts": {op: n}, "integer": [names of integer nodes], "float_convs": [names of float Conv nodes]}``
    of the graph onnxruntime runs for ``model_path`` after all its optimisations, on this machine's CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        create_session(model_path, optimized_model_path=optimized)
        graph = onnx.load(optimized, load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return {
        "op_counts": dict(counts.most_common()),
        "integer": [_source_name(node.name) for node in graph.node if node.op_type in INTEGER_OPS],
        "float_convs": [_source_name(node.name) for node in graph.node if node.op_type in ("Conv", "FusedConv")],
    }


def _source_name(name: str) -> str:
    """The exported node's name behind an optimised node's (onnxruntime appends ``_token_N`` to fused nodes)."""
    return re.sub(r"_token_\d+$", "", name)
