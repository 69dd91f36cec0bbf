"""``FlowPosterior``: a base distribution pushed through a conditional flow.

``z₀ ~ q₀``, ``z = f(z₀; h)``, ``log q(z) = log q₀(z₀) − log|det ∂f/∂z₀|`` (for manifold flows
the determinant is taken with respect to the Riemannian volume, as the hyperbolic couplings
return it). :meth:`FlowPosterior.rsample_with_log_prob` returns both in one pass;
:meth:`FlowPosterior.rsample` remembers its last draw and :meth:`FlowPosterior.log_prob` of that
very tensor returns the remembered density (no inverse pass, no second log map). Any other
point goes through ``flow.inverse`` and the base density.

Example:
    >>> import torch
    >>> from torch.distributions import Independent, Normal
    >>> from latentgeo.flows import AmortizedFlow, FlowPosterior
    >>> flow = AmortizedFlow("planar", dim=2, n_layers=2)
    >>> base = Independent(Normal(torch.zeros(5, 2), torch.ones(5, 2)), 1)
    >>> q = FlowPosterior(base, flow, torch.randn(5, flow.n_params))
    >>> z = q.rsample((3,))
    >>> q.log_prob(z).shape
    torch.Size([3, 5])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.distributions import Distribution

__all__ = ["FlowPosterior"]


class FlowPosterior(Distribution):
    """``q = f_#(q₀)`` for a flow with ``flow(x, context) -> (y, log_det)`` and ``flow.inverse``.

    Args:
        base: the base distribution ``q₀`` (``rsample`` and ``log_prob``; a
            ``rsample_with_log_prob`` method is used when present).
        flow: the flow module.
        context: conditioning tensor passed to the flow (``None`` for unconditional flows).
    """

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, base: Distribution, flow, context: Optional[torch.Tensor] = None):
        self.base, self.flow, self.context = base, flow, context
        self._last: Optional[tuple] = None
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def rsample_with_log_prob(self, sample_shape=torch.Size()):
        """Samples ``(*sample_shape, *batch, event)`` and their log-densities from one pass."""
        if hasattr(self.base, "rsample_with_log_prob"):
            z0, lq0 = self.base.rsample_with_log_prob(sample_shape)
        else:
            z0 = self.base.rsample(sample_shape)
            lq0 = self.base.log_prob(z0)
        z, logdet = self.flow(z0, self.context)
        logq = lq0 - logdet
        self._last = (z, logq)
        return z, logq

    def rsample(self, sample_shape=torch.Size()):
        return self.rsample_with_log_prob(sample_shape)[0]

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        if self._last is not None and value is self._last[0]:
            return self._last[1]
        z0 = self.flow.inverse(value, self.context)
        _, logdet = self.flow(z0, self.context)
        return self.base.log_prob(z0) - logdet

    @property
    def mean(self):
        """The flow applied to the base distribution's location (a code, not the expectation)."""
        with torch.no_grad():
            loc = self.base.mean
        return self.flow(loc, self.context)[0]
