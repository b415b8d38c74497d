"""The supported diffusers model classes through the whole tool, on tiny random-weight folders
(tests/families.py): eval, a 10-iteration distillation, ONNX compile with parity, the torch-free runtime
fed every named input, and the Triton config.  Writes docs/model_families.md.

    python tools/family_table.py                 # every family (about 3 minutes on 2 cores)
    python tools/family_table.py --only sd3 flux
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools"), str(ROOT)]

from benchdoc import git_rev, machine  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from families import FAMILIES, build_family  # noqa: E402

from bns_export.cli import main as cli_main  # noqa: E402

DOC = ROOT / "docs" / "model_families.md"
#: the pipeline test in which BNSScheduler runs each class (tests/test_pipelines.py, tests/test_diffusers_scheduler.py)
SCHEDULER = {
    "unet": "DDPMPipeline runs",
    "sd": "StableDiffusionPipeline, img2img: 1e-4",
    "sdxl": "StableDiffusionXLPipeline: 1e-4",
    "sd3": "StableDiffusion3Pipeline: 1e-4",
    "flux": "FluxPipeline (table's sigmas): 1e-4",
    "pixart": "PixArtSigmaPipeline: 1e-4",
    "dit": "DiTPipeline: 1e-4",
}
GT = ["--rtol", "1e-3", "--atol", "1e-3"]


def _run(*args) -> tuple[bool, str, float]:
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli_main, [str(a) for a in args])
    err = (r.stderr.strip().splitlines() or [""])[-1][:120]
    return r.exit_code == 0, r.stdout if r.exit_code == 0 else err, time.perf_counter() - t0


def family_row(family: str, root: Path) -> dict:
    """One class through eval, distill, compile + parity, the runtime and Triton; what passed, with figures."""
    import numpy as np

    from bns_export.runtime import load

    folder, opts, guidance = build_family(family, root / family)
    args = ["-m", f"diffusers:{folder}", *opts, "-w", guidance]
    row: dict = {"family": family, "class": FAMILIES[family]}
    ok, out, row["eval_s"] = _run("eval", *args, "-s", "dpm++2m", "--nfe", 4, "-n", 8, *GT, "--json")
    row["eval"] = f"{json.loads(out)['psnr_mean']:.1f} dB" if ok else f"fails: {out}"
    solver = root / f"{family}.json"
    ok, out, row["distill_s"] = _run(
        "distill", *args, "--nfe", 4, "-o", solver, "--iterations", 10, "--batch-size", 4, "--train-pairs", 16,
        "--val-pairs", 8, "--val-every", 5, *GT, "--json",
    )  # fmt: skip
    row["distill"] = f"{json.loads(out)['val_psnr']:.1f} dB" if ok else f"fails: {out}"
    art = root / f"{family}-art"
    ok, out, row["compile_s"] = _run("compile", *args, "-s", solver if solver.exists() else "euler", "--nfe", 4,
                                     "--max-batch", 2, "-o", art, "--json")  # fmt: skip
    if ok:
        m = json.loads(out)
        row["compile"] = f"{m['graph']['nodes']} nodes"
        row["parity"] = f"{m['validation']['psnr_min']:.0f} dB"
        runner = load(art)
        noise = np.zeros((1, *runner.sample_shape), np.float32)
        cond = None
        if runner.named_conditions:
            cond = {n: np.zeros((1, *runner.condition_shapes[n]), np.float32) for n in runner.condition_names}
        elif runner.condition_name == "labels":
            cond = np.array([0])
        elif runner.conditional:
            cond = np.zeros((1, *runner.cond_shape), np.float32)
        row["runtime"] = ", ".join(runner.input_names) if np.isfinite(runner(noise, cond)).all() else "non-finite"
        ok, out, _ = _run("triton", art, "--repo", root / "repo", "--name", family)
        row["triton"] = "config written" if ok else f"fails: {out}"
    else:
        row.update(compile=f"fails: {out}", parity="-", runtime="-", triton="-")
    return row


def render(rows: list[dict]) -> str:
    lines = [
        "# Supported model classes",
        "",
        "Each diffusers class below loads through its adapter (`bns_export/loaders/adapters.py`) and goes through",
        "the whole tool. Measured on tiny random-weight folders written by `save_pretrained` (tests/families.py:",
        "two layers, 8x8 latents; the video model 3 x 4 x 8 x 8) with `python tools/family_table.py`; the same",
        "steps run in CI (`tests/test_model_families.py`). eval: dpm++2m at NFE 4 against the dopri5 ground",
        "truth (rtol = atol = 1e-3, 8 pairs); distill: validation PSNR after 10 iterations at NFE 4; parity: the",
        "ONNX artifact's min PSNR against the eager reference (gate 60 dB); runtime: the torch-free ONNX runner",
        "fed every named input; triton: config.pbtxt written (its schema is checked in the tests). Random weights",
        "make the PSNRs meaningless as quality figures: they show the path works. The scheduler column is the",
        "diffusers BNSScheduler swapped into that class's own pipeline (tests/test_pipelines.py): its latents equal",
        "bns-export's sampler on the same noise to the relative error given.",
        "",
        "| class | eval | distill | compile | parity | runtime inputs | triton | scheduler |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['eval']} | {r['distill']} | {r['compile']} | {r['parity']} | {r['runtime']} "
            f"| {r['triton']} | {SCHEDULER.get(r['family'], 'not run')} |"
        )
    lines += [
        "",
        "Conditions each class takes (one graph input each; a condition-set file holds `NAME` (N, ...) and",
        "`null.NAME` per name): UNet2DConditionModel `encoder_hidden_states`, SDXL also `text_embeds` and",
        "`time_ids` (default: the pipeline's size/crop ids from the latent size); SD3 and Flux",
        "`encoder_hidden_states`, `pooled_projections`; PixArt, Sana, CogVideoX `encoder_hidden_states`;",
        "UNet2DModel and DiT class labels. Flux-dev's guidance is its guidance embedding: `-w` feeds it, one",
        "network call per step, no classifier-free guidance.",
        "",
        f"Machine: {machine()}; commit {git_rev()}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, choices=list(FAMILIES))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.only or FAMILIES:
            rows.append(family_row(family, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    DOC.write_text(render(rows))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
