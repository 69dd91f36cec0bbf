"""The hyperbolic latent: codes on the hyperboloid ``H^d_c ⊂ R^{d+1}`` (Nagano et al. 2019; Bose et al. 2020).

The encoder's features ``[m, s, h]`` give the posterior: the location ``μ = exp₀(m)`` (``m`` a
tangent vector at the origin in orthonormal coordinates), the tangent standard deviations
``σ = softplus(s) + min_scale``, and — with a flow — the context ``h`` of width
``context_dim`` that conditions the flow layers. ``q₀ = WrappedNormal(μ, σ)``; with
``flow="tc"`` or ``"whc"`` the posterior is ``q₀`` pushed through ``flow_layers`` tangent or
wrapped-hyperboloid couplings (alternating parities). The prior is the wrapped normal at the
origin with unit scale. For ``d = 2`` the two flows coincide (a WHC layer moving one coordinate is a
TC layer: see :mod:`latentgeo.flows.hyperbolic`).

Codes handed to the decoder are the ``d + 1`` hyperboloid coordinates. The KL term is the
Monte-Carlo estimate ``mean_s [log q(z_s) − log p(z_s)]`` on the training samples; ``log q`` of
a sample reuses the tangent vector that produced it (no log map), and so does the IWAE weight.

Example:
    >>> import torch
    >>> from latentgeo.models.latents import HyperbolicLatent
    >>> lat = HyperbolicLatent(2, flow="whc", flow_layers=2, context_dim=4)
    >>> q = lat.posterior(torch.zeros(5, lat.n_params))
    >>> z = lat.rsample(q, 3)
    >>> z.shape, lat.kl(q, z).shape, lat.code_dim
    (torch.Size([3, 5, 3]), torch.Size([5]), 3)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch.nn import functional as F

from ...distributions import WrappedNormal, lorentz as L
from ...flows import FlowPosterior, FlowStack, TangentCoupling, WrappedHyperboloidCoupling
from .base import Latent, register_latent

__all__ = ["HyperbolicLatent", "HYPERBOLIC_FLOWS"]

HYPERBOLIC_FLOWS = ("tc", "whc")


class HyperbolicLatent(Latent):
    """Wrapped-normal posterior on ``H^d_c`` with optional hyperbolic flows (see the module docstring).

    Args:
        dim: manifold dimension ``d`` (codes have ``d + 1`` coordinates).
        min_scale: floor on the tangent standard deviations.
        curvature: ``c > 0`` (the sectional curvature is ``−c``).
        flow: ``None``, ``"tc"`` (tangent coupling) or ``"whc"`` (wrapped hyperboloid coupling);
            flows need ``d ≥ 2``.
        flow_layers: number of coupling layers.
        context_dim: width of the encoder features conditioning the flow.
        flow_hidden: hidden widths of each coupling's conditioner.
    """

    def __init__(self, dim: int, min_scale: float = 1e-4, curvature: float = 1.0, flow: Optional[str] = None,
                 flow_layers: int = 4, context_dim: int = 16, flow_hidden: Sequence[int] = (32, 32)):
        super().__init__(dim)
        if not (isinstance(min_scale, (int, float)) and not isinstance(min_scale, bool) and min_scale >= 0):
            raise ValueError(f"min_scale must be a non-negative number, got {min_scale!r}")
        if not (isinstance(curvature, (int, float)) and not isinstance(curvature, bool)
                and math.isfinite(curvature) and curvature > 0):
            raise ValueError(f"curvature must be a positive number (curvature −c), got {curvature!r}")
        if flow is not None and flow not in HYPERBOLIC_FLOWS:
            raise ValueError(f"flow must be None or one of {HYPERBOLIC_FLOWS} for the hyperbolic latent, got {flow!r}")
        if flow is not None and dim < 2:
            raise ValueError(f"flow {flow!r} needs a latent dimension ≥ 2, got {dim}")
        for name, v in (("flow_layers", flow_layers), ("context_dim", context_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "flow_layers" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'flow_layers' else 'non-negative'} integer, got {v!r}")
        self.min_scale, self.c, self.flow_kind = float(min_scale), float(curvature), flow
        self.flow_layers, self.context_dim = int(flow_layers), int(context_dim)
        self.flow_hidden = tuple(int(h) for h in flow_hidden)
        self.flow = None
        if flow is not None:
            cls = TangentCoupling if flow == "tc" else WrappedHyperboloidCoupling
            self.flow = FlowStack([cls(dim, self.context_dim, k % 2, self.flow_hidden, self.c)
                                   for k in range(self.flow_layers)])
        # geoopt is imported on first use; the manifold is kept out of the module tree (no state)
        self._manifold_box: list = []

    @property
    def manifold(self):
        """The geoopt ``Lorentz(k = 1/c)`` manifold of the codes (built on first use)."""
        if not self._manifold_box:
            import geoopt

            self._manifold_box.append(geoopt.Lorentz(k=torch.tensor(1.0 / self.c, dtype=torch.float64)))
        return self._manifold_box[0]

    @property
    def n_params(self) -> int:
        return 2 * self.dim + (self.context_dim if self.flow is not None else 0)

    @property
    def code_dim(self) -> int:
        return self.dim + 1

    def kwargs(self) -> dict:
        out = {"min_scale": self.min_scale, "curvature": self.c}
        if self.flow is not None:
            out.update(flow=self.flow_kind, flow_layers=self.flow_layers, context_dim=self.context_dim,
                       flow_hidden=list(self.flow_hidden))
        return out

    def posterior(self, params):
        d = self.dim
        loc = L.exp0(params[..., :d], self.c)
        scale = F.softplus(params[..., d : 2 * d]) + self.min_scale
        base = WrappedNormal(loc, scale, self.manifold)
        if self.flow is None:
            return base
        return FlowPosterior(base, self.flow, params[..., 2 * d :])

    def _prior(self, like: torch.Tensor) -> WrappedNormal:
        o = L.origin(self.dim, self.c, dtype=like.dtype, device=like.device)
        return WrappedNormal(o, torch.ones(self.dim, dtype=like.dtype, device=like.device), self.manifold)

    def log_prior(self, z):
        prior = self._prior(z)
        return prior.log_prob_tangent(L.log0(z, self.c))

    def rsample(self, q, n_samples: int = 1):
        return q.rsample((n_samples,))

    def kl(self, q, z=None):
        """Monte-Carlo ``KL(q ‖ p)`` per item: ``mean_s [log q(z_s) − log p(z_s)]`` (draws one sample if ``z`` is None)."""
        if z is None:
            z = q.rsample((1,))
        return (q.log_prob(z) - self.log_prior(z)).mean(0)

    def mean(self, q):
        """The code of ``x``: the wrapped normal's location ``μ`` (pushed through the flow, if any)."""
        return q.mean

    def extra_repr(self) -> str:
        return f"dim={self.dim}, c={self.c:g}, flow={self.flow_kind!r}"


register_latent("hyperbolic", HyperbolicLatent)
