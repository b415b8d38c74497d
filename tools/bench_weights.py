"""Weights stored once: ONNX initializer bytes against the sampler's weight bytes, node count,
export and validation time and parity, per architecture, with and without the decoder, at 2 / 4 / 8 NFE.

    python tools/bench_weights.py                 # writes the `weights-once` section of docs/benchmarks.md
    python tools/bench_weights.py --nfe 2 4       # fewer rows

Models: the tiny random-weight latent pipelines of tools/tiny_pipeline.py (4x8x8 latents, AutoencoderKL
decoding to 3x16x16): a UNet2DModel with self-attention (unconditional) and a UNet2DConditionModel
with cross-attention to 4 prompt tokens (guidance 3).  Solver dpm++2m, max batch 2, fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchdoc import git_rev, machine, write_section  # noqa: E402
from tiny_pipeline import build  # noqa: E402

from bns_export.compile.build import compile_artifact  # noqa: E402
from bns_export.compile.parity import validate_artifact  # noqa: E402
from bns_export.loaders import ModelOptions  # noqa: E402


def measure(folder: Path, text: bool, decoder: bool, nfe: int, out: Path) -> dict:
    """Compile without validation (the export time), then validate (the parity time and figures)."""
    opts = ModelOptions(
        cond_set=str(folder / "prompts.safetensors") if text else None, decoder="vae" if decoder else None
    )
    t0 = time.time()
    m = compile_artifact(
        f"diffusers:{folder}", "dpm++2m", "onnx", out, options=opts, nfe=nfe, guidance=3.0 if text else 1.0,
        max_batch=2, validate=False, log=lambda msg: None,
    )  # fmt: skip
    export_s = time.time() - t0
    t0 = time.time()
    report = validate_artifact(out)
    psnr: dict = {}
    for r in report["cases"]:
        psnr[r["output"]] = min(psnr.get(r["output"], float("inf")), r["psnr_min"])
    g = m["graph"]
    return {
        "architecture": "UNet2DConditionModel, cross-attention, w = 3" if text else "UNet2DModel, self-attention",
        "decoder": decoder,
        "nfe": nfe,
        "initializer_bytes": g["initializer_bytes"],
        "module_bytes": g["module_bytes"],
        "ratio": g["initializer_ratio"],
        "nodes": g["nodes"],
        "export_s": round(export_s, 1),
        "validate_s": round(time.time() - t0, 1),
        "psnr_sample": psnr["sample"],
        "psnr_image": psnr.get("image"),
        "passed": report["passed"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "weights-data.json"))
    ap.add_argument("--render", action="store_true", help="only rewrite the section from --json")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.json).read_text())
        return write(saved["rows"], saved["command"][1:], saved.get("commit", "?"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in (False, True):
            folder = build(Path(tmp) / ("text" if text else "attn"), text=text)
            for decoder in (False, True):
                for nfe in args.nfe:
                    rows.append(measure(folder, text, decoder, nfe, Path(tmp) / f"art-{text}-{decoder}-{nfe}"))
                    print(json.dumps(rows[-1]), flush=True)
                    saved = {"command": sys.argv, "commit": git_rev(), "rows": rows}
                    Path(args.json).write_text(json.dumps(saved, indent=2))
    write(rows, sys.argv[1:], git_rev())


def write(rows: list[dict], argv: list[str], commit: str) -> None:
    """The `weights-once` section of docs/benchmarks.md."""
    lines = [
        "## Weights stored once: initializer bytes vs weight bytes\n",
        f"Command: `python tools/bench_weights.py {' '.join(argv)}` (commit {commit}). Machine: {machine()}.",
        "Models: tools/tiny_pipeline.py's random-weight latent pipelines (4x8x8 latents; AutoencoderKL decoder to "
        "3x16x16). ONNX, dpm++2m, max batch 2, fp32. *weight bytes*: the exported sampler's parameters and "
        "buffers (the UNet, and the VAE's decoder half with --decoder vae); *initializers*: every initializer "
        "in model.onnx after duplicate merging. Export: compile without validation; validation: the parity "
        "run (eager reference + ONNX Runtime, batch 1, 2, unconditional, conformance vectors). PSNR: the "
        "minimum per-sample parity PSNR over all cases, on the latents and on the decoded images.\n",
        "| architecture | decoder | NFE | initializer bytes | weight bytes | ratio | nodes | export (s) | "
        "validation (s) | parity latents (dB) | parity images (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        img = f"{r['psnr_image']:.1f}" if r["psnr_image"] is not None else "-"
        lines.append(
            f"| {r['architecture']} | {'vae' if r['decoder'] else 'none'} | {r['nfe']} | {r['initializer_bytes']:,} | "
            f"{r['module_bytes']:,} | {r['ratio']:.3f} | {r['nodes']:,} | {r['export_s']:.0f} | "
            f"{r['validate_s']:.1f} | {r['psnr_sample']:.1f} | {img} |"
        )
    write_section("weights-once", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
