"""The loop sampler: one graph whose network runs once inside a loop over data tables, for any of K tables.

Where the unrolled sampler bakes one table into n copies of the step, this one takes `table` (B,) int64
and runs `ns_loop` over the K tables padded to the declared maximum NFE, held as small initializers
(contract.TABLE_INITIALIZERS): one copy of the weights serves every table and NFE, and new tables replace them
without another export (`refit --solver`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..contract import TABLE_INITIALIZERS, TABLE_INPUT
from ..errors import BNSError
from ..solvers.sampler import ns_loop, padded_tables
from ..solvers.table import NSSolver, SolverFamily
from .unroll import UnrolledSampler


class Tables(nn.Module):
    """K tables padded to `steps` NFE (`padded_tables`) as buffers: held by LoopSampler as `tables`, they are the
    graph's initializers contract.TABLE_INITIALIZERS names."""

    def __init__(self, tables: list[NSSolver], steps: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        for name, v in zip(TABLE_INITIALIZERS, padded_tables(tables, steps)):
            v = torch.as_tensor(v, device=device)
            self.register_buffer(name, v if name == "nfe" else v.to(dtype))


class LoopSampler(UnrolledSampler):
    """forward(noise[, condition inputs], table) -> sample [, image]: `ns_loop` with each sample's table."""

    def __init__(
        self,
        field: nn.Module,
        tables: list[NSSolver],
        steps: int,
        dtype: torch.dtype = torch.float32,
        decoder: nn.Module | None = None,
    ) -> None:
        if any(isinstance(table, SolverFamily) for table in tables):
            raise BNSError("a loop graph takes single tables; a guidance family compiles to the unrolled onnx format")
        super().__init__(field, tables[0], dtype, decoder)
        self.steps = steps
        self.tables = Tables(tables, steps, dtype, self.t.device)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The unrolled graph's inputs, then the table index."""
        return (*super().input_names, TABLE_INPUT)

    def forward(self, noise: Tensor, *inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """noise [, labels | cond | one tensor per named condition], table -> sample [, image]."""
        *inputs, table = inputs
        return self.sample(noise, self.condition_of(inputs), None, table)

    def sample(
        self,
        noise: Tensor,
        condition: Tensor | None = None,
        guidance: Tensor | None = None,
        table: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`ns_loop` over each sample's table (None: table 0), as many steps as the largest NFE among them."""
        if table is None:
            table = torch.zeros(noise.shape[0], dtype=torch.long, device=noise.device)
        tb = self.tables  # index_select: a Gather on the initializers themselves, which keep their names
        t, a, b, n = (v.index_select(0, table) for v in (tb.t, tb.a, tb.b, tb.nfe))
        x = ns_loop(self.field, t, a, b, n.max(), self.field.start(noise), condition)
        return x if self.decoder is None else (x, self.decoder(x))
