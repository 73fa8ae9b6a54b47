"""How closely onnxruntime reproduces the PyTorch (fake-quantized) model, measured in output quantization steps.

The output step of a head output is s_in · max|Ŵ| of the conv that produces it (s_in: its input quantizer's step at
that FPN level, Ŵ: its dequantized weight): the largest change of an output when one of its inputs moves by one
quantization step. A correct export differs from PyTorch only where float rounding differences between the two
runtimes flip a rounding decision at some quantizer (x / s within float error of a .5 boundary, or onnxruntime's
integer requantisation), which moves a value by one step; so raw outputs agree to within about one output step.
Full-precision outputs have no step; they are compared relative to the output's largest magnitude."""
import numpy as np

FLOAT_RELATIVE_TOLERANCE = 1e-4  # full precision: float32 accumulation-order differences only


def output_steps(model, records) -> dict:
    """``{output name: step}`` for the outputs of a lowered graph produced by a conv with quantized input and weight
    (``records``: the MarkedQuantizer list the graph was lowered from)."""
    graph = model.graph
    producers = {name: node for node in graph.node for name in node.output}
    by_scale = {f"{r.spec.name}.scale": r for r in records}
    steps = {}
    for output in graph.output:
        conv = producers.get(output.name)
        if conv is not None and conv.op_type == "Add":  # a float bias after the conv (qdq.float_bias_add)
            conv = producers.get(conv.input[0])
        if conv is None or conv.op_type != "Conv":
            continue
        found = [by_scale.get(producers[name].input[1]) if name in producers and
                 producers[name].op_type == "DequantizeLinear" else None for name in conv.input[:2]]
        if None in found:
            continue
        act, weight = found
        weights = weight.integers.abs() * weight.spec.scale.reshape(-1, *[1] * (weight.integers.dim() - 1))
        steps[output.name] = float(act.spec.scale.max()) * float(weights.max())
    return steps


def compare_outputs(names, onnx_outputs, torch_outputs, steps: dict) -> list:
    """Per output: max |ONNX - PyTorch|, its tolerance (one output step, or the float tolerance), the max difference
    in tolerances, and the fraction of values off by more than the tolerance."""
    rows = []
    for name, a, b in zip(names, onnx_outputs, torch_outputs):
        b = np.asarray(b, dtype=np.float32)
        diff = np.abs(np.asarray(a, dtype=np.float32) - b)
        tolerance = steps.get(name) or FLOAT_RELATIVE_TOLERANCE * max(float(np.abs(b).max()), 1.0)
        rows.append({"output": name, "max_abs_diff": float(diff.max()), "tolerance": tolerance,
                     "max_diff_in_tolerances": float(diff.max() / tolerance),
                     "fraction_over_tolerance": float((diff > tolerance).mean())})
    return rows
