"""Refit against a full compile: the time and peak memory of `bns-export refit` (a fine-tune's weights into an
existing ONNX artifact) and of `bns-export compile` of the same fine-tune, both validated, on random-weight
SD-style UNets (tools/bench_scale.py's folders).  Writes the `refit` section of docs/benchmarks.md.

    python tools/bench_refit.py                       # the SD-1.5-size UNet at NFE 4 (about 20 minutes, 2 cores)
    python tools/bench_refit.py --models tiny --nfe 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from bench_scale import MODELS, build_folder, parameter_count, timed  # noqa: E402
from benchdoc import git_rev, machine, write_section  # noqa: E402

CLI = [sys.executable, "-m", "bns_export"]


def fine_tune(base: Path, out: Path) -> Path:
    """A copy of the folder with every weight moved by 1% of its RMS (a stand-in for further training; applied to
    the random-weight base first too, since a fresh network's norm weights are all equal and the graph stores
    equal tensors once, which no trained network has)."""
    import diffusers
    import torch

    if (out / "model_index.json").exists():
        return out
    shutil.copytree(base, out)
    unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * p.float().pow(2).mean().sqrt() * torch.randn(p.shape, generator=g))
    unet.save_pretrained(out / "unet")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["sd15"], choices=list(MODELS))
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--latent", type=int, default=64)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            base = fine_tune(build_folder(name, work / f"{name}-fresh", args.latent), work / name)
            tuned = fine_tune(base, work / f"{name}-tuned")
            common = ["--cond-set", str(base / "conditions.safetensors"), "-w", "3", "-s", "euler", "--nfe",
                      str(args.nfe), "--max-batch", "1"]  # fmt: skip
            art, fresh, refit = work / f"{name}-art", work / f"{name}-compiled", work / f"{name}-refit"
            built = timed([*CLI, "compile", "-m", f"diffusers:{base}", *common, "-o", str(art)], work / "a.log")
            assert built["rc"] == 0, (work / "a.log").read_text()[-2000:]
            full = timed([*CLI, "compile", "-m", f"diffusers:{tuned}", *common, "-o", str(fresh)], work / "b.log")
            assert full["rc"] == 0, (work / "b.log").read_text()[-2000:]
            quick = timed([*CLI, "refit", str(art), "-m", f"diffusers:{tuned}", "-o", str(refit)], work / "c.log")
            assert quick["rc"] == 0, (work / "c.log").read_text()[-2000:]
            psnr = json.loads((refit / "manifest.json").read_text())["validation"]["psnr_min"]
            rows.append((name, parameter_count(base), full, quick, psnr))
            print(rows[-1], flush=True)
            for folder in (art, fresh, refit):  # the artifacts this run built in its own temporary folder:
                shutil.rmtree(folder)  # an SD-size one is 3.4 GB, so they go before the next model's
    command = " ".join(["python tools/bench_refit.py", *sys.argv[1:]])
    lines = [
        "## Refit against a full compile",
        "",
        f"Command: `{command}` (commit {git_rev()}). Machine: {machine()}.",
        "",
        f"A fine-tune (every weight moved by 1% of its RMS from a random-weight base moved the same way) put into "
        "the base's ONNX artifact by `bns-export refit`, "
        f"against `bns-export compile` of the same fine-tune; both at NFE {args.nfe}, batch 1, {args.latent}x"
        f"{args.latent} latents, validated against the eager sampler (parity only); wall time and peak resident "
        "memory of the whole command under `/usr/bin/time -v`.",
        "",
        "| model | parameters | compile | compile peak | refit | refit peak | refit parity min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, count, full, quick, psnr in rows:
        lines.append(
            f"| {name} | {count / 1e6:.0f}M | {full['wall_s']:.0f} s | {full['peak_bytes'] / 2**30:.1f} GiB | "
            f"{quick['wall_s']:.0f} s | {quick['peak_bytes'] / 2**30:.1f} GiB | {psnr:.1f} dB |"
        )
    write_section("refit", "\n".join(lines))


if __name__ == "__main__":
    main()
