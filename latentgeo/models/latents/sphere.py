"""The hyperspherical latent ``z ∈ S^d ⊂ R^{d+1}`` (Davidson et al. 2018): von Mises–Fisher or
power spherical posterior, uniform prior.

Encoder features ``[u, s]`` (``d + 2`` of them) give the direction ``μ = u/‖u‖`` and the
concentration ``κ = softplus(s) + 1`` (the vMF κ, or the power-spherical scale; the ``+ 1``
keeps the posterior from collapsing to the uniform prior, as in Davidson et al.). The prior is
:class:`~latentgeo.distributions.HypersphericalUniform` on ``S^d``; the KL is in closed form for
both families. Codes given to the decoder are the ambient coordinates ``(d + 1)``; the code that
represents an item (:meth:`SphericalLatent.mean`) is the location ``μ`` on the sphere.

Example:
    >>> import torch
    >>> from latentgeo.models.latents import SphericalLatent
    >>> lat = SphericalLatent(2, family="power")
    >>> q = lat.posterior(torch.randn(5, lat.n_params))
    >>> z = lat.rsample(q, 3)
    >>> z.shape, lat.kl(q).shape, bool(torch.allclose(z.norm(dim=-1), torch.ones(3, 5)))
    (torch.Size([3, 5, 3]), torch.Size([5]), True)
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ...distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher
from .base import Latent, register_latent

__all__ = ["SphericalLatent", "FAMILIES"]

FAMILIES = ("vmf", "power")


class SphericalLatent(Latent):
    """``z ∈ S^d ⊂ R^{d+1}``: vMF (``family="vmf"``) or power spherical (``"power"``) posterior,
    uniform prior.

    Args:
        dim: the manifold dimension ``d`` (codes have ``code_dim = d + 1`` coordinates).
        family: ``"vmf"`` or ``"power"``.
    """

    def __init__(self, dim: int, family: str = "vmf"):
        super().__init__(dim)
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.family = family

    @property
    def n_params(self) -> int:
        return self.dim + 2

    @property
    def code_dim(self) -> int:
        return self.dim + 1

    def kwargs(self) -> dict:
        return {"family": self.family}

    def posterior(self, params):
        u, s = params[..., : self.dim + 1], params[..., self.dim + 1]
        tiny = torch.finfo(u.dtype).tiny ** 0.5
        loc = u / u.norm(dim=-1, keepdim=True).clamp_min(tiny)
        kappa = F.softplus(s) + 1.0
        if self.family == "vmf":
            return VonMisesFisher(loc, kappa)
        return PowerSpherical(loc, kappa)

    def prior_like(self, q):
        return HypersphericalUniform(self.dim + 1, batch_shape=q.batch_shape, dtype=q.loc.dtype, device=q.loc.device)

    def log_prior(self, z):
        log_area = math.log(2.0) + 0.5 * (self.dim + 1) * math.log(math.pi) - math.lgamma(0.5 * (self.dim + 1))
        return torch.full(z.shape[:-1], -log_area, dtype=z.dtype, device=z.device)

    def mean(self, q):
        return q.loc

    def extra_repr(self) -> str:
        return f"dim={self.dim}, family={self.family!r}"


register_latent("sphere", SphericalLatent)
