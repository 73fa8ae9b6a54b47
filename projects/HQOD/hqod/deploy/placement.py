"""Which tensors between quantized ops stay float: read from the traced graph while quantizers are still single
``hqod::FakeQuant`` markers. With MODEL.QUANT.PLACEMENT "conv_input" each conv quantizes its own *input*, so a
tensor that a quantized conv reads can also reach float ops unquantized (residual adds, FPN top-down sums and
upsampling, norms and activations after a conv). With "tensor" (the authors' MQBench placement) a conv whose output
other ops read quantizes it, and what is left float is what those ops compute from quantized values (the sums
themselves, the upsampling, norms and activations between a conv's output quantizer and the next conv)."""
from collections import Counter, defaultdict

from .markers import MARKER_DOMAIN


def _is_marker(node):
    return node.domain == MARKER_DOMAIN


def float_tensors(model):
    """``[{"tensor", "producer", "float_consumers"}]``: every tensor, other than a quantizer's own output, downstream
    of a quantized conv or a quantizer and upstream of a quantizer, that some op other than a quantizer reads in
    float; producers and consumers as "OpType node_name"."""
    graph = model.graph
    producers = {name: node for node in graph.node for name in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    quantized_convs = [node for node in graph.node if node.op_type == "Conv" and node.input
                       and node.input[0] in producers and _is_marker(producers[node.input[0]])]
    downstream = set()
    stack = [name for node in quantized_convs + [n for n in graph.node if _is_marker(n)] for name in node.output]
    while stack:
        name = stack.pop()
        if name in downstream:
            continue
        downstream.add(name)
        stack += [out for node in consumers[name] if not _is_marker(node) for out in node.output]
    upstream, stack = set(), [node.input[0] for node in graph.node if _is_marker(node)]
    while stack:
        name = stack.pop()
        if name in upstream or name not in producers or _is_marker(producers[name]):
            continue
        upstream.add(name)
        stack += list(producers[name].input)
    entries = []
    for node in graph.node:
        for name in node.output:
            readers = [c for c in consumers[name] if not _is_marker(c)]
            if name in downstream and name in upstream and readers and not _is_marker(node):
                entries.append({"tensor": name, "producer": f"{node.op_type} {node.name}",
                                "float_consumers": [f"{c.op_type} {c.name}" for c in readers]})
    return entries


def float_op_counts(entries) -> dict:
    """How many ops of each type read those float tensors, e.g. {"Add": 12, "Resize": 2} (distinct nodes)."""
    readers = {reader for entry in entries for reader in entry["float_consumers"]}
    return dict(Counter(reader.split(" ", 1)[0] for reader in readers).most_common())
