"""A small time- (and optionally class-) conditioned UNet, the network of the shipped models.

net(x, time, labels=None): `time` is the network's own time input (shape (B,)), multiplied by
`time_scale` before the sinusoidal embedding; `labels` index an embedding with one extra row
for "no class" (index num_classes), used for classifier-free guidance.
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
        self.norm_out = nn.GroupNorm(min(8, cin), cin)
        self.conv_out = nn.Conv2d(cin, in_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.base = base

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.tmlp(timestep_embedding(t * self.time_scale, self.base).to(x.dtype))
        if self.label_emb is not None:
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
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


def build_network(**arch) -> SmallUNet:
    """The shipped models' entry point: config.json's "architecture" are the keyword arguments."""
    if "mults" in arch:
        arch["mults"] = tuple(arch["mults"])
    return SmallUNet(**arch)
