"""Probability distributions on latent manifolds, with their KL terms.

* :class:`VonMisesFisher` — vMF on ``S^{m−1}``: Wood's sampler, unbiased κ-gradients,
  log-Bessel terms right for ``m`` up to 1000+ and ``κ ∈ [1e-4, 1e5]``;
* :class:`HypersphericalUniform` — the uniform law on ``S^{m−1}`` (``dim = m``, ambient);
* :class:`PowerSpherical` — De Cao & Aziz (2020), sampled without rejection;
* :class:`WrappedNormal` — the wrapped normal on hyperbolic space (Nagano et al. 2019), for
  geoopt ``Lorentz`` and ``PoincareBall`` manifolds, with an exact log-density;
* :mod:`.lorentz` — the pure hyperboloid functions it is built on (exp/log maps at the origin
  and at any point, parallel transport, the origin-to-point isometry), shared with the
  hyperbolic flows and latents.

``torch.distributions.kl_divergence(q, HypersphericalUniform(m))`` has closed forms for the
vMF and the power spherical distribution.
"""

from . import lorentz
from .power_spherical import PowerSpherical
from .von_mises_fisher import HypersphericalUniform, VonMisesFisher
from .wrapped_normal import WrappedNormal

__all__ = ["VonMisesFisher", "HypersphericalUniform", "PowerSpherical", "WrappedNormal", "lorentz"]
