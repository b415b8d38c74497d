"""Does loading an AOTInductor package crash this torch?  Builds packages from a plain nn.Linear up to our
unrolled samplers and loads each in a child process (faulthandler on), printing its exit code and stderr.

    python tools/aoti_crash_check.py cuda      # on a GPU (torch 2.11.0+cu130 on an H200: every package segfaults)
    python tools/aoti_crash_check.py cpu       # the same steps on the CPU (all load and run)

Variants: nn.Linear; nn.Linear with a 0-d CPU-made buffer (pytorch/pytorch#172739's pattern); the
analytic:gmm sampler (solver table as lifted constants); the same with the table as persistent
buffers; the digits sampler at 2 NFE.
"""

import os
import subprocess
import sys
import tempfile
import time

import torch

PROBE = """
import json, sys, torch
m = torch._inductor.aoti_load_package(sys.argv[1])
print("loaded")
y = m(torch.randn(*json.loads(sys.argv[2]), device=sys.argv[3]))
print("ran", (y[0] if isinstance(y, (list, tuple)) else y).shape)
"""


def build_and_probe(name: str, module: torch.nn.Module, x: torch.Tensor, folder: str) -> None:
    """Export, package into `folder` and load `module` in a child process; print what happened."""
    dev = str(x.device)
    t0 = time.time()
    try:
        ep = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=8)},))
        path = f"{folder}/{name}.pt2"
        torch._inductor.aoti_compile_and_package(ep, package_path=path)
    except Exception as e:
        print(f"[{name}] build failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, path, str(list(x.shape)), dev], capture_output=True, text=True, env=env
    )
    consts = {k: (str(v.device), tuple(v.shape), str(v.dtype)) for k, v in list(ep.constants.items())[:6]}
    print(f"[{name}] built in {time.time() - t0:.0f} s; load rc {r.returncode}; constants {consts}", flush=True)
    print(f"[{name}] stdout: {r.stdout[-300:]!r}", flush=True)
    print(f"[{name}] stderr: {r.stderr[-2500:]}", flush=True)


class Tiny(torch.nn.Module):
    """nn.Linear(8, 8), optionally times a 0-d buffer made on the CPU and moved with the module."""

    def __init__(self, scalar_buffer: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        if scalar_buffer:
            self.register_buffer("c", torch.tensor(0.5), persistent=False)
        self.scalar_buffer = scalar_buffer

    def forward(self, x):
        y = self.lin(x)
        return y * self.c if self.scalar_buffer else y


def main() -> None:
    from bns_export.compile.unroll import UnrolledSampler
    from bns_export.loaders import load_model
    from bns_export.solvers import baseline

    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        x = torch.randn(2, 8, device=dev)
        build_and_probe("tiny", Tiny(False).to(dev), x, tmp)
        build_and_probe("tiny_scalar_buffer", Tiny(True).to(dev), x, tmp)

        f = load_model("analytic:gmm", device=dev)
        s = baseline("euler", 2, f.schedule, f.t_lo, f.t_hi)
        xs = torch.randn(2, *f.sample_shape, device=dev)
        build_and_probe("gmm_sampler", UnrolledSampler(f, s).eval(), xs, tmp)
        u = UnrolledSampler(f, s).eval()
        for k in ("t", "a", "b"):  # the table as persistent buffers (state_dict), not lifted constants
            v = getattr(u, k)
            delattr(u, k)
            u.register_buffer(k, v.clone(), persistent=True)
        build_and_probe("gmm_sampler_persistent", u, xs, tmp)

        d = load_model("digits", device=dev)
        sd = baseline("dpm++2m", 2, d.schedule, d.t_lo, d.t_hi)
        xd = torch.randn(2, *d.sample_shape, device=dev)
        build_and_probe("digits_sampler", UnrolledSampler(d, sd).eval(), xd, tmp)


if __name__ == "__main__":
    main()
