"""Pluggable latent spaces for :class:`~latentgeo.models.VAE`: one module per latent.

* :mod:`.base` — the :class:`Latent` interface, :func:`register_latent`, :func:`get_latent`;
* :mod:`.euclidean` — :class:`EuclideanLatent` (``"euclidean"``; optional posterior flows);
* :mod:`.sphere` — :class:`SphericalLatent` (``"sphere"``, vMF or power spherical on ``S^d``);
* :mod:`.hyperbolic` — :class:`HyperbolicLatent` (``"hyperbolic"``; wrapped normal, optional TC/WHC flows).

A new latent is a module here that subclasses :class:`Latent` and calls
:func:`register_latent`; this ``__init__`` imports it so it is registered.
"""

from .base import LATENTS, Latent, get_latent, register_latent
from .euclidean import EuclideanLatent
from .hyperbolic import HyperbolicLatent
from .sphere import SphericalLatent

__all__ = ["Latent", "EuclideanLatent", "SphericalLatent", "HyperbolicLatent", "register_latent", "get_latent",
           "LATENTS"]
