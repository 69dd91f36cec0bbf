"""The Euclidean latent ``z ∈ R^d``: diagonal Gaussian posterior (optionally pushed through a
posterior flow), standard normal prior.

Example:
    >>> import torch
    >>> from latentgeo.models.latents import EuclideanLatent
    >>> lat = EuclideanLatent(2, flow="planar", flow_layers=3)
    >>> q = lat.posterior(torch.randn(5, lat.n_params))
    >>> z = lat.rsample(q, 4)
    >>> z.shape, lat.kl(q, z).shape
    (torch.Size([4, 5, 2]), torch.Size([5]))
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch.distributions import Independent, Normal
from torch.nn import functional as F

from .base import Latent, register_latent

__all__ = ["EuclideanLatent", "EUCLIDEAN_FLOWS"]

#: posterior flows of the Euclidean latent: zuko's conditional couplings, our amortised planar/radial
EUCLIDEAN_FLOWS = ("realnvp", "nsf", "planar", "radial")


class EuclideanLatent(Latent):
    """``z ∈ R^d``: diagonal Gaussian posterior, standard normal prior (Kingma & Welling 2014).

    Encoder features ``[m, s]`` (``2d`` of them) give ``q = N(m, diag(σ²))`` with
    ``σ = softplus(s) + min_scale``; the KL to ``N(0, I)`` is in closed form,
    ``½ Σ (σ² + m² − 1 − log σ²)``.

    With ``flow`` set, the posterior is ``N(m, diag σ²)`` pushed through a flow and the KL is the
    Monte-Carlo estimate ``mean_s [log q(z_s) − log p(z_s)]`` (the density of a sample comes from
    the sampling pass itself): ``"realnvp"``/``"nsf"`` are zuko's conditional flows conditioned on
    ``context_dim`` further encoder features (zuko is imported when the latent is built);
    ``"planar"``/``"radial"`` are amortised (Rezende & Mohamed 2015): the encoder emits each
    layer's parameters. Without a flow, everything (parameters, config, checkpoints) is as before.

    Args:
        dim: latent dimension ``d``.
        min_scale: floor on the posterior standard deviation (numerical safety).
        flow: ``None`` or one of :data:`EUCLIDEAN_FLOWS`; ``"realnvp"``/``"nsf"`` need ``d ≥ 2``.
        flow_layers: number of flow layers (zuko's ``transforms``).
        context_dim: width of the conditioning features for ``"realnvp"``/``"nsf"``.
        flow_hidden: hidden widths of zuko's conditioners.
    """

    def __init__(self, dim: int, min_scale: float = 1e-4, flow: Optional[str] = None, flow_layers: int = 4,
                 context_dim: int = 16, flow_hidden: Sequence[int] = (64, 64)):
        super().__init__(dim)
        if not (isinstance(min_scale, (int, float)) and min_scale >= 0):
            raise ValueError(f"min_scale must be a non-negative number, got {min_scale!r}")
        self.min_scale = float(min_scale)
        if flow is not None and flow not in EUCLIDEAN_FLOWS:
            raise ValueError(f"flow must be None or one of {EUCLIDEAN_FLOWS} for the Euclidean latent, got {flow!r}")
        if isinstance(flow_layers, bool) or not isinstance(flow_layers, int) or flow_layers < 1:
            raise ValueError(f"flow_layers must be a positive integer, got {flow_layers!r}")
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim!r}")
        self.flow_kind, self.flow_layers, self.context_dim = flow, flow_layers, context_dim
        self.flow_hidden = tuple(int(h) for h in flow_hidden)
        self.flow = None
        self._flow_params = 0
        if flow in ("realnvp", "nsf"):
            if dim < 2:
                raise ValueError(f"flow {flow!r} (couplings) needs a latent dimension ≥ 2, got {dim}")
            from ...flows import ZukoFlow

            self.flow = ZukoFlow(flow, dim, context_dim, transforms=flow_layers, hidden=self.flow_hidden)
            self._flow_params = context_dim
        elif flow in ("planar", "radial"):
            from ...flows import AmortizedFlow

            self.flow = AmortizedFlow(flow, dim, flow_layers)
            self._flow_params = self.flow.n_params

    @property
    def n_params(self) -> int:
        return 2 * self.dim + self._flow_params

    @property
    def code_dim(self) -> int:
        return self.dim

    def kwargs(self) -> dict:
        out = {"min_scale": self.min_scale}
        if self.flow is not None:  # a flow-free latent's config is unchanged (old checkpoints load)
            out.update(flow=self.flow_kind, flow_layers=self.flow_layers)
            if self.flow_kind in ("realnvp", "nsf"):
                out.update(context_dim=self.context_dim, flow_hidden=list(self.flow_hidden))
        return out

    def posterior(self, params):
        d = self.dim
        loc, raw = params[..., :d], params[..., d : 2 * d]
        scale = F.softplus(raw) + self.min_scale
        base = Independent(Normal(loc, scale), 1)
        if self.flow is None:
            return base
        from ...flows import FlowPosterior

        return FlowPosterior(base, self.flow, params[..., 2 * d :])

    def prior_like(self, q):
        if self.flow is not None:
            raise NotImplementedError("a flow posterior has no closed-form KL")
        loc = q.base_dist.loc
        return Independent(Normal(torch.zeros_like(loc), torch.ones_like(loc)), 1)

    def kl(self, q, z=None):
        if self.flow is not None:
            if z is None:
                z = q.rsample((1,))
            return (q.log_prob(z) - self.log_prior(z)).mean(0)
        m, s = q.base_dist.loc, q.base_dist.scale
        return 0.5 * (s.pow(2) + m.pow(2) - 1.0 - 2.0 * s.log()).sum(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + (f", flow={self.flow_kind!r}" if self.flow is not None else "")

    def log_prior(self, z):
        return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


register_latent("euclidean", EuclideanLatent)
