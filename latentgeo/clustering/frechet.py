"""Weighted Fréchet (Karcher) means on a latent metric.

The Fréchet mean of points ``x_i`` with weights ``w_i`` (``Σ w_i = 1``) minimises
``F(μ) = ½ Σ w_i d(μ, x_i)²``. Its Riemannian gradient is ``grad F(μ) = −Σ w_i Log_μ(x_i)``
(Karcher 1977; Pennec 2006, *J. Math. Imaging Vis.* 25), so Riemannian gradient descent is

    μ ← Exp_μ(τ · Σ w_i Log_μ(x_i)),

with ``τ = 1`` the classical Karcher iteration. Here ``Log_μ(x_i)`` is the initial velocity of the
connecting geodesic from ``μ`` to ``x_i`` (:func:`latentgeo.geodesics.connecting_geodesic`, all
points in one batch). Each step is step-controlled (:func:`karcher_line_search`, shared with
:class:`~latentgeo.clustering.GeodesicKMeans`): ``τ`` first, then at most two shorter candidates at the
minimiser of the parabola through ``F(μ)``, the slope ``−‖g‖²`` and the rejected value, so ``F``
never increases. A candidate's log maps start from the previous ones (warm starts: the curves
moved to the new endpoints, certified collocation curves re-collocated directly), and a distance
that comes out longer than ``d(μ, x_i) + τ‖g‖`` — the exp-map curve followed by the old curve, a
real curve of that length — is replaced by that bound (uncertified), which keeps ``F(τ)`` continuous
when a solve lands on another branch. The iteration stops when ``‖grad F‖_{M(μ)} ≤ tol · √(2F)``
(a relative criterion: the gradient is small against the spread of the points).

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
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Optional

import torch

from .._validation import as_latent_batch, check_int, check_real
from ..geodesics import Collocation
from ..geodesics.connecting import check_dtype, working_metric

#: latent dimensions up to which warm solves keep Newton Jacobians (2·Q·d² numbers a pair), here and in k-means
JAC_MAX_DIM = 8

__all__ = ["frechet_mean", "FrechetMeanResult", "FrechetStatus", "karcher_line_search", "triangle_cap", "keep_shorter", "curve_log"]


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


def _log_maps(metric, mu: torch.Tensor, points: torch.Tensor, geodesic_options: dict, backend=None, init=None):
    """``Log_mu(x_i)``, distances, certification and the solver's result for all points (one
    batched solve from ``init`` curves when given, or blocks on ``backend = (name or Backend,
    client, block_size)``, where only lengths and velocities come back: no warm starts)."""
    from ..geodesics import connecting_geodesic

    z0 = mu.expand_as(points).contiguous()
    if backend is not None and backend[0] != "serial":
        from ..backends import solve_pair_blocks

        res = solve_pair_blocks(metric, z0, points, block_size=backend[2], backend=backend[0], client=backend[1],
                                **geodesic_options)
        keep = None
    else:
        res = connecting_geodesic(metric, z0, points, **geodesic_options, **({} if init is None else {"init": init}))
        keep = res
    v = res.initial_velocity.detach()
    length = res.length.detach()
    conv = res.converged.clone()
    # a point at the mean: the solver returns a zero-length pair; keep its velocity zero
    same = (points - z0).abs().amax(-1) == 0
    bad = torch.nonzero(~conv.to(same.device) & ~same).reshape(-1)
    if keep is not None and bad.numel():
        # an uncertified pair's length is that of the curve found (an upper bound): step along that
        # bound's slope, not along the curve's initial velocity
        v = v.clone()
        v[bad] = curve_log(metric, res[bad], z0[bad]).to(v.dtype)
    v = torch.where(same[:, None], torch.zeros_like(v), v)
    length = torch.where(same, torch.zeros_like(length), length)
    conv = conv | same.to(conv.device)
    return v, length, conv, keep


def _take(a, b, mask):
    """The result with ``b``'s pairs where ``mask`` and ``a``'s elsewhere."""
    from ..geodesics import GeodesicResult

    mask = mask.to(a.z0.device)
    if not bool(mask.any()):
        return a
    idx = torch.cat([torch.nonzero(~mask).reshape(-1), torch.nonzero(mask).reshape(-1)])
    both = GeodesicResult.concat([a[~mask], b[mask]])
    return both[torch.argsort(idx)]


def curve_log(metric, res, c, T: int = 65):
    """Descent velocities of the curves of an uncertified result: for each pair ``c → x_i`` with curve
    ``γ_i``, ``−L_i M(c)⁻¹ ∇_c L_i(c)``, where ``L_i(c)`` is the length of ``γ_i`` moved to start at
    ``c`` (``γ_i(t) + (1 − t)(c − γ_i(0))``, as a warm start moves it) — the slope of that upper
    bound of ``½ d(c, x_i)²``. For a geodesic it is ``Log_c(x_i)``; for a curve that is not one,
    the initial velocity is not the slope of its length (the curve's own bending adds to it), and a
    Karcher step along it may raise the bound. ``c`` is ``(N, d)``; returns ``(N, d)``."""
    t = torch.linspace(0, 1, T, dtype=c.dtype, device=c.device)
    with torch.no_grad():
        cur = res.curve(t).detach().to(c.dtype)
    start = c.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        moved = cur + (1 - t)[None, :, None] * (start - cur[:, 0])[:, None]
        # chord sums Richardson-extrapolated from T and (T + 1)/2 points (errors h² → h⁴), as the
        # solvers measure a curve's length
        L, _ = metric._richardson_length(moved)
        (grad,) = torch.autograd.grad(L.sum(), start)
    with torch.no_grad():
        M = metric.tensor(c.detach())
        v = -L.detach()[:, None] * torch.linalg.solve(M, grad[..., None])[..., 0]
    return torch.where(torch.isfinite(v).all(-1, keepdim=True), v, torch.zeros_like(v))


#: candidate steps per Karcher step (each re-solves the log maps of every point)
KARCHER_TRIALS = 3


def triangle_cap(d_new, conv_new, d_old, step_length, rtol=0.0):
    """``d(c', x) ≤ d(c, x) + d(c, c')``: a new distance longer than the old one plus the step's
    length (the exp-map curve of length ``τ‖g‖`` followed by the old curve is a real curve) is
    replaced by that bound and marked uncertified (not the shortest curve known). ``rtol`` is the
    lengths' own accuracy, within which a longer value is kept. Returns ``(d, conv)``."""
    cap = d_old + step_length
    over = d_new > cap * (1 + rtol)
    return torch.where(over, cap, d_new), conv_new & ~over.to(conv_new.device)


def keep_shorter(d_new, conv_new, v_new, d_old, v_old, rtol=0.0):
    """A re-solve against a kept curve from the same point: one that comes out longer (beyond
    ``rtol``, the lengths' accuracy) is not the shortest curve known, so the pair keeps the shorter
    length and its velocity, uncertified. Returns ``(d, conv, v, longer)``."""
    longer = d_new > d_old * (1 + rtol)
    d = torch.minimum(d_new, d_old)
    conv = conv_new & ~longer.to(conv_new.device)
    v = torch.where(longer[:, None], v_old, v_new)
    return d, conv, v, longer


EXP_RTOL = 1e-6  # the candidates' exp maps: a candidate is a point whose distances are solved afresh


def karcher_line_search(metric, c, g, value: float, slope: float, evaluate, *, step: float = 1.0,
                        trials: int = KARCHER_TRIALS):
    """One step-controlled Riemannian gradient step from ``c`` along ``g`` (``−grad``).

    Candidates ``Exp_c(τ g)``: ``τ = step`` first; after a rejection the minimiser of the parabola
    through ``f(0) = value``, ``f'(0) = slope`` and the rejected ``f(τ)``, kept within
    ``[0.05, 0.5]·τ`` (Nocedal & Wright, *Numerical Optimization*, §3.5), or ``τ/2`` when the
    trial gave no finite value; at most ``trials`` candidates (their exp maps at ``rtol=1e-6``:
    18 instead of 41 Runge–Kutta steps for a digits-VAE centre, with the same fit; a candidate's
    value is solved afresh from wherever it lands). ``evaluate(cand, τ)`` returns
    ``(f, payload)``; a candidate is accepted when ``f ≤ value`` (to 1e-12 relative), so the
    objective never increases.

    Returns ``(τ, candidate, f, payload)`` of the accepted candidate, or ``(0.0, None, value, None)``.
    """
    from ..geodesics import exp_map

    for _ in range(trials):
        e = exp_map(metric, c[None], (step * g)[None], rtol=EXP_RTOL, atol=EXP_RTOL * 1e-2)
        cand = e.z1[0].detach()
        f = math.inf
        if bool(e.converged[0]) and bool(torch.isfinite(cand).all()):
            f, payload = evaluate(cand, step)
            if f <= value * (1 + 1e-12):
                return step, cand, f, payload
        curv = (f - value - slope * step) / step**2 if math.isfinite(f) else 0.0
        new = -slope / (2.0 * curv) if curv > 0 else 0.5 * step
        step = min(max(new, 0.05 * step), 0.5 * step)
    return 0.0, None, value, None


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
        step_size: initial step ``τ`` of each iteration (1 = Karcher's iteration); a step that does
            not decrease ``F`` is replaced by shorter ones (:func:`karcher_line_search`).
        geodesic_options: keyword options for :func:`latentgeo.geodesics.connecting_geodesic`
            (``solver``, ``tol``, ``budget``, ``graph``, ``dtype``, ...; not ``init``: each
            iteration's log maps start from the previous ones). ``dtype=torch.float32`` (with
            ``tol ≥ 1e-4``) runs the whole mean in float32, on a float32 copy of the model.
        backend, client, block_size: where the log maps are solved: ``"serial"`` (default), or
            ``"dask"`` / a :class:`latentgeo.backends.Backend` with blocks of ``block_size`` pairs
            (:func:`latentgeo.backends.solve_pair_blocks`; ``client`` a ``distributed.Client``).

    Returns:
        a :class:`FrechetMeanResult` with the mean (in the points' dtype; the solves run in float64,
        on a float64 copy of a float32 model, unless ``dtype`` says otherwise), the gradient norm and a status. Where log maps are
        not certified, ``value`` and the distances are upper bounds: the lengths of the curves found.
        The gradient then uses, for those pairs, the slope of their curve's length
        (:func:`curve_log`). ``UNCERTIFIED`` means the gradient of that bound is small, and
        ``STEP_FAILED`` that no candidate step lowered it.

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
    for bad in ("init", "return_result"):
        if bad in opts:
            raise ValueError(f"geodesic_options may not set {bad!r} (frechet_mean warm-starts each iteration's log maps "
                             "from the previous ones)")
    opts.setdefault("progress", False)
    rtol = float(opts.get("tol", 1e-6)) ** 2  # the lengths' accuracy (second order in the ODE residual)
    be = (backend, client, check_int(block_size, "block_size", 1))
    if init is None:
        mu = (w[:, None] * pts).sum(0)
    else:
        mu, _ = as_latent_batch(torch.as_tensor(init, dtype=pts.dtype, device=pts.device).reshape(1, -1),
                                metric.latent_dim, name="init", allow_single=False)
        mu = mu[0]
    # solved in float64 (a float64 copy of a float32 model, as connecting_geodesic does per call)
    # unless geodesic_options ask for float32: near the mean F decreases by about ‖grad F‖² a step,
    # 1e-8 relative at tol=1e-4, below float32's resolution; the mean and distances are returned in
    # the points' dtype
    out_dtype = pts.dtype
    metric, wdt = working_metric(metric, pts, check_dtype(opts.get("dtype"), float(opts.get("tol", 1e-6))))
    pts, w, mu = pts.to(wdt), w.to(wdt), mu.to(wdt)
    # the trial steps' log maps: a pair its previous curve does not carry (not certified, or its
    # direct Newton solve failed) keeps that curve moved to the candidate (an upper bound, continuous
    # in the candidate) instead of the whole pipeline; where the iteration stops, those pairs are
    # solved again with the full options, and the iteration goes on if the gradient changed
    trial_opts = opts
    solver = opts.get("solver")
    if (solver is None or isinstance(solver, Collocation)) and be[0] == "serial":
        solver = solver if solver is not None else Collocation()
        trial_opts = dict(opts, solver=replace(solver, warm_fallback="keep",
                                               keep_jacobians=solver.keep_jacobians or pts.shape[1] <= JAC_MAX_DIM))
    t0 = time.perf_counter()
    n_geo = 0
    v, dist, conv, res = _log_maps(metric, mu, pts, opts, be)
    n_geo += n
    full_here = True  # the current log maps were solved with the full options
    grad_full = None  # the gradient norm where they last were
    failed = False
    value = 0.5 * float((w * dist**2).sum())
    status = FrechetStatus.MAX_ITER
    it = 0
    grad_norm = math.inf
    while True:
        g = (w[:, None] * v).sum(0)  # −grad F
        with torch.no_grad():
            grad_norm = float(metric.norm(mu, g))
        small = grad_norm <= tol * math.sqrt(max(2.0 * value, 1e-300))
        if grad_full is None:
            grad_full = grad_norm
        # the uncertified pairs are solved again with the full options where the iteration stops,
        # and each time the gradient has fallen tenfold since they last were (from nearer the mean
        # they may certify, and their log maps then steer better than the bounds' slopes)
        stop = small or failed or it >= max_iter
        if stop or grad_norm < 0.1 * grad_full:
            if not full_here and not bool(conv.all()):
                v2, d2, c2, r2 = _log_maps(metric, mu, pts, opts, be, init=res)
                n_geo += n
                # the kept length is that of a real curve from the same point: a re-solve that comes
                # out longer is not the shortest curve known; the pair keeps the shorter, uncertified
                dist, conv, v, longer = keep_shorter(d2, c2, v2, dist, v, rtol)
                if r2 is not None:  # the next warm starts follow the shorter curve of each pair
                    res = _take(r2, res, longer)
                value = 0.5 * float((w * dist**2).sum())
                full_here, failed, grad_full = True, False, None
                continue
            if stop:
                if small:
                    status = FrechetStatus.SUCCESS if bool(conv.all()) else FrechetStatus.UNCERTIFIED
                elif failed:
                    status = FrechetStatus.STEP_FAILED
                break  # (else max_iter: status stays MAX_ITER)
            grad_full = grad_norm

        def evaluate(cand, step, dist=dist, res=res, gn=grad_norm):
            nonlocal n_geo
            v2, d2, c2, r2 = _log_maps(metric, cand, pts, trial_opts, be, init=res)
            n_geo += n
            d2, c2 = triangle_cap(d2, c2, dist, step * gn, rtol)
            return 0.5 * float((w * d2**2).sum()), (v2, d2, c2, r2)

        # F(Exp_μ(τg)) has slope ⟨grad F, g⟩ = −‖g‖² at τ = 0
        step, cand, val2, out = karcher_line_search(metric, mu, g, value, -grad_norm**2, evaluate, step=tau)
        it += 1
        if cand is None:
            failed = True
            continue
        mu, value = cand, val2
        v, dist, conv, res = out
        full_here = trial_opts is opts
    return FrechetMeanResult(
        mean=mu.to(out_dtype), value=value, grad_norm=grad_norm, converged=status in (FrechetStatus.SUCCESS, FrechetStatus.UNCERTIFIED),
        status=status, n_iter=it, distances=dist.to(out_dtype), distance_converged=conv,
        stats={"geodesics": n_geo, "wall_time": time.perf_counter() - t0},
    )
