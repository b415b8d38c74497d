"""Walking an ONNX graph with its subgraphs (a Loop's body): the exporter, the TensorRT parser check and refit all
read every node and initializer, wherever the graph keeps them.  Plain protobuf access: no onnx import."""

from __future__ import annotations


def graphs(graph):
    """`graph` (an onnx GraphProto) and every subgraph its nodes hold, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from graphs(attr.g)


def all_nodes(graph):
    """Every node of `graph` and of its subgraphs."""
    for g in graphs(graph):
        yield from g.node


def all_initializers(graph):
    """Every initializer of `graph` and of its subgraphs."""
    for g in graphs(graph):
        yield from g.initializer


def hoist_into_loops(graph) -> int:
    """Move each initializer that only a Loop's body reads into that body; returns how many moved.

    ONNX Runtime prepacks a graph's own constant initializers for its convolution and matrix kernels, but sees an
    outer-scope value read inside a subgraph as an input of each iteration, which its kernels cannot take for a
    constant.  Each weight is still stored once."""
    outer = {name for node in graph.node if node.op_type != "Loop" for name in node.input}
    outer |= {o.name for o in graph.output}
    moved = 0
    for loop in (n for n in graph.node if n.op_type == "Loop"):
        body = next(a.g for a in loop.attribute if a.name == "body")
        inside = {name for node in all_nodes(body) for name in node.input}
        taken = {name for name in inside if name not in outer and name not in loop.input}
        keep = []
        for init in graph.initializer:
            (body.initializer if init.name in taken else keep).append(init)
        moved += len(graph.initializer) - len(keep)
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return moved
