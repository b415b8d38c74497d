"""The GPU check: tests, every installed format compiled and validated on the GPU, latency and distillation
timings, written as sections of a benchmarks document with the GPU's name and library versions.

    python tools/gpu_check.py --out DIR               # on a machine with a CUDA GPU
    python tools/gpu_check.py --device cpu --quick --out DIR   # dry run of the same steps on a CPU

Device time is scarce (a lent GPU comes for minutes), so the steps run as four concurrent lanes under
one deadline (`--budget` seconds, default 500: the whole check ends inside 9 minutes by itself), each
step's failure recorded, not fatal.  The plan keeps only the lanes whose expected time (LANE_SECONDS)
fits the budget and says which it dropped:
  tests     the test suite (pytest-xdist workers where installed);
  compile   digits (guidance 1) and mnist (guidance 3), an 8-NFE DPM-Solver++(2M) table, to onnx
            (validated with the CUDA EP where onnxruntime-gpu is installed, else on the CPU), aoti on the
            device and tensorrt (where installed), each validated;
  latency   tools/bench_latency.py for digits (guidance 1) and mnist (guidance 3) at 8 NFE, batch 1/16/64, one
            after the other: eager loop, torch.compile (reduce-overhead), the CUDA-graph runner (eager and
            AOTInductor), ONNX Runtime (with its CUDA graphs on the CUDA EP), and the floor (NFE x one
            CUDA-graphed network call);
  psnr      tools/bench_psnr.py on the device, default recipe, mnist at guidance 3 and 1: the ground truth
            first (one process per guidance), then one process per --psnr-nfe and one per ceiling, all
            reading the cached GT; one merged section (GT, ceiling, baselines at n and 2n, BNS, its time).
            The first run (12 processes at NFE 4-16) showed that many distillations on one GPU each take
            minutes, so the default is NFE 8 alone; `--skip tests compile latency --psnr-nfe 4 6 8 12 16`
            gives the lane the whole budget.
Lanes share the GPU and the CPU, so their timings are upper bounds; the report says so.  Everything
lands in DIR: one log per step, each lane's result files (BNS_BENCH_RESULTS, to copy into docs/results/)
and page (BNS_BENCH_DOC), summary.md, and
results.tgz with all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


@dataclass
class Step:
    """One command of a lane; `code` None until it ran (124: stopped at the deadline)."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    code: int | None = None
    seconds: float = 0.0


def run_step(step: Step, logs: Path, deadline: float) -> None:
    """Run one step logged to logs/NAME.log; at the deadline its whole process group is killed (code 124)."""
    left = deadline - time.time()
    if left < 5:
        step.code = 124
        return
    t0 = time.time()
    with open(logs / f"{step.name}.log", "w") as log:
        env = {**os.environ, **step.env}
        proc = subprocess.Popen(
            step.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            step.code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            step.code = 124
            log.write(f"\n[gpu_check] stopped at the deadline after {time.time() - t0:.0f} s\n")
    step.seconds = time.time() - t0


def run_lane(stages: list[list[Step]], logs: Path, deadline: float) -> None:
    """Run the stages one after another, the steps of a stage concurrently."""
    for stage in stages:
        threads = [threading.Thread(target=run_step, args=(s, logs, deadline)) for s in stage]
        for th in threads:
            th.start()
        for th in threads:
            th.join()


def tail(path: Path) -> str:
    """The last non-blank line of a log (at most 200 characters), '' if there is none."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1][:200] if lines else ""


def last_json(path: Path) -> dict | None:
    """The last line of a log that is a JSON object (a command's --json output), if any."""
    for line in reversed(path.read_text(errors="replace").splitlines() if path.exists() else []):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def lanes(args, py: str, out: Path) -> dict[str, list[list[Step]]]:
    """Each lane as stages of concurrent steps (see the module docstring)."""
    cli = [py, "-m", "bns_export.cli"]
    nfe = "4" if args.quick else "8"
    one = {"OMP_NUM_THREADS": "1"}
    low = ["nice", "-n", "10"]  # builds and tests yield the CPU to the timed lanes

    try:
        import xdist  # noqa: F401

        workers = ["-n", str(args.test_workers)]
    except ImportError:
        workers = []
    try:
        import pytest_timeout  # noqa: F401

        workers += ["--timeout", "180"]  # one hung test must not take the lane's whole deadline
    except ImportError:
        pass
    pytest = [py, "-m", "pytest", "-v", "-rfEs", "--durations=15", "-p", "no:cacheprovider", *workers]
    tests = [[Step("tests", [*low, *pytest], one)]]

    compiles = []
    for model, w in (("digits", "1"), ("mnist", "3")):
        for fmt in ("onnx", "aoti", "tensorrt"):
            cmd = [*low, *cli, "compile", "-m", model, "-w", w, "-s", "dpm++2m", "--nfe", nfe, "--format", fmt]
            cmd += ["--max-batch", "8", "--device", args.device, "-o", str(out / "artifacts" / f"{model}-{fmt}")]
            compiles.append([Step(f"compile-{model}-{fmt}", [*cmd, "--json"])])

    batches = ["1", "4"] if args.quick else ["1", "16", "64"]
    latency = [  # one stage after the other: two timed processes on one GPU would time each other
        [
            Step(
                f"latency-{model}",
                [py, "tools/bench_latency.py", "--device", args.device, "--model", model, "--guidance", w]
                + ["--nfe", nfe, "--batch", *batches, "--repeat", "3" if args.quick else "20"],
                {
                    "BNS_BENCH_DOC": str(out / f"benchmarks-latency-{model}.md"),
                    "BNS_BENCH_RESULTS": str(out / "results" / f"latency-{model}"),
                },
            )
        ]
        for model, w in (("digits", "1"), ("mnist", "3"))
    ]

    # mnist at guidance 3 and 1 with the default recipe: the ground truth first (one process per guidance),
    # then one process per NFE and one for the ceiling, all reading the cached GT
    psnr_env = {
        **one,
        "BNS_EXPORT_CACHE": str(out / "gt-cache"),
        "BNS_BENCH_DOC": str(out / "psnr" / "scratch.md"),
        "BNS_BENCH_RESULTS": str(out / "psnr" / "scratch"),
    }
    small = ["--iterations", "20", "--train-pairs", "64", "--val-pairs", "64", "--test-pairs", "32"] * args.quick
    nfes = ["4", "6"] if args.quick else [str(n) for n in args.psnr_nfe]

    def bench(name: str, model: str, *extra: str) -> Step:
        cmd = [py, "tools/bench_psnr.py", "--models", model, "--device", args.device, *small, *extra]
        cmd += ["--json", str(out / "psnr" / f"{name}.json")]
        return Step(name, cmd, psnr_env)

    models = ("mnist@3", "mnist@1")
    psnr = [
        [bench(f"gt-{m}", m, "--gt-only", "--ceiling-pairs", "0") for m in models],
        [bench(f"ceiling-{m}", m, "--gt-only", "--ceiling-pairs", "4" if args.quick else "16") for m in models]
        + [bench(f"psnr-{m}-{n}", m, "--nfe", n, "--ceiling-pairs", "0") for n in nfes for m in models],
    ]
    return {"tests": tests, "compile": compiles, "latency": latency, "psnr": psnr}


#: seconds each lane needs on the lent H200 (first run: tests 223 s at -n 4, compiles about a minute each
#: with validation, mnist distillation 266-440 s per NFE with the GPU shared); the plan keeps a lane only
#: where it fits the budget, with REPORT_SECONDS left for the report
LANE_SECONDS = {"tests": 260, "compile": 150, "latency": 240, "psnr": 470}
REPORT_SECONDS = 30


def plan_lanes(requested: list[str], budget: float) -> tuple[list[str], list[str]]:
    """The lanes that fit the budget (lanes run concurrently, so each must fit alone) and a note per dropped one."""
    kept, dropped = [], []
    for lane in requested:
        need = LANE_SECONDS[lane]
        if need + REPORT_SECONDS <= budget:
            kept.append(lane)
        else:
            dropped.append(f"{lane} (needs about {need} s, budget {budget:.0f} s)")
    return kept, dropped


def report(args, steps: dict[str, list[Step]], out: Path, started: float, dropped: list[str] = ()) -> str:
    """The GPU check's section: tests, the compile table, and where each lane's own table is."""
    import torch
    from benchdoc import git_rev

    from bns_export.compile.build import library_versions
    from bns_export.devicespec import is_cuda

    cuda = is_cuda(args.device)
    gpu = torch.cuda.get_device_name(args.device) if cuda else "none (dry run on the CPU)"
    logs = out / "logs"
    lines = [
        f"## GPU check: {gpu}\n",
        f"Command: `python tools/gpu_check.py {' '.join(sys.argv[1:])}` (commit {git_rev()}),"
        f" {time.time() - started:.0f} s in all.  Versions: {json.dumps(library_versions())}.  The lanes below ran "
        "concurrently on one GPU and one CPU (builds and tests at nice 10), so each timing is an upper bound.\n",
    ]
    if dropped:
        lines.append("Dropped to fit the budget: " + "; ".join(dropped) + ".\n")
    for t in steps.get("tests", []):
        text = (logs / "tests.log").read_text(errors="replace") if (logs / "tests.log").exists() else ""
        summary = [line for line in text.splitlines() if " passed" in line or " failed" in line or " error" in line]
        lines.append(
            f"Tests: exit {t.code}, {summary[-1] if summary else tail(logs / 'tests.log')}, {t.seconds:.0f} s.\n"
        )
    lines += [
        "| model | format | device | exit | parity min PSNR (dB) | build + validate (s) |",
        "|---|---|---|---|---|---|",
    ]
    for s in steps.get("compile", []):
        rep = last_json(logs / f"{s.name}.log")
        if s.code == 0 and rep:
            psnr = f"{rep['validation']['psnr_min']:.1f}"
        elif s.code == 3:
            psnr = "not installed: " + tail(logs / f"{s.name}.log")[:80]
        else:
            psnr = "FAILED: " + tail(logs / f"{s.name}.log")
        _, model, fmt = s.name.split("-")
        lines.append(f"| {model} | {fmt} | {args.device} | {s.code} | {psnr} | {s.seconds:.0f} |")
    lines.append("")
    for s in steps.get("latency", []) + steps.get("psnr", []):
        lines.append(f"- {s.name}: exit {s.code} in {s.seconds:.0f} s ({tail(logs / f'{s.name}.log')})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True, help="folder for logs, sections and results.tgz")
    ap.add_argument("--budget", type=float, default=500, help="seconds until every lane is stopped (under 9 minutes)")
    ap.add_argument("--quick", action="store_true", help="small settings, for a dry run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "compile", "latency", "psnr"])
    ap.add_argument("--test-workers", type=int, default=4)
    ap.add_argument("--psnr-nfe", nargs="+", type=int, default=[8], help="the psnr lane's NFEs")
    args = ap.parse_args()
    started = time.time()
    out = args.out.resolve()
    for sub in ("logs", "artifacts", "psnr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    every = lanes(args, sys.executable, out)
    kept, dropped = plan_lanes([k for k in every if k not in args.skip], args.budget)
    plan = {k: every[k] for k in kept}
    print("lanes: " + ", ".join(kept) + (f"; dropped: {'; '.join(dropped)}" if dropped else ""), flush=True)
    deadline = started + args.budget - REPORT_SECONDS
    threads = [threading.Thread(target=run_lane, args=(st, out / "logs", deadline)) for st in plan.values()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    runs = sorted((out / "psnr").glob("psnr-*.json")) + sorted((out / "psnr").glob("[gc]*.json"))
    if runs:  # one section from every psnr process that saved something
        render = [sys.executable, "tools/bench_psnr.py", "--render", *map(str, runs), "--section", "psnr-mnist"]
        env = {
            **os.environ,
            "BNS_BENCH_DOC": str(out / "benchmarks-psnr.md"),
            "BNS_BENCH_RESULTS": str(out / "results" / "psnr"),
        }
        res = subprocess.run(render, cwd=ROOT, capture_output=True, text=True, env=env)
        (out / "logs" / "render.log").write_text(res.stdout + res.stderr)
    steps = {lane: [s for stage in st for s in stage] for lane, st in plan.items()}
    body = report(args, steps, out, started, dropped)
    print(body, flush=True)
    (out / "summary.md").write_text(body)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        for p in sorted(out.rglob("*")):
            if p.is_file() and p.suffix in {".log", ".md", ".json", ".png"} and "gt-cache" not in p.parts:
                tar.add(p, arcname=str(p.relative_to(out)))


if __name__ == "__main__":
    main()
