"""The latent-space interface of :class:`~latentgeo.models.VAE`.

A :class:`Latent` bundles everything a VAE needs to know about its latent space:

* the encoder's output width (:attr:`Latent.n_params`) and how those features become the
  posterior ``q(z | x)`` (:meth:`Latent.posterior`, a :mod:`torch.distributions` object with
  batch shape ``(N,)`` and event shape ``(code_dim,)``);
* the prior ``p(z)`` (:meth:`Latent.prior`, :meth:`Latent.log_prior`);
* reparameterised samples (:meth:`Latent.rsample`) and the KL term (:meth:`Latent.kl`,
  closed form when one exists, otherwise the Monte-Carlo estimate ``log q(z) − log p(z)``);
* the point that represents ``x`` in the latent space (:meth:`Latent.mean`);
* :attr:`Latent.code_dim`, the width of the coordinates fed to the decoder (``d`` for the
  Euclidean latent; the ambient width ``d + 1`` for a sphere/hyperboloid embedded in
  ``R^{d+1}``).

New latents (hyperspherical vMF, hyperbolic wrapped normal) subclass :class:`Latent` and
call :func:`register_latent`; ``VAE(latent="name", latent_kwargs={...})`` then builds them
and checkpoints record ``name`` and ``kwargs`` (so kwargs must be JSON-serialisable).

Randomness: samplers draw from torch's global generator; the trainer and the IWAE
evaluator run inside :func:`torch.random.fork_rng` seeded locally, so results depend on
their ``random_state`` only and the caller's global RNG state is left untouched.

Example:
    >>> import torch
    >>> from latentgeo.models.latents import EuclideanLatent
    >>> lat = EuclideanLatent(2)
    >>> q = lat.posterior(torch.zeros(5, lat.n_params))
    >>> lat.rsample(q, 3).shape, lat.kl(q).shape
    (torch.Size([3, 5, 2]), torch.Size([5]))
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence

__all__ = ["Latent", "register_latent", "get_latent", "LATENTS"]

LATENTS: dict[str, type] = {}


def register_latent(name: str, cls: type) -> type:
    """Make ``cls`` (a :class:`Latent` subclass) available as ``VAE(latent=name)``."""
    if not (isinstance(cls, type) and issubclass(cls, Latent)):
        raise ValueError(f"register_latent needs a Latent subclass, got {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"latent name must be a non-empty string, got {name!r}")
    LATENTS[name] = cls
    cls.name = name
    return cls


def get_latent(name: str, dim: int, **kwargs) -> "Latent":
    """Build the registered latent ``name`` of dimension ``dim``."""
    if name not in LATENTS:
        raise ValueError(f"unknown latent {name!r}; available: {', '.join(sorted(LATENTS))}")
    return LATENTS[name](dim, **kwargs)


class Latent(nn.Module):
    """Interface of a VAE latent space (see the module docstring).

    Args:
        dim: the latent dimension ``d`` (the manifold's dimension).

    Subclasses implement :attr:`n_params`, :attr:`code_dim`, :meth:`posterior`,
    :meth:`log_prior`, and may override :meth:`kl`, :meth:`rsample`, :meth:`mean`.
    """

    name = "base"

    def __init__(self, dim: int):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"latent dimension must be a positive integer, got {dim!r}")
        self.dim = dim

    # -- interface ---------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Width of the encoder output that :meth:`posterior` consumes."""
        raise NotImplementedError

    @property
    def code_dim(self) -> int:
        """Width of a latent code as given to the decoder."""
        raise NotImplementedError

    def posterior(self, params: torch.Tensor) -> Distribution:
        """``q(z | x)`` from encoder features ``params (N, n_params)``; batch ``(N,)``."""
        raise NotImplementedError

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` for codes ``z (..., code_dim)``, shape ``(...)``."""
        raise NotImplementedError

    def kwargs(self) -> dict:
        """JSON-serialisable constructor keyword arguments (besides ``dim``)."""
        return {}

    # -- defaults ----------------------------------------------------------------------
    def rsample(self, q: Distribution, n_samples: int = 1) -> torch.Tensor:
        """Reparameterised samples, shape ``(n_samples, N, code_dim)``."""
        return q.rsample((n_samples,))

    def kl(self, q: Distribution, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``KL(q ‖ p)`` per item, shape ``(N,)``.

        Closed form when torch has one registered for ``(q, prior)``; otherwise the
        Monte-Carlo estimate ``mean_s [log q(z_s) − log p(z_s)]`` over samples ``z (S, N, code_dim)``
        (which must then be given).
        """
        try:
            return kl_divergence(q, self.prior_like(q))
        except NotImplementedError:
            if z is None:
                raise ValueError(f"{type(self).__name__} has no closed-form KL; pass samples z") from None
            return (q.log_prob(z) - self.log_prior(z)).mean(0)

    def prior_like(self, q: Distribution) -> Distribution:
        """The prior as a distribution with the posterior's batch shape (for closed-form KL)."""
        raise NotImplementedError

    def mean(self, q: Distribution) -> torch.Tensor:
        """The code that represents ``x``: the posterior's location, ``(N, code_dim)``.

        The default is ``q.mean``; manifold latents override it (a vMF's mean lies inside the
        ball, its location ``μ`` on the sphere is the right code).
        """
        return q.mean

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
