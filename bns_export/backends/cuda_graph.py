"""CUDA-graph replay for the torch backends: the unrolled sampler (an eager module or an AOTInductor
package) captured once per batch size and replayed.

The sampler is launch-bound at small batches (one NFE is dozens of small kernels), so replaying one
captured graph per batch size removes the per-kernel launch cost.  Capture follows PyTorch's recipe
(torch.cuda.graphs): static input buffers, warm-up iterations on a side stream, capture, then each
call copies its inputs into the static buffers, replays, and clones the static outputs.  Calls are
serialised by a lock (the static buffers are shared).  A CPU device is refused in one line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..devicespec import is_cuda
from ..errors import BNSError

WARMUP = 3


def check_cuda_graph_device(device: str) -> None:
    """CUDA graphs need a CUDA device: anything else is one line (exit code 2)."""
    if not is_cuda(device):
        raise BNSError(f"cuda_graph needs a CUDA device; this artifact runs on {device} (drop --cuda-graph)")


class CudaGraphs:
    """fn(*tensors) -> tensor or tuple of tensors, captured per batch size (the first input's dim 0) and replayed."""

    def __init__(self, fn: Callable, device: str) -> None:
        check_cuda_graph_device(device)
        self.fn = fn
        self.device = device
        self.graphs: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _capture(self, args: tuple):
        import torch

        static_in = tuple(a.detach().clone() for a in args)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(WARMUP):  # lazy initialisation, cuBLAS workspaces and autotuning happen here
                self.fn(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_out = self.fn(*static_in)
        return graph, static_in, static_out

    def __call__(self, *args):
        batch = int(args[0].shape[0])
        with self._lock:
            if batch not in self.graphs:
                self.graphs[batch] = self._capture(args)
            graph, static_in, static_out = self.graphs[batch]
            for buffer, value in zip(static_in, args):
                buffer.copy_(value)
            graph.replay()
            if isinstance(static_out, (tuple, list)):
                return tuple(o.clone() for o in static_out)
            return static_out.clone()
