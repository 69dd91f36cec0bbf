"""Weighted Fréchet (Karcher) means on a latent metric.

The Fréchet mean of points ``x_i`` with weights ``w_i`` (``Σ w_i = 1``) minimises
``F(μ) = ½ Σ w_i d(μ, x_i)²``. Its Riemannian gradient is ``grad F(μ) = −Σ w_i Log_μ(x_i)``
(Karcher 1977; Pennec 2006, *J. Math. Imaging Vis.* 25), so Riemannian gradient descent is

    μ ← Exp_μ(τ · Σ w_i Log_μ(x_i)),

with ``τ = 1`` the classical Karcher iteration. Here ``Log_μ(x_i)`` is the initial velocity of the
connecting geodesic from ``μ`` to ``x_i`` (:func:`latentgeo.geodesics.connecting_geodesic`, all
points in one batch), ``τ`` is halved whenever ``F`` does not decrease (step control), and the
iteration stops when ``‖grad F‖_{M(μ)} ≤ tol · √(2F)`` (a relative criterion: the gradient is
small against the spread of the points).

Example (points symmetric around the north pole of the sphere, through the inverse
stereographic chart):
    >>> import torch, latentgeo as lg
    >>> def sphere(z):
    ...     s = (z * z).sum(-1, keepdim=True)
    ...     return torch.cat([2 * z, 1 - s], -1) / (1 + s)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(sphere))
    >>> pts = torch.tensor([[0.5, 0.1], [-0.5, -0.1], [0.1, -0.5], [-0.1, 0.5]], dtype=torch.float64)
    >>> res = lg.frechet_mean(metric, pts + 0.2)
    >>> bool(res.converged), bool((res.mean - 0.2).abs().max() < 0.2)
    (True, True)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Optional

import torch

from .._validation import as_latent_batch, check_int, check_real

__all__ = ["frechet_mean", "FrechetMeanResult", "FrechetStatus"]


class FrechetStatus(IntEnum):
    """Outcome of :func:`frechet_mean` (``.message`` is human text)."""

    SUCCESS = 0
    MAX_ITER = 1
    STEP_FAILED = 2
    UNCERTIFIED = 3

    @property
    def message(self) -> str:
        return {
            0: "converged: the Riemannian gradient norm is below tol",
            1: "max_iter reached before the gradient norm fell below tol",
            2: "no step size decreased the Fréchet function (the log maps may be inaccurate)",
            3: "converged, but some log maps were not certified geodesics (their distances are upper bounds)",
        }[int(self)]


@dataclass
class FrechetMeanResult:
    """What :func:`frechet_mean` found.

    Attributes:
        mean: ``(d,)`` the mean.
        value: ``½ Σ w_i d(mean, x_i)²`` (with the last log maps' lengths).
        grad_norm: ``‖Σ w_i Log_mean(x_i)‖_{M(mean)}`` at the returned mean.
        converged: the stopping rule was met (``status`` is ``SUCCESS`` or ``UNCERTIFIED``).
        status: a :class:`FrechetStatus`; ``message`` its text.
        n_iter: gradient steps taken.
        distances: ``(n,)`` geodesic distances from the mean; ``distance_converged``: ``(n,)``
            whether each is certified.
        stats: ``{"geodesics": ..., "wall_time": ...}``.
    """

    mean: torch.Tensor
    value: float
    grad_norm: float
    converged: bool
    status: FrechetStatus
    n_iter: int
    distances: torch.Tensor
    distance_converged: torch.Tensor
    stats: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        return self.status.message

    def __repr__(self):
        return (
            f"FrechetMeanResult(mean={self.mean.tolist()}, grad_norm={self.grad_norm:.3g}, "
            f"n_iter={self.n_iter}, status={self.status.name}: {self.message})"
        )


def _log_maps(metric, mu: torch.Tensor, points: torch.Tensor, geodesic_options: dict, backend=None):
    """``Log_mu(x_i)``, distances and certification for all points (one batched solve, or blocks
    on ``backend = (name or Backend, client, block_size)``)."""
    from ..geodesics import connecting_geodesic

    z0 = mu.expand_as(points).contiguous()
    if backend is not None and backend[0] != "serial":
        from ..backends import solve_pair_blocks

        res = solve_pair_blocks(metric, z0, points, block_size=backend[2], backend=backend[0], client=backend[1],
                                **geodesic_options)
    else:
        res = connecting_geodesic(metric, z0, points, **geodesic_options)
    v = res.initial_velocity.detach()
    length = res.length.detach()
    conv = res.converged.clone()
    # a point at the mean: the solver returns a zero-length pair; keep its velocity zero
    same = (points - z0).abs().amax(-1) == 0
    v = torch.where(same[:, None], torch.zeros_like(v), v)
    length = torch.where(same, torch.zeros_like(length), length)
    conv = conv | same
    return v, length, conv


def frechet_mean(
    metric,
    points,
    weights=None,
    *,
    init=None,
    max_iter: int = 30,
    tol: float = 1e-4,
    step_size: float = 1.0,
    geodesic_options: Optional[dict] = None,
    backend="serial",
    client=None,
    block_size: int = 256,
) -> FrechetMeanResult:
    """Weighted Fréchet (Karcher) mean of latent points by Riemannian gradient descent.

    Args:
        metric: a latentgeo metric.
        points: ``(n, d)`` latent points.
        weights: ``(n,)`` non-negative weights (normalised to sum 1); ``None``: equal.
        init: ``(d,)`` starting point (default: the weighted Euclidean mean of ``points``).
        max_iter: gradient steps at most.
        tol: stop when ``‖grad F‖_{M(μ)} ≤ tol · √(2F)`` (relative to the points' spread).
        step_size: initial step ``τ`` (1 = Karcher's iteration), halved when ``F`` does not decrease.
        geodesic_options: keyword options for :func:`latentgeo.geodesics.connecting_geodesic`
            (``solver``, ``tol``, ``budget``, ``graph``, ...).
        backend, client, block_size: where the log maps are solved: ``"serial"`` (default), or
            ``"dask"`` / a :class:`latentgeo.backends.Backend` with blocks of ``block_size`` pairs
            (:func:`latentgeo.backends.solve_pair_blocks`; ``client`` a ``distributed.Client``).

    Returns:
        a :class:`FrechetMeanResult` with the mean, the gradient norm and a status.

    References: Karcher, *Comm. Pure Appl. Math.* 30 (1977); Pennec, *J. Math. Imaging Vis.* 25 (2006).
    """
    from ..geodesics import exp_map
    from ..metric import Metric

    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a latentgeo Metric, got {type(metric).__name__}")
    pts, _ = as_latent_batch(points, metric.latent_dim, name="points", allow_single=False)
    n = pts.shape[0]
    if weights is None:
        w = torch.full((n,), 1.0 / n, dtype=pts.dtype, device=pts.device)
    else:
        w = torch.as_tensor(weights, dtype=pts.dtype, device=pts.device).reshape(-1)
        if w.shape[0] != n:
            raise ValueError(f"weights has {w.shape[0]} entries for {n} points")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        w = w / w.sum()
    max_iter = check_int(max_iter, "max_iter", 1)
    tol = check_real(tol, "tol", 0.0, strict_min=True)
    tau = check_real(step_size, "step_size", 0.0, 1.0, strict_min=True)
    opts = dict(geodesic_options or {})
    opts.setdefault("progress", False)
    be = (backend, client, check_int(block_size, "block_size", 1))
    if init is None:
        mu = (w[:, None] * pts).sum(0)
    else:
        mu, _ = as_latent_batch(torch.as_tensor(init, dtype=pts.dtype, device=pts.device).reshape(1, -1),
                                metric.latent_dim, name="init", allow_single=False)
        mu = mu[0]
    t0 = time.perf_counter()
    n_geo = 0
    v, dist, conv = _log_maps(metric, mu, pts, opts, be)
    n_geo += n
    value = 0.5 * float((w * dist**2).sum())
    status = FrechetStatus.MAX_ITER
    it = 0
    grad_norm = math.inf
    while True:
        g = (w[:, None] * v).sum(0)  # −grad F
        with torch.no_grad():
            grad_norm = float(metric.norm(mu, g))
        if grad_norm <= tol * math.sqrt(max(2.0 * value, 1e-300)):
            status = FrechetStatus.SUCCESS if bool(conv.all()) else FrechetStatus.UNCERTIFIED
            break
        if it >= max_iter:
            break
        accepted = False
        step = tau
        while step >= 1.0 / 64:
            e = exp_map(metric, mu[None], (step * g)[None])
            cand = e.z1[0].detach()
            if bool(e.converged[0]) and bool(torch.isfinite(cand).all()):
                v2, d2, c2 = _log_maps(metric, cand, pts, opts, be)
                n_geo += n
                val2 = 0.5 * float((w * d2**2).sum())
                if val2 <= value * (1 + 1e-12):
                    mu, v, dist, conv, value = cand, v2, d2, c2, val2
                    accepted = True
                    break
            step *= 0.5
        it += 1
        if not accepted:
            status = FrechetStatus.STEP_FAILED
            break
    return FrechetMeanResult(
        mean=mu, value=value, grad_norm=grad_norm, converged=status in (FrechetStatus.SUCCESS, FrechetStatus.UNCERTIFIED),
        status=status, n_iter=it, distances=dist, distance_converged=conv,
        stats={"geodesics": n_geo, "wall_time": time.perf_counter() - t0},
    )
