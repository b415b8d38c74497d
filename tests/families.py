"""Tiny random-weight diffusers folders, one per supported model class, written by save_pretrained
(2 layers, 8x8 latents, tens of thousands of parameters): what the model-family tests and
tools/family_table.py run on.  `build_family(name, folder)` -> (folder, CLI options, guidance)."""

from __future__ import annotations

from pathlib import Path

import torch

L = 5  # prompt tokens


def _cond_set(path: Path, tensors: dict[str, tuple[int, ...]], n: int = 6) -> str:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    out = {}
    for name, shape in tensors.items():
        out[name] = torch.randn((n, *shape), generator=g)
        out[f"null.{name}"] = 0.1 * torch.randn(shape, generator=g)
    save_file(out, str(path))
    return str(path)


def _models(diffusers):
    """name -> (model factory, scheduler factory, condition tensors or None, extra CLI options, guidance)."""
    ddpm = lambda **kw: diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", **kw)  # noqa: E731
    flow = lambda **kw: diffusers.FlowMatchEulerDiscreteScheduler(**kw)  # noqa: E731
    return {
        "unet": (
            lambda: diffusers.UNet2DModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8,
            ),
            ddpm, None, [], 1,
        ),
        "sd": (
            lambda: diffusers.UNet2DConditionModel(**_unet_kw(), cross_attention_dim=32),
            ddpm, {"encoder_hidden_states": (L, 32)}, [], 3,
        ),
        "sdxl": (
            lambda: diffusers.UNet2DConditionModel(
                **_unet_kw(), cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=16 + 6 * 8,
            ),
            lambda: ddpm(prediction_type="epsilon"), {"encoder_hidden_states": (L, 32), "text_embeds": (16,)}, [], 3,
        ),
        "sd3": (
            lambda: diffusers.SD3Transformer2DModel(
                sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4,
                pos_embed_max_size=16,
            ),
            lambda: flow(shift=3.0), {"encoder_hidden_states": (L, 16), "pooled_projections": (12,)}, [], 3,
        ),
        "flux": (
            lambda: diffusers.FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=12, guidance_embeds=True,
                axes_dims_rope=(2, 2, 4),
            ),
            lambda: flow(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
            {"encoder_hidden_states": (L, 16), "pooled_projections": (12,)}, ["--shape", "4,8,8"], 3.5,
        ),
        "pixart": (
            lambda: diffusers.PixArtTransformer2DModel(
                sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
                out_channels=8, cross_attention_dim=16, caption_channels=16, norm_num_groups=8,
                use_additional_conditions=False,
            ),
            ddpm, {"encoder_hidden_states": (L, 16)}, [], 3,
        ),
        "sana": (
            lambda: diffusers.SanaTransformer2DModel(
                in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
                sample_size=8, patch_size=1,
            ),
            lambda: flow(shift=3.0), {"encoder_hidden_states": (L, 16)}, [], 3,
        ),
        "dit": (
            lambda: diffusers.DiTTransformer2DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=8,  # DiTPipeline: null = 1000
            ),
            ddpm, None, [], 3,
        ),
        "cogvideox": (
            lambda: diffusers.CogVideoXTransformer3DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=16,
                text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
                temporal_compression_ratio=4, max_text_seq_length=6, use_rotary_positional_embeddings=False,
            ),
            lambda: ddpm(prediction_type="v_prediction"), {"encoder_hidden_states": (6, 16)}, [], 3,
        ),
        "cogvideox-5b": (
            lambda: diffusers.CogVideoXTransformer3DModel(
                num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
                text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
                temporal_compression_ratio=4, max_text_seq_length=6, use_rotary_positional_embeddings=True,
            ),
            lambda: diffusers.CogVideoXDDIMScheduler(
                beta_schedule="scaled_linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                snr_shift_scale=1.0, timestep_spacing="trailing",
            ),
            {"encoder_hidden_states": (6, 16)}, ["--shape", "3,4,8,8"], 3,
        ),
        "wan": (
            lambda: diffusers.WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
            ),
            lambda: diffusers.UniPCMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
            ),
            {"encoder_hidden_states": (L, 16)}, ["--shape", "4,3,8,8"], 3,
        ),
        "ltx": (
            lambda: diffusers.LTXVideoTransformer3DModel(
                in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
                attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=16,
            ),
            lambda: flow(
                use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                max_image_seq_len=4096, shift_terminal=0.1,
            ),
            {"encoder_hidden_states": (L, 16)}, ["--shape", "4,2,8,8"], 3,
        ),
        "auraflow": (
            lambda: diffusers.AuraFlowTransformer2DModel(
                sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                out_channels=4, pos_embed_max_size=64,
            ),
            lambda: flow(shift=1.73), {"encoder_hidden_states": (L, 16)}, [], 3,
        ),
        "hunyuandit": (
            lambda: diffusers.HunyuanDiT2DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, hidden_size=16,
                num_layers=2, sample_size=8, cross_attention_dim=16, cross_attention_dim_t5=16,
                pooled_projection_dim=8, text_len=L, text_len_t5=6, learn_sigma=True,
            ),
            lambda: ddpm(prediction_type="v_prediction"),
            {"encoder_hidden_states": (L, 16), "encoder_hidden_states_t5": (6, 16)}, [], 3,
        ),
        "stable-audio": (
            lambda: diffusers.StableAudioDiTModel(
                sample_size=16, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=16,
                global_states_input_dim=24, cross_attention_input_dim=12,
            ),
            lambda: diffusers.CosineDPMSolverMultistepScheduler(
                sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
                prediction_type="v_prediction", rho=7.0, final_sigmas_type="zero",
            ),
            {"encoder_hidden_states": (L + 2, 12), "global_hidden_states": (1, 24)}, [], 7,
        ),
    }  # fmt: skip


def _unet_kw() -> dict:
    return dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=8, use_linear_projection=True,
    )  # fmt: skip


#: the model class each family's folder holds
FAMILIES = {
    "unet": "UNet2DModel",
    "sd": "UNet2DConditionModel (SD 1.x/2.x)",
    "sdxl": "UNet2DConditionModel (SDXL, text_time)",
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
    "pixart": "PixArtTransformer2DModel",
    "sana": "SanaTransformer2DModel",
    "dit": "DiTTransformer2DModel",
    "cogvideox": "CogVideoXTransformer3DModel (video, (F, C, H, W))",
    "cogvideox-5b": "CogVideoXTransformer3DModel (5b: rotary embeddings)",
    "wan": "WanTransformer3DModel (video, (C, F, H, W))",
    "ltx": "LTXVideoTransformer3DModel (video, (C, F, H, W))",
    "auraflow": "AuraFlowTransformer2DModel",
    "hunyuandit": "HunyuanDiT2DModel",
    "stable-audio": "StableAudioDiTModel (audio, (C, T))",
}


def build_family(name: str, folder: Path) -> tuple[Path, list[str], float]:
    """Write the family's folder (model, scheduler, condition set); return it, its CLI options and guidance."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    make_model, make_scheduler, conds, extra, guidance = _models(diffusers)[name]
    folder = Path(folder)
    torch.manual_seed(0)
    model = make_model()
    sub = "unet" if "UNet" in type(model).__name__ else "transformer"
    model.save_pretrained(folder / "model" / sub)
    make_scheduler().save_pretrained(folder / "model" / "scheduler")
    opts = list(extra)
    if conds:
        opts = ["--cond-set", _cond_set(folder / "conditions.safetensors", conds), *extra]
    return folder / "model", opts, guidance
