"""A small time- (and optionally class- or token-) conditioned UNet, the network of the shipped models.

net(x, time, labels=None): `time` is the network's own time input (shape (B,)), multiplied by
`time_scale` before the sinusoidal embedding; `labels` index an embedding with one extra row
for "no class" (index num_classes), used for classifier-free guidance.  With `cond_dim`, the
third argument is instead a token sequence (B, L, cond_dim) (text-style conditioning) that
cross-attention layers at the bottleneck and the output level read, as in Stable Diffusion's UNet.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention from image positions to condition tokens, added residually."""

    def __init__(self, ch: int, cond_dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(8, ch), ch)
        self.attn = nn.MultiheadAttention(ch, heads, kdim=cond_dim, vdim=cond_dim, batch_first=True)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        q = self.norm(h).flatten(2).transpose(1, 2)
        out, _ = self.attn(q, cond, cond, need_weights=False)
        return h + out.transpose(1, 2).reshape(b, c, hh, ww)


class SmallUNet(nn.Module):
    """Encoder-decoder with one ResBlock per level and skip connections; len(mults) - 1 downsamplings."""

    def __init__(
        self,
        in_ch: int = 1,
        base: int = 32,
        mults: tuple[int, ...] = (1, 2),
        num_classes: int | None = None,
        time_scale: float = 1.0,
        patch: int = 1,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.time_scale = time_scale
        self.patch = patch  # pixel-unshuffle the input by `patch` (cheaper at 28x28), shuffle back at the end
        in_ch = in_ch * patch * patch
        self.num_classes = num_classes
        tdim = base * 4
        self.tmlp = nn.Sequential(nn.Linear(base, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.label_emb = nn.Embedding(num_classes + 1, tdim) if num_classes else None
        chans = [base * m for m in mults]
        self.conv_in = nn.Conv2d(in_ch, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        cin = chans[0]
        for c in chans:
            self.down.append(ResBlock(cin, c, tdim))
            cin = c
        self.mid = ResBlock(cin, cin, tdim)
        self.up = nn.ModuleList()
        for c in reversed(chans):
            self.up.append(ResBlock(cin + c, c, tdim))
            cin = c
        self.cond_dim = cond_dim
        self.mid_attn = CrossAttention(chans[-1], cond_dim) if cond_dim else None
        self.out_attn = CrossAttention(cin, cond_dim) if cond_dim else None
        self.norm_out = nn.GroupNorm(min(8, cin), cin)
        self.conv_out = nn.Conv2d(cin, in_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.base = base

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.tmlp(timestep_embedding(t * self.time_scale, self.base).to(x.dtype))
        tokens = None
        if self.cond_dim:
            tokens = labels if labels is not None else x.new_zeros((x.shape[0], 1, self.cond_dim))
        elif self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(labels)
        h = self.conv_in(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb)
        if tokens is not None:
            h = self.mid_attn(h, tokens)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb)
        if tokens is not None:
            h = self.out_attn(h, tokens)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


def build_network(**arch) -> SmallUNet:
    """The shipped models' entry point: config.json's "architecture" are the keyword arguments."""
    if "mults" in arch:
        arch["mults"] = tuple(arch["mults"])
    return SmallUNet(**arch)
