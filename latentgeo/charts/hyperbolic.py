"""The Poincaré-ball chart of the hyperboloid, for analysing hyperbolic-latent decoders.

A hyperbolic VAE's decoder reads hyperboloid coordinates ``x ∈ H^d_c ⊂ R^{d+1}`` (``d + 1``
numbers for a ``d``-dimensional manifold). latentgeo's metric, geodesic, clustering and walk
code works on ``d`` free coordinates, so analysis runs in the Poincaré ball
``B^d_c = {z : c|z|² < 1}``:

* :class:`PoincareChart` — ``to_ball(x) = x_s/(1 + √c x_0)`` and its inverse ``from_ball``, the
  ball's own metric ``λ(z)² I`` with ``λ = 2/(1 − c|z|²)`` (the pullback of the Lorentz metric
  through ``from_ball``) and the closed-form distance
  ``acosh(1 + 2c|z − w|²/((1 − c|z|²)(1 − c|w|²)))/√c``;
* :func:`poincare_decoder` — the same decoder wrapper (Gaussian, Bernoulli, categorical,
  deterministic) with each of its callables composed with ``from_ball``, so
  ``PullbackMetric(poincare_decoder(dec), kind)`` is the decoder's pullback metric in ball
  coordinates and ``connecting_geodesic``, ``GeodesicKMeans`` and the walks apply unchanged.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.charts import PoincareChart, poincare_decoder
    >>> chart = PoincareChart(2)
    >>> z = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    >>> x = chart.from_ball(z)                        # a point of H^2 in R^3
    >>> bool(torch.allclose(chart.to_ball(x), z))
    True
    >>> dec = lg.DeterministicDecoder(lambda x: torch.tanh(x @ torch.ones(3, 4, dtype=x.dtype)))
    >>> metric = lg.PullbackMetric(poincare_decoder(dec, chart))
    >>> metric.tensor(z).shape
    torch.Size([1, 2, 2])
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PoincareChart", "poincare_decoder"]


class PoincareChart:
    """Hyperboloid ``H^d_c`` ↔ Poincaré ball ``B^d_c`` (curvature ``−c``).

    Args:
        dim: manifold dimension ``d``.
        curvature: ``c > 0``.
    """

    def __init__(self, dim: int, curvature: float = 1.0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(curvature, bool) or not isinstance(curvature, (int, float)) or not (
            math.isfinite(curvature) and curvature > 0
        ):
            raise ValueError(f"curvature must be a positive number (curvature −c), got {curvature!r}")
        self.dim, self.c = dim, float(curvature)

    @classmethod
    def for_model(cls, model) -> "PoincareChart":
        """The chart of a VAE with a ``"hyperbolic"`` latent (its dimension and curvature)."""
        lat = getattr(model, "latent", None)
        if lat is None or getattr(lat, "name", None) != "hyperbolic":
            raise ValueError(f"model must be a VAE with a hyperbolic latent, got {type(model).__name__}")
        return cls(lat.dim, lat.c)

    def _check(self, t, width, name):
        if not isinstance(t, torch.Tensor) or t.shape[-1] != width:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor (..., {width}), got {shape}")

    def to_ball(self, x: torch.Tensor) -> torch.Tensor:
        """Hyperboloid points ``(..., d+1)`` → ball coordinates ``(..., d)``."""
        self._check(x, self.dim + 1, "x")
        return x[..., 1:] / (1.0 + math.sqrt(self.c) * x[..., :1])

    def from_ball(self, z: torch.Tensor) -> torch.Tensor:
        """Ball coordinates ``(..., d)`` → hyperboloid points ``(..., d+1)`` (pure, differentiable)."""
        sq = (z * z).sum(-1, keepdim=True)
        den = 1.0 - self.c * sq
        return torch.cat([(1.0 + self.c * sq) / (math.sqrt(self.c) * den), 2.0 * z / den], -1)

    def check_in_ball(self, z: torch.Tensor, name: str = "z") -> None:
        """Raise ``ValueError`` naming ``name`` for points outside the open ball."""
        self._check(z, self.dim, name)
        bad = self.c * (z * z).sum(-1) >= 1.0
        if bool(bad.any()):
            raise ValueError(f"{name} must lie in the open Poincaré ball |z| < {1 / math.sqrt(self.c):g}; "
                             f"{int(bad.sum())} point(s) do not")

    def conformal_factor(self, z: torch.Tensor) -> torch.Tensor:
        """``λ(z) = 2/(1 − c|z|²)``, shape ``(...)``."""
        return 2.0 / (1.0 - self.c * (z * z).sum(-1))

    def metric(self, z: torch.Tensor) -> torch.Tensor:
        """The hyperbolic metric in ball coordinates, ``λ(z)² I``, shape ``(..., d, d)``."""
        self.check_in_ball(z)
        lam = self.conformal_factor(z)
        eye = torch.eye(self.dim, dtype=z.dtype, device=z.device)
        return (lam**2)[..., None, None] * eye

    def dist(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Closed-form hyperbolic distance between ball points (broadcast), shape ``(...)``."""
        self.check_in_ball(z, "z")
        self.check_in_ball(w, "w")
        num = 2.0 * self.c * ((z - w) ** 2).sum(-1)
        den = (1.0 - self.c * (z * z).sum(-1)) * (1.0 - self.c * (w * w).sum(-1))
        return torch.acosh(1.0 + num / den) / math.sqrt(self.c)

    def __repr__(self) -> str:
        return f"PoincareChart(dim={self.dim}, curvature={self.c:g})"


class _OnBall(nn.Module):
    """``f ∘ from_ball`` as a module (so the metric code sees ``f``'s parameters and modules)."""

    def __init__(self, f, chart: PoincareChart):
        super().__init__()
        self.f = f  # an nn.Module is registered as a submodule; a function is kept as is
        self.c = chart.c

    def forward(self, z):
        sq = (z * z).sum(-1, keepdim=True)
        den = 1.0 - self.c * sq
        x = torch.cat([(1.0 + self.c * sq) / (math.sqrt(self.c) * den), 2.0 * z / den], -1)
        # outside the ball the formula lands on the other sheet of the hyperboloid: give NaN
        # instead, so the decoder checks name those points rather than decode a wrong code
        return self.f(torch.where(den > 0, x, torch.full_like(x, float("nan"))))


def poincare_decoder(decoder, chart: Optional[PoincareChart] = None):
    """The decoder wrapper ``decoder`` (on hyperboloid codes) re-expressed on the Poincaré ball.

    Args:
        decoder: a latentgeo :class:`~latentgeo.decoders.GaussianDecoder`,
            :class:`~latentgeo.decoders.BernoulliDecoder`,
            :class:`~latentgeo.decoders.CategoricalDecoder` or
            :class:`~latentgeo.decoders.DeterministicDecoder` whose callables take hyperboloid
            coordinates ``(N, d+1)`` (e.g. ``vae.decoder_for_analysis()`` of a hyperbolic VAE).
        chart: the :class:`PoincareChart` (default: dimension from the decoder's latent
            dimension minus one, curvature 1).

    Returns:
        a wrapper of the same class taking ball coordinates ``(N, d)``. Codes outside the open
        ball are mapped to NaN before the decoder sees them, so the metric code reports them
        (a ``ValueError`` naming the points) instead of decoding the hyperboloid's other sheet.
    """
    from ..decoders import BernoulliDecoder, CategoricalDecoder, DeterministicDecoder, GaussianDecoder

    if chart is None:
        ld = getattr(decoder, "latent_dim", None)
        if not isinstance(ld, int) or ld < 2:
            raise ValueError("poincare_decoder needs chart= when the decoder does not know its latent dimension")
        chart = PoincareChart(ld - 1)
    if not isinstance(chart, PoincareChart):
        raise TypeError(f"chart must be a PoincareChart, got {type(chart).__name__}")

    def wrap(f):
        return None if f is None else _OnBall(f, chart)

    if isinstance(decoder, GaussianDecoder):
        if decoder.model is not None:
            return GaussianDecoder(model=wrap(decoder.model), latent_dim=chart.dim)
        return GaussianDecoder(mean=wrap(decoder.mean), std=wrap(decoder.std), latent_dim=chart.dim)
    if isinstance(decoder, (BernoulliDecoder, CategoricalDecoder)):
        cls = type(decoder)
        return cls(logits=wrap(decoder.logits), probs=wrap(decoder.probs), latent_dim=chart.dim)
    if isinstance(decoder, DeterministicDecoder):
        return DeterministicDecoder(wrap(decoder.f), latent_dim=chart.dim)
    raise TypeError(
        f"decoder must be a latentgeo Gaussian/Bernoulli/Categorical/Deterministic decoder, got {type(decoder).__name__}"
    )
