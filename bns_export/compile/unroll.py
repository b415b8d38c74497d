"""The unrolled sampler: one module, noise (+ labels) in, sample (+ decoded image) out, the solver baked in.

It calls the same `ns_sample` loop as evaluation and distillation with the same fp32 constants,
so its eager output equals `solvers.sample` bit for bit, and tracing it unrolls the n steps
into one static graph whose network weights are shared by every step.  With a guidance family the
graph also takes `guidance` (B,): the tables are interpolated per sample inside the graph.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ..contract import OUTPUTS
from ..devices import device_of
from ..errors import BNSError
from ..solvers.sampler import family_tables, ns_sample, solver_tensors
from ..solvers.table import SolverFamily, Table


class UnrolledSampler(nn.Module):
    """forward(noise[, labels]) -> sample, or (sample, decoder(sample)) with a decoder, for a (guided)
    field and an NS table."""

    def __init__(
        self, field: nn.Module, solver: Table, dtype: torch.dtype = torch.float32, decoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.field = field
        self.decoder = decoder
        self.nfe = solver.nfe
        self.conditional = field.conditional
        #: named conditions: the graph takes one input per name and packs them for the loop
        layout = field.condition_layout
        self.layout = layout if layout is not None and not layout.legacy else None
        _ = field.init_scale  # computed (and cached) now, outside any trace: the graph reads a constant
        #: a guidance family: the graph takes guidance (B,) in this range and interpolates the tables
        self.guidance_range = solver.guidance_range if isinstance(solver, SolverFamily) else None
        device = device_of(field)
        if self.guidance_range is None:
            t, a, b = solver_tensors(solver, dtype, device)
        else:
            if not self.conditional or getattr(field, "embedded", False):
                raise BNSError("a guidance family needs a conditional model with classifier-free guidance")
            knots, *stacked = (
                torch.as_tensor(v, dtype=dtype, device=device) for v in (solver.knots, *solver.stacked())
            )
            t, a, b = (v[0] for v in stacked)
            self.register_buffer("knots", knots, persistent=False)
            for name, v in zip(("knot_t", "knot_a", "knot_b"), stacked):  # every knot's table: (K, ...)
                self.register_buffer(name, v, persistent=False)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs: ("sample",), or ("sample", "image") with a decoder."""
        return OUTPUTS if self.decoder is not None else OUTPUTS[:1]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs: noise, then the condition (labels, cond, or one input per named condition),
        then guidance with a family."""
        if self.layout is not None:
            names = ("noise", *self.layout.names)
        elif not self.conditional:
            names = ("noise",)
        else:
            names = ("noise", "cond" if self.field.cond_shape is not None else "labels")
        return names if self.guidance_range is None else (*names, "guidance")

    def forward(self, noise: Tensor, *inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """noise [, labels | cond | one tensor per named condition] [, guidance] -> sample [, image]."""
        guidance = None
        if self.guidance_range is not None:
            *inputs, guidance = inputs
        return self.sample(noise, self.condition_of(inputs), guidance)

    def condition_of(self, inputs) -> Tensor | None:
        """The loop's one condition tensor from the graph's condition inputs (packed when they are named)."""
        if self.layout is not None:
            return self.layout.pack(dict(zip(self.layout.names, inputs)))
        return inputs[0] if inputs else None

    def tables_at(self, guidance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The family's (t, a, b) at each sample's guidance (B,): (n, B), (n, B), (n, n, B) (family_tables)."""
        return family_tables(self.knots, (self.knot_t, self.knot_a, self.knot_b), guidance)

    def sample(
        self, noise: Tensor, condition: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The loop on the pipeline's one condition tensor (packed when there are several names); a family's
        tables at `guidance` (B,), clamped to the family's range."""
        if self.guidance_range is None:
            x = ns_sample(self.field, self.t, self.a, self.b, self.field.start(noise), condition)
        else:
            w = torch.clamp(guidance.to(noise.dtype), *self.guidance_range)
            t, a, b = self.tables_at(w)
            u = functools.partial(self.field, guidance=w)
            x = ns_sample(u, t, a, b, self.field.start(noise), condition)
        return x if self.decoder is None else (x, self.decoder(x))

    def named(self, noise: Tensor, condition: Tensor | None = None, *controls: Tensor | None) -> dict[str, Tensor]:
        """Outputs by name (no gradients) for the pipeline's condition tensor and the sampler's controls (a family's
        guidance; a loop's table index): what runners and conformance files hold."""
        with torch.no_grad():
            out = self.sample(noise, condition, *controls)
        return dict(zip(self.output_names, out if isinstance(out, tuple) else (out,)))
