"""Lowering of the ``hqod::FakeQuant`` markers of a traced graph to standard ONNX quantization nodes.

Activations: ``[Clip] -> QuantizeLinear -> DequantizeLinear``; weights: their integers as an initializer of the carrier
type -> ``DequantizeLinear``; the bias of a conv with 8-bit input and weight: int32 at scale s_in·s_w ->
``DequantizeLinear``, the form onnxruntime's QDQ fusion needs to run the conv as an integer kernel (rounding it moves
the conv's output by at most s_in·s_w / 2, a small fraction of an 8-bit step). Below 8 bits no integer kernel runs
and the bias stays float, in an Add after the conv: at 4 bits s_in·s_w is coarse enough that rounding the bias would
flip later quantizers, and onnxruntime rounds any float bias of a conv between DequantizeLinear nodes to int32
itself (its WeightBiasQuantization transformer).

Carriers. Weights (stored integers, DequantizeLinear only): 8 bits and 5-7 bits as INT8, 4 and 3 bits as INT4 (opset
21), 2 bits as INT2 (opset 25); the stored integers are already within [qmin, qmax]. Activations: always INT8 / UINT8
(a signed one that several ops read as UINT8 with zero point 128, see ``activation_carrier``),
with a Clip to [qmin·s, qmax·s] before QuantizeLinear below 8 bits, which keeps the trained clamping range exactly
(round(clip(x, qmin·s, qmax·s) / s) = clamp(round(x / s), qmin, qmax)): onnxruntime 1.32 executes 4- and 2-bit
QuantizeLinear on its own, but its QDQ graph optimisers mishandle it in a network (ReluQuantFusion drops a Relu before
an INT4 / INT2 QuantizeLinear as if its zero point were the type's minimum, giving wrong results; ClipQuantFusion
stops session creation on a UINT4 zero point). Every zero point is 0 (symmetric, or unsigned from 0).
"""
from collections import Counter
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import HQODInputError
from .markers import MARKER_DOMAIN, MARKER_OP

INT32_RANGE = (-(2 ** 31), 2 ** 31 - 1)


class Carrier(NamedTuple):
    """The ONNX integer type holding a quantizer's values, and the opset that type needs."""

    data_type: int
    width: int
    opset: int


_CARRIERS = {  # (width, signed) -> carrier
    (2, True): Carrier(TensorProto.INT2, 2, 25), (2, False): Carrier(TensorProto.UINT2, 2, 25),
    (4, True): Carrier(TensorProto.INT4, 4, 21), (4, False): Carrier(TensorProto.UINT4, 4, 21),
    (8, True): Carrier(TensorProto.INT8, 8, 10), (8, False): Carrier(TensorProto.UINT8, 8, 10),
}
_NUMPY = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT32: np.int32}


def carrier(spec) -> Carrier:
    """The ONNX integer type of quantizer ``spec``: for weights the narrowest of 2, 4 or 8 bits holding its grid, for
    activations 8 bits (see the module docstring)."""
    width = next(w for w in (2, 4, 8) if spec.bits <= w) if spec.role == "weight" else 8
    return _CARRIERS[(width, spec.signed)]


def activation_carrier(spec, readers: int):
    """(carrier, zero-point offset) of activation quantizer ``spec`` whose dequantized value ``readers`` ops read: a
    signed one read by several ops is carried as UINT8 with zero point 128 (the same values: q + 128 on [0, 255]).
    onnxruntime converts a signed QuantizeLinear -> DequantizeLinear pair with one reader so itself (QDQS8ToU8), but
    not one with several, and its integer conv needs input and output of one type, so a conv between a UINT8 input
    and such a shared INT8 output (or the reverse) would stay float."""
    if spec.signed and readers > 1:
        return _CARRIERS[(8, False)], 128
    return carrier(spec), 0


def required_opset(records) -> int:
    """The opset the carriers of ``records`` (MarkedQuantizer list) need; 21 at least (this project's baseline)."""
    return max([21] + [carrier(r.spec).opset for r in records])


def integer_tensor(name: str, values: np.ndarray, data_type: int) -> onnx.TensorProto:
    """An initializer of integer ``values`` in ``data_type`` (sub-byte types packed by onnx.helper)."""
    if data_type in _NUMPY:
        return numpy_helper.from_array(values.astype(_NUMPY[data_type]), name)
    return helper.make_tensor(name, data_type, values.shape, values.astype(np.int64).reshape(-1).tolist())


def _float_tensor(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


class _Lowering:
    """State of one lowering pass: the graph's initializers and what each DequantizeLinear output dequantizes."""

    def __init__(self, model, records):
        self.graph = model.graph
        self.records = records
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.dequantized = {}  # DequantizeLinear output name -> QuantSpec
        self.used = set()  # indices of records that appear in the graph
        self.float_biases = []  # convs with quantized input and weight whose bias stays float (a separate Add)
        self.readers = Counter(name for node in self.graph.node for name in node.input)
        self.shifted = {}  # name -> carrier of signed activations carried as UINT8 with zero point 128

    def add_initializer(self, tensor):
        if tensor.name not in self.initializers:
            self.graph.initializer.append(tensor)
            self.initializers[tensor.name] = tensor
        return tensor.name

    def scale_and_zero_point(self, spec, data_type, offset: int = 0):
        """Initializers of the step sizes and zero points (plus ``offset``) of ``spec`` (scalars per tensor, (C,)
        per channel)."""
        shape = () if spec.axis is None else (spec.scale.numel(),)
        scale = self.add_initializer(_float_tensor(f"{spec.name}.scale", spec.scale.numpy().reshape(shape)))
        zero = self.add_initializer(integer_tensor(f"{spec.name}.zero_point",
                                                   spec.zero_point.numpy().reshape(shape) + offset, data_type))
        return scale, zero

    def activation(self, marker, spec):
        kind, offset = activation_carrier(spec, self.readers[marker.output[0]])
        if offset:
            self.shifted[spec.name] = kind
        scale, zero = self.scale_and_zero_point(spec, kind.data_type, offset)
        nodes, source = [], marker.input[0]
        if spec.bits != kind.width:
            step = float(spec.scale.reshape(-1)[0])
            low = self.add_initializer(_float_tensor(f"{spec.name}.clip_min", np.float32(spec.qmin * step)))
            high = self.add_initializer(_float_tensor(f"{spec.name}.clip_max", np.float32(spec.qmax * step)))
            nodes.append(helper.make_node("Clip", [source, low, high], [f"{marker.output[0]}.clipped"],
                                          name=f"{spec.name}/Clip"))
            source = nodes[-1].output[0]
        quantized = f"{marker.output[0]}.quantized"
        nodes.append(helper.make_node("QuantizeLinear", [source, scale, zero], [quantized],
                                      name=f"{marker.name}/QuantizeLinear"))
        nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [marker.output[0]],
                                      name=f"{marker.name}/DequantizeLinear"))
        return nodes

    def weight(self, marker, record):
        spec = record.spec
        if record.integers is None:
            raise HQODInputError(f"weight quantizer {spec.name} recorded no integers while tracing")
        kind = carrier(spec)
        scale, zero = self.scale_and_zero_point(spec, kind.data_type)
        weights = self.add_initializer(integer_tensor(f"{spec.name}.quantized",
                                                      record.integers.cpu().numpy().astype(np.int64), kind.data_type))
        axis = {} if spec.axis is None else {"axis": spec.axis}
        return [helper.make_node("DequantizeLinear", [weights, scale, zero], [marker.output[0]],
                                 name=f"{marker.name}/DequantizeLinear", **axis)]

    def lower(self):
        nodes = []
        for node in self.graph.node:
            if node.domain != MARKER_DOMAIN:
                nodes.append(node)
                continue
            if node.op_type != MARKER_OP:
                raise HQODInputError(f"unexpected node {node.domain}::{node.op_type} in the traced graph")
            index = next(a.i for a in node.attribute if a.name == "index")
            record = self.records[index]
            self.used.add(index)
            nodes += self.weight(node, record) if record.spec.role == "weight" else self.activation(node, record.spec)
            self.dequantized[node.output[0]] = record.spec
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    def constant(self, name):
        """The value of tensor ``name`` if it is an initializer or a Constant, also behind Identity nodes (the
        exporter shares equal initializers that way); else None."""
        producers = {out: node for node in self.graph.node for out in node.output}
        while name in producers and producers[name].op_type == "Identity":
            name = producers[name].input[0]
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def place_biases(self):
        """The bias of every conv with quantized input and weight: int32 at scale s_in·s_w behind a
        DequantizeLinear with 8-bit input and weight, else moved out of the conv into a float Add."""
        for node in list(self.graph.node):
            if node.op_type != "Conv" or len(node.input) < 3 or not node.input[2]:
                continue
            spec_in, spec_w = (self.dequantized.get(name) for name in node.input[:2])
            if spec_in is None or spec_w is None:
                continue
            bias = self.constant(node.input[2])
            if bias is None:
                raise HQODInputError(f"the bias of {node.name} is not a constant after export; cannot place it")
            if spec_in.bits != 8 or spec_w.bits != 8 or not self.quantize_bias(node, bias, spec_in, spec_w):
                self.float_bias_add(node, bias)

    def quantize_bias(self, node, bias, spec_in, spec_w) -> bool:
        """int32 bias at scale s_in·s_w for ``node``; False when int32 cannot hold it (a tiny s_in·s_w)."""
        scale = (spec_in.scale.double().numpy() * spec_w.scale.double().numpy()).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy()
        integers = np.round(bias.astype(np.float64) / scale.astype(np.float64))
        if np.abs(integers).max(initial=0) > INT32_RANGE[1]:
            return False
        prefix = f"{node.name}.bias"
        values = self.add_initializer(integer_tensor(f"{prefix}.quantized", integers, TensorProto.INT32))
        scale_name = self.add_initializer(_float_tensor(f"{prefix}.scale", scale))
        zero = self.add_initializer(integer_tensor(f"{prefix}.zero_point", np.zeros(bias.shape), TensorProto.INT32))
        output = f"{prefix}.dequantized"
        self.graph.node.append(helper.make_node("DequantizeLinear", [values, scale_name, zero], [output],
                                                name=f"{node.name}/bias/DequantizeLinear", axis=0))
        node.input[2] = output
        return True

    def float_bias_add(self, node, bias):
        """Conv without bias, then Add of the float bias: onnxruntime's WeightBiasQuantization would otherwise round
        the bias of a conv with dequantized input and weight to int32 at s_in·s_w, which at 4 bits is coarse."""
        self.float_biases.append(node.name)
        shaped = self.add_initializer(_float_tensor(f"{node.name}.bias", bias.reshape(1, -1, 1, 1)))
        summed = node.output[0]
        node.output[0] = f"{summed}.without_bias"
        del node.input[2]
        self.graph.node.append(helper.make_node("Add", [node.output[0], shaped], [summed], name=f"{node.name}/bias"))


class Lowered(NamedTuple):
    """What lowering decided: convs whose bias stays float, signed activations carried as UINT8 with zero point 128
    ({name: carrier})."""

    float_biases: list
    shifted: dict


def lower_markers(model: onnx.ModelProto, records) -> Lowered:
    """Lower every marker of ``model`` in place (see the module docstring), quantize conv biases, drop what became
    unused and the marker domain, and sort the nodes topologically. ``records``: the markers' MarkedQuantizer list.
    Returns the conv nodes with quantized input and weight whose bias stays float (in an Add after the conv) and the
    signed activation quantizers carried as UINT8 (``activation_carrier``)."""
    lowering = _Lowering(model, records)
    lowering.lower()
    missing = [records[i].spec.name for i in range(len(records)) if i not in lowering.used]
    if missing:
        raise HQODInputError(f"{len(missing)} quantizers never ran in the exported forward pass (e.g. {missing[0]})")
    lowering.place_biases()
    prune_unused(model)
    sort_topologically(model)
    kept = [opset for opset in model.opset_import if opset.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return Lowered(lowering.float_biases, lowering.shifted)


def prune_unused(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is used (repeatedly) and initializers nothing reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = Counter(name for node in graph.node for name in node.input) + Counter(outputs)
        keep = [node for node in graph.node if any(name in used for name in node.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def sort_topologically(model: onnx.ModelProto) -> None:
    """Order the nodes so that each comes after the producers of its inputs (bias nodes were appended last)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise HQODInputError(f"the exported graph has a cycle or an undefined input near {pending[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
