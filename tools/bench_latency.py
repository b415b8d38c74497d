"""Latency of the compiled sampler versus the eager loop, and versus its floor; writes docs/benchmarks.md.

    python tools/bench_latency.py                        # digits, NFE 8 and 16, batch 1/16/64
    python tools/bench_latency.py --model mnist --guidance 3 --no-aoti

For each NFE: eager PyTorch sampler loop (torch.no_grad), the ONNX artifact in ONNX Runtime
(CPU provider here), the AOTInductor package; the floor is NFE x one guided network call in
the same runtime (an ONNX graph of one call for ONNX Runtime).  Also export time, session
creation time, and artifact size against weight bytes.  Median of --repeat runs after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.backends import ExportRequest  # noqa: E402
from bns_export.backends.onnx import export_onnx  # noqa: E402
from bns_export.compile.build import compile_artifact  # noqa: E402
from bns_export.models import load_model  # noqa: E402
from bns_export.runtime import load  # noqa: E402
from bns_export.solvers import baseline  # noqa: E402
from bns_export.solvers.sampler import sample  # noqa: E402


def timeit(fn, repeat: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class OneCall(torch.nn.Module):
    """One guided velocity evaluation at a fixed time: the unit the floor is made of."""

    def __init__(self, field, t: float) -> None:
        super().__init__()
        self.field, self.t = field, t
        self.conditional = field.num_classes is not None

    def forward(self, noise, labels=None):
        return self.field(noise, self.t, labels)


def build(args, solver_path: Path, fmt: str, out: Path, max_batch: int) -> float:
    """Compile one artifact (no validation: timing only); return the build time in seconds."""
    t0 = time.perf_counter()
    compile_artifact(
        args.model,
        str(solver_path),
        fmt,
        out,
        guidance=args.guidance,
        max_batch=max_batch,
        validate=False,
        log=lambda m: None,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--nfe", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-aoti", action="store_true")
    ap.add_argument("--section", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    command = "python tools/bench_latency.py " + " ".join(sys.argv[1:])
    field = load_model(args.model, guidance=args.guidance)
    shape = field.sample_shape
    weight_bytes = sum(p.numel() * p.element_size() for p in field.parameters())
    max_b = max(args.batch)
    rng = np.random.default_rng(0)
    inputs = {
        b: (
            rng.standard_normal((b, *shape)).astype(np.float32),
            (np.arange(b) % field.num_classes) if field.num_classes else None,
        )
        for b in args.batch
    }
    rows, meta = [], []
    work = Path(tempfile.mkdtemp())
    # floor in ONNX Runtime: one guided call exported alone
    one = OneCall(field, 0.5).eval()
    export_onnx(one, ExportRequest(tuple(shape), one.conditional, max_b, max_b), work / "one.onnx")
    import onnxruntime as ort

    one_sess = ort.InferenceSession(str(work / "one.onnx"), providers=["CPUExecutionProvider"])
    for nfe in args.nfe:
        solver = baseline("dpm++2m", nfe, field.schedule, field.t_lo, field.t_hi)
        solver_path = work / f"s{nfe}.json"
        solver.save(solver_path)
        onnx_export_s = build(args, solver_path, "onnx", work / f"onnx{nfe}", max_b)
        t0 = time.perf_counter()
        runner = load(work / f"onnx{nfe}")
        session_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (work / f"onnx{nfe}").iterdir() if p.name.startswith("model"))
        aoti = None
        if not args.no_aoti:
            aoti_s = build(args, solver_path, "aoti", work / f"aoti{nfe}", max_b)
            aoti = load(work / f"aoti{nfe}")
            meta.append(
                f"| {nfe} | AOTInductor | compile {aoti_s:.1f} s | package "
                f"{(work / f'aoti{nfe}' / 'model.pt2').stat().st_size / 1e6:.2f} MB |"
            )
        meta.append(
            f"| {nfe} | ONNX | export {onnx_export_s:.1f} s, session {session_s:.2f} s | model "
            f"{size / 1e6:.2f} MB (weights {weight_bytes / 1e6:.2f} MB) |"
        )
        for b in args.batch:
            noise, labels = inputs[b]
            tn = torch.from_numpy(noise)
            tl = None if labels is None else torch.from_numpy(labels)
            eager = timeit(lambda: sample(field, solver, tn, tl), args.repeat)  # noqa: B023
            onnx_t = timeit(lambda: runner(noise, labels), args.repeat)  # noqa: B023
            feed = {"noise": noise} if labels is None else {"noise": noise, "labels": labels}
            floor_ort = nfe * timeit(lambda: one_sess.run(None, feed), args.repeat)  # noqa: B023
            with torch.no_grad():
                floor_eager = nfe * timeit(lambda: field(tn, torch.tensor(0.5), tl), args.repeat)  # noqa: B023
            aoti_t = timeit(lambda: aoti(noise, labels), args.repeat) if aoti else None  # noqa: B023
            rows.append((nfe, b, eager, floor_eager, onnx_t, floor_ort, aoti_t))
            print(rows[-1], flush=True)
    lines = [
        f"## Latency: {args.model}, guidance {args.guidance:g}\n",
        f"Command: `{command}` (commit {git_rev()}).  Machine: {machine()}; ONNX Runtime "
        f"{ort.__version__}, CPU execution provider.  Solver: DPM-Solver++(2M) table (any table costs the "
        f"same).  Median of {args.repeat} runs, milliseconds.\n",
        "| NFE | batch | eager loop | eager floor | ONNX Runtime | ORT floor | AOTInductor | eager / ORT | "
        "ORT / ORT floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for nfe, b, e, fe, o, fo, a in rows:
        lines.append(
            f"| {nfe} | {b} | {e * 1e3:.1f} | {fe * 1e3:.1f} | {o * 1e3:.1f} | {fo * 1e3:.1f} | "
            f"{'n/a' if a is None else f'{a * 1e3:.1f}'} | {e / o:.2f}x | {o / fo:.2f}x |"
        )
    lines += ["", "| NFE | backend | build | size |", "|---|---|---|---|", *meta]
    write_section(args.section or f"latency-{args.model}", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
