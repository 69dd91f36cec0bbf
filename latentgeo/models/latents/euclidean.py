"""The Euclidean latent ``z ∈ R^d``: diagonal Gaussian posterior, standard normal prior."""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal
from torch.nn import functional as F

from .base import Latent, register_latent

__all__ = ["EuclideanLatent"]


class EuclideanLatent(Latent):
    """``z ∈ R^d``: diagonal Gaussian posterior, standard normal prior (Kingma & Welling 2014).

    Encoder features ``[m, s]`` (``2d`` of them) give ``q = N(m, diag(σ²))`` with
    ``σ = softplus(s) + min_scale``; the KL to ``N(0, I)`` is in closed form,
    ``½ Σ (σ² + m² − 1 − log σ²)``.

    Args:
        dim: latent dimension ``d``.
        min_scale: floor on the posterior standard deviation (numerical safety).
    """

    def __init__(self, dim: int, min_scale: float = 1e-4):
        super().__init__(dim)
        if not (isinstance(min_scale, (int, float)) and min_scale >= 0):
            raise ValueError(f"min_scale must be a non-negative number, got {min_scale!r}")
        self.min_scale = float(min_scale)

    @property
    def n_params(self) -> int:
        return 2 * self.dim

    @property
    def code_dim(self) -> int:
        return self.dim

    def kwargs(self) -> dict:
        return {"min_scale": self.min_scale}

    def posterior(self, params):
        loc, raw = params[..., : self.dim], params[..., self.dim :]
        scale = F.softplus(raw) + self.min_scale
        return Independent(Normal(loc, scale), 1)

    def prior_like(self, q):
        loc = q.base_dist.loc
        return Independent(Normal(torch.zeros_like(loc), torch.ones_like(loc)), 1)

    def kl(self, q, z=None):
        m, s = q.base_dist.loc, q.base_dist.scale
        return 0.5 * (s.pow(2) + m.pow(2) - 1.0 - 2.0 * s.log()).sum(-1)

    def log_prior(self, z):
        return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


register_latent("euclidean", EuclideanLatent)
