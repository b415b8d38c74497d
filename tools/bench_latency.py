"""Latency of the compiled sampler versus the eager loop, and versus its floor; writes docs/benchmarks.md.

    python tools/bench_latency.py                        # digits, NFE 8 and 16, batch 1/16/64
    python tools/bench_latency.py --model mnist --guidance 3 --no-aoti
    python tools/bench_latency.py --device cuda --model mnist --guidance 3 --nfe 8 --batch 1 64 256

For each NFE: eager PyTorch sampler loop (torch.no_grad), the ONNX artifact in ONNX Runtime
(CPU provider, or CUDA EP where onnxruntime-gpu is installed, then also with its CUDA graphs), the
AOTInductor package; the floor is NFE x one guided network call in the same runtime (an ONNX graph
of one call for ONNX Runtime; on CUDA one CUDA-graphed call).  On CUDA also the same unrolled module
under torch.compile (mode "reduce-overhead") and bns-export's CUDA-graph runner (the eager sampler
and the AOTInductor package, each captured once per batch size), TF32 off.  Also export time,
session creation time, and artifact size against
weight bytes.  Median of --repeat runs after warm-up; CUDA timings synchronise the device.
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

from benchdoc import git_rev, gpu_note, machine, write_section  # noqa: E402

from bns_export.backends import ExportRequest  # noqa: E402
from bns_export.backends.cuda_graph import CudaGraphs  # noqa: E402
from bns_export.backends.onnx import export_onnx  # noqa: E402
from bns_export.compile.build import compile_artifact, signature_of  # noqa: E402
from bns_export.compile.parity import EagerRunner  # noqa: E402
from bns_export.compile.unroll import UnrolledSampler  # noqa: E402
from bns_export.devicespec import is_cuda  # noqa: E402
from bns_export.errors import BNSError  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402
from bns_export.runtime import load, read_manifest  # noqa: E402
from bns_export.solvers import baseline  # noqa: E402
from bns_export.solvers.sampler import sample  # noqa: E402

SYNC = [lambda: None]  # torch.cuda.synchronize on CUDA


def timeit(fn, repeat: int) -> float:
    fn()
    fn()
    SYNC[0]()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        SYNC[0]()
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
        device=args.device,
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--section", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cuda = is_cuda(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        SYNC[0] = torch.cuda.synchronize
    command = "python tools/bench_latency.py " + " ".join(sys.argv[1:])
    field = load_model(args.model, guidance=args.guidance, device=args.device)
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
    export_onnx(one, ExportRequest(tuple(shape), signature_of(field), max_b, max_b), work / "one.onnx")
    import onnxruntime as ort

    ort_device = "cuda" if cuda and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    time_ort = ort_device == "cuda" or not cuda  # ORT on the CPU is no GPU figure: not timed in a CUDA run
    ort_providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if ort_device == "cuda" else ["CPUExecutionProvider"]
    )
    one_sess = ort.InferenceSession(str(work / "one.onnx"), providers=ort_providers)
    for nfe in args.nfe:
        solver = baseline("dpm++2m", nfe, field.schedule, field.t_lo, field.t_hi)
        solver_path = work / f"s{nfe}.json"
        solver.save(solver_path)
        onnx_export_s = build(args, solver_path, "onnx", work / f"onnx{nfe}", max_b)
        t0 = time.perf_counter()
        runner = load(work / f"onnx{nfe}", device=ort_device)
        session_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (work / f"onnx{nfe}").iterdir() if p.name.startswith("model"))
        aoti = None
        if not args.no_aoti:
            aoti_s = build(args, solver_path, "aoti", work / f"aoti{nfe}", max_b)
            size_mb = (work / f"aoti{nfe}" / "model.pt2").stat().st_size / 1e6
            try:
                aoti = load(work / f"aoti{nfe}", device=args.device, trust_engine_code=True)  # built just above
                meta.append(f"| {nfe} | AOTInductor | compile {aoti_s:.1f} s | package {size_mb:.2f} MB |")
            except BNSError as e:  # e.g. a loader that crashes (torch 2.11 CUDA packages): the rest still runs
                meta.append(f"| {nfe} | AOTInductor | compile {aoti_s:.1f} s, not loadable: {e} | {size_mb:.2f} MB |")
        meta.append(
            f"| {nfe} | ONNX | export {onnx_export_s:.1f} s, session {session_s:.2f} s | model "
            f"{size / 1e6:.2f} MB (weights {weight_bytes / 1e6:.2f} MB) |"
        )
        graphed = cg_eager = cg_aoti = ort_graph = None
        if cuda:
            unrolled = UnrolledSampler(field, solver).eval()
            graphed = torch.compile(unrolled, mode="reduce-overhead", dynamic=False)
            manifest = read_manifest(work / f"onnx{nfe}")
            cg_eager = EagerRunner(work / f"onnx{nfe}", manifest, args.device, cuda_graph=True)
            if aoti is not None:
                cg_aoti = load(work / f"aoti{nfe}", device=args.device, cuda_graph=True, trust_engine_code=True)
            if ort_device == "cuda":
                ort_graph = load(work / f"onnx{nfe}", device=args.device, cuda_graph=True)
        for b in args.batch:
            noise, labels = inputs[b]
            tn = torch.from_numpy(noise).to(args.device)
            tl = None if labels is None else torch.from_numpy(labels).to(args.device)
            eager = timeit(lambda: sample(field, solver, tn, tl), args.repeat)  # noqa: B023
            feed = {"noise": noise} if labels is None else {"noise": noise, "labels": labels}
            onnx_t = floor_ort = None
            if time_ort:
                onnx_t = timeit(lambda: runner(noise, labels), args.repeat)  # noqa: B023
                floor_ort = nfe * timeit(lambda: one_sess.run(None, feed), args.repeat)  # noqa: B023
            one_call = OneCall(field, 0.5).eval()
            call = CudaGraphs(one_call, args.device) if cuda else one_call  # on CUDA: one CUDA-graphed call
            call_args = (tn,) if tl is None else (tn, tl)
            with torch.no_grad():
                floor_eager = nfe * timeit(lambda: call(*call_args), args.repeat)  # noqa: B023
            aoti_t = timeit(lambda: aoti(tn, tl), args.repeat) if aoti else None  # noqa: B023
            graph_t = cg_t = cg_aoti_t = ort_graph_t = None
            if graphed is not None:
                with torch.no_grad():
                    graph_t = timeit(lambda: graphed(tn, tl).clone(), args.repeat)  # noqa: B023
                cg_t = timeit(lambda: cg_eager(tn, tl), args.repeat)  # noqa: B023
                cg_aoti_t = timeit(lambda: cg_aoti(tn, tl), args.repeat) if cg_aoti else None  # noqa: B023
                ort_graph_t = timeit(lambda: ort_graph(noise, labels), args.repeat) if ort_graph else None  # noqa: B023
            rows.append((nfe, b, eager, floor_eager, onnx_t, floor_ort, aoti_t, graph_t, cg_t, cg_aoti_t, ort_graph_t))
            print(rows[-1], flush=True)
    lines = [
        f"## Latency: {args.model}, guidance {args.guidance:g}, {args.device}\n",
        f"Command: `{command}` (commit {git_rev()}).  Machine: {machine()}{gpu_note(args.device)}; ONNX Runtime "
        f"{ort.__version__}, {ort_providers[0] if time_ort else 'not timed (no CUDA execution provider)'}.  "
        "Solver: DPM-Solver++(2M) table (any table costs the "
        f"same).  Median of {args.repeat} runs, milliseconds.\n",
        "| NFE | batch | eager loop | floor | ONNX Runtime | ORT floor | ORT CUDA graphs | AOTInductor | "
        "torch.compile CUDA graphs | CUDA-graph runner (eager) | CUDA-graph runner (AOTI) | eager / best | "
        "best / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(v) -> str:
        return "n/a" if v is None else f"{v * 1e3:.1f}"

    def ratio(x, y) -> str:
        return "n/a" if x is None or y is None else f"{x / y:.2f}x"

    for nfe, b, e, fe, o, fo, a, g, cg, cga, og in rows:
        artifacts = [v for v in (o, og, a, cg, cga) if v is not None]  # the runners an artifact user gets
        best = min(artifacts) if artifacts else None
        lines.append(
            f"| {nfe} | {b} | {ms(e)} | {ms(fe)} | {ms(o)} | {ms(fo)} | {ms(og)} | {ms(a)} | {ms(g)} | {ms(cg)} | "
            f"{ms(cga)} | {ratio(e, best)} | {ratio(best, fe)} |"
        )
    lines += ["", "| NFE | backend | build | size |", "|---|---|---|---|", *meta]
    default = f"latency-{args.model}" + ("" if args.device == "cpu" else f"-{args.device.split(':')[0]}")
    write_section(args.section or default, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
