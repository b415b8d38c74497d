"""Does a distilled table still fit the base model with a LoRA fused in?  A tiny diffusers UNet2DConditionModel
trained here on sklearn's 8x8 digits (class-conditioned through cross-attention to a per-class token sequence),
a LoRA trained on top of it on the digits 0-4, and the base's BNS table run on base + LoRA against the best
classic solver there, a table distilled for it, and one warm-started from the base's table.

    python tools/bench_lora.py
    python tools/bench_lora.py --nfe 6 --base-steps 3000 --lora-steps 600

The folder (unet/, scheduler/, the condition set) and the LoRA file (diffusers' save_lora_adapter format) are made
in a temporary folder; the LoRA goes in through `ModelOptions(loras=...)`, as `--lora` does.  PSNR against each
model's own dopri5 ground truth.  Needs diffusers and peft.  Writes docs/results/finetune-lora.json and the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from bench_finetune import table_rows  # noqa: E402
from benchdoc import git_rev, machine, write_section  # noqa: E402

from bns_export.loaders import ModelOptions, ModelSpec, load_model  # noqa: E402

TOKENS, DIM = 4, 16


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits as (N, 1, 8, 8) in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.tensor(d.target)


def train(unet, x, y, tokens, steps: int, lr: float, params, seed: int) -> float:
    """DDPM epsilon-prediction steps (batch 128, 10% of labels dropped to the null tokens for guidance); the
    last 100 steps' mean loss."""
    import diffusers

    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        x0, lab = x[idx], y[idx].clone()
        lab[torch.rand(128, generator=g) < 0.1] = 10  # the null condition's row
        t = torch.randint(0, 1000, (128,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        xt = sched.add_noise(x0, eps, t)
        loss = torch.nn.functional.mse_loss(unet(xt, t, encoder_hidden_states=tokens[lab]).sample, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}/{steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
    return sum(losses[-100:]) / len(losses[-100:])


def make_models(work: Path, base_steps: int, lora_steps: int, classes: list[int]) -> tuple[Path, Path, dict]:
    """The trained base folder, its LoRA file and what training measured."""
    import diffusers
    from peft import LoraConfig
    from safetensors.torch import save_file

    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=DIM, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    tokens = torch.randn(11, TOKENS, DIM, generator=torch.Generator().manual_seed(1))  # 10 classes, then null
    x, y = digits()
    info = {}
    t0 = time.perf_counter()
    info["base_loss"] = train(unet, x, y, tokens, base_steps, 1e-3, unet.parameters(), seed=2)
    info["base_s"] = time.perf_counter() - t0
    folder = work / "tiny-digits"
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    save_file({"cond": tokens[:10].contiguous(), "null": tokens[10].contiguous()}, str(work / "classes.safetensors"))
    subset = torch.isin(y, torch.tensor(classes))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
    t0 = time.perf_counter()
    info["lora_loss"] = train(unet, x[subset], y[subset], tokens, lora_steps, 1e-3, lora_params, seed=3)
    info["lora_s"] = time.perf_counter() - t0
    info["lora_params"] = sum(p.numel() for p in lora_params)
    unet.save_lora_adapter(work / "lora", weight_name="lora.safetensors")
    return folder, work / "lora" / "lora.safetensors", info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--warm-iterations", type=int, default=100)
    ap.add_argument("--base-steps", type=int, default=1000)
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--classes", default="0,1,2,3,4")
    ap.add_argument("--pairs", type=int, default=256, help="train, validation and test pairs each")
    args = ap.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder, lora, info = make_models(Path(tmp), args.base_steps, args.lora_steps, classes)
        print(info, flush=True)
        cond_set = str(Path(tmp) / "classes.safetensors")
        options = [ModelOptions(cond_set=cond_set, loras=ls) for ls in ((), (str(lora),))]
        specs = [ModelSpec(f"diffusers:{folder}", o) for o in options]
        base, tuned = (load_model(spec, guidance=args.guidance) for spec in specs)

        rows = table_rows(base, tuned, "base + LoRA", args.nfe, args.pairs, args.iterations, (args.warm_iterations,))
        for r in rows:
            print(r, flush=True)
    command = "python tools/bench_lora.py " + " ".join(sys.argv[1:])
    lines = [
        "## A table on the base with a LoRA: a tiny diffusers UNet",
        "",
        f"Command: `{command.strip()}` (commit {git_rev()}). Machine: {machine()}.",
        "",
        "A diffusers UNet2DConditionModel (channels 16/32, cross-attention to a fixed random 4-token sequence per "
        f"class) trained here {args.base_steps} AdamW steps (batch 128, epsilon prediction, DDPM schedule) on "
        f"sklearn's 8x8 digits ({info['base_s']:.0f} s, final loss {info['base_loss']:.3f}); a rank-4 LoRA on its "
        f"attention projections ({info['lora_params']} parameters) trained {args.lora_steps} steps on the digits "
        f"{args.classes} ({info['lora_s']:.0f} s, loss {info['lora_loss']:.3f}) and fused in as `--lora` does. "
        f"Guidance {args.guidance:g}, NFE {args.nfe}; PSNR against each model's own dopri5 ground truth over "
        f"{args.pairs} test pairs; {args.pairs} + {args.pairs} training and validation pairs, batch 64; times are "
        "the distillation's wall time on this machine.",
        "",
        "| table | PSNR | distillation |",
        "|---|---|---|",
        *(f"| {label} | {psnr:.2f} dB | {f'{sec:.0f} s' if sec else '-'} |" for label, psnr, sec in rows),
    ]
    write_section("finetune-lora", "\n".join(lines))


if __name__ == "__main__":
    main()
