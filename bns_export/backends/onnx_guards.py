"""Input guards inside an ONNX graph: where no bns-export runtime checks the inputs (Triton's ONNX Runtime
backend, any other ONNX consumer), a family's guidance outside its distilled range or not finite, a noise
size the graph was not declared for, and a table index a loop graph does not hold, stop the run instead of
returning a silently wrong sample.

Each guard is a Reshape of a one-element constant to [1 + bad]: it passes (shape [1]) on good input and fails
on bad input in every runtime (a reshape to two elements of one is an error, decided on the host), and its node
is named for the rule it checks, which ONNX Runtime's error names.  Its value (0) is added to every output so
the guard is never pruned.
"""

from __future__ import annotations

from ..contract import GUIDANCE_INPUT, TABLE_INITIALIZERS, TABLE_INPUT
from ..sizes import SizeSet

#: the node names of the guards: what a refusal in Triton's log says
GUIDANCE_GUARD = "bns_guard: guidance must be finite and within the distilled range {lo:g}..{hi:g}"
SIZE_GUARD = "bns_guard: noise size must be one this artifact was declared for: {sizes}"
TABLE_GUARD = "bns_guard: table must index one of the artifact's tables (0..K-1 for the K tables it holds)"


class _Builder:
    """Nodes appended to a graph under one prefix, each output a fresh name."""

    def __init__(self, onnx, graph) -> None:
        self.onnx, self.graph, self.count = onnx, graph, 0

    def __call__(self, op: str, *inputs: str, name: str | None = None, **attrs) -> str:
        self.count += 1
        out = f"bns_guard_{self.count}"
        node = self.onnx.helper.make_node(op, list(inputs), [out], name=name or out, **attrs)
        self.graph.node.append(node)
        return out

    def const(self, values, dtype) -> str:
        import numpy as np

        self.count += 1
        name = f"bns_guard_const_{self.count}"
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name


def _outside(b: _Builder, value: str, lo, hi, dtype) -> str:
    """1 when any element of `value` is outside [lo, hi] (or NaN, for floats), else 0 (int64 scalar); `hi` a number
    or the name of a graph value of `dtype`."""
    import numpy as np

    top = hi if isinstance(hi, str) else b.const(hi, dtype)
    out = b("Or", b("Less", value, b.const(lo, dtype)), b("Greater", value, top))
    if np.dtype(dtype).kind == "f":
        out = b("Or", out, b("IsNaN", value))
    return b("ReduceMax", b("Cast", out, to=7), keepdims=0)


def _size_bad(b: _Builder, noise: str, rank: int, sizes: SizeSet) -> str:
    """1 when the noise's (H, W) is not among the declared sizes, else 0 (int64 scalar)."""
    import numpy as np

    shape = b("Shape", noise)
    h = b("Gather", shape, b.const(rank - 2, np.int64), axis=0)
    w = b("Gather", shape, b.const(rank - 1, np.int64), axis=0)
    if sizes.ranged:
        checks = []
        for side, lo, hi in ((h, sizes.lo[0], sizes.hi[0]), (w, sizes.lo[1], sizes.hi[1])):
            checks += [
                b("GreaterOrEqual", side, b.const(lo, np.int64)),
                b("LessOrEqual", side, b.const(hi, np.int64)),
                b("Equal", b("Mod", side, b.const(sizes.step, np.int64)), b.const(0, np.int64)),
            ]
        ok = checks[0]
        for c in checks[1:]:
            ok = b("And", ok, c)
    else:
        ok = None
        for sh, sw in sizes.probes():
            match = b("And", b("Equal", h, b.const(sh, np.int64)), b("Equal", w, b.const(sw, np.int64)))
            ok = match if ok is None else b("Or", ok, match)
    return b("Cast", b("Not", ok), to=7)


def add_input_guards(
    onnx, model, guidance_range: tuple[float, float] | None, sizes: SizeSet | None, tables: int = 0
) -> None:
    """Append the guards a family's guidance, declared sizes and a loop graph's tables (`tables`: how many) need
    (none for a graph with none of them)."""
    import numpy as np

    if guidance_range is None and sizes is None and not tables:
        return
    graph = model.graph
    b = _Builder(onnx, graph)
    rules = []
    if guidance_range is not None:
        lo, hi = guidance_range
        rules.append((GUIDANCE_GUARD.format(lo=lo, hi=hi), _outside(b, GUIDANCE_INPUT, lo, hi, np.float32)))
    if tables:  # the count read from the tables themselves, so that new tables (refit --solver) keep it right
        count = b("Squeeze", b("Shape", TABLE_INITIALIZERS["nfe"]), b.const([0], np.int64))
        last = b("Sub", count, b.const(1, np.int64))
        rules.append((TABLE_GUARD, _outside(b, TABLE_INPUT, 0, last, np.int64)))
    if sizes is not None:
        noise = graph.input[0]
        rank = len(noise.type.tensor_type.shape.dim)
        rules.append((SIZE_GUARD.format(sizes=sizes.describe()), _size_bad(b, noise.name, rank, sizes)))
    zero = None
    for rule, bad in rules:
        target = b("Add", b.const([1], np.int64), b("Reshape", bad, b.const([1], np.int64)))
        guard = b("Reshape", b.const([0.0], np.float32), target, name=rule)
        total = b("ReduceSum", guard, keepdims=0)
        zero = total if zero is None else b("Add", zero, total)
    for out in graph.output:  # every output adds the guards' zero: they run whenever an output is asked for
        inner = f"{out.name}_unguarded"
        for node in graph.node:  # the producer and any consumer (the decoder reads the sample) take the inner name
            for field in (node.output, node.input):
                for i, name in enumerate(field):
                    if name == out.name:
                        field[i] = inner
        graph.node.append(onnx.helper.make_node("Add", [inner, zero], [out.name], name=f"bns_guarded_{out.name}"))
