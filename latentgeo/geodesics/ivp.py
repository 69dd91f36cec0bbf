"""Batched adaptive Runge–Kutta integration and the exponential map.

:func:`dopri5` integrates many autonomous ODEs ``y' = f(y)`` over ``τ ∈ [0, 1]`` at once
with the Dormand–Prince 5(4) pair (FSAL), each trajectory with its own step size and error
control; finished trajectories leave the active set, so one step advances every trajectory
that still runs (no waiting, no Python loop over trajectories).

:func:`exp_map` solves the geodesic initial-value problem ``γ(0) = z``, ``γ'(0) = v`` and
returns ``γ(t)`` using ``γ_v(t) = γ_{tv}(1)`` (so every trajectory runs on ``[0, 1]``).

References:
    Dormand, Prince. *A family of embedded Runge–Kutta formulae*. J. Comp. Appl. Math. 6
    (1980). Hairer, Nørsett, Wanner. *Solving ODEs I*, §II.4 (step-size control, starting
    step), §II.6 (dense output; here the quintic Hermite interpolant through position,
    velocity and acceleration at the step ends, which is exact for the second-order system
    to the integrator's order).

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics import exp_map
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> res = exp_map(metric, torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64))
    >>> bool(res.converged.all()), torch.allclose(res.z1, torch.ones(3, 2, dtype=torch.float64))
    (True, True)
"""

from __future__ import annotations

import time

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .._validation import as_latent_batch
from .ode import _check_metric, acceleration_fn

__all__ = ["dopri5", "exp_map", "hermite5"]

# Dormand–Prince 5(4) tableau
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - b4 for b, b4 in zip(_B, _B4))


@dataclass
class _Trace:
    """Accepted steps of the first ``n_rec`` state columns, for dense output."""

    idx: list = field(default_factory=list)
    slot: list = field(default_factory=list)
    t: list = field(default_factory=list)
    y: list = field(default_factory=list)
    f: list = field(default_factory=list)


def dopri5(
    f: Callable[[torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    err_cols: Optional[int] = None,
    max_steps: int = 10_000,
    record: Optional[int] = None,
    h_min: float = 1e-12,
    bound=None,
    bound_cols: Optional[int] = None,
    deadline: Optional[float] = None,
):
    """Integrate ``y' = f(y)`` for a batch of autonomous systems over ``τ ∈ [0, 1]``.

    Args:
        f: row-wise right-hand side ``(n, D) -> (n, D)`` (called on the active subset).
        y0: ``(N, D)`` initial states.
        rtol, atol: per-component tolerances; a step is accepted when the RMS of
            ``err / (atol + rtol·max(|y|, |y_new|))`` over the first ``err_cols`` columns is ≤ 1.
        err_cols: columns entering the error norm (``None``: all); e.g. only ``(z, v)`` when
            the state is augmented with sensitivities.
        max_steps: step attempts per trajectory before it is declared failed.
        record: if given, record the first ``record`` columns of ``y`` and ``f`` at every
            accepted step (for :func:`hermite5` dense output).
        bound: optional float or ``(N,)`` tensor: a trajectory whose first ``bound_cols`` columns
            leave the box ``max |y| ≤ bound`` stops as failed (e.g. a geodesic escaping to infinity
            in the chart, where the step size would otherwise shrink until ``max_steps``).

    Returns:
        ``(y1 (N, D), f1 (N, D), success (N,), n_steps (N,), n_rejected (N,), reason list, trace)``.
    """
    n, dim = y0.shape
    dev, dt = y0.device, y0.dtype
    ec = dim if err_cols is None else err_cols
    y = y0.clone()
    fy = torch.empty_like(y0)
    t = torch.zeros(n, dtype=dt, device=dev)
    n_steps = torch.zeros(n, dtype=torch.long, device=dev)
    n_rej = torch.zeros(n, dtype=torch.long, device=dev)
    success = torch.zeros(n, dtype=torch.bool, device=dev)
    failed = torch.zeros(n, dtype=torch.bool, device=dev)
    reason = [""] * n
    trace = _Trace() if record is not None else None

    def err_norm(e, ya, yb):
        sc = atol + rtol * torch.maximum(ya[:, :ec].abs(), yb[:, :ec].abs())
        return (e[:, :ec] / sc).pow(2).mean(1).sqrt()

    # starting step (Hairer, Nørsett, Wanner, II.4)
    f0 = f(y)
    if not bool(torch.isfinite(f0).all()):
        bad = ~torch.isfinite(f0).all(1)
        failed |= bad
        for i in torch.nonzero(bad).reshape(-1).tolist():
            reason[i] = "right-hand side is not finite at the initial state"
        f0 = torch.where(bad[:, None], torch.zeros_like(f0), f0)
    fy.copy_(f0)
    sc0 = atol + rtol * y[:, :ec].abs()
    d0 = (y[:, :ec] / sc0).pow(2).mean(1).sqrt()
    d1 = (f0[:, :ec] / sc0).pow(2).mean(1).sqrt()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = h0.clamp(max=1.0)
    y1 = y + h0[:, None] * f0
    f1 = f(y1)
    d2 = ((f1 - f0)[:, :ec] / sc0).pow(2).mean(1).sqrt() / h0
    dm = torch.maximum(d1, d2)
    h1 = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3), (0.01 / dm.clamp_min(1e-300)) ** 0.2)
    h = torch.minimum(100 * h0, h1)
    h = torch.where(torch.isfinite(h), h, torch.full_like(h, 1e-3)).clamp(min=h_min, max=1.0)

    if trace is not None:
        idx_all = torch.arange(n, device=dev)
        trace.idx.append(idx_all)
        trace.slot.append(torch.zeros(n, dtype=torch.long, device=dev))
        trace.t.append(t.clone())
        trace.y.append(y[:, :record].clone())
        trace.f.append(fy[:, :record].clone())

    while True:
        active = ~(success | failed)
        if not bool(active.any()):
            break
        ia = torch.nonzero(active).reshape(-1)
        ya, fa, ta, ha = y[ia], fy[ia], t[ia], h[ia]
        ha = torch.minimum(ha, 1.0 - ta)
        hb = ha[:, None]
        ks = [fa]
        for s in range(1, 7):
            acc = ks[0] * _A[s][0]
            for j in range(1, s):
                if _A[s][j] != 0.0:
                    acc = acc + ks[j] * _A[s][j]
            ys = ya + hb * acc
            if s == 6:
                ynew = ys  # FSAL: stage 7 is evaluated at the 5th-order solution
            ks.append(f(ys))
        err = ks[0] * _E[0]
        for j in range(2, 7):
            err = err + ks[j] * _E[j]
        err = hb * err
        en = err_norm(err, ya, ynew)
        finite = torch.isfinite(en) & torch.isfinite(ynew).all(1) & torch.isfinite(ks[6]).all(1)
        en = torch.where(finite, en, torch.full_like(en, float("inf")))
        accept = en <= 1.0
        # step-size update (PI-free elementary controller, safety 0.9, factor in [0.2, 10])
        fac = torch.where(
            en > 0, 0.9 * en.clamp_min(1e-300) ** (-0.2), torch.full_like(en, 10.0)
        ).clamp(0.2, 10.0)
        fac = torch.where(accept, fac, torch.minimum(fac, torch.ones_like(fac)))
        hnew = ha * fac
        tnew = torch.where(accept, ta + ha, ta)
        done = accept & (tnew >= 1.0 - 1e-13)
        tnew = torch.where(done, torch.ones_like(tnew), tnew)
        y[ia] = torch.where(accept[:, None], ynew, ya)
        fy[ia] = torch.where(accept[:, None], ks[6], fa)
        t[ia] = tnew
        h[ia] = hnew
        n_steps[ia] += accept.long()
        n_rej[ia] += (~accept).long()
        success[ia] = done
        if trace is not None and bool(accept.any()):
            sel = ia[accept]
            trace.idx.append(sel)
            trace.slot.append(n_steps[sel].clone())
            trace.t.append(tnew[accept].clone())
            trace.y.append(ynew[accept][:, :record].clone())
            trace.f.append(ks[6][accept][:, :record].clone())
        bad = (~accept) & ((hnew < h_min) | ~finite & (ha <= h_min * 10))
        too_many = (n_steps[ia] + n_rej[ia]) >= max_steps
        late = deadline is not None and time.perf_counter() > deadline
        if late:
            too_many = torch.ones_like(too_many)
        if bound is not None:
            bnd = bound[ia] if isinstance(bound, torch.Tensor) else bound
            escaped = accept & (ynew[:, : (bound_cols or dim)].abs().amax(1) > bnd)
        else:
            escaped = torch.zeros_like(accept)
        newly_failed = (bad | too_many | escaped) & ~done
        if bool(newly_failed.any()):
            for k in torch.nonzero(newly_failed).reshape(-1).tolist():
                i = int(ia[k])
                if bool(escaped[k]):
                    b = float(bnd[k]) if isinstance(bnd, torch.Tensor) else float(bnd)
                    reason[i] = f"trajectory left the region max|z| ≤ {b:.3g} at τ={float(t[i]):.3g}"
                elif late:
                    reason[i] = f"time budget exhausted during integration at τ={float(t[i]):.3g}"
                elif bool(too_many[k]):
                    reason[i] = f"integrator stopped after {max_steps} step attempts at τ={float(t[i]):.3g}"
                elif not bool(finite[k]):
                    reason[i] = f"right-hand side became non-finite at τ={float(t[i]):.3g}"
                else:
                    reason[i] = f"step size underflow at τ={float(t[i]):.3g}"
            failed[ia[newly_failed]] = True
    return y, fy, success, n_steps, n_rej, reason, trace


def _trace_to_padded(trace: _Trace, n: int, n_steps: torch.Tensor):
    """Stack a trace into padded ``(N, S+1)`` knots (padding repeats the last knot)."""
    s_max = int(n_steps.max()) + 1 if n > 0 else 1
    idx = torch.cat(trace.idx)
    slot = torch.cat(trace.slot)
    tt = torch.cat(trace.t)
    yy = torch.cat(trace.y)
    ff = torch.cat(trace.f)
    dev, dt = tt.device, tt.dtype
    T = torch.ones(n, s_max, dtype=dt, device=dev)
    Y = torch.zeros(n, s_max, yy.shape[1], dtype=dt, device=dev)
    F = torch.zeros(n, s_max, ff.shape[1], dtype=dt, device=dev)
    T[idx, slot] = tt
    Y[idx, slot] = yy
    F[idx, slot] = ff
    # pad with the last recorded knot so that interpolation past it stays there
    last = n_steps.clamp(max=s_max - 1)
    pos = torch.arange(s_max, device=dev)[None, :]
    pad = pos > last[:, None]
    if bool(pad.any()):
        r = torch.arange(n, device=dev)
        T = torch.where(pad, T[r, last][:, None], T)
        Y = torch.where(pad[..., None], Y[r, last][:, None, :], Y)
        F = torch.where(pad[..., None], F[r, last][:, None, :], F)
    return T, Y, F


def hermite5(knots_t, z, v, a, t_query):
    """Quintic Hermite interpolation of second-order trajectories.

    Args:
        knots_t: ``(N, S)`` increasing knot times per trajectory.
        z, v, a: ``(N, S, d)`` position, velocity and acceleration at the knots.
        t_query: ``(T,)`` or ``(N, T)`` query times inside ``[knots_t[:, 0], knots_t[:, -1]]``.

    Returns:
        ``(N, T, d)`` positions.
    """
    n, s = knots_t.shape
    if t_query.dim() == 1:
        t_query = t_query[None, :].expand(n, -1)
    t_query = t_query.to(knots_t.dtype).contiguous()
    if s == 1:
        return z[:, :1].expand(-1, t_query.shape[1], -1).clone()
    j = torch.searchsorted(knots_t.contiguous(), t_query, right=True) - 1
    j = j.clamp(0, s - 2)
    r = torch.arange(n, device=knots_t.device)[:, None]
    ta, tb = knots_t[r, j], knots_t[r, j + 1]
    hh = tb - ta
    safe = hh > 0
    hs = torch.where(safe, hh, torch.ones_like(hh))
    u = torch.where(safe, (t_query - ta) / hs, torch.zeros_like(hh)).clamp(0, 1)
    u2, u3 = u * u, u * u * u
    u4, u5 = u3 * u, u3 * u2
    h0 = 1 - 10 * u3 + 15 * u4 - 6 * u5
    h1 = u - 6 * u3 + 8 * u4 - 3 * u5
    h2 = 0.5 * u2 - 1.5 * u3 + 1.5 * u4 - 0.5 * u5
    h3 = 0.5 * u3 - u4 + 0.5 * u5
    h4 = -4 * u3 + 7 * u4 - 3 * u5
    h5 = 10 * u3 - 15 * u4 + 6 * u5
    hsz = hs[..., None]
    out = (
        h0[..., None] * z[r, j]
        + (h1[..., None] * hsz) * v[r, j]
        + (h2[..., None] * hsz * hsz) * a[r, j]
        + (h3[..., None] * hsz * hsz) * a[r, j + 1]
        + (h4[..., None] * hsz) * v[r, j + 1]
        + h5[..., None] * z[r, j + 1]
    )
    return out


def _geodesic_rhs(acc, d):
    def f(y):
        z, v = y[:, :d], y[:, d:]
        return torch.cat([v, acc(z, v)], 1)

    return f


def _speeds(metric, z, v):
    """``‖v‖_{M(z)}`` ``(N,)`` without input checks (non-finite rows give NaN): for embedded metrics
    from one Jacobian pass (the decoder's fx fast path where it applies), otherwise from
    :meth:`~latentgeo.metric.Metric.tensor_fn`. (``tensor_fn`` is the transformable generic path:
    on a digits VAE its first call in a process took 1.4 s of imports and later ones ~10 ms for a
    single point, the cost of a Karcher step's exp map.)"""
    from .._autodiff import transforms_active
    from .spectral import _Norm, _embedding_jacobian

    if metric.is_embedded and not transforms_active():
        _, jac = _embedding_jacobian(metric, z)
        return _Norm(jac=jac, ridge=float(metric.ridge))(v)
    return torch.einsum("ni,nij,nj->n", v, metric.tensor_fn()(z), v).clamp_min(0).sqrt()


def exp_map(
    metric,
    z,
    v,
    t=1.0,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    return_path: bool = False,
    max_steps: int = 10_000,
):
    """Riemannian exponential map ``Exp_z(t·v) = γ(t)``, with ``γ(0) = z``, ``γ'(0) = v``.

    Args:
        metric: a latentgeo metric.
        z: ``(N, d)`` base points (or ``(d,)``).
        v: ``(N, d)`` initial velocities.
        t: scalar or ``(N,)`` times (may be negative).
        rtol, atol: Dormand–Prince 5(4) tolerances on position and velocity.
        return_path: keep the accepted steps: ``.curve(s)`` (quintic Hermite dense output at
            fractions ``s ∈ [0, 1]`` of the integration), ``.knot_times``, ``.knot_points``.
        max_steps: step attempts per trajectory.

    Returns:
        :class:`~latentgeo.geodesics.GeodesicResult` (the same type as connecting geodesics):
        ``z1`` the endpoints ``γ(t)``, ``end_velocity`` ``γ'(t)``, ``initial_velocity`` ``v``,
        ``length`` ``|t|·‖v‖_{M(z)}``, ``status`` (``SUCCESS``, or ``NOT_CONVERGED`` /
        ``NONFINITE`` with ``reasons``), ``speed_drift`` (relative change of the conserved speed
        between the ends: an independent check), ``stats`` (``iterations`` = accepted RK steps,
        ``rejected``, ``evaluations`` = accelerations evaluated, ``wall_time``).
    """
    from .result import GeodesicResult, GeodesicStatus

    t_start = time.perf_counter()
    metric = _check_metric(metric)
    z, single = as_latent_batch(z, metric.latent_dim, name="z")
    v, _ = as_latent_batch(v, metric.latent_dim, name="v")
    if z.shape != v.shape:
        raise ValueError(f"z and v must have the same shape, got {tuple(z.shape)} and {tuple(v.shape)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol!r}, atol={atol!r}")
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    v = v.to(z.dtype)
    n, d = z.shape
    tt = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    if tt.dim() == 0:
        tt = tt.expand(n)
    if tt.shape != (n,):
        raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(tt.shape)}")
    if not bool(torch.isfinite(tt).all()):
        raise ValueError("t contains NaN/inf")
    from .connecting import _modules_of, check_eval_mode

    check_eval_mode(_modules_of(metric))
    if hasattr(metric, "_check_z"):
        metric._check_z(z)
    acc = acceleration_fn(metric)
    with torch.no_grad():
        y0 = torch.cat([z, v * tt[:, None]], 1)
        y1, f1, ok, ns, nr, reasons, trace = dopri5(
            _geodesic_rhs(acc, d), y0, rtol=rtol, atol=atol, max_steps=int(max_steps),
            record=2 * d if return_path else None,
        )
        knots = None
        if return_path:
            kt, Y, F = _trace_to_padded(trace, n, ns)
            knots = (kt, Y[..., :d], Y[..., d:], F[..., d:])
        vel = torch.where(tt[:, None] != 0, y1[:, d:] / torch.where(tt == 0, torch.ones_like(tt), tt)[:, None], v)
        sp0 = _speeds(metric, z, v)
        sp1 = _speeds(metric, y1[:, :d], vel)
    tiny = torch.finfo(z.dtype).tiny
    drift = torch.where(sp0 > 0, (sp1 - sp0).abs() / sp0.clamp_min(tiny), sp1)
    status = torch.where(ok, int(GeodesicStatus.SUCCESS), int(GeodesicStatus.NOT_CONVERGED)).long()
    for i, r in enumerate(reasons):
        if r and "non-finite" in r:
            status[i] = int(GeodesicStatus.NONFINITE)
    L = tt.abs() * sp0
    zeros = torch.zeros(n, dtype=z.dtype, device=z.device)
    res = GeodesicResult(
        z0=z, z1=y1[:, :d], length=L, energy=L * L, status=status, reasons=list(reasons), initial_velocity=v,
        end_velocity=vel, residual=zeros, rel_residual=zeros.clone(), speed_drift=drift, method=["ivp"] * n,
        init=[""] * n, line_length=torch.full((n,), float("nan"), dtype=z.dtype, device=z.device),
        discrete_curve=torch.stack([z, y1[:, :d]], 1), _knots=knots, _from_knots=torch.ones(n, dtype=torch.bool, device=z.device),
        _needs_path=knots is None,
        knot_times=None if knots is None else knots[0] * tt[:, None], knot_points=None if knots is None else knots[1],
        stats=dict(iterations=ns, rejected=nr, evaluations=6 * (ns + nr), nodes=torch.zeros_like(ns),
                   wall_time=torch.full((n,), (time.perf_counter() - t_start) / max(n, 1), dtype=torch.float64)),
    )
    return res
