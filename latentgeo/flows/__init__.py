"""Posterior normalizing flows.

* :mod:`.euclidean` — amortised :class:`PlanarTransform` and :class:`RadialTransform`
  (``torch.distributions.Transform`` with per-sample parameters);
* :mod:`.conditional` — :class:`ZukoFlow` (zuko's conditional RealNVP/NSF, loaded lazily),
  :class:`AmortizedFlow` (a stack of planar/radial layers fed by encoder features) and
  :class:`FlowStack` (a sequence of hyperbolic couplings), all with one interface
  ``flow(x, context) -> (y, log_det)``, ``flow.inverse(y, context) -> x``;
* :mod:`.hyperbolic` — :class:`TangentCoupling` and :class:`WrappedHyperboloidCoupling`
  (Bose et al. 2020) on the hyperboloid;
* :mod:`.posterior` — :class:`FlowPosterior`, a base distribution pushed through a flow, whose
  ``log_prob`` of its own samples reuses the sampling pass.
"""

from .euclidean import PlanarTransform, RadialTransform
from .hyperbolic import TangentCoupling, WrappedHyperboloidCoupling
from .conditional import AmortizedFlow, FlowStack, ZukoFlow
from .posterior import FlowPosterior

__all__ = [
    "PlanarTransform",
    "RadialTransform",
    "TangentCoupling",
    "WrappedHyperboloidCoupling",
    "ZukoFlow",
    "AmortizedFlow",
    "FlowStack",
    "FlowPosterior",
]
