"""Stereographic charts of the sphere ``S^d ⊂ R^{d+1}``, so decoders of spherical latents can
be analysed by the Euclidean-chart machinery (metric, geodesics, k-means, walks) unchanged.

:class:`StereographicChart` projects from a ``pole`` ``p`` onto the hyperplane ``p⊥``
(coordinates in an orthonormal basis ``B`` of ``p⊥``, so charts are ``R^d``):

``to_chart(x) = Bᵀx / (1 − pᵀx)``,   ``from_chart(y) = (2By + (‖y‖² − 1) p) / (‖y‖² + 1)``.

The chart covers the whole sphere but the pole, which goes to infinity; project from the pole
**opposite** the codes (:meth:`StereographicChart.opposite_mean`) so the codes sit near the
chart's origin, where distortion is smallest. The round metric in the chart is
``4/(1 + ‖y‖²)² I``.

:func:`chart_decoder` (or :meth:`StereographicChart.decoder`) turns a decoder of sphere codes
``(N, d+1)`` into a decoder of chart coordinates ``(N, d)``, ``y ↦ decoder(from_chart(y))``.
The pullback metric of that composite is the decoder's metric restricted to the sphere, so
lengths, distances and geodesics do not depend on which chart computed them (only where a
curve passes near a chart's pole, which it cannot reach, do two charts disagree).

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.charts import StereographicChart, chart_decoder
    >>> codes = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.1], [0.9, -0.1, 0.3]]), dim=1)
    >>> chart = StereographicChart.opposite_mean(codes)
    >>> y = chart.to_chart(codes)
    >>> bool(torch.allclose(chart.from_chart(y), codes, atol=1e-6))
    True
    >>> dec = chart_decoder(lg.DeterministicDecoder(lambda x: x), chart)
    >>> G = lg.PullbackMetric(dec).tensor(torch.zeros(1, 2))  # 4 I at the chart's origin
    >>> torch.allclose(G, 4 * torch.eye(2))
    True
"""

from __future__ import annotations

from typing import Optional

import torch

from .._validation import as_latent_batch
from ..decoders import Decoder

__all__ = ["StereographicChart", "ChartDecoder", "chart_decoder"]


def _basis(pole: torch.Tensor) -> torch.Tensor:
    """``(d+1, d)`` orthonormal basis of ``pole⊥``: the last ``d`` columns of a Householder ``Q``
    with ``Q e₁ = ±pole`` built from ``e₁ ± pole`` (whichever is longer, so exact at ``pole = ±e₁``)."""
    n = pole.shape[0]
    sign = 1.0 if float(pole[0]) >= 0 else -1.0
    u = sign * pole.clone()
    u[0] = u[0] + 1.0
    q = torch.eye(n, dtype=pole.dtype, device=pole.device) - 2.0 * torch.outer(u, u) / (u @ u)
    return q[:, 1:]


class StereographicChart:
    """Stereographic projection of ``S^d`` from ``pole`` (see the module docstring).

    Args:
        pole: a unit vector ``(d+1,)``, ``d ≥ 1`` (refused with ``ValueError`` when its norm is off
            by more than ``1e-6`` in float64 / ``1e-4`` in float32; smaller errors are renormalised).

    Attributes:
        pole: the pole ``(d+1,)``; basis: ``(d+1, d)`` the orthonormal basis of ``pole⊥`` giving
        the chart's coordinates; dim: ``d``.
    """

    def __init__(self, pole):
        p, _ = as_latent_batch(pole, name="pole")
        if p.shape[0] != 1:
            raise ValueError(f"pole must be a single unit vector (d+1,), got shape {tuple(p.shape)}")
        p = p[0]
        if p.shape[0] < 2:
            raise ValueError(f"pole must have at least 2 coordinates (the sphere S^d, d >= 1), got {p.shape[0]}")
        tol = 1e-6 if p.dtype == torch.float64 else 1e-4
        nrm = float(p.norm())
        if abs(nrm - 1.0) > tol:
            raise ValueError(f"pole must be a unit vector, got norm {nrm:.6g}; normalise it first")
        self.pole = p / p.norm()
        self.basis = _basis(self.pole)
        self.dim = p.shape[0] - 1

    @classmethod
    def opposite_mean(cls, codes) -> "StereographicChart":
        """The chart projecting from ``−mean direction`` of ``codes (N, d+1)`` on the sphere."""
        x, _ = as_latent_batch(codes, name="codes")
        m = x.mean(0)
        n = float(m.norm())
        if not n > 1e-8 * float(x.norm(dim=1).mean()):
            raise ValueError("codes have no mean direction (their mean is ~0); give a pole explicitly")
        return cls(-m / m.norm())

    def _cast(self, t):
        if self.pole.dtype != t.dtype or self.pole.device != t.device:
            return self.pole.to(t), self.basis.to(t)
        return self.pole, self.basis

    def to_chart(self, x: torch.Tensor) -> torch.Tensor:
        """Sphere points ``(..., d+1)`` → chart coordinates ``(..., d)`` (pure torch; the pole maps to inf)."""
        p, b = self._cast(x)
        # 1 − pᵀx = ‖x − p‖²/2 for unit x: exact near the pole's antipode and the pole alike
        den = 0.5 * (x - p).pow(2).sum(-1, keepdim=True)
        return (x @ b) / den

    def from_chart(self, y: torch.Tensor) -> torch.Tensor:
        """Chart coordinates ``(..., d)`` → sphere points ``(..., d+1)`` (pure torch, transformable)."""
        p, b = self._cast(y)
        r2 = y.pow(2).sum(-1, keepdim=True)
        return (2.0 * (y @ b.T) + (r2 - 1.0) * p) / (r2 + 1.0)

    def decoder(self, decoder: Decoder) -> "ChartDecoder":
        """``decoder`` (on sphere codes) composed with :meth:`from_chart`: a decoder on the chart."""
        return ChartDecoder(decoder, self)

    def __repr__(self):
        return f"StereographicChart(dim={self.dim}, pole={[round(v, 4) for v in self.pole.tolist()]})"


class ChartDecoder(Decoder):
    """A decoder on the chart ``R^d``: ``y ↦ base(chart.from_chart(y))``.

    Same kinds, likelihood and Fisher weights as ``base`` (a :class:`~latentgeo.Decoder` taking
    sphere codes ``(N, d+1)``); the metric machinery differentiates through the inverse
    projection with :mod:`torch.func` (no fx fast path).
    """

    def __init__(self, base: Decoder, chart: StereographicChart):
        if not isinstance(base, Decoder):
            raise TypeError(f"base must be a latentgeo Decoder, got {type(base).__name__}")
        if not isinstance(chart, StereographicChart):
            raise TypeError(f"chart must be a StereographicChart, got {type(chart).__name__}")
        if base.latent_dim is not None and base.latent_dim != chart.dim + 1:
            raise ValueError(f"the decoder takes codes of width {base.latent_dim} but the chart is of S^{chart.dim} "
                             f"(codes of width {chart.dim + 1})")
        super().__init__(latent_dim=chart.dim)
        self.base, self.chart = base, chart
        self.kinds, self.default_kind, self.embedded_kinds = base.kinds, base.default_kind, base.embedded_kinds

    def _modules(self):
        return self.base._modules()

    def coordinates(self, z, kind: Optional[str] = None):
        return self.base.coordinates(self.chart.from_chart(z), kind)

    def coordinate_blocks(self, z, kind: Optional[str] = None):
        return self.base.coordinate_blocks(self.chart.from_chart(z), kind)

    def block_weights(self, blocks, kind: Optional[str] = None):
        return self.base.block_weights(blocks, kind)

    def check_coordinates(self, eta, kind: Optional[str] = None):
        return self.base.check_coordinates(eta, kind)

    def fisher_weights(self, eta, kind: Optional[str] = None):
        return self.base.fisher_weights(eta, kind)

    def distribution(self, z):
        return self.base.distribution(self.chart.from_chart(z))

    def __call__(self, z):
        z = self.prepare(z)
        return self.base(self.chart.from_chart(z))

    def __repr__(self):
        return f"ChartDecoder({self.base!r}, {self.chart!r})"


def chart_decoder(decoder: Decoder, chart: StereographicChart) -> ChartDecoder:
    """``decoder`` on sphere codes composed with ``chart.from_chart``: see :class:`ChartDecoder`."""
    return ChartDecoder(decoder, chart)
