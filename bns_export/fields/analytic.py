"""Analytic velocity fields with exact velocities, for tests and benchmarks without a network.

All live on the FM-OT path x_t = t x1 + (1 - t) eps.  For Gaussian-mixture data (component k:
mean mu_k, isotropic std s_k, weight pi_k) the marginal velocity is exact:

    x_t | k ~ N(t mu_k, v_k I),  v_k = t^2 s_k^2 + (1 - t)^2
    u(x, t) = sum_k w_k(x, t) [mu_k + ((t s_k^2 - (1 - t)) / v_k) (x - t mu_k)]

with posterior weights w_k.  Labels select one component (the class-conditional field), so
guidance can be tested exactly too.  Small s gives nearly the ideal denoiser of a point set:
strongly curved paths.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .field import NULL_LABEL, VelocityField
from .schedules import FMOT


class GaussianMixtureField(VelocityField):
    """Exact FM-OT velocity of a Gaussian mixture in dimension prod(sample_shape)."""

    def __init__(
        self,
        means: Tensor,
        stds: Tensor,
        weights: Tensor | None = None,
        sample_shape: tuple[int, ...] | None = None,
        name: str = "gmm",
        conditional: bool = False,
    ) -> None:
        k, dim = means.shape
        shape = sample_shape or (dim,)
        if math.prod(shape) != dim:
            raise ValueError(f"sample shape {shape} does not hold {dim} values")
        super().__init__(FMOT(), shape, num_classes=k if conditional else None)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights
        self.register_buffer("means", means.to(torch.float64))
        self.register_buffer("stds", torch.as_tensor(stds, dtype=torch.float64).expand(k).clone())
        self.register_buffer("log_weights", torch.log(weights.to(torch.float64)))
        self.name = name

    @property
    def default_dtype(self) -> torch.dtype:
        return torch.float64

    def velocity(self, x: Tensor, t: Tensor, condition: Tensor | None) -> Tensor:
        b = x.shape[0]
        xf = x.reshape(b, -1)
        mu = self.means.to(x.dtype)
        s2 = (self.stds**2).to(x.dtype)
        t = t.reshape(-1, 1) if t.ndim == 1 else t  # one time per sample: (B, 1)
        var = t * t * s2 + (1.0 - t) ** 2  # (K,), or (B, K) per sample
        diff = xf[:, None, :] - t[..., None] * mu[None]  # (B, K, D)
        dim = xf.shape[1]
        logp = self.log_weights.to(x.dtype) - 0.5 * (diff**2).sum(-1) / var - 0.5 * dim * torch.log(var)  # (B, K)
        if condition is not None and self.num_classes is not None:
            onehot = torch.nn.functional.one_hot(condition.clamp(min=0), mu.shape[0]).bool()
            keep = onehot | (condition == NULL_LABEL)[:, None]
            logp = logp.masked_fill(~keep, float("-inf"))
        w = torch.softmax(logp, dim=1)  # (B, K)
        coef = (t * s2 - (1.0 - t)) / var  # like var
        per_k = mu[None] + coef[..., None] * diff
        return (w[..., None] * per_k).sum(1).reshape(x.shape)

    def describe(self) -> dict:
        d = super().describe()
        d["name"] = self.name
        return d


def _means(k: int, dim: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, dim, generator=g, dtype=torch.float64) * 1.6 - 0.8


def gaussian(dim: int = 64) -> GaussianMixtureField:
    """One Gaussian N(mu, 0.5^2 I): the exact flow is x_t = t mu + sqrt(t^2/4 + (1-t)^2) x0."""
    return GaussianMixtureField(
        _means(1, dim, 0), torch.tensor([0.5]), sample_shape=(1, 8, 8) if dim == 64 else None, name="gaussian"
    )


def gmm(dim: int = 64, k: int = 8) -> GaussianMixtureField:
    """8 well-separated modes of std 0.1 in 1x8x8: curved paths, data range [-1, 1]."""
    return GaussianMixtureField(
        _means(k, dim, 1), torch.tensor([0.1]), sample_shape=(1, 8, 8) if dim == 64 else None, name="gmm"
    )


def gmm_cond(dim: int = 64, k: int = 8) -> GaussianMixtureField:
    """The gmm field, class-conditional: label k is mode k (for guidance and label handling)."""
    return GaussianMixtureField(
        _means(k, dim, 1),
        torch.tensor([0.1]),
        sample_shape=(1, 8, 8) if dim == 64 else None,
        name="gmm-cond",
        conditional=True,
    )


def points(dim: int = 64, k: int = 16) -> GaussianMixtureField:
    """Nearly the ideal denoiser of 16 points (std 0.02): the most strongly curved paths."""
    return GaussianMixtureField(
        _means(k, dim, 2), torch.tensor([0.02]), sample_shape=(1, 8, 8) if dim == 64 else None, name="points"
    )


ANALYTIC = {"gaussian": gaussian, "gmm": gmm, "gmm-cond": gmm_cond, "points": points}
