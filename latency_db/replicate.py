"""Copies of one block in one ONNX model, chained or side by side, each with its own weights.

Why: inside a network whose weights exceed the last-level cache, every block reads its weights
from DRAM while its input activation is still hot (the previous block just wrote it). Timing
``k`` copies of a block in one session reproduces that: each copy has its own weights and a hot
input (the previous copy's output, or the shared input); after a cache flush every copy streams
its weights from DRAM as it would inside the network. The run's time divided by ``k`` is the
block's streamed latency, and the run is ``k`` times longer than one block, so the timer's
resolution, the per-call overhead and the first copy's code misses stop mattering.
"""

from __future__ import annotations

from typing import Any

#: Version of the streamed (cold) timing protocol, stored with every cold timing. Entries from
#: another protocol (or none: measured before versions were stored, when a cold timing was one
#: flushed run after a twin session) are re-measured by the table builder. Version 2: an
#: entry's weight bytes, the cache model's input next to the cold timing, are those of the
#: exported model, not of the module's parameters (see ``profilers.onnx_weight_bytes``).
COLD_PROTOCOL = "streamed/2"


def _shape(value: Any) -> tuple[int | str, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)


def replicate_onnx(model: bytes, copies: int) -> bytes:
    """A model that runs ``copies`` copies of ``model``, each with its own weights.

    A block whose one output has its input's shape is *chained*: copy ``i`` reads copy
    ``i - 1``'s output, as blocks do inside a network. Other blocks (stems, downsampling,
    heads) run side by side on the one input, with ``copies`` outputs. Chaining matters: 20
    side-by-side copies of a Transformer FFN block ran 27% slower per copy than 20 chained ones
    (which matched the networks), attention blocks alike either way. Float weight tensors of
    copy ``i`` are scaled by ``1 + 1e-4 * i``: the copies hold distinct bytes, so no runtime can
    share one set of weights between them.
    """
    # onnx is imported here: the profilers import this module on every search's start-up.
    import onnx
    from onnx import numpy_helper

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    source = onnx.load_from_string(model)
    graph = source.graph
    if len(graph.input) != 1:
        raise ValueError("only models with one input can be replicated")
    first_input = graph.input[0].name
    chained = len(graph.output) == 1 and _shape(graph.output[0]) == _shape(graph.input[0])
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    copy_input = first_input
    for copy in range(copies):

        def rename(name: str, copy: int = copy, copy_input: str = copy_input) -> str:
            if name == first_input:
                return copy_input
            return "" if name == "" else f"{name}__copy{copy}"

        for tensor in graph.initializer:
            values = numpy_helper.to_array(tensor)
            if values.dtype.kind == "f" and values.size > 1:
                values = (values * (1.0 + 1e-4 * copy)).astype(values.dtype)
            initializers.append(numpy_helper.from_array(values, rename(tensor.name)))
        for index, node in enumerate(graph.node):
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = rename(node.name or f"node{index}")
            del clone.input[:]
            clone.input.extend(rename(name) for name in node.input)
            del clone.output[:]
            clone.output.extend(rename(name) for name in node.output)
            nodes.append(clone)
        if chained:
            copy_input = rename(graph.output[0].name)
        if not chained or copy == copies - 1:
            for output in graph.output:
                renamed = onnx.ValueInfoProto()
                renamed.CopyFrom(output)
                renamed.name = rename(output.name)
                outputs.append(renamed)
    replicated = onnx.helper.make_graph(
        nodes, f"{graph.name}_x{copies}", [graph.input[0]], outputs, initializers
    )
    result = onnx.helper.make_model(replicated, opset_imports=source.opset_import)
    result.ir_version = source.ir_version
    serialized: bytes = result.SerializeToString()
    return serialized
