"""One adapter per diffusers model class, in one table: how the class is called, what it is conditioned on,
how its output becomes the prediction, how its latents are packed, and its sample shape.

`ADAPTERS[class name]` is consulted once by the diffusers loader; a class not in the table is one line
listing the supported ones.  Each adapter's `call(model, x, time, parts, consts)` receives the sample in
our layout (B, *sample_shape), the network's time input (DDPM step index, or 1000 sigma for flow
models), the condition's named tensors and the adapter's graph constants, and returns the prediction
in the sample's layout: the learned-variance half dropped (PixArt, DiT), Flux's 2x2 patches unpacked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..checks import integer
from ..errors import BNSError

#: a condition the class needs: its name and one sample's shape, None for a size the condition set decides
Need = tuple[str, tuple[int | None, ...]]


@dataclass(frozen=True)
class Adapter:
    """How one diffusers model class is called and read (see the module docstring)."""

    call: Callable[[nn.Module, Tensor, Tensor, dict, dict], Tensor]
    #: the tensor conditions the class takes, from its config (empty: unconditional or class labels)
    needs: Callable[[dict], list[Need]] = lambda cfg: []
    #: conditions the class takes when the condition set holds them (the text encoder's attention mask)
    optional: Callable[[dict], list[Need]] = lambda cfg: []
    #: conditions the class can do without, each with its default (value, null value) from (config, sample shape)
    defaults: dict[str, Callable[[dict, tuple[int, ...]], tuple[Tensor, Tensor]]] = field(default_factory=dict)
    #: K for class-conditional classes (K + 1 embeddings, the last the null class), else None
    classes: Callable[[dict], int | None] = lambda cfg: None
    #: one sample's shape from the config, or None where only --shape can say
    shape: Callable[[dict], tuple[int, ...] | None] = lambda cfg: _image_shape(cfg)
    #: graph constants (non-persistent buffers) from (config, sample shape)
    constants: Callable[[dict, tuple[int, ...]], dict[str, Tensor]] = lambda cfg, shape: {}
    #: the guidance scale is an input of the network (Flux-dev), not classifier-free guidance
    embedded_guidance: Callable[[dict], bool] = lambda cfg: False
    #: check a shape the user gave (--shape) or the config implied, against the config
    check_shape: Callable[[dict, tuple[int, ...]], None] = lambda cfg, shape: None
    #: the multiple every spatial size must be when the class runs at other sizes (UNets, SD3, Sana), else None:
    #: the class's position embeddings or ids are fixed at the size the graph is traced at
    size_step: Callable[[dict], int | None] = lambda cfg: None
    #: the largest spatial side it takes (SD3: what its cropped position embeddings cover), else None
    size_limit: Callable[[dict], int | None] = lambda cfg: None


def _int(cfg: dict, key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    return integer(value, f"model config {key}", 1, 1 << 20)


def _image_shape(cfg: dict) -> tuple[int, ...]:
    """(in_channels, H, W) from in_channels and sample_size (an int or [H, W])."""
    size = cfg.get("sample_size", 64)
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if len(size) != 2:
        raise BNSError(f"model config sample_size must be a size or [H, W], got {size!r}")
    return (_int(cfg, "in_channels", 4), *(integer(s, "model config sample_size", 1, 1 << 16) for s in size))


def _first_half(out: Tensor, channels: int, dim: int = 1) -> Tensor:
    """A learned-variance output (2C channels: prediction, then variance) as its prediction."""
    return out.narrow(dim, 0, channels) if out.shape[dim] == 2 * channels else out


def _text(dim_key: str, name: str = "encoder_hidden_states") -> Callable[[dict], list[Need]]:
    return lambda cfg: [(name, (None, _int(cfg, dim_key)))]


#: attention masks a condition set may hold, each with the condition whose tokens it masks: (L,) of 1 for a token the
#: pipeline attends to, 0 for padding (what the T5/Gemma pipelines pass as encoder_attention_mask)
MASKS = {
    "encoder_attention_mask": "encoder_hidden_states",
    "text_embedding_mask": "encoder_hidden_states",
    "text_embedding_mask_t5": "encoder_hidden_states_t5",
}


def _masked(cfg: dict) -> list[Need]:
    return [("encoder_attention_mask", (None,))]


def _primary(parts: dict, name: str = "encoder_hidden_states") -> Tensor:
    """The prompt embedding: by its name, or today's single `cond`."""
    return parts[name] if name in parts else parts["cond"]


# -- UNets ---------------------------------------------------------------------------------------


def _unet_step(cfg: dict) -> int:
    """A UNet's total downsampling: one factor 2 per down block but the last."""
    blocks = cfg.get("down_block_types") or ()
    return 2 ** max(0, len(blocks) - 1)


def _unet2d(model, x, time, parts, consts):
    return model(x, time, class_labels=parts.get("class_labels")).sample


#: the pipeline-level facts a model's config lacks, which the loader adds under these keys: how many SDXL time ids
#: (6 for the base pipeline, 5 for the refiner's, whose model_index.json says requires_aesthetics_score)
TIME_IDS_KEY = "_bns_time_ids"


def _time_id_count(cfg: dict) -> int:
    return 5 if cfg.get(TIME_IDS_KEY) == 5 else 6


def _sdxl_text_embeds(cfg: dict) -> int:
    count = _time_id_count(cfg)
    dim = _int(cfg, "projection_class_embeddings_input_dim") - count * _int(cfg, "addition_time_embed_dim")
    if dim < 1:
        raise BNSError(
            f"UNet2DConditionModel: projection_class_embeddings_input_dim leaves no room for {count} time ids"
        )
    return dim


def _class_embedding(cfg: dict) -> Need | None:
    """A UNet2DConditionModel's class embedding as a condition: class_labels, one number per sample (an index for
    num_class_embeds, a timestep-like value for class_embed_type timestep) or a vector (projection, identity)."""
    kind = cfg.get("class_embed_type")
    if kind is None:
        return ("class_labels", (1,)) if cfg.get("num_class_embeds") else None
    if kind == "timestep":
        return ("class_labels", (1,))
    if kind in ("projection", "simple_projection"):
        return ("class_labels", (_int(cfg, "projection_class_embeddings_input_dim"),))
    if kind == "identity":
        return ("class_labels", (_time_embed_dim(cfg),))
    raise BNSError(f"UNet2DConditionModel with class_embed_type {kind!r} is not supported")


def _time_embed_dim(cfg: dict) -> int:
    """UNet2DConditionModel's time embedding width: time_embedding_dim, else 4 x its first block's channels."""
    if cfg.get("time_embedding_dim"):
        return _int(cfg, "time_embedding_dim")
    return 4 * integer((cfg.get("block_out_channels") or [0])[0], "model config block_out_channels", 1)


def _unet_needs(cfg: dict) -> list[Need]:
    dim = cfg.get("cross_attention_dim")
    dim = dim[0] if isinstance(dim, (list, tuple)) else dim
    needs: list[Need] = [("encoder_hidden_states", (None, integer(dim, "model config cross_attention_dim", 1)))]
    if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled text embeddings and the size/crop ids
        needs += [("text_embeds", (_sdxl_text_embeds(cfg),)), ("time_ids", (_time_id_count(cfg),))]
    elif cfg.get("addition_embed_type") is not None:
        raise BNSError(f"UNet2DConditionModel with addition_embed_type {cfg['addition_embed_type']!r} is not supported")
    labels = _class_embedding(cfg)
    return needs + ([labels] if labels else [])


def _sdxl_time_ids(cfg: dict, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """SDXL's micro-conditioning as its pipelines set it by default, in pixels (8 per latent): the base's original
    size, crop (0, 0), target size; the refiner's original size, crop and aesthetic score 6 (the null branch's
    negative aesthetic score 2.5)."""
    h, w = 8 * shape[-2], 8 * shape[-1]
    if _time_id_count(cfg) == 5:
        return torch.tensor([h, w, 0, 0, 6.0]), torch.tensor([h, w, 0, 0, 2.5])
    ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32)
    return ids, ids


def _unet_cond(model, x, time, parts, consts):
    kwargs = {}
    if "text_embeds" in parts:
        kwargs["added_cond_kwargs"] = {"text_embeds": parts["text_embeds"], "time_ids": parts["time_ids"]}
    if "class_labels" in parts:  # (B, 1): an index into num_class_embeds, or a timestep-like value; else vectors
        labels = parts["class_labels"]
        embedding = getattr(model, "class_embedding", None)
        if labels.shape[1] == 1:
            labels = labels[:, 0].round().long() if isinstance(embedding, torch.nn.Embedding) else labels[:, 0]
        kwargs["class_labels"] = labels
    return model(x, time, encoder_hidden_states=_primary(parts), **kwargs).sample


# -- transformers --------------------------------------------------------------------------------


def _sd3(model, x, time, parts, consts):
    return model(
        hidden_states=x,
        timestep=time,
        encoder_hidden_states=_primary(parts),
        pooled_projections=parts["pooled_projections"],
    ).sample


def _patch(cfg: dict) -> int:
    return _int(cfg, "patch_size", 1)


def _sd3_limit(cfg: dict) -> int | None:
    """SD3 crops its position embeddings from a pos_embed_max_size grid of patches: the largest latent side."""
    return _patch(cfg) * _int(cfg, "pos_embed_max_size") if cfg.get("pos_embed_max_size") else None


def _sd3_needs(cfg: dict) -> list[Need]:
    return [
        ("encoder_hidden_states", (None, _int(cfg, "joint_attention_dim"))),
        ("pooled_projections", (_int(cfg, "pooled_projection_dim"),)),
    ]


def _flux_shape_check(cfg: dict, shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
        raise BNSError(f"Flux latents are (C, H, W) with even H and W (2x2 patches), got {shape}")
    packed = _int(cfg, "in_channels", 64)
    if 4 * shape[0] != packed:
        raise BNSError(
            f"--shape {','.join(map(str, shape))}: this Flux model packs 2x2 patches of {packed // 4} latent "
            f"channels (in_channels {packed}), not {shape[0]}"
        )


def _flux_constants(cfg: dict, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """img_ids for the packed (H/2, W/2) grid, as FluxPipeline builds them (row, column in channels 1, 2)."""
    h, w = shape[1] // 2, shape[2] // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None].float()
    ids[..., 2] = torch.arange(w)[None, :].float()
    return {"img_ids": ids.reshape(h * w, 3)}


def pack_2x2(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): FluxPipeline._pack_latents."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_2x2(x: Tensor, h: int, w: int) -> Tensor:
    """(B, H/2 * W/2, 4C) -> (B, C, H, W): FluxPipeline._unpack_latents."""
    b, _, c4 = x.shape
    return x.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def _flux(model, x, time, parts, consts):
    ehs = _primary(parts)
    txt_ids = torch.zeros(ehs.shape[1], 3, dtype=x.dtype, device=x.device)
    kwargs = {}
    if "guidance" in consts:
        kwargs["guidance"] = consts["guidance"].to(x.dtype).expand(x.shape[0])
    out = model(
        hidden_states=pack_2x2(x),
        timestep=time / 1000.0,  # FluxPipeline passes sigma; the model scales it by 1000 itself
        encoder_hidden_states=ehs,
        pooled_projections=parts["pooled_projections"],
        img_ids=consts["img_ids"].to(x.dtype),
        txt_ids=txt_ids,
        **kwargs,
    ).sample
    return unpack_2x2(out, x.shape[2], x.shape[3])


def _pixart_uses_sizes(cfg: dict) -> bool:
    """PixArt-alpha's micro-conditions: use_additional_conditions, on by default at sample_size 128 (its 1024 px
    models), as PixArtTransformer2DModel decides."""
    flag = cfg.get("use_additional_conditions")
    return bool(flag) if flag is not None else cfg.get("sample_size") == 128


def _pixart_constants(cfg: dict, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """resolution (height, width in pixels, 8 per latent) and aspect ratio height / width, as PixArtAlphaPipeline
    passes them for a 1024 px model: graph constants of the latent size."""
    if not _pixart_uses_sizes(cfg):
        return {}
    h, w = 8 * shape[-2], 8 * shape[-1]
    return {"resolution": torch.tensor([float(h), float(w)]), "aspect_ratio": torch.tensor([h / w])}


def _pixart(model, x, time, parts, consts):
    sizes = {"resolution": None, "aspect_ratio": None}
    if "resolution" in consts:
        sizes = {k: consts[k].to(x.dtype).expand(x.shape[0], -1) for k in ("resolution", "aspect_ratio")}
    mask = parts.get("encoder_attention_mask")
    out = model(
        x, encoder_hidden_states=_primary(parts), timestep=time, added_cond_kwargs=sizes, encoder_attention_mask=mask
    ).sample
    return _first_half(out, x.shape[1])


def _sana(model, x, time, parts, consts):
    mask = parts.get("encoder_attention_mask")
    return model(x, encoder_hidden_states=_primary(parts), timestep=time, encoder_attention_mask=mask).sample


def _dit(model, x, time, parts, consts):
    return _first_half(model(x, timestep=time, class_labels=parts["class_labels"]).sample, x.shape[1])


def _cogvideox_shape(cfg: dict) -> tuple[int, ...]:
    """(F, C, H, W) latent video: frames after temporal compression, channels, latent height and width."""
    frames = (_int(cfg, "sample_frames", 49) - 1) // _int(cfg, "temporal_compression_ratio", 4) + 1
    return (frames, _int(cfg, "in_channels", 16), _int(cfg, "sample_height", 60), _int(cfg, "sample_width", 90))


def _cogvideox_constants(cfg: dict, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """CogVideoX-5b's rotary embeddings (use_rotary_positional_embeddings) for the latent size, computed as
    CogVideoXPipeline._prepare_rotary_positional_embeddings does: graph constants, as Flux's ids are."""
    if not cfg.get("use_rotary_positional_embeddings"):
        return {}
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p, p_t = _patch(cfg), cfg.get("patch_size_t")
    grid = (shape[2] // p, shape[3] // p)
    base_w, base_h = _int(cfg, "sample_width", 90) // p, _int(cfg, "sample_height", 60) // p
    head = _int(cfg, "attention_head_dim")
    if p_t is None:  # CogVideoX 1.0
        crops = get_resize_crop_region_for_grid(grid, base_w, base_h)
        cos, sin = get_3d_rotary_pos_embed(head, crops, grid, temporal_size=shape[0])
    else:  # CogVideoX 1.5
        frames = (shape[0] + p_t - 1) // p_t
        cos, sin = get_3d_rotary_pos_embed(
            head, None, grid, temporal_size=frames, grid_type="slice", max_size=(base_h, base_w)
        )
    return {"rotary_cos": cos.float(), "rotary_sin": sin.float()}


def _cogvideox(model, x, time, parts, consts):
    rotary = (consts["rotary_cos"].to(x.dtype), consts["rotary_sin"].to(x.dtype)) if "rotary_cos" in consts else None
    return model(hidden_states=x, encoder_hidden_states=_primary(parts), timestep=time, image_rotary_emb=rotary).sample


# -- video and other transformers whose pipelines call them differently ------------------------------------------


def _video_shape_check(cfg: dict, shape: tuple[int, ...], name: str, step: tuple[int, int]) -> None:
    """(C, F, H, W) latents: C the config's in_channels, F a multiple of step[0], H and W of step[1]."""
    if len(shape) != 4:
        raise BNSError(f"{name} latents are (C, F, H, W) (channels, frames, height, width), got {shape}")
    channels = _int(cfg, "in_channels", 16)
    if shape[0] != channels:
        raise BNSError(f"--shape {','.join(map(str, shape))}: {name} takes {channels} latent channels, not {shape[0]}")
    if shape[1] % step[0] or shape[2] % step[1] or shape[3] % step[1]:
        raise BNSError(
            f"--shape {','.join(map(str, shape))}: {name} patches frames by {step[0]} and height and width by {step[1]}"
        )


def _wan_step(cfg: dict) -> tuple[int, int]:
    p = cfg.get("patch_size") or (1, 2, 2)
    return integer(p[0], "model config patch_size", 1, 64), integer(p[1], "model config patch_size", 1, 64)


def _wan(model, x, time, parts, consts):
    """WanPipeline: (B, C, F, H, W) latents, timestep 1000 sigma, the flow velocity out."""
    return model(hidden_states=x, timestep=time, encoder_hidden_states=_primary(parts)).sample


#: LTXPipeline's rope_interpolation_scale at its defaults: (temporal compression 8 / frame rate 25, spatial
#: compression 32, 32)
LTX_ROPE_SCALE = (8.0 / 25.0, 32.0, 32.0)


def _ltx(model, x, time, parts, consts):
    """LTXPipeline: latents packed (B, F*H*W, C) with 1x1x1 patches, an attention mask (all tokens when the set
    has none), timestep 1000 sigma; the velocity unpacked to (B, C, F, H, W)."""
    b, c, f, h, w = x.shape
    ehs = _primary(parts)
    mask = parts.get("encoder_attention_mask")
    if mask is None:
        mask = torch.ones(ehs.shape[:2], dtype=x.dtype, device=x.device)
    out = model(
        hidden_states=x.flatten(2).transpose(1, 2),
        encoder_hidden_states=ehs,
        timestep=time,
        encoder_attention_mask=mask,
        num_frames=f,
        height=h,
        width=w,
        rope_interpolation_scale=LTX_ROPE_SCALE,
    ).sample
    return out.transpose(1, 2).reshape(b, c, f, h, w)


def _auraflow(model, x, time, parts, consts):
    """AuraFlowPipeline passes sigma (t / 1000) as the timestep; the velocity out."""
    return model(x, encoder_hidden_states=_primary(parts), timestep=time / 1000.0).sample


def _auraflow_limit(cfg: dict) -> int | None:
    """AuraFlow crops its position embeddings from a square of pos_embed_max_size patches: the largest latent side."""
    count = cfg.get("pos_embed_max_size")
    return _patch(cfg) * math.isqrt(_int(cfg, "pos_embed_max_size")) if count else None


def _hunyuan_constants(cfg: dict, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """HunyuanDiTPipeline's 2D rotary embeddings for the latent size, and its micro-conditions at the defaults:
    original size 1024x1024, target size the image's, crop (0, 0); style 0."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    p = _patch(cfg)
    grid = (shape[1] // p, shape[2] // p)
    crops = get_resize_crop_region_for_grid(grid, 512 // 8 // p)
    head = _int(cfg, "attention_head_dim")
    cos, sin = get_2d_rotary_pos_embed(head, crops, grid, output_type="pt")
    meta = torch.tensor([1024.0, 1024.0, 8.0 * shape[1], 8.0 * shape[2], 0.0, 0.0])
    return {"rotary_cos": cos.float(), "rotary_sin": sin.float(), "image_meta_size": meta}


def _hunyuan(model, x, time, parts, consts):
    """HunyuanDiTPipeline: CLIP and T5 embeddings with their masks (all tokens when the set has none), the
    micro-conditions and rotary embeddings as constants; the learned-variance half dropped."""
    b = x.shape[0]
    ehs, t5 = _primary(parts), parts["encoder_hidden_states_t5"]
    ones = lambda e: torch.ones(e.shape[:2], dtype=x.dtype, device=x.device)  # noqa: E731
    out = model(
        x,
        time,
        encoder_hidden_states=ehs,
        text_embedding_mask=parts.get("text_embedding_mask", ones(ehs)),
        encoder_hidden_states_t5=t5,
        text_embedding_mask_t5=parts.get("text_embedding_mask_t5", ones(t5)),
        image_meta_size=consts["image_meta_size"].to(x.dtype).expand(b, -1).contiguous(),  # it is view()ed
        style=torch.zeros(b, dtype=torch.long, device=x.device),
        image_rotary_emb=(consts["rotary_cos"].to(x.dtype), consts["rotary_sin"].to(x.dtype)),
    ).sample
    return _first_half(out, x.shape[1])


def _hunyuan_needs(cfg: dict) -> list[Need]:
    return [
        ("encoder_hidden_states", (None, _int(cfg, "cross_attention_dim", 1024))),
        ("encoder_hidden_states_t5", (None, _int(cfg, "cross_attention_dim_t5", 2048))),
    ]


def _audio_shape(cfg: dict) -> tuple[int, ...]:
    """(C, T): the latent channels and sample_size latent frames (Stable Audio Open: 64 x 1024)."""
    return (_int(cfg, "in_channels", 64), _int(cfg, "sample_size", 1024))


def _audio_shape_check(cfg: dict, shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[0] != _int(cfg, "in_channels", 64):
        raise BNSError(
            f"--shape {','.join(map(str, shape))}: Stable Audio latents are (C, T) with C = in_channels "
            f"{_int(cfg, 'in_channels', 64)}"
        )


def _audio_constants(cfg: dict, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """StableAudioPipeline's rotary embeddings over the latent frames and the one global token before them
    (get_1d_rotary_pos_embed of half the head width, real cos / sin halves): graph constants of the length."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cos, sin = get_1d_rotary_pos_embed(
        _int(cfg, "attention_head_dim", 64) // 2, shape[-1] + 1, use_real=True, repeat_interleave_real=False
    )
    return {"rotary_cos": cos.float(), "rotary_sin": sin.float()}


def _stable_audio(model, x, time, parts, consts):
    """StableAudioPipeline: text and duration tokens cross-attended, the (start, end) seconds as the global token,
    the rotary constants, timestep 2 atan(sigma) / pi; the EDM v-form output (the scheduler preconditions)."""
    return model(
        x,
        time,
        encoder_hidden_states=_primary(parts),
        global_hidden_states=parts["global_hidden_states"],
        rotary_embedding=(consts["rotary_cos"].to(x.dtype), consts["rotary_sin"].to(x.dtype)),
    ).sample


ADAPTERS: dict[str, Adapter] = {
    "UNet2DModel": Adapter(_unet2d, classes=lambda cfg: _classes(cfg, "num_class_embeds"), size_step=_unet_step),
    "UNet2DConditionModel": Adapter(
        _unet_cond,
        needs=_unet_needs,
        defaults={"time_ids": _sdxl_time_ids},
        classes=lambda cfg: None,
        size_step=_unet_step,
    ),
    "SD3Transformer2DModel": Adapter(_sd3, needs=_sd3_needs, size_step=_patch, size_limit=_sd3_limit),
    "FluxTransformer2DModel": Adapter(
        _flux,
        needs=lambda cfg: [
            ("encoder_hidden_states", (None, _int(cfg, "joint_attention_dim"))),
            ("pooled_projections", (_int(cfg, "pooled_projection_dim"),)),
        ],
        shape=lambda cfg: None,
        constants=_flux_constants,
        embedded_guidance=lambda cfg: bool(cfg.get("guidance_embeds")),
        check_shape=_flux_shape_check,
    ),
    "PixArtTransformer2DModel": Adapter(
        _pixart, needs=_text("caption_channels"), optional=_masked, constants=_pixart_constants
    ),
    "SanaTransformer2DModel": Adapter(_sana, needs=_text("caption_channels"), optional=_masked, size_step=_patch),
    "DiTTransformer2DModel": Adapter(_dit, classes=lambda cfg: _classes(cfg, "num_embeds_ada_norm", offset=0)),
    "CogVideoXTransformer3DModel": Adapter(
        _cogvideox, needs=_text("text_embed_dim"), shape=_cogvideox_shape, constants=_cogvideox_constants
    ),
    "WanTransformer3DModel": Adapter(
        _wan,
        needs=_text("text_dim"),
        shape=lambda cfg: None,
        check_shape=lambda cfg, shape: _video_shape_check(cfg, shape, "Wan", _wan_step(cfg)),
    ),
    "LTXVideoTransformer3DModel": Adapter(
        _ltx,
        needs=_text("caption_channels"),
        optional=_masked,
        shape=lambda cfg: None,
        check_shape=lambda cfg, shape: _video_shape_check(cfg, shape, "LTX-Video", (1, 1)),
    ),
    "AuraFlowTransformer2DModel": Adapter(
        _auraflow, needs=_text("joint_attention_dim"), size_step=_patch, size_limit=_auraflow_limit
    ),
    "HunyuanDiT2DModel": Adapter(
        _hunyuan,
        needs=_hunyuan_needs,
        optional=lambda cfg: [("text_embedding_mask", (None,)), ("text_embedding_mask_t5", (None,))],
        constants=_hunyuan_constants,
    ),
    "StableAudioDiTModel": Adapter(
        _stable_audio,
        needs=lambda cfg: [
            ("encoder_hidden_states", (None, _int(cfg, "cross_attention_input_dim", 768))),
            ("global_hidden_states", (1, _int(cfg, "global_states_input_dim", 1536))),
        ],
        shape=_audio_shape,
        constants=_audio_constants,
        check_shape=_audio_shape_check,
    ),
}


def _classes(cfg: dict, key: str, offset: int = 1) -> int | None:
    """Class count of a class-conditional config: num_class_embeds counts the null class (offset 1),
    DiT's num_embeds_ada_norm does not (its table has one more row, the null class)."""
    value = cfg.get(key)
    if value is None:
        return None
    k = integer(value, f"model config {key}", 1, 1 << 24) - offset
    return k if k >= 1 else None


def adapter_for(class_name: str) -> Adapter:
    """The table entry of a diffusers model class, or one line listing the supported classes."""
    try:
        return ADAPTERS[class_name]
    except KeyError:
        raise BNSError(
            f"diffusers model class {class_name} is not supported; supported: {', '.join(ADAPTERS)}"
        ) from None


class AdaptedNet(nn.Module):
    """net(x, time[, condition]) -> the prediction in the sample's layout, for any class in the table.

    The pipeline's one condition tensor is unpacked into its named parts (class labels for
    class-conditional classes); the adapter's constants are non-persistent buffers (not weights).
    """

    def __init__(self, model: nn.Module, adapter: Adapter, layout=None, constants: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter
        self.layout = layout
        self.const_names = tuple(sorted(constants or {}))
        for name, value in (constants or {}).items():
            self.register_buffer(f"const_{name}", value, persistent=False)

    def consts(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"const_{name}") for name in self.const_names}

    def set_constant(self, name: str, value: Tensor) -> None:
        """Add or replace a graph constant (e.g. Flux's embedded guidance scale)."""
        if name not in self.const_names:
            self.const_names = tuple(sorted((*self.const_names, name)))
        self.register_buffer(f"const_{name}", value, persistent=False)

    def forward(self, x: Tensor, time: Tensor, cond: Tensor | None = None) -> Tensor:
        parts: dict[str, Tensor] = {}
        if cond is not None:
            parts = self.layout.unpack(cond) if self.layout is not None else {"class_labels": cond}
            parts = {k: v.contiguous() for k, v in parts.items()}  # slices of the packed record; some classes view()
        return self.adapter.call(self.model, x, time, parts, self.consts())
