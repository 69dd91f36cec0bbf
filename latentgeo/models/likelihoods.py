"""Decoder likelihoods ``p(x | z)`` for :class:`~latentgeo.models.VAE`.

* :class:`GaussianLikelihood` — ``x ~ N(μ(z), diag σ(z)²)`` with a mean network and one of
  three standard deviations (:attr:`GaussianLikelihood.variance`):

  - ``"constant"``: one learned scalar σ for every ``z`` and pixel (LSO phase 1: train
    the mean with a constant variance so the encoder cannot hide in the variance);
  - ``"learned"``: an MLP std head ``σ(z) = softplus(h(z)) + min_std`` (LSO phase 2, trained
    with the mean frozen);
  - ``"rbf"``: the post-hoc RBF precision network of LSO §4
    (:class:`~latentgeo.variance.RBFPrecision`), whose σ grows away from the training codes.

* :class:`BernoulliLikelihood` — ``x ~ Bernoulli(sigmoid(logits(z)))`` for data in [0, 1].

Reference: Arvanitidis, Hansen, Hauberg, *Latent Space Oddity*, ICLR 2018, §4 and App.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..decoders import BernoulliDecoder, GaussianDecoder
from ..variance import RBFPrecision
from .nets import MLP

__all__ = ["GaussianLikelihood", "BernoulliLikelihood", "LIKELIHOODS", "VARIANCES"]

VARIANCES = ("constant", "learned", "rbf")
_LOG_2PI = math.log(2 * math.pi)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class _MeanHead(nn.Module):
    """``z (N, d) -> μ (N, D)`` (an nn.Module view on the likelihood's mean network)."""

    def __init__(self, lik: "GaussianLikelihood"):
        super().__init__()
        self.lik = lik

    def forward(self, z):
        return self.lik.mean_net(z)


class _StdHead(nn.Module):
    """``z (N, d) -> σ (N, D)`` using a fixed variance mode of the likelihood."""

    def __init__(self, lik: "GaussianLikelihood", mode: str):
        super().__init__()
        self.lik, self.mode = lik, mode

    def forward(self, z):
        return self.lik.std(z, self.mode)


class GaussianLikelihood(nn.Module):
    """Gaussian decoder with mean network and a switchable std (see module docstring).

    Args:
        code_dim: width of latent codes ``d``.
        data_dim: width of (flattened) data ``D``.
        hidden, activation: MLP widths (listed from the latent side) and activation.
        min_std: floor added to the constant and learned std (not to the RBF std, whose
            floor is its own ``ζ``).
    """

    name = "gaussian"

    def __init__(self, code_dim: int, data_dim: int, hidden=(64, 64), activation="tanh", min_std: float = 1e-3):
        super().__init__()
        if not (isinstance(min_std, (int, float)) and min_std > 0):
            raise ValueError(f"min_std must be a positive number, got {min_std!r}")
        self.code_dim, self.data_dim, self.min_std = code_dim, data_dim, float(min_std)
        self.mean_net = MLP(code_dim, data_dim, hidden, activation)
        self.std_net = MLP(code_dim, data_dim, hidden, activation)
        # constant σ = softplus(raw) + min_std, initialised to σ = 1
        self.raw_const_std = nn.Parameter(torch.tensor(_inv_softplus(1.0 - self.min_std)))
        self.rbf: Optional[RBFPrecision] = None
        self.variance = "constant"

    # -- parameters --------------------------------------------------------------------
    def const_std(self) -> torch.Tensor:
        """The constant σ (a scalar tensor)."""
        return F.softplus(self.raw_const_std) + self.min_std

    def std(self, z: torch.Tensor, mode: Optional[str] = None) -> torch.Tensor:
        """σ(z), shape ``(N, D)``, for ``mode`` (default: the current :attr:`variance`)."""
        mode = self.variance if mode is None else mode
        if mode == "constant":
            return self.const_std().to(z.dtype).expand(z.shape[0], self.data_dim)
        if mode == "learned":
            return F.softplus(self.std_net(z)) + self.min_std
        if mode == "rbf":
            if self.rbf is None:
                raise ValueError("no RBF variance has been fitted; call model.fit_rbf_variance(data) first")
            return self.rbf(z).reshape(z.shape[0], self.data_dim)
        raise ValueError(f"unknown variance {mode!r}; choose one of {', '.join(VARIANCES)}")

    def set_variance(self, mode: str) -> None:
        if mode not in VARIANCES:
            raise ValueError(f"unknown variance {mode!r}; choose one of {', '.join(VARIANCES)}")
        if mode == "rbf" and self.rbf is None:
            raise ValueError("no RBF variance has been fitted; call model.fit_rbf_variance(data) first")
        self.variance = mode

    def init_std_head_from_constant(self) -> None:
        """Start the learned std head at the current constant σ (zero last-layer weights)."""
        with torch.no_grad():
            self.std_net.last.weight.zero_()
            c = float(self.const_std()) - self.min_std
            self.std_net.last.bias.fill_(_inv_softplus(max(c, 1e-6)))

    def params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ)`` each ``(N, D)``."""
        return self.mean_net(z), self.std(z)

    def log_prob(self, x: torch.Tensor, params) -> torch.Tensor:
        """``log N(x; μ, diag σ²)`` summed over data dims; ``x (N, D)`` broadcast to ``(S, N, D)``."""
        mu, sd = params
        return -0.5 * (((x - mu) / sd).pow(2) + _LOG_2PI).sum(-1) - sd.log().sum(-1)

    def analysis_decoder(self, mode: Optional[str] = None) -> GaussianDecoder:
        mode = self.variance if mode is None else mode
        self.std(torch.zeros(1, self.code_dim, dtype=self.raw_const_std.dtype,
                             device=self.raw_const_std.device), mode)  # validates mode
        return GaussianDecoder(mean=_MeanHead(self), std=_StdHead(self, mode), latent_dim=self.code_dim)

    def rbf_config(self) -> Optional[dict]:
        if self.rbf is None:
            return None
        return {"n_centers": int(self.rbf.centers.shape[0])}

    def make_empty_rbf(self, n_centers: int, dtype=None) -> None:
        """Create an RBF module of the right shapes (its buffers are then loaded from a checkpoint)."""
        dtype = dtype or self.raw_const_std.dtype
        dev = self.raw_const_std.device
        self.rbf = RBFPrecision(
            torch.zeros(n_centers, self.code_dim, dtype=dtype, device=dev),
            torch.ones(n_centers, dtype=dtype, device=dev),
            (self.data_dim,),
            1.0,
        )
        self.rbf.log_w.requires_grad_(False)


class _LogitsHead(nn.Module):
    def __init__(self, lik: "BernoulliLikelihood"):
        super().__init__()
        self.lik = lik

    def forward(self, z):
        return self.lik.logits_net(z)


class BernoulliLikelihood(nn.Module):
    """Bernoulli decoder ``x ~ Bernoulli(sigmoid(logits(z)))``; data must lie in [0, 1]
    (continuous values are allowed: the "continuous Bernoulli-free" cross-entropy)."""

    name = "bernoulli"
    variance = None
    rbf = None

    def __init__(self, code_dim: int, data_dim: int, hidden=(64, 64), activation="tanh", min_std: float = 1e-3):
        super().__init__()
        self.code_dim, self.data_dim = code_dim, data_dim
        self.logits_net = MLP(code_dim, data_dim, hidden, activation)

    def params(self, z):
        return self.logits_net(z)

    def log_prob(self, x, logits):
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def analysis_decoder(self, mode: Optional[str] = None) -> BernoulliDecoder:
        if mode is not None:
            raise ValueError("a Bernoulli decoder has no variance to choose; call decoder_for_analysis() without one")
        return BernoulliDecoder(logits=_LogitsHead(self), latent_dim=self.code_dim)

    def rbf_config(self):
        return None


LIKELIHOODS = {"gaussian": GaussianLikelihood, "bernoulli": BernoulliLikelihood}
