"""What one loop graph (`--format onnx-loop`) costs against unrolled graphs: export time, file size, session
creation and CPU latency at batch 1 and 8, for the same tables.

    python tools/bench_loop.py                       # digits and mnist, tables at NFE 4 and 8 (about 6 min)
    python tools/bench_loop.py --models digits --runs 10

The unrolled graphs are one artifact per table (`--format onnx`); the loop graph holds every table and is run at
each through its `table` input.  Classic tables (dpm++2m) at each NFE: the cost is the graph's, not the table's.
Writes docs/results/loop.json and the benchmarks page.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.compile.build import compile_artifact  # noqa: E402
from bns_export.loaders import ModelOptions, ModelSpec, load_model  # noqa: E402
from bns_export.runtime import load  # noqa: E402
from bns_export.solvers import parse_spec, resolve_solver  # noqa: E402

GUIDANCE = {"digits": 1.0, "mnist": 3.0}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def latency_ms(runner, batch: int, runs: int, condition, table=None) -> float:
    """Median wall time of one call at `batch` (after one warm-up call)."""
    noise = np.random.default_rng(0).standard_normal((batch, *runner.sample_shape)).astype(np.float32)
    cond = None if condition is None else condition(batch)
    extra = {} if table is None else {"table": table}
    runner(noise, cond, **extra)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner(noise, cond, **extra)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_model(name: str, nfes: list[int], runs: int, work: Path) -> list[tuple]:
    """Rows (graph, NFE, export s, file MB, session s, batch-1 ms, batch-8 ms) for one model."""
    w = GUIDANCE.get(name, 1.0)
    field = load_model(ModelSpec(name, ModelOptions()), guidance=w)
    tables = [resolve_solver(parse_spec("dpm++2m"), field, n) for n in nfes]

    def condition_of(runner):
        if runner.num_classes is not None:
            return lambda b: np.arange(b, dtype=np.int64) % runner.num_classes
        return None

    rows = []
    for k, table in enumerate(tables):
        out = work / f"{name}-{table.nfe}"
        _, export_s = timed(lambda out=out, table=table: compile_artifact(
            name, table, "onnx", out, guidance=w, max_batch=8, validate=False, log=lambda m: None))  # fmt: skip
        runner, session_s = timed(lambda out=out: load(out))
        cond = condition_of(runner)
        size = (out / "model.onnx").stat().st_size / 1e6
        lat = [latency_ms(runner, b, runs, cond) for b in (1, 8)]
        rows.append((f"unrolled, table {k}", table.nfe, export_s, size, session_s, *lat))
    out = work / f"{name}-loop"
    _, export_s = timed(lambda: compile_artifact(
        name, tables, "onnx-loop", out, guidance=w, max_batch=8, validate=False, log=lambda m: None))  # fmt: skip
    runner, session_s = timed(lambda: load(out))
    cond = condition_of(runner)
    size = (out / "model.onnx").stat().st_size / 1e6
    for k, table in enumerate(tables):
        lat = [latency_ms(runner, b, runs, cond, np.full(b, k)) for b in (1, 8)]
        label = f"loop ({len(tables)} tables), table {k}"
        rows.append((label, table.nfe, export_s if k == 0 else None, size, session_s if k == 0 else None, *lat))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "mnist"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:  # one untimed export first: the exporter's imports are not the graph's
        compile_artifact("analytic:gmm", "euler", "onnx", Path(tmp) / "warm-up", nfe=2, validate=False, log=print)
        for name in args.models:
            rows = bench_model(name, args.nfe, args.runs, Path(tmp))
            for r in rows:
                print(name, r, flush=True)
            sections += [
                "",
                f"### {name} (guidance {GUIDANCE.get(name, 1.0):g})",
                "",
                "| graph | NFE | export | model.onnx | session | batch 1 | batch 8 |",
                "|---|---|---|---|---|---|---|",
                *(
                    f"| {g} | {n} | {'-' if e is None else f'{e:.1f} s'} | {mb:.2f} MB | "
                    f"{'-' if s is None else f'{s:.2f} s'} | {b1:.2f} ms | {b8:.2f} ms |"
                    for g, n, e, mb, s, b1, b8 in rows
                ),
            ]
    command = "python tools/bench_loop.py " + " ".join(sys.argv[1:])
    lines = [
        "## One loop graph for several tables against one unrolled graph per table",
        "",
        f"Command: `{command.strip()}` (commit {git_rev()}). Machine: {machine()}, ONNX Runtime CPU.",
        "",
        "Export: compile without validation (the model loaded, the graph exported and checked); session: "
        "`runtime.load` (ONNX Runtime session creation with graph optimisation); latency: median of "
        f"{args.runs} calls after one warm-up. The loop graph holds every table (one copy of the weights) and "
        "runs each through its `table` input.",
        *sections,
    ]
    write_section("loop", "\n".join(lines))


if __name__ == "__main__":
    main()
