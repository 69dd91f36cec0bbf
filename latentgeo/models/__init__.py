"""VAE models with pluggable latent spaces and likelihoods.

* :class:`VAE` — MLP encoder/decoder, ELBO, analysis decoder, RBF variance, save/load.
* :class:`Latent` — the latent-space interface; :class:`EuclideanLatent` (``"euclidean"``);
  :func:`register_latent` adds new ones (hyperspherical, hyperbolic).
* :class:`GaussianLikelihood`, :class:`BernoulliLikelihood` — decoder likelihoods.
"""

from .latents import LATENTS, EuclideanLatent, Latent, get_latent, register_latent
from .likelihoods import LIKELIHOODS, BernoulliLikelihood, GaussianLikelihood
from .nets import MLP
from .vae import VAE

__all__ = [
    "VAE",
    "Latent",
    "EuclideanLatent",
    "register_latent",
    "get_latent",
    "LATENTS",
    "GaussianLikelihood",
    "BernoulliLikelihood",
    "LIKELIHOODS",
    "MLP",
]
