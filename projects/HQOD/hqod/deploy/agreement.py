"""How closely onnxruntime reproduces the PyTorch (fake-quantized) model, and the tolerance that is fair to ask.

A correct export differs from PyTorch only where the two runtimes' float32 arithmetic differs (accumulation order,
onnxruntime's integer kernels and int32 biases at 8 bits) and that flips a rounding decision at some quantizer, which
moves one value by one step. The tolerance of a head output is the larger of

- its **output step**, s_in · max|Ŵ| of the conv producing it (s_in: the step of that conv's input quantizer at that
  FPN level, Ŵ: its dequantized weight): the most an output moves when one of its inputs moves by one step; and
- its **rounding-noise floor**, the most that output moves in PyTorch itself when every conv's output is perturbed
  by float32-level relative noise (``NOISE``, a few draws): how far rounding flips propagate in this model.

At 4 bits steps are coarse, flips are rare and the output step dominates; 8-bit models flip far more often (a step is
16 times finer) and their flips compound through depthwise convs with folded BN, so the floor dominates there.
Full-precision outputs have no step; the floor and ``FLOAT_RELATIVE_TOLERANCE`` of their range bound them."""
import numpy as np
import torch
from torch import nn

FLOAT_RELATIVE_TOLERANCE = 1e-4  # of an output's largest magnitude: float32 accumulation-order differences
NOISE = 1e-6  # relative perturbation of each conv output: float32 rounding (eps 6e-8) summed over a conv's terms
NOISE_DRAWS = 3


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


@torch.no_grad()
def noise_floor(graph_module, sample) -> list:
    """Per output of ``graph_module`` (a DenseHeadGraph), the largest change over ``NOISE_DRAWS`` forward passes
    with every conv output multiplied by 1 + NOISE·N(0, 1)."""
    clean = graph_module(sample)
    generator = torch.Generator().manual_seed(0)

    def perturb(module, inputs, output):
        noise = torch.randn(output.shape, generator=generator).to(output)
        return output * (1 + NOISE * noise)

    convs = [m for m in graph_module.modules() if isinstance(m, nn.Conv2d)]
    handles = [conv.register_forward_hook(perturb) for conv in convs]
    floors = [0.0] * len(clean)
    try:
        for _ in range(NOISE_DRAWS):
            noisy = graph_module(sample)
            floors = [max(f, float((a - b).abs().max())) for f, a, b in zip(floors, clean, noisy)]
    finally:
        for handle in handles:
            handle.remove()
    return floors


def compare_outputs(names, onnx_outputs, torch_outputs, steps: dict, floors) -> list:
    """Per output: max |ONNX - PyTorch|, the output step, the rounding-noise floor, the tolerance (the largest of
    those two and FLOAT_RELATIVE_TOLERANCE of the output's range), the max difference in tolerances and the fraction
    of values off by more than the tolerance."""
    rows = []
    for name, a, b, floor in zip(names, onnx_outputs, torch_outputs, floors):
        b = np.asarray(b, dtype=np.float32)
        diff = np.abs(np.asarray(a, dtype=np.float32) - b)
        step = steps.get(name)
        tolerance = max(step or 0.0, floor, FLOAT_RELATIVE_TOLERANCE * max(float(np.abs(b).max()), 1.0))
        rows.append({"output": name, "max_abs_diff": float(diff.max()), "output_step": step, "noise_floor": floor,
                     "tolerance": tolerance, "max_diff_in_tolerances": float(diff.max() / tolerance),
                     "fraction_over_tolerance": float((diff > tolerance).mean())})
    return rows
