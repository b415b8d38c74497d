"""The GPU check: tests, every installed format compiled and validated on the GPU, latency and distillation
timings, written as one section of docs/benchmarks.md with the GPU's name and library versions.

    python tools/gpu_check.py                 # on a machine with a CUDA GPU
    python tools/gpu_check.py --device cpu --quick   # dry run of the same steps on a CPU

Steps (each one's failure is recorded, not fatal): 1. the test suite; 2. digits and mnist (guidance 3)
with an 8-NFE DPM-Solver++(2M) table compiled to onnx (validated with the CUDA EP where
onnxruntime-gpu is installed, else on the CPU), aoti --device cuda and tensorrt (where TensorRT is
installed), each validated; 3. tools/bench_latency.py --device cuda (eager loop, artifacts,
torch.compile CUDA graphs, floor; batch 1/64/256); 4. mnist guidance 3, 8-NFE distillation,
2000 iterations, ground truth timed separately.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def run(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return res.returncode, res.stderr[-3000:] + res.stdout[-100000:], time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s", time.perf_counter() - t0


def last_json(text: str) -> dict:
    """The last line of `text` that is a JSON object (the command's --json output)."""
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small settings, for a dry run")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--section", default=None)
    args = ap.parse_args()

    import torch
    from benchdoc import git_rev, machine, write_section

    from bns_export.compile.build import library_versions

    py = sys.executable
    cli = [py, "-m", "bns_export.cli"]
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    lines, log = [], {}
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "none (dry run on CPU)"
    lines.append(f"GPU: {gpu}.  Versions: {json.dumps(library_versions())}.\n")

    if not args.skip_tests:
        code, out, secs = run([py, "-m", "pytest", "-q", "-rs", "-x", "-p", "no:cacheprovider"], 1800)
        summary = [line for line in out.splitlines() if " passed" in line or " failed" in line]
        lines.append(f"Tests: exit {code}, {summary[-1] if summary else out.splitlines()[-1:]}, {secs:.0f} s.\n")

    nfe = "4" if args.quick else "8"
    lines += [
        "| model | format | device | exit | parity min PSNR (dB) | build + validate (s) |",
        "|---|---|---|---|---|---|",
    ]
    formats = [("onnx", args.device), ("aoti", args.device), ("tensorrt", args.device)]
    for model, w in (("digits", "1"), ("mnist", "3")):
        for fmt, device in formats:
            out = work / f"{model}-{fmt}"
            cmd = [*cli, "compile", "-m", model, "-w", w, "-s", "dpm++2m", "--nfe", nfe, "--format", fmt]
            cmd += ["--max-batch", "8", "--device", device, "-o", str(out), "--json"]
            code, text, secs = run(cmd, 900)
            psnr = "n/a"
            if code == 0:
                psnr = f"{last_json(text)['validation']['psnr_min']:.1f}"
            elif code == 3:
                psnr = "not installed: " + text.strip().splitlines()[-1][:80]
            else:
                psnr = "FAILED: " + text.strip().splitlines()[-1][:120]
            log[f"{model}/{fmt}"] = text
            lines.append(f"| {model}@{w} | {fmt} | {device} | {code} | {psnr} | {secs:.0f} |")
    lines.append("")

    batches = ["1", "4"] if args.quick else ["1", "64", "256"]
    for model, w in (("mnist", "3"), ("digits", "1")):
        cmd = [py, "tools/bench_latency.py", "--device", args.device, "--model", model, "--guidance", w]
        cmd += ["--nfe", nfe, "--batch", *batches, "--repeat", "3" if args.quick else "20"]
        code, text, secs = run(cmd, 1200)
        lines.append(f"Latency {model}@{w}: exit {code} in {secs:.0f} s (table in its own section).")

    iters = "20" if args.quick else "2000"
    cache = work / "cache"
    env_prefix = ["env", f"BNS_EXPORT_CACHE={cache}"]
    pairs = ["64", "64", "64"] if args.quick else ["1024", "520", "1024"]
    gt_cmd = [*env_prefix, *cli, "eval", "-m", "mnist", "-w", "3", "-s", "dpm++2m", "--nfe", "8", "-n", pairs[0]]
    code, text, gt_secs = run([*gt_cmd, "--device", args.device, "--json"], 1800)
    dcmd = [*env_prefix, *cli, "distill", "-m", "mnist", "-w", "3", "--nfe", "8", "--iterations", iters]
    dcmd += ["--train-pairs", pairs[1], "--val-pairs", pairs[2], "--device", args.device, "-o", str(work / "bns.json")]
    code2, text2, secs = run([*dcmd, "--json"], 1800)
    if code2 == 0:
        d = last_json(text2)
        lines.append(
            f"\nDistillation, mnist guidance 3, 8 NFE, {d['iterations']} iterations on {args.device}: "
            f"{d['wall_time_s']:.0f} s training ({secs:.0f} s wall incl. train GT), validation PSNR "
            f"{d['val_psnr']:.2f} dB (base {d['base_solver']} {d['base_val_psnr']:.2f}); GT of {pairs[0]} pairs "
            f"{gt_secs:.0f} s (exit {code})."
        )
    else:
        lines.append(f"\nDistillation failed (exit {code2}): {text2.strip().splitlines()[-1:]}")
    header = (
        f"## GPU check: {gpu}\n\nCommand: `python tools/gpu_check.py {' '.join(sys.argv[1:])}` (commit {git_rev()})."
    )
    body = header + f"  Machine: {machine()}.\n\n" + "\n".join(lines) + "\n"
    print(body)
    (work / "log.json").write_text(json.dumps(log, indent=1))
    write_section(args.section or ("gpu-check" if args.device != "cpu" else "gpu-check-dry-run"), body)


if __name__ == "__main__":
    main()
