"""Write a tiny random-weight, text-conditioned latent diffusers pipeline folder (no download), for the
The worked example of docs/your-model.md and the tests: what a user's Stable-Diffusion-style folder looks like, small.

    python tools/tiny_pipeline.py OUT    # OUT/{model_index.json, unet/, vae/, scheduler/}, OUT/prompts.safetensors

unet/: UNet2DConditionModel (4x8x8 latents, cross-attention to 4 tokens of 16 dims); vae/:
AutoencoderKL (4 latent channels, one 2x upsampling: 8x8 latents -> 3x16x16 images, scaling_factor
0.18215 as in Stable Diffusion); scheduler/: DDPMScheduler (scaled_linear betas, epsilon);
prompts.safetensors: "cond" (6, 4, 16) stand-in prompt embeddings and "null" (4, 16), the empty
prompt's.  Needs diffusers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TOKENS, DIM, LATENT = 4, 16, (4, 8, 8)


def build(out: Path, seed: int = 0, text: bool = True) -> Path:
    """Create the folder and return it; text=False: an unconditional UNet2DModel with self-attention instead."""
    import diffusers
    from safetensors.torch import save_file

    out = Path(out)
    torch.manual_seed(seed)
    common = dict(
        sample_size=LATENT[1],
        in_channels=LATENT[0],
        out_channels=LATENT[0],
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
    )
    if not text:
        unet = diffusers.UNet2DModel(
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), **common
        )
    else:
        unet = diffusers.UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=DIM,
            attention_head_dim=4,
            **common,
        )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT[0],
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=2 * LATENT[1],
        scaling_factor=0.18215,
    )
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline" if text else "LDMPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(unet).__name__],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    g = torch.Generator().manual_seed(seed + 1)
    save_file(
        {"cond": torch.randn(6, TOKENS, DIM, generator=g), "null": 0.1 * torch.randn(TOKENS, DIM, generator=g)},
        str(out / "prompts.safetensors"),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to create")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unconditional", action="store_true", help="a UNet2DModel with self-attention instead")
    args = ap.parse_args()
    out = build(Path(args.out), args.seed, text=not args.unconditional)
    print(f"wrote {out} (unet/, vae/, scheduler/, prompts.safetensors)")


if __name__ == "__main__":
    main()
