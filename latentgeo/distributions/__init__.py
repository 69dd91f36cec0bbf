"""Probability distributions on latent manifolds.

* :class:`WrappedNormal` — the wrapped normal on hyperbolic space (Nagano et al. 2019), for
  geoopt ``Lorentz`` and ``PoincareBall`` manifolds, with an exact log-density;
* :mod:`.lorentz` — the pure hyperboloid functions it is built on (exp/log maps at the origin
  and at any point, parallel transport, the origin-to-point isometry), shared with the
  hyperbolic flows and latents.
"""

from . import lorentz
from .wrapped_normal import WrappedNormal

__all__ = ["WrappedNormal", "lorentz"]
