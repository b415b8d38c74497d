"""The unrolled sampler: one module, noise (+ labels) in, sample (+ decoded image) out, the solver baked in.

It calls the same `ns_sample` loop as evaluation and distillation with the same fp32 constants,
so its eager output equals `solvers.sample` bit for bit, and tracing it unrolls the n steps
into one static graph whose network weights are shared by every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..devices import device_of
from ..solvers.sampler import ns_sample, solver_tensors
from ..solvers.table import NSSolver

#: output names: the sample (latents for a latent model), then the decoded image when a decoder is appended
OUTPUTS = ("sample", "image")


class UnrolledSampler(nn.Module):
    """forward(noise[, labels]) -> sample, or (sample, decoder(sample)) with a decoder, for a (guided)
    field and an NS table."""

    def __init__(
        self, field: nn.Module, solver: NSSolver, dtype: torch.dtype = torch.float32, decoder: nn.Module | None = None
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
        t, a, b = solver_tensors(solver, dtype, device_of(field))
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs: ("sample",), or ("sample", "image") with a decoder."""
        return OUTPUTS if self.decoder is not None else OUTPUTS[:1]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs: noise, then the condition (labels, cond, or one input per named condition)."""
        if self.layout is not None:
            return ("noise", *self.layout.names)
        if not self.conditional:
            return ("noise",)
        return ("noise", "cond" if self.field.cond_shape is not None else "labels")

    def forward(self, noise: Tensor, *conditions: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """noise [, labels | cond | one tensor per named condition] -> sample [, image]."""
        if self.layout is not None:
            condition = self.layout.pack(dict(zip(self.layout.names, conditions)))
        else:
            condition = conditions[0] if conditions else None
        return self.sample(noise, condition)

    def sample(self, noise: Tensor, condition: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The loop on the pipeline's one condition tensor (packed when there are several names)."""
        x = ns_sample(self.field, self.t, self.a, self.b, self.field.start(noise), condition)
        return x if self.decoder is None else (x, self.decoder(x))

    def named(self, noise: Tensor, condition: Tensor | None = None) -> dict[str, Tensor]:
        """Outputs by name (no gradients) for the pipeline's condition tensor: what runners and conformance
        files hold."""
        with torch.no_grad():
            out = self.sample(noise, condition)
        return dict(zip(self.output_names, out if isinstance(out, tuple) else (out,)))
