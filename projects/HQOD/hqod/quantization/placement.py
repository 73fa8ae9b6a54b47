"""Activation quantizer placement "tensor" (MODEL.QUANT.PLACEMENT): quantize each producing tensor once, as the
authors' MQBench setup did, instead of each conv's input ("conv_input").

``DataflowRecorder`` watches convert_to_qat's eval dry run (a ``TorchFunctionMode`` for every torch function outside
the convs, forward hooks for the convs, each conv module with its norm and activation one node) and records which op
reads which tensor. ``plan_placement`` derives from it, for any architecture:

- a conv whose output (after its own norm and activation) is read by anything but quantized convs (a residual add, an
  FPN top-down sum or its upsampling, a GroupNorm, P7's ReLU beside the head, ...) gets an *output* quantizer; a ReLU
  that is the only reader of a conv's output and feeds only quantized convs is transparent (onnxruntime fuses it
  into the next QuantizeLinear); a conv whose output reaches no quantized conv (a predictor: a graph output) stays
  float;
- the convs that read one tensor share one quantizer, computed once per forward (``ActivationMemo``): the output
  quantizer of the conv producing it if it has one, else one input quantizer shared by the readers (per FPN level:
  call k of one conv shares with call k of another, e.g. ``cls_subnet.0`` and ``bbox_subnet.0``)."""
import itertools
from collections import defaultdict
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

PLACEMENTS = ("conv_input", "tensor")
# Ops that pass a conv's output on to quantized convs without breaking onnxruntime's Conv -> QuantizeLinear fusion.
TRANSPARENT = ("relu", "relu_")


class ConvCall(NamedTuple):
    """Call ``call`` (FPN level) of conv ``name`` in the dry run: the values it read and produced."""

    name: str
    call: int
    source: int
    output: int


class Op(NamedTuple):
    """A torch function call outside the convs."""

    index: int
    name: str


class Slot(NamedTuple):
    """Where a conv keeps one activation quantizer: ``role`` "input" or "output", index ``slot`` (FPN level)."""

    role: str
    conv: str
    slot: int


class DataflowRecorder(TorchFunctionMode):
    """Context manager over one forward pass of a model with convs ``convs`` ([(name, module)]): values (tensor
    versions) and their readers. An in-place op reads the old value of a tensor and produces a new one."""

    def __init__(self, convs):
        super().__init__()
        self.convs = convs
        self.readers = defaultdict(list)  # value -> [ConvCall or Op]
        self.outputs = {}  # Op -> [value]
        self.conv_calls = []
        self._values, self._alive, self._ids = {}, [], itertools.count()
        self._calls = defaultdict(int)
        self._inside = None  # (module, name, call, source) of the conv running now
        self._handles = []

    def __enter__(self):
        for name, conv in self.convs:
            self._handles.append(conv.register_forward_pre_hook(self._conv_enters(name)))
            self._handles.append(conv.register_forward_hook(self._conv_leaves))
        return super().__enter__()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._alive.clear()  # the dry run's tensors
        return super().__exit__(*exc)

    def _value(self, tensor):
        if id(tensor) not in self._values:
            return self._produce(tensor)
        return self._values[id(tensor)]

    def _produce(self, tensor):
        self._values[id(tensor)] = value = next(self._ids)
        self._alive.append(tensor)  # keeps id() unique during the dry run
        return value

    def _conv_enters(self, name):
        def hook(module, inputs):
            if self._inside is None:
                call, self._calls[name] = self._calls[name], self._calls[name] + 1
                self._inside = (module, name, call, self._value(inputs[0]))
        return hook

    def _conv_leaves(self, module, inputs, output):
        if self._inside is not None and self._inside[0] is module:
            _, name, call, source = self._inside
            self._inside = None
            conv_call = ConvCall(name, call, source, self._produce(output))
            self.readers[source].append(conv_call)
            self.conv_calls.append(conv_call)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self._inside is not None:
            return result
        name = getattr(func, "__name__", str(func))
        read = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        in_place = name.endswith("_") or name.startswith("__i")
        produced = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)
                    and (in_place or not any(t is r for r in read))]  # x.contiguous() returning x changes nothing
        if produced:
            op = Op(next(self._ids), name)
            for tensor in read:
                self.readers[self._value(tensor)].append(op)
            self.outputs[op] = [self._produce(t) for t in produced]
        return result


class Placement(NamedTuple):
    """The convs with an output quantizer, and the activation quantizer slots that share one quantizer."""

    output_convs: set
    classes: list  # [[Slot]]: each list one quantizer, in order of first use


def plan_placement(recorder: DataflowRecorder, slots: dict) -> Placement:
    """The "tensor" placement of a recorded dry run; ``slots``: {conv name: activation quantizers per role (FPN
    levels, or 1)}; call k of a conv uses slot k % slots."""
    reaches, feeds_only_convs = _reaches_conv(recorder), _feeds_only_convs(recorder)
    output_convs = {c.name for c in recorder.conv_calls if reaches(c.output) and not feeds_only_convs(c.output)}
    producers = {c.output: c for c in recorder.conv_calls}
    parent = {}

    def find(slot):
        parent.setdefault(slot, slot)
        while parent[slot] != slot:
            parent[slot] = parent[parent[slot]]
            slot = parent[slot]
        return slot

    readers = defaultdict(list)
    for conv_call in recorder.conv_calls:
        find(Slot("input", conv_call.name, conv_call.call % slots[conv_call.name]))
        if conv_call.name in output_convs:
            find(Slot("output", conv_call.name, conv_call.call % slots[conv_call.name]))
        readers[conv_call.source].append(conv_call)
    for source, calls in readers.items():
        members = [Slot("input", c.name, c.call % slots[c.name]) for c in calls]
        producer = producers.get(source)
        if producer is not None and producer.name in output_convs:
            members.append(Slot("output", producer.name, producer.call % slots[producer.name]))
        for member in members[1:]:
            parent[find(member)] = find(members[0])
    classes = defaultdict(list)
    for slot in parent:
        classes[find(slot)].append(slot)
    return Placement(output_convs, list(classes.values()))


def _reaches_conv(recorder):
    known = {}

    def reaches(value):
        if value not in known:
            known[value] = False  # no cycles in a forward pass; guards against re-entry
            known[value] = any(isinstance(r, ConvCall) or any(reaches(v) for v in recorder.outputs[r])
                               for r in recorder.readers.get(value, ()))
        return known[value]

    return reaches


def _feeds_only_convs(recorder):
    def feeds(value):
        readers = recorder.readers.get(value, [])
        if readers and all(isinstance(r, ConvCall) for r in readers):
            return True
        if len(readers) == 1 and isinstance(readers[0], Op) and readers[0].name in TRANSPARENT:
            return all(feeds(v) for v in recorder.outputs[readers[0]])
        return False

    return feeds


class ActivationMemo:
    """One forward pass's activation quantizations under "tensor" placement: a quantizer applied again to the same
    tensor (same version) returns its first result, and applied to its own result returns it unchanged, so a tensor
    read by several convs is quantized once. Cleared before and after each forward pass of the model."""

    def __init__(self):
        self._entries = {}

    def __call__(self, quantizer, x):
        hit = self._entries.get((id(quantizer), id(x)))
        if hit is not None and hit[0] is x and hit[1] == x._version:
            return hit[2]
        y = quantizer(x)
        self._entries[(id(quantizer), id(x))] = (x, x._version, y)
        self._entries[(id(quantizer), id(y))] = (y, y._version, y)
        return y

    def clear(self):
        self._entries.clear()
