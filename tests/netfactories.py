"""Small networks for tests, importable as `netfactories:NAME` by the CLI's module:factory specs."""

from __future__ import annotations

import torch
from torch import nn

from bns_export.fields.schedules import DDPMDiscrete, Schedule


class TinyNet(nn.Module):
    """A seeded MLP net(x, time[, labels]) on 1x4x4 samples: a stand-in for a real model."""

    def __init__(self, num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, 8) if num_classes else None
        self.body = nn.Sequential(nn.Linear(16 + 8 + 8, 64), nn.SiLU(), nn.Linear(64, 16))

    def forward(self, x, t, labels=None):
        tf = t.reshape(-1, 1).to(x.dtype) * torch.arange(1, 9, dtype=x.dtype, device=x.device)
        feats = [x.flatten(1), torch.sin(tf)]
        feats.append(self.emb(labels).to(x.dtype) if self.emb is not None else torch.zeros_like(tf))
        return 0.5 * self.body(torch.cat(feats, 1)).reshape(x.shape) + 0.3 * x


def tiny():
    return TinyNet()


def tiny_cond():
    return TinyNet(num_classes=3)


def not_a_module():
    return 42


def wrong_shape():
    class Bad(nn.Module):
        def forward(self, x, t):
            return x.flatten(1)[:, :3]

    return Bad()


def broken():
    raise RuntimeError("weights missing")


class GaussianOracle(nn.Module):
    """The exact prediction (velocity/eps/x0/v) for data N(mu, s^2 I) under any schedule.

    It recovers our time t from whatever time input it is given, so it checks both the
    prediction conversion and the time-input convention of the adapter.
    """

    def __init__(self, schedule: Schedule, prediction: str, time_input: str, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.schedule, self.prediction, self.time_input = schedule, prediction, time_input
        self.register_buffer("mu", mu)
        self.s = s

    def _t(self, tin):
        if self.time_input == "t":
            return tin
        if self.time_input == "s":
            return 1 - tin
        if self.time_input == "index":
            return 1 - (tin + 1) / self.schedule.steps
        # sigma: invert sigma/alpha by bisection (monotone decreasing in t)
        lo, hi = torch.zeros_like(tin), torch.ones_like(tin)
        for _ in range(60):
            mid = (lo + hi) / 2
            big = self.schedule.sigma(mid) / self.schedule.alpha(mid) > tin
            lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
        return (lo + hi) / 2

    def forward(self, x, tin):
        t = self._t(tin)[0]
        sch = self.schedule
        a, sg, da, ds = sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t)
        if self.time_input == "sigma":
            x = x * a  # the EDM network sees x / alpha
        mu = self.mu.reshape(x.shape[1:])
        v = a * a * self.s**2 + sg * sg
        x1 = mu + a * self.s**2 * (x - a * mu) / v
        eps = sg * (x - a * mu) / v
        if self.prediction == "velocity":
            return da * x1 + ds * eps
        if self.prediction == "flow":
            return -(da * x1 + ds * eps)
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x1
        return a * eps - sg * x1


def ddpm_schedule() -> DDPMDiscrete:
    return DDPMDiscrete.linear(1000)


class DiffusersEps(nn.Module):
    """net(x, t) -> eps from a diffusers UNet (a fixed conditioning tensor for cross-attention UNets)."""

    def __init__(self, unet, context: torch.Tensor | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("context", context)

    def forward(self, x, t):
        if self.context is None:
            return self.unet(x, t).sample
        return self.unet(x, t, encoder_hidden_states=self.context.expand(x.shape[0], -1, -1)).sample


def _small_unet(cls_name: str, channels: tuple[int, int], groups: int, attention: str, **kw):
    """A seeded random-weight diffusers UNet on 1x8x8, two levels, `attention` blocks in the second."""
    import diffusers

    torch.manual_seed(0)
    return getattr(diffusers, cls_name)(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", f"{attention}DownBlock2D"),
        up_block_types=(f"{attention}UpBlock2D", "UpBlock2D"),
        norm_num_groups=groups,
        **kw,
    )


def diffusers_unet(channels: tuple[int, int] = (32, 64), groups: int = 8, **kw):
    """A small random-weight diffusers UNet2DModel on 1x8x8 with self-attention in its second level."""
    return _small_unet("UNet2DModel", channels, groups, "Attn", **kw)


def diffusers_text_unet(channels: tuple[int, int] = (32, 64), groups: int = 8, context_dim: int = 32, heads: int = 8):
    """A small random-weight diffusers UNet2DConditionModel on 1x8x8 with cross-attention to (L, context_dim)."""
    return _small_unet(
        "UNet2DConditionModel", channels, groups, "CrossAttn", cross_attention_dim=context_dim, attention_head_dim=heads
    )


def attention_unet():
    """A small diffusers UNet2DModel with self-attention blocks (random weights)."""
    return DiffusersEps(diffusers_unet())


def cross_attention_unet():
    """A small diffusers UNet2DConditionModel with cross-attention on a fixed (1, 4, 32) context."""
    return DiffusersEps(diffusers_text_unet(), torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1)))


class TinyDecoder(nn.Module):
    """A seeded stand-in decoder: 1x4x4 latents -> 3x8x8 images in [-1, 1]."""

    def __init__(self, nan: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.up = nn.ConvTranspose2d(1, 3, 2, stride=2)
        self.nan = nan

    def forward(self, z):
        out = torch.tanh(self.up(z))
        return out * float("nan") if self.nan else out


def tiny_decoder():
    return TinyDecoder()


def nan_decoder():
    return TinyDecoder(nan=True)


def flat_decoder():
    class Flat(nn.Module):
        def forward(self, z):
            return z.sum()

    return Flat()
