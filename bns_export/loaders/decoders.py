"""Decoders for latent models: latents in, images out, appended after the sampler in the same graph.

`--decoder` names one of (parsed here only):
  vae              the `vae/` folder of the `-m diffusers:PATH` model
  PATH             a folder written by a diffusers autoencoder's `save_pretrained` (AutoencoderKL, ...)
  module:factory   a factory returning an nn.Module that maps latents (B, *sample_shape) to images
A diffusers autoencoder decodes `latents / scaling_factor + shift_factor` (its config's values), as
the diffusers pipelines do; a factory's module gets the latents as they are.  Images are expected in
[-1, 1] (diffusers' convention), which parity's PSNR assumes (data range 2).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..checks import number, read_json
from ..errors import BNSError
from ..fields.field import state_digest
from .diffusers import model_class, pretrained
from .factory import call_factory
from .network import users_code
from .spec import DIFFUSERS_PREFIX, ModelSpec


class Decoder(nn.Module):
    """images = net.decode(latents * scale + shift).sample for a diffusers autoencoder, net(latents) for a
    user's module: one module whatever the source, with its description and fingerprint."""

    image_shape: tuple[int, ...] | None = None  # one image's shape, set by check_decoder

    def __init__(
        self, net: nn.Module, source: str, scale: float = 1.0, shift: float = 0.0, autoencoder: bool = False
    ) -> None:
        super().__init__()
        self.net = net
        self.source = source
        self.scale = float(scale)
        self.shift = float(shift)
        self.autoencoder = autoencoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if not self.autoencoder:
            return self.net(latents)
        return self.net.decode(latents * self.scale + self.shift).sample

    def describe(self) -> dict:
        """JSON-able description (without weights), recorded in the manifest."""
        return {"decoder": self.source, "class": type(self.net).__name__, "scale": self.scale, "shift": self.shift}

    def fingerprint(self) -> str:
        """Short stable id: description + weights."""
        desc = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256((desc + state_digest(self)).encode()).hexdigest()[:16]


def load_decoder(spec: str, model: ModelSpec | str, sample_shape: tuple[int, ...]) -> Decoder:
    """The decoder `spec` names (see the module docstring) for `model`, checked on a batch of zero latents."""
    if not isinstance(spec, str) or not spec:
        raise BNSError("--decoder takes vae, a diffusers autoencoder folder, or package.module:factory")
    model = model if isinstance(model, ModelSpec) else ModelSpec(model)
    if spec == "vae":
        if model.kind != "diffusers":
            raise BNSError("--decoder vae means the diffusers folder's vae/: it needs -m diffusers:PATH")
        decoder = _diffusers_autoencoder(Path(model.model[len(DIFFUSERS_PREFIX) :]).expanduser() / "vae", spec)
    elif Path(spec).expanduser().is_dir():
        decoder = _diffusers_autoencoder(Path(spec).expanduser(), spec)
    elif ":" in spec:
        decoder = Decoder(call_factory(spec, "decoder").eval(), spec)
    else:
        raise BNSError(f"decoder {spec!r}: not a folder, not 'vae' and not package.module:factory")
    check_decoder(decoder, sample_shape)
    return decoder


def _diffusers_autoencoder(folder: Path, spec: str) -> Decoder:
    """A diffusers autoencoder saved with save_pretrained (safetensors only), with its latent scaling."""
    cfg = read_json(folder / "config.json", "decoder config")
    cls = model_class(cfg, folder)
    if not hasattr(cls, "decode"):
        raise BNSError(f"{folder}/config.json names {cls.__name__}, not a diffusers autoencoder with decode()")
    net = pretrained(cls, folder)
    for part in ("encoder", "quant_conv"):  # decoding never reads them: not exported, not fingerprinted
        if isinstance(getattr(net, part, None), nn.Module):
            setattr(net, part, None)
    scaling = number(
        _config_value(cfg, "scaling_factor", 1.0), f"{folder}/config.json scaling_factor", 0, 1e6, lo_open=True
    )
    shift = number(_config_value(cfg, "shift_factor", 0.0), f"{folder}/config.json shift_factor", -1e6, 1e6)
    return Decoder(net, spec, 1.0 / scaling, shift, autoencoder=True)


def _config_value(cfg: dict, key: str, default: float):
    """A config's value, or the default where the key is absent or null (diffusers writes null for 'none')."""
    value = cfg.get(key)
    return default if value is None else value


def check_decoder(decoder: Decoder, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Decode two zero latents: the output must be a finite float batch of 2; return one image's shape."""
    z = torch.zeros((2, *sample_shape))
    with users_code(f"decoder {decoder.source} on latents of shape {tuple(z.shape)}"), torch.no_grad():
        out = decoder(z)
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != 2 or not out.is_floating_point():
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BNSError(f"decoder {decoder.source} returned {what} for latents {tuple(z.shape)}; expected (2, C, H, W)")
    if not torch.isfinite(out).all():
        raise BNSError(f"decoder {decoder.source} returns NaN or inf on zero latents")
    decoder.image_shape = tuple(out.shape[1:])
    return decoder.image_shape
