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
from test_scheduler_configs import INDEX, REFUSED, _config, pipeline_set_timesteps  # noqa: E402

from bns_export.cli import main as cli_main  # noqa: E402

DOC = ROOT / "docs" / "model_families.md"
#: the pipeline test in which BNSScheduler runs each class (tests/test_pipelines.py, tests/test_diffusers_scheduler.py)
SCHEDULER = {
    "unet": "DDPMPipeline runs",
    "sd": "StableDiffusionPipeline (fp16 5e-3, bf16 5e-2), img2img at strength 1 and 0.5 (a segment table): 1e-4",
    "sdxl": "StableDiffusionXLPipeline (bf16 5e-2), base + refiner at denoising_end / denoising_start 0.8: 1e-4",
    "sd3": "StableDiffusion3Pipeline (bf16 5e-2), img2img at strength 0.6 (a segment table): 1e-4",
    "flux": "FluxPipeline with no extra argument (bf16 5e-2): 1e-4",
    "pixart": "PixArtSigmaPipeline (bf16 5e-2): 1e-4",
    "dit": "DiTPipeline: 1e-4",
    "stable-audio": "StableAudioPipeline (its own condition tokens, zeros as the null prompt): 1e-4",
}
GT = ["--rtol", "1e-3", "--atol", "1e-3"]
#: the public scheduler configs of each family (tests/data/scheduler_configs, each with its source in index.json)
REAL = {
    "sd": ["sd15", "sd21-base", "sd21-v", "sd21-zero-snr"],
    "sdxl": ["sdxl-base", "sdxl-refiner", "sdxl-turbo"],
    "sd3": ["sd3-medium", "sd35-large"],
    "flux": ["flux-dev", "flux-schnell"],
    "pixart": ["pixart-alpha", "pixart-sigma"],
    "sana": ["sana"],
    "dit": ["dit"],
    "cogvideox": ["cogvideox-2b"],
    "cogvideox-5b": ["cogvideox-5b"],
    "wan": ["wan21-t2v-1.3b"],
    "ltx": ["ltx-video"],
    "auraflow": ["auraflow"],
    "stable-audio": ["stable-audio-open"],
}


def conformance(name: str) -> str:
    """One public config against diffusers' own scheduler: the largest deviation of the ODE (alpha at every training
    step) and of the pipeline grid (times at 4, 8, 16 and the default steps), or the one-line refusal."""
    import numpy as np
    import torch

    from bns_export.errors import BNSError
    from bns_export.fields.pipelines import EDMGrid, FlowGrid
    from bns_export.loaders.schedulers import read_scheduler

    entry, cfg = INDEX[name], _config(name)
    try:
        spec = read_scheduler(cfg, tuple(entry["sample_shape"]), entry["model_class"])
    except BNSError as e:
        return f"{name}: refused ({str(e)[:60]})" if name in REFUSED else f"{name}: FAILS {e}"
    grid = spec.schedule.pipeline
    if isinstance(grid, (FlowGrid, EDMGrid)):  # t = 1 - sigma, or 1 / (1 + sigma) for EDM noise levels
        to_t = (lambda s: 1.0 - s) if isinstance(grid, FlowGrid) else (lambda s: 1.0 / (1.0 + s))
        dev = 0.0
        for n in (4, 8, 16, entry["default_steps"]):
            theirs = to_t(pipeline_set_timesteps(entry, cfg, n).sigmas.double().numpy())
            dev = max(dev, float(np.abs(grid.times(spec.schedule, n) - theirs).max()))
        return f"{name}: grid {dev:.0e}"
    k = torch.arange(spec.schedule.steps, dtype=torch.float64)
    ab = pipeline_set_timesteps(entry, cfg, 4).alphas_cumprod.double()
    ode = float((spec.schedule.alpha(1.0 - (k + 1.0) / spec.schedule.steps) - ab.sqrt()).abs().max())
    dev = 0.0
    for n in (4, 8, 16, entry["default_steps"]):
        theirs = np.unique(pipeline_set_timesteps(entry, cfg, n).timesteps.double().numpy())[::-1]
        dev = max(dev, float(np.abs(grid.timesteps(spec.schedule, n) - theirs).max()))
    return f"{name}: ODE {ode:.0e}, grid {dev:.0e}" if ode else f"{name}: grid {dev:.0e}"


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
    row["real"] = "; ".join(conformance(name) for name in REAL.get(family, [])) or "-"
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
        "two layers, 8x8 latents; the video models 3 x 4 x 8 x 8 or 4 x 3 x 8 x 8) with",
        "`python tools/family_table.py`; the same steps run in CI (`tests/test_model_families.py`). eval:",
        "dpm++2m at NFE 4 against the dopri5 ground truth (rtol = atol = 1e-3, 8 pairs); distill: validation",
        "PSNR after 10 iterations at NFE 4; parity: the",
        "ONNX artifact's min PSNR against the eager reference (gate 60 dB); runtime: the torch-free ONNX runner",
        "fed every named input; triton: config.pbtxt written (its schema is checked in the tests). Random weights",
        "make the PSNRs meaningless as quality figures: they show the path works. The scheduler column is the",
        "diffusers BNSScheduler swapped into that class's own pipelines (tests/test_pipelines.py and",
        "tests/test_segments.py): their latents equal bns-export's sampler on the same noise to the relative",
        "error given (half precision: against the fp32 pipeline). The real-config column reads the",
        "scheduler_config.json of the family's public pipelines (tests/data/scheduler_configs, each with its",
        "source) and compares it with diffusers' own scheduler: the largest deviation of alpha at every training",
        "step (ODE) and of the pipeline's time grid at 4, 8, 16 and its default steps (grid; timesteps for",
        "discrete schedulers, 1 - sigma for flow ones, 1 / (1 + sigma) for EDM ones); what is not mirrored is",
        "refused in one line.",
        "",
        "| class | real configs | eval | distill | compile | parity | runtime inputs | triton | scheduler |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['real']} | {r['eval']} | {r['distill']} | {r['compile']} | {r['parity']} "
            f"| {r['runtime']} | {r['triton']} | {SCHEDULER.get(r['family'], 'not run')} |"
        )
    lines += [
        "",
        "Conditions each class takes (one graph input each; a condition-set file holds `NAME` (N, ...) and",
        "`null.NAME` per name): UNet2DConditionModel `encoder_hidden_states`, SDXL also `text_embeds` and",
        "`time_ids` (default: the pipeline's size/crop ids from the latent size); SD3 and Flux",
        "`encoder_hidden_states`, `pooled_projections`; PixArt, Sana, CogVideoX, Wan, LTX-Video, AuraFlow",
        "`encoder_hidden_states` (PixArt, Sana and LTX-Video also `encoder_attention_mask` when the set holds",
        "it); HunyuanDiT `encoder_hidden_states` (CLIP) and `encoder_hidden_states_t5` (and their",
        "`text_embedding_mask`, `text_embedding_mask_t5`); StableAudioDiTModel `encoder_hidden_states` (the",
        "prompt's T5 tokens and the two seconds tokens) and `global_hidden_states` (the seconds, one token);",
        "UNet2DModel and DiT class labels. `bns-export conditions` writes the set from prompts (not for Stable",
        "Audio, whose pipeline builds its seconds tokens beside encode_prompt). Flux-dev's guidance is its",
        "guidance embedding: `-w` feeds it, one network call per step, no classifier-free guidance. Video",
        "latents: CogVideoX (F, C, H, W) as its",
        "pipeline holds them, Wan and LTX-Video (C, F, H, W) (`--shape`); LTX-Video's 1x1x1 patches are packed",
        "in the graph; CogVideoX-5b's and HunyuanDiT's rotary embeddings and HunyuanDiT's size conditions are",
        "graph constants of the latent size. Stable Audio latents are (C, T), its rotary embeddings constants of",
        "T; its cosine DPM-Solver's EDM noise levels are read as the VP path its input scaling makes of them, so",
        "its v-form output is the VP v and the ODE runs from sigma_max to the data end as its pipeline steps.",
        "",
        "Not supported yet, each one line when named: Lumina2Transformer2DModel (its rotary embeddings are complex",
        "tensors and its attention lengths are read from the prompt mask as Python numbers: neither exports to",
        "one static graph), HunyuanVideo; EDM schedulers other than the cosine DPM-Solver (EDMEuler,",
        "EDMDPMSolverMultistep: their 0.25 log sigma time input) are refused by the scheduler reader.",
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
