"""The power spherical distribution (De Cao & Aziz 2020) on ``S^{m−1} ⊂ R^m``.

Density ``p(z) = C_m(κ) (1 + μᵀz)^κ`` with
``log C_m(κ) = −[(α+β) log 2 + β log π + log Γ(α) − log Γ(α+β)]``, ``α = (m−1)/2 + κ``,
``β = (m−1)/2``. Sampling needs no rejection: ``t = μᵀz`` satisfies ``(1 + t)/2 ~ Beta(α, β)``,
drawn here from two Gamma variables ``g₁ ~ Γ(α)``, ``g₂ ~ Γ(β)`` so that
``1 + t = 2g₁/(g₁+g₂)``, ``1 − t = 2g₂/(g₁+g₂)`` and ``√(1 − t²) = 2√(g₁g₂)/(g₁+g₂)`` keep full
relative precision at any κ (the naive ``√(1 − t²)`` loses it all when ``t ≈ 1``); the tangent
direction is uniform, and the stable Householder map of :mod:`.von_mises_fisher` takes ``e₁``
to ``μ``. Gradients flow through torch's reparameterised Gamma samples. Samples are renormalised
in their own dtype, so they lie on the sphere to rounding (``≤ 1e-12`` in float64).

Closed forms: ``E[μᵀz] = (α − β)/(α + β)``, entropy
``H = −log C_m(κ) − κ (log 2 + ψ(α) − ψ(α + β))``, ``KL(p ‖ uniform) = log|S^{m−1}| − H``.

Example:
    >>> import torch
    >>> from latentgeo.distributions import PowerSpherical, HypersphericalUniform
    >>> p = PowerSpherical(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64))
    >>> z = p.rsample((5,), random_state=0)
    >>> bool(((z.norm(dim=-1) - 1).abs() < 1e-12).all()), round(float(p.mean[1]), 6)
    (True, 0.666667)
    >>> float(torch.distributions.kl_divergence(p, HypersphericalUniform(3))) > 0
    True
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from ._sphere import check_concentration, check_loc, householder_from_e1, log_sphere_area, seeded, uniform_directions
from .von_mises_fisher import HypersphericalUniform

__all__ = ["PowerSpherical"]


class PowerSpherical(Distribution):
    """Power spherical distribution ``PS(loc, scale)`` on ``S^{m−1}``.

    Args:
        loc: mean directions ``(..., m)``, ``m ≥ 2``, unit norm (same rules as
            :class:`~latentgeo.distributions.VonMisesFisher`: refused when off by more than
            ``1e-4`` / ``1e-8``).
        scale: the concentration ``κ > 0``, broadcastable to ``loc.shape[:-1]``.
        validate_args: as for :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        loc = check_loc(loc, "loc")
        self.loc = loc
        self.scale = check_concentration(scale, loc, "scale")
        self._m = loc.shape[-1]
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return PowerSpherical(self.loc.expand(batch_shape + self.event_shape), self.scale.expand(batch_shape),
                              validate_args=False)

    @property
    def _alpha_beta(self):
        beta = (self._m - 1) / 2.0
        return self.scale + beta, beta

    @property
    def mean_resultant_length(self) -> torch.Tensor:
        """``E[μᵀz] = (α − β)/(α + β) = κ / (κ + m − 1)``."""
        return self.scale / (self.scale + (self._m - 1))

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_resultant_length[..., None] * self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    def _log_normaliser(self) -> torch.Tensor:
        alpha, beta = self._alpha_beta
        return -((alpha + beta) * math.log(2.0) + beta * math.log(math.pi)
                 + torch.lgamma(alpha) - torch.lgamma(alpha + beta))

    def log_prob(self, value) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"value must have last dimension {self._m}, got shape {tuple(value.shape)}")
        # 1 + μᵀz = 2 − ‖z − μ‖²/2 for unit vectors (exact near z = μ)
        one_plus = 2.0 - 0.5 * (value - self.loc).pow(2).sum(-1)
        return self._log_normaliser() + self.scale * torch.log(one_plus.clamp_min(0))

    def entropy(self) -> torch.Tensor:
        alpha, beta = self._alpha_beta
        return -self._log_normaliser() - self.scale * (math.log(2.0) + torch.digamma(alpha)
                                                       - torch.digamma(alpha + beta))

    def rsample(self, sample_shape=torch.Size(), random_state=None) -> torch.Tensor:
        """Reparameterised samples ``(*sample_shape, *batch_shape, m)``; ``random_state`` as for
        :meth:`VonMisesFisher.rsample <latentgeo.distributions.VonMisesFisher.rsample>`."""
        shape = self._extended_shape(sample_shape)
        m, dtype, dev = self._m, self.loc.dtype, self.loc.device
        alpha, beta = self._alpha_beta
        alpha = alpha.expand(shape[:-1])
        with seeded(random_state, dev):
            g1 = torch.distributions.Gamma(alpha, torch.ones_like(alpha)).rsample()
            g2 = torch._standard_gamma(torch.full_like(alpha.detach(), beta))
            v = uniform_directions(shape[:-1], m - 1, dtype, dev)
        tot = g1 + g2
        t = (g1 - g2) / tot
        sin = 2.0 * torch.sqrt(g1 * g2) / tot
        z0 = torch.cat([t[..., None], sin[..., None] * v], -1)
        loc = self.loc if (not self.batch_shape and not self.loc.requires_grad) else self.loc.expand(shape)
        z = householder_from_e1(z0, loc)
        return z / z.norm(dim=-1, keepdim=True)

    def sample(self, sample_shape=torch.Size(), random_state=None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, random_state=random_state)

    def __repr__(self):
        return f"PowerSpherical(m={self._m}, batch_shape={tuple(self.batch_shape)}, dtype={self.loc.dtype})"


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_uniform(p: PowerSpherical, q: HypersphericalUniform) -> torch.Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL(power spherical ‖ uniform): R^{p.event_shape[0]} against R^{q.dim}")
    kl = log_sphere_area(p._m) - p.entropy()
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
