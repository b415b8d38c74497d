"""Tiny whole pipeline folders with their own tokenizers and text encoders (no download): a character-level
CLIP BPE tokenizer and a character-level T5 unigram tokenizer built here, 1-layer CLIP / T5 encoders, a
tiny VAE, and the family's network from tests/families.py.  What `bns-export conditions` is tested on.

`build_pipeline(name, folder)` -> folder, for name in PIPELINES."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CHARS = string.ascii_lowercase + string.digits + ".,!?'-"
CLIP_TOKENS = 8  # CLIP's model_max_length here (77 in the real ones)


def clip_tokenizer():
    """A CLIP tokenizer with one token per character (and per word-final character), no merges (built from files
    in a temporary folder, which goes with it; the pipeline's save_pretrained writes the tokenizer)."""
    import tempfile

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=CLIP_TOKENS)


def t5_tokenizer():
    """A T5 tokenizer with one piece per character."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -1.0) for c in CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_encoder(hidden: int, projection: int | None = None):
    """A 1-layer CLIP text encoder (with a projection: CLIPTextModelWithProjection, SDXL's second, SD3's)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=2 + 2 * len(CHARS), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_TOKENS, projection_dim=projection or hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def t5_encoder(d_model: int):
    """A 1-layer T5 encoder."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=4 + len(CHARS), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(cfg).eval()


def _vae():
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        norm_num_groups=4, sample_size=16,
    )  # fmt: skip


def _components(name: str) -> dict:
    """The pipeline's text components for a family of tests/families.py."""
    if name == "sd":
        return {"text_encoder": clip_encoder(32), "tokenizer": clip_tokenizer()}
    if name == "sdxl":  # two encoders: hidden 16 + 16 = cross_attention_dim 32; the second's projection: text_embeds
        return {
            "text_encoder": clip_encoder(16), "tokenizer": clip_tokenizer(),
            "text_encoder_2": clip_encoder(16, 16), "tokenizer_2": clip_tokenizer(),
        }  # fmt: skip
    if name == "sd3":  # CLIP-L + CLIP-G (8 + 8 <= T5's 16), pooled 6 + 6 = 12
        return {
            "text_encoder": clip_encoder(8, 6), "tokenizer": clip_tokenizer(),
            "text_encoder_2": clip_encoder(8, 6), "tokenizer_2": clip_tokenizer(),
            "text_encoder_3": t5_encoder(16), "tokenizer_3": t5_tokenizer(),
        }  # fmt: skip
    if name == "flux":  # CLIP's pooled output 12, T5's 16
        return {
            "text_encoder": clip_encoder(12), "tokenizer": clip_tokenizer(),
            "text_encoder_2": t5_encoder(16), "tokenizer_2": t5_tokenizer(),
        }  # fmt: skip
    if name == "pixart":
        return {"text_encoder": t5_encoder(16), "tokenizer": t5_tokenizer()}
    raise KeyError(name)


#: family -> (pipeline class, network argument name)
PIPELINES = {
    "sd": ("StableDiffusionPipeline", "unet"),
    "sdxl": ("StableDiffusionXLPipeline", "unet"),
    "sd3": ("StableDiffusion3Pipeline", "transformer"),
    "flux": ("FluxPipeline", "transformer"),
    "pixart": ("PixArtSigmaPipeline", "transformer"),
}


def build_pipeline(name: str, folder: Path) -> Path:
    """Write the family's whole pipeline (network, scheduler, VAE, tokenizers, text encoders); return it."""
    import diffusers
    from families import _models

    diffusers.utils.logging.set_verbosity_error()
    folder = Path(folder)
    torch.manual_seed(0)
    make_model, make_scheduler, _, _, _ = _models(diffusers)[name]
    cls, net = PIPELINES[name]
    parts = {net: make_model(), "scheduler": make_scheduler(), "vae": _vae(), **_components(name)}
    if name == "sd":
        parts |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    getattr(diffusers, cls)(**parts).save_pretrained(str(folder / "pipe"), safe_serialization=True)
    return folder / "pipe"
