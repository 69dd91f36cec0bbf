"""Distributions on the sphere (and, to come, the hyperboloid), with their KL terms.

* :class:`VonMisesFisher` — vMF on ``S^{m−1}``: Wood's sampler, unbiased κ-gradients,
  log-Bessel terms right for ``m`` up to 1000+ and ``κ ∈ [1e-4, 1e5]``;
* :class:`HypersphericalUniform` — the uniform law on ``S^{m−1}`` (``dim = m``, ambient);
* :class:`PowerSpherical` — De Cao & Aziz (2020), sampled without rejection.

``torch.distributions.kl_divergence(q, HypersphericalUniform(m))`` has closed forms for both.
"""

from .von_mises_fisher import HypersphericalUniform, VonMisesFisher
from .power_spherical import PowerSpherical

__all__ = ["VonMisesFisher", "HypersphericalUniform", "PowerSpherical"]
