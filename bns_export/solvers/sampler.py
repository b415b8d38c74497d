"""The one NS sampling loop, shared by evaluation, distillation (differentiated) and the compiler."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .table import NSSolver

Velocity = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def ns_sample(u: Velocity, t: Tensor, a: Tensor, b: Tensor, x0: Tensor, condition: Tensor | None = None) -> Tensor:
    """Run x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u(x_j, t_j, labels) for i < n; return x_n.

    t, a (n,) and b (n, n) are tensors of x0's dtype: constants when sampling or compiling,
    parameters with gradients during distillation.  Per sample (a guidance family interpolated at each
    sample's guidance) they are t, a (n, B) and b (n, n, B): u then sees one time per sample.  The loop is
    plain Python over a fixed n, so tracing it unrolls it into one static graph.
    """
    n = t.shape[0]
    shape = (-1,) + (1,) * (x0.ndim - 1)

    def coef(c: Tensor) -> Tensor:  # a per-sample coefficient broadcast over the sample's dims
        return c if c.ndim == 0 else c.reshape(shape)

    us: list[Tensor] = []
    x = x0
    for i in range(n):
        us.append(u(x, t[i], condition))
        x = coef(a[i]) * x0
        for j in range(i + 1):
            x = x + coef(b[i, j]) * us[j]
    return x


def padded_tables(tables: list[NSSolver], steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """K tables of n_k <= `steps` NFE as arrays (K, steps), (K, steps), (K, steps, steps) and their NFEs (K,): row
    i >= n_k repeats row n_k - 1 (b beyond column n_k - 1 zero), so extra steps give x_n again and a batch that mixes
    tables runs its largest NFE with every sample's own result."""
    t, a = np.zeros((len(tables), steps)), np.zeros((len(tables), steps))
    b = np.zeros((len(tables), steps, steps))
    for k, table in enumerate(tables):
        n = table.nfe
        t[k, :n], t[k, n:] = table.t, table.t[-1]
        a[k, :n], a[k, n:] = table.a, table.a[-1]
        b[k, :n, :n], b[k, n:, :n] = table.b, table.b[-1]
    return t, a, b, np.array([table.nfe for table in tables], dtype=np.int64)


def ns_loop(
    u: Velocity, t: Tensor, a: Tensor, b: Tensor, n: Tensor, x0: Tensor, condition: Tensor | None = None
) -> Tensor:
    """`ns_sample`'s recurrence x_{i+1} = a_i x_0 + sum_{j<=i} b_ij u(x_j, t_j) as one `while_loop` of n steps
    whose body calls u once: per-sample padded tables t, a (B, M), b (B, M, M) (`padded_tables`), n a 0-d
    tensor <= M.  The velocities live in a (M, B, ...) buffer, zero until written, so row i of b sums over it
    whole; exported, the network is stored once inside an ONNX Loop and the tables and n are data."""
    from torch._higher_order_ops.while_loop import while_loop

    steps = t.shape[1]
    per_sample = (-1,) + (1,) * (x0.ndim - 1)
    slot = torch.arange(steps, device=x0.device).reshape((steps,) + (1,) * x0.ndim)

    def more(i: Tensor, x: Tensor, us: Tensor) -> Tensor:
        return i < n

    def step(i: Tensor, x: Tensor, us: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        at = i.reshape(1)
        us = torch.where(slot == i, u(x, t.index_select(1, at).reshape(-1), condition).unsqueeze(0), us)
        row = b.index_select(1, at).reshape(-1, steps).transpose(0, 1).reshape((steps, *per_sample))
        return i + 1, a.index_select(1, at).reshape(per_sample) * x0 + (row * us).sum(0), us

    start = torch.zeros((), dtype=torch.long, device=x0.device)
    us = torch.zeros((steps, *x0.shape), dtype=x0.dtype, device=x0.device)
    return while_loop(more, step, (start, x0.clone(), us))[1]  # x0 is also read inside: carried as a copy


def recomputed(u: Velocity, calls: int) -> Velocity:
    """`u` whose activations are recomputed in the backward pass instead of kept (gradient checkpointing, Chen et
    al. 2016), but for the last of every `calls` calls (a loop's last): differentiating `ns_sample` then holds the n
    states and one network call's activations at a time, so distillation's memory is flat in the NFE, for one more
    forward call per step but the last; the backward pass needs the last call's activations first, so keeping them
    adds nothing to the peak."""
    from torch.utils.checkpoint import checkpoint

    made = itertools.count(1)

    def call(x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        if next(made) % calls == 0:
            return u(x, t, condition)
        return checkpoint(u, x, t, condition, use_reentrant=False)

    return call


def family_tables(
    knots: Tensor, stacked: tuple[Tensor, Tensor, Tensor], guidance: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """A guidance family's (t, a, b) at each sample's guidance (B,): (n, B), (n, B), (n, n, B), from the knots (K,)
    and the knots' tables stacked (K, n), (K, n), (K, n, n), by the piecewise-linear weights
    s_j = clamp((w - w_j) / (w_j+1 - w_j), 0, 1) of `SolverFamily.at`; differentiable in the tables (a family
    distilled jointly) and traceable (the compiled graph)."""
    s = torch.clamp((guidance[:, None] - knots[:-1]) / (knots[1:] - knots[:-1]), 0.0, 1.0)  # (B, K - 1)
    t, a, b = (v[0].reshape(1, -1) + s @ (v[1:] - v[:-1]).flatten(1) for v in stacked)  # (B, n), (B, n), (B, n * n)
    n = t.shape[1]
    return t.transpose(0, 1), a.transpose(0, 1), b.reshape(-1, n, n).permute(1, 2, 0)


def solver_tensors(
    solver: NSSolver, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """The table as tensors of the sampling dtype."""
    return tuple(torch.as_tensor(v, dtype=dtype, device=device) for v in (solver.t, solver.a, solver.b))


def sample_batches(
    field: torch.nn.Module,
    t: Tensor,
    a: Tensor,
    b: Tensor,
    noise: Tensor,
    condition: Tensor | None = None,
    batch_size: int = 256,
) -> Tensor:
    """`ns_sample` from x_0 = field.start(noise), in batches, without gradients."""
    out = []
    with torch.no_grad():
        for lo in range(0, noise.shape[0], batch_size):
            lab = None if condition is None else condition[lo : lo + batch_size]
            out.append(ns_sample(field, t, a, b, field.start(noise[lo : lo + batch_size]), lab))
    return torch.cat(out)


def sample(field: torch.nn.Module, solver: NSSolver, noise: Tensor, condition: Tensor | None = None) -> Tensor:
    """Sample with `solver` from `noise` ~ N(0, I): x_0 = field.init_scale * noise, return x_n."""
    t, a, b = solver_tensors(solver, noise.dtype, noise.device)
    with torch.no_grad():
        return ns_sample(field, t, a, b, field.start(noise), condition)
