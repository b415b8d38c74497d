"""`bns-export conditions`: prompts -> a condition set, with the folder's own tokenizers and text encoders.

The pipeline class that model_index.json names is loaded with its tokenizers and text encoders only
(the network, VAE and scheduler are left out), and its own `encode_prompt` turns the prompts and the
negative prompt into the tensors its `__call__` would pass the network, with `__call__`'s defaults
(SD3's and Flux's max_sequence_length, PixArt's caption cleaning, Sana's instruction).  `ENCODINGS`
says, per pipeline class, which condition each of encode_prompt's outputs is; the set is then checked
against what the model class needs (loaders.diffusers.fit_conditions) before anything is written.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checks import read_json
from ..errors import BNSError
from .conditions import NULL_PREFIX, ConditionSet, condition_set

EHS, POOLED, TEXT_EMBEDS, MASK = "encoder_hidden_states", "pooled_projections", "text_embeds", "encoder_attention_mask"
MAX_PROMPTS = 100_000
MAX_PROMPTS_BYTES = 16 << 20
#: prompts encoded per encode_prompt call
BATCH = 16


@dataclass(frozen=True)
class Encoding:
    """What a pipeline's encode_prompt returns: one condition name per output (null.NAME for the negative
    prompt's, None for an output the network does not take); `negative` False when encode_prompt has no negative
    prompt (Flux), so the negative is encoded as a prompt of its own."""

    outputs: tuple[str | None, ...]
    negative: bool = True


_SD = Encoding((EHS, NULL_PREFIX + EHS))
_SDXL = Encoding((EHS, NULL_PREFIX + EHS, TEXT_EMBEDS, NULL_PREFIX + TEXT_EMBEDS))
_SD3 = Encoding((EHS, NULL_PREFIX + EHS, POOLED, NULL_PREFIX + POOLED))
_MASKED = Encoding((EHS, MASK, NULL_PREFIX + EHS, NULL_PREFIX + MASK))

#: pipeline class (model_index.json's _class_name) -> what its encode_prompt returns
ENCODINGS: dict[str, Encoding] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionInpaintPipeline": _SD,
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLImg2ImgPipeline": _SDXL,
    "StableDiffusionXLInpaintPipeline": _SDXL,
    "StableDiffusion3Pipeline": _SD3,
    "StableDiffusion3Img2ImgPipeline": _SD3,
    "FluxPipeline": Encoding((EHS, POOLED, None), negative=False),
    "FluxImg2ImgPipeline": Encoding((EHS, POOLED, None), negative=False),
    "PixArtAlphaPipeline": _MASKED,
    "PixArtSigmaPipeline": _MASKED,
    "SanaPipeline": _MASKED,
    "CogVideoXPipeline": _SD,
    "WanPipeline": _SD,
    "LTXPipeline": _MASKED,
    "Lumina2Pipeline": _MASKED,
    "AuraFlowPipeline": _MASKED,
}

#: the arguments encode_prompt is given here, never taken from __call__'s defaults
_OURS = {"prompt", "negative_prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance"}


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a UTF-8 text file (blank lines skipped), checked for size."""
    p = Path(path)
    if not p.is_file():
        raise BNSError(f"prompts file not found: {p}")
    if p.stat().st_size > MAX_PROMPTS_BYTES:
        raise BNSError(f"{p} is {p.stat().st_size} bytes; a prompts file is at most {MAX_PROMPTS_BYTES} bytes")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BNSError(f"{p} is not UTF-8 text (one prompt per line)") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise BNSError(f"{p} holds no prompts (one per line)")
    if len(prompts) > MAX_PROMPTS:
        raise BNSError(f"{p} holds {len(prompts)} prompts; at most {MAX_PROMPTS}")
    return prompts


def _text_pipeline(root: Path, dtype: torch.dtype, device: str):
    """The folder's pipeline with its tokenizers and text encoders only, and its Encoding."""
    from .diffusers import import_diffusers

    diffusers = import_diffusers()
    diffusers.utils.logging.disable_progress_bar()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # e.g. "sequence length is longer than": the pipeline truncates
    index = read_json(root / "model_index.json", "model_index.json") if (root / "model_index.json").is_file() else None
    if not isinstance(index, dict):
        raise BNSError(f"{root} has no model_index.json: prompts need the whole pipeline folder (its text encoders)")
    name = str(index.get("_class_name"))
    if name not in ENCODINGS:
        raise BNSError(f"{root}: pipeline {name} cannot encode prompts here; supported: {', '.join(ENCODINGS)}")
    components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2]
    texts = [k for k in components if k.startswith(("text_encoder", "tokenizer")) and index[k][0] is not None]
    if not any(k.startswith("text_encoder") for k in texts):
        raise BNSError(f"{root}: model_index.json names no text encoder")
    skip = {k: None for k in components if k not in texts}  # the network, VAE, scheduler: not loaded
    try:
        with warnings.catch_warnings():  # torch_dtype's rename in newer diffusers; older ones know only torch_dtype
            warnings.simplefilter("ignore", FutureWarning)
            pipe = getattr(diffusers, name).from_pretrained(str(root), use_safetensors=True, torch_dtype=dtype, **skip)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise BNSError(f"cannot load the text encoders of {root}: {type(e).__name__}: {first}") from None
    return pipe.to(device), ENCODINGS[name]


def _call_defaults(pipe, max_tokens: int | None) -> dict:
    """The encode_prompt arguments __call__ sets by default (max_sequence_length, clean_caption, ...)."""
    encode = inspect.signature(pipe.encode_prompt).parameters
    call = inspect.signature(pipe.__call__).parameters
    kwargs = {
        k: p.default
        for k, p in call.items()
        if k in encode and k not in _OURS and p.default is not inspect.Parameter.empty and p.default is not None
    }
    if max_tokens is not None:
        if "max_sequence_length" not in encode:
            raise BNSError(f"{type(pipe).__name__} has no max_sequence_length; drop --max-tokens")
        kwargs["max_sequence_length"] = max_tokens
    return kwargs


def _outputs(pipe, encoding: Encoding, prompts: list[str], negative: str | None, kwargs: dict) -> dict[str, Tensor]:
    """One encode_prompt call, its outputs by condition name (the negative's too where it takes one)."""
    params = inspect.signature(pipe.encode_prompt).parameters
    args = {k: None for k in params if k.startswith(("prompt_", "negative_prompt_")) and k[-1].isdigit()}
    args |= {"prompt": prompts, "device": pipe.device, "num_images_per_prompt": 1, **kwargs}
    if encoding.negative:  # None: __call__'s default (SDXL's None: zeros where force_zeros_for_empty_prompt)
        if negative is None:
            negative = inspect.signature(pipe.__call__).parameters["negative_prompt"].default
        args |= {"negative_prompt": None if negative is None else [negative] * len(prompts)}
        args |= {"do_classifier_free_guidance": True}
    with torch.no_grad():
        out = pipe.encode_prompt(**{k: v for k, v in args.items() if k in params})
    if len(out) != len(encoding.outputs):
        raise BNSError(
            f"{type(pipe).__name__}.encode_prompt returned {len(out)} outputs, expected {len(encoding.outputs)}"
        )
    return {n: t.detach().float().cpu() for n, t in zip(encoding.outputs, out) if n is not None}


def _encode(pipe, encoding: Encoding, prompts: list[str], negative: str | None, kwargs: dict) -> dict[str, Tensor]:
    """The conditions and nulls of a batch of prompts; a pipeline without negative prompts (Flux) encodes the
    negative (default "") as a prompt of its own."""
    named = _outputs(pipe, encoding, prompts, negative, kwargs)
    if not encoding.negative:
        null = _outputs(pipe, encoding, [negative or ""], None, kwargs)
        named |= {NULL_PREFIX + n: t.expand(len(prompts), *t.shape[1:]) for n, t in null.items()}
    return named


def encode_prompts(
    folder: str | Path,
    prompts: list[str],
    negative: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
) -> ConditionSet:
    """A condition set from prompts through the folder's own text encoders, checked against its network; negative
    None is what the pipeline does without one (the empty prompt, or SDXL's zeros)."""
    from .diffusers import fit_conditions, read_folder

    root, _, model_cfg, cls_name, adapter = read_folder(folder)
    pipe, encoding = _text_pipeline(root, dtype, device)
    kwargs = _call_defaults(pipe, max_tokens)
    batches = [_encode(pipe, encoding, prompts[i : i + BATCH], negative, kwargs) for i in range(0, len(prompts), BATCH)]
    entries = {n: torch.cat([b[n] for b in batches]) for n in batches[0] if not n.startswith(NULL_PREFIX)}
    nulls = {n[len(NULL_PREFIX) :]: t[0] for n, t in batches[0].items() if n.startswith(NULL_PREFIX)}
    where = f"the prompts encoded by {root}"
    cset = condition_set(entries, nulls, order=list(entries), where=where)
    fit_conditions(adapter, model_cfg, adapter.shape(model_cfg) or (), cset, cls_name, where)
    return cset


def condition_tensors(cset: ConditionSet) -> dict[str, Tensor]:
    """A condition set as the tensors of its safetensors file: NAME (N, ...) and null.NAME per name."""
    out = {}
    nulls = cset.layout.unpack(cset.null[None])
    for name, value in cset.layout.unpack(cset.cond).items():
        out[name] = value.contiguous()
        out[NULL_PREFIX + name] = nulls[name][0].contiguous()
    return out


def prompts_metadata(prompts: list[str], negative: str | None, folder: str | Path) -> dict[str, str]:
    """The safetensors header metadata: which prompt each row is, the negative prompt and the folder."""
    return {
        "format": "bns-export-conditions",
        "version": "1",
        "prompts": json.dumps(prompts),
        "negative": json.dumps(negative),
        "folder": Path(folder).name,
    }
