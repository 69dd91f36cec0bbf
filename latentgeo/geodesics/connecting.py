"""Connecting geodesics, the log map and geodesic distance matrices.

Pipeline of :func:`connecting_geodesic` (batched over pairs, every pair on its own criterion;
``method="auto"``, the default):

1. **Initial curve**: the straight line, or a shortest path in a kNN graph over latent codes
   (:class:`latentgeo.geodesics.graph.LatentGraph`, ``init="graph"``; when a ``graph=`` is
   given with ``init="line"``, pairs that fail are retried from the graph path).
2. **Pseudospectral energy minimisation** (:mod:`.spectral`): the curve is a polynomial of
   degree ``degree`` through Legendre–Gauss–Lobatto nodes; Levenberg–Marquardt on its energy
   (forward passes and Jacobians only for embedded metrics) finds a shortest path to
   spectral accuracy.
3. **Collocation and certification** (:mod:`.spectral`): Gauss–Legendre collocation of the
   geodesic boundary-value problem in integral form, solved by fixed-point iteration from
   that curve. A pair is certified when the ODE's residual (the fixed-point change, in the
   metric norm relative to the length), the speed drift ``max |‖γ'‖ − L| / L`` and the
   truncation estimate (trailing Legendre coefficients) are all ``≤ tol``; unresolved pairs
   are re-solved with twice the nodes (up to ``max_nodes``).
4. **Fallback** — Newton shooting (:mod:`.bvp`, adaptive Dormand–Prince with internal
   numerical differentiation) from the stage-2 curve's initial velocity, certified by the
   integrated geodesic's endpoint mismatch ``‖γ(1) − z1‖_{M(z1)} ≤ tol·L`` and speed
   conservation. ``method="collocation"`` skips it; ``method="shooting"`` uses the
   previous pipeline throughout (discrete chord-energy minimisation with ``n_points``
   points, then shooting for every pair).

With ``recheck=True`` every certified solution is re-integrated as an initial-value problem
from its initial velocity (Dormand–Prince at a tight tolerance) and its endpoint mismatch
and speed drift are certified as well — an independent check of the whole pipeline.

A pair is ``converged`` only if its certificate holds and its length is not longer than the
straight line's (otherwise it is a geodesic, but not a shortest one); otherwise the result
keeps the best available curve (the energy minimiser), flags the pair and says why. A
straight line is never reported as a geodesic unless the ODE confirms that it is one.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics import connecting_geodesic
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> z0, z1 = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    >>> res = connecting_geodesic(metric, z0, z1)
    >>> bool(res.converged.all()), torch.allclose(res.length, (A @ torch.ones(2, dtype=torch.float64)).norm().expand(2))
    (True, True)
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .._validation import as_latent_batch
from .bvp import _merge_knots, shoot
from .energy import minimize_discrete_energy
from .ivp import _geodesic_rhs, _trace_to_padded, dopri5, hermite5
from .ode import _check_metric, acceleration_fn
from .spectral import _eval_series, collocate, lgl_nodes, minimize_spectral_energy, nodes_to_series

__all__ = [
    "connecting_geodesic",
    "GeodesicResult",
    "log_map",
    "distance_matrix",
    "DistanceMatrix",
    "GeodesicConvergenceError",
]


class GeodesicConvergenceError(RuntimeError):
    """Raised when geodesics that were required did not converge; ``.result`` holds the details."""

    def __init__(self, msg, result=None):
        super().__init__(msg)
        self.result = result


def _polyline(curve: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of discrete curves ``(N, T, d)`` at ``t (Q,)``."""
    n, T, d = curve.shape
    s = t.clamp(0, 1) * (T - 1)
    i0 = s.floor().long().clamp(0, T - 2)
    w = (s - i0.to(s.dtype))[None, :, None]
    return curve[:, i0] * (1 - w) + curve[:, i0 + 1] * w


class GeodesicResult:
    """Connecting geodesics for a batch of pairs.

    Attributes:
        z0, z1: ``(N, d)`` endpoints.
        length: ``(N,)`` geodesic lengths (Gauss quadrature of ``‖γ'‖_M`` along the collocation
            solution, or ``‖γ'(0)‖_{M(z0)}`` of a shooting solution); where not converged, the
            length of the best available curve (sampled at ``n_points``).
        energy: ``(N,)`` curve energies ``∫‖γ'‖² dt = length²`` on ``[0, 1]`` (discrete energy of the
            sampled curve where not converged).
        converged: ``(N,)`` bool — certified geodesic that is not longer than the straight line
            (otherwise a non-shortest geodesic, flagged with a reason).
        method: per pair, what certified it: ``"collocation"``, ``"shooting"`` or ``""`` (not converged).
        residual: ``(N,)`` Euclidean size of the ODE residual: the last fixed-point change of the
            collocation (integral form of the ODE), or the endpoint mismatch ``‖γ(1) − z1‖`` of shooting.
        rel_residual: ``(N,)`` the same in the metric norm relative to the length (for collocation the
            truncation estimate too, whichever is larger) — the relative length accuracy to first order.
        speed_drift: ``(N,)`` relative variation of the speed ``‖γ'‖_M`` along the solution.
        iterations: ``(N,)`` collocation fixed-point plus shooting Newton iterations;
            ``energy_iterations``: stage-1 (energy minimisation) iterations.
        nodes: ``(N,)`` collocation nodes of the last collocation attempt (0 for ``method="shooting"``).
        initial_velocity: ``(N, d)`` ``γ'(0)`` (the log map).
        reasons: per-pair explanation (empty string for converged pairs); ``message`` summarises.
        init: per-pair initialisation actually used (``"line"`` or ``"graph"``).
        discrete_curve: ``(N, n_points, d)`` the reported curves at ``n_points`` evenly spaced times
            (for ``method="shooting"``: the stage-1 discrete energy minimisers).

    ``curve(t)`` evaluates the geodesics at ``t ∈ [0, 1]``.
    """

    def __init__(self, **kw):
        kw.setdefault("_series", None)
        kw.setdefault("_from_knots", kw.get("converged"))
        self.__dict__.update(kw)

    def curve(self, t) -> torch.Tensor:
        """Points ``(N, Q, d)`` at times ``t (Q,)`` in ``[0, 1]``: the Legendre series of the
        collocation solution (or of the stage-1 curve where not converged), the quintic Hermite
        dense output of shooting solutions, or the piecewise-linear discrete curve
        (``method="shooting"``, not converged)."""
        dt, dev = self.z0.dtype, self.z0.device
        t = torch.as_tensor(t, dtype=dt, device=dev)
        if t.dim() == 0:
            t = t[None]
        if t.dim() != 1 or not bool(torch.isfinite(t).all()) or not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError("t must be a 1-d tensor of times in [0, 1]")
        if self._series is not None:
            out = _eval_series(self._series, t)
            # exact endpoints (the series reproduces them to rounding)
            out = torch.where((t == 0)[None, :, None], self.z0[:, None], out)
            out = torch.where((t == 1)[None, :, None], self.z1[:, None], out)
        else:
            out = _polyline(self.discrete_curve, t)
        if self._knots is not None and bool(self._from_knots.any()):
            kt, z, v, a = self._knots
            ode = hermite5(kt, z, v, a, t)
            out = torch.where(self._from_knots[:, None, None], ode, out)
        return out

    @property
    def message(self) -> str:
        n = len(self.reasons)
        bad = [(i, r) for i, r in enumerate(self.reasons) if r]
        if not bad:
            return f"all {n} geodesics converged"
        shown = "; ".join(f"pair {i}: {r}" for i, r in bad[:5])
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        return f"{len(bad)} of {n} geodesics did not converge: {shown}{more}"

    def __len__(self):
        return self.length.shape[0]

    def __repr__(self):
        n = len(self)
        ok = int(self.converged.sum())
        L = self.length[self.converged]
        rng = f", length in [{float(L.min()):.4g}, {float(L.max()):.4g}]" if L.numel() else ""
        worst = f", max rel_residual={float(self.rel_residual[self.converged].max()):.1e}" if L.numel() else ""
        return (
            f"GeodesicResult(n={n}, converged={ok}/{n}{rng}{worst}, "
            f"mean iterations={float(self.iterations.double().mean()):.1f})"
        )


_INITS = ("line", "graph")


def _initial_velocity(curve: torch.Tensor) -> torch.Tensor:
    """Third-order one-sided difference for ``c'(0)`` of an evenly parameterised discrete curve."""
    T = curve.shape[1]
    h = 1.0 / (T - 1)
    if T >= 4:
        return (-11 * curve[:, 0] + 18 * curve[:, 1] - 9 * curve[:, 2] + 2 * curve[:, 3]) / (6 * h)
    return (-3 * curve[:, 0] + 4 * curve[:, 1] - curve[:, 2]) / (2 * h)


def connecting_geodesic(
    metric,
    z0,
    z1,
    *,
    tol: float = 1e-6,
    init: str = "line",
    graph=None,
    method: str = "auto",
    degree: int = 12,
    nodes: int = 16,
    max_nodes: int = 64,
    max_iter: int = 20,
    n_points: int = 17,
    energy_max_iter: int = 100,
    ivp_rtol: Optional[float] = None,
    ivp_atol: Optional[float] = None,
    max_steps: int = 10_000,
    chunk_size: Optional[int] = None,
    recheck: bool = False,
) -> GeodesicResult:
    """Shortest geodesics between batches of latent codes.

    Args:
        metric: :class:`~latentgeo.metric.PullbackMetric` or :class:`~latentgeo.metric.MetricField`.
        z0, z1: ``(N, d)`` endpoints (or ``(d,)`` each).
        tol: certification tolerance: the ODE residual relative to the length (a first-order bound
            on the relative length error; the length itself is second-order accurate) and the
            relative speed drift must be ``≤ tol``.
        init: ``"line"`` (straight line) or ``"graph"`` (shortest path in ``graph``).
        graph: a ``LatentGraph``; with ``init="line"`` the failed pairs are retried from it.
        method: ``"auto"`` (collocation, then shooting for pairs it cannot certify),
            ``"collocation"`` (no shooting fallback) or ``"shooting"`` (discrete energy + shooting
            for every pair, the slower previous pipeline).
        degree: polynomial degree of the stage-1 curves (``degree + 1`` LGL nodes, ≥ 4).
        nodes: collocation nodes of the first attempt (≥ 4); unresolved pairs are retried with twice
            as many, up to ``max_nodes``.
        max_iter: fixed-point iterations per collocation attempt, and Newton iterations of shooting.
        n_points: points of the sampled curve ``discrete_curve`` (and of the discrete stage 1 of
            ``method="shooting"``; ≥ 4).
        energy_max_iter: Levenberg–Marquardt iterations of stage 1.
        ivp_rtol, ivp_atol: integrator tolerances of shooting and ``recheck`` (default ``0.1·tol`` and
            ``0.01·tol``, not below ``10·eps`` of the dtype; float32 reaches ``tol ≈ 1e-5`` at best —
            pairs that cannot be certified at ``tol`` are reported as not converged).
        max_steps: RK step attempts per integration.
        chunk_size: pairs solved together (default: all, or fewer when stage 1 would need much memory).
        recheck: re-integrate every certified solution as an initial-value problem from its initial
            velocity at a tight tolerance and certify that run too (about one extra ODE solve).

    Returns:
        :class:`GeodesicResult`.

    Raises:
        ValueError: bad shapes, NaN/inf, wrong latent dimension, unknown ``init``/``method``, bad options.
    """
    metric = _check_metric(metric)
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {_INITS}")
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {_METHODS}")
    if init == "graph" and graph is None:
        raise ValueError("init='graph' needs graph=LatentGraph(metric, nodes) (see latentgeo.geodesics.graph)")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1 and math.isfinite(tol)):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    for name, val, lo in (("max_iter", max_iter, 1), ("n_points", n_points, 4), ("energy_max_iter", energy_max_iter, 0),
                          ("max_steps", max_steps, 1), ("degree", degree, 4), ("nodes", nodes, 4), ("max_nodes", max_nodes, 4)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or int(val) != val or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
    if max_nodes < nodes:
        raise ValueError(f"max_nodes ({max_nodes}) must be >= nodes ({nodes})")
    a, single = as_latent_batch(z0, metric.latent_dim, name="z0")
    b, single_b = as_latent_batch(z1, metric.latent_dim, name="z1")
    if a.shape != b.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    if hasattr(metric, "_check_z"):
        metric._check_z(a, "z0")
        metric._check_z(b, "z1")
    rtol = float(ivp_rtol) if ivp_rtol is not None else max(0.1 * tol, 1e-13)
    atol = float(ivp_atol) if ivp_atol is not None else max(1e-2 * tol, 1e-15)
    if not (rtol > 0 and atol > 0):
        raise ValueError("ivp_rtol and ivp_atol must be positive")
    # tolerances below the dtype's resolution cannot be met by the integrator (float32: ~1e-7)
    floor = 10 * float(torch.finfo(a.dtype).eps)
    if ivp_rtol is None:
        rtol = max(rtol, floor)
    if ivp_atol is None:
        atol = max(atol, floor)
    n, d = a.shape
    if chunk_size is None:
        if method == "shooting":
            P = (n_points - 2) * d
            chunk_size = max(1, min(n, int(2**25 // max(P * P, 1))))
        else:
            # stage 1 holds Jacobians (degree+1, K, d) and Gauss-Newton matrices per pair: ~2^24 numbers
            K = _output_size(metric, a[:1]) if n else d
            per_pair = (degree + 1) * K * d * 3 + 3 * ((degree - 1) * d) ** 2
            chunk_size = max(1, min(n, int(2**24 // per_pair)))
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    opts = dict(tol=tol, init=init, graph=graph, max_iter=int(max_iter), n_points=int(n_points),
                energy_max_iter=int(energy_max_iter), rtol=rtol, atol=atol, max_steps=int(max_steps),
                recheck=bool(recheck), degree=int(degree), nodes=int(nodes), max_nodes=int(max_nodes), method=method)
    solver = _solve_shooting if method == "shooting" else _solve_spectral
    parts = [solver(metric, a[s : s + chunk_size], b[s : s + chunk_size], **opts) for s in range(0, n, int(chunk_size))]
    if not parts:
        parts = [solver(metric, a, b, **opts)]
    return parts[0] if len(parts) == 1 else _concat(parts)


_METHODS = ("auto", "collocation", "shooting")


def _output_size(metric, z):
    """Size ``K`` of the embedding (or ``d`` for metrics without one), from one evaluation."""
    if metric.is_embedded:
        with torch.no_grad():
            return int(metric.embedding(z).shape[1])
    return int(z.shape[1])


def _pad_rows(x, s):
    if x.shape[1] == s:
        return x
    rep = x[:, -1:].expand(-1, s - x.shape[1], *x.shape[2:])
    return torch.cat([x, rep], 1)


def _concat(parts):
    kw = {}
    for key in ("z0", "z1", "length", "energy", "converged", "residual", "rel_residual", "speed_drift",
                "iterations", "energy_iterations", "initial_velocity", "discrete_curve", "nodes", "_from_knots"):
        kw[key] = torch.cat([p.__dict__[key] for p in parts], 0)
    for key in ("reasons", "init", "method"):
        kw[key] = sum((p.__dict__[key] for p in parts), [])
    sers = [p._series for p in parts]
    if all(x is not None for x in sers):
        k = max(x.shape[1] for x in sers)
        kw["_series"] = torch.cat([torch.cat([x, x.new_zeros(x.shape[0], k - x.shape[1], x.shape[2])], 1) for x in sers], 0)
    kts = [p._knots for p in parts]
    if all(k is not None for k in kts):
        s = max(k[0].shape[1] for k in kts)
        kw["_knots"] = tuple(torch.cat([_pad_rows(k[i], s) for k in kts], 0) for i in range(4))
    elif any(k is not None for k in kts):  # some chunks needed shooting: give the others dummy knots
        ref = next(k for k in kts if k is not None)
        s = max(k[0].shape[1] for k in kts if k is not None)
        full = []
        for p, k in zip(parts, kts):
            if k is None:
                m = p.z0.shape[0]
                k = (ref[0].new_ones(m, 2), *(ref[i].new_zeros(m, 2, ref[i].shape[2]) for i in (1, 2, 3)))
                k[0][:, 0] = 0.0
            full.append(k)
        kw["_knots"] = tuple(torch.cat([_pad_rows(k[i], s) for k in full], 0) for i in range(4))
    else:
        kw["_knots"] = None
    return GeodesicResult(**kw)


def _initial_curves(z0, z1, idx, how, graph, t, n_points):
    """Initial curves for the pairs ``idx`` at times ``t (T,)``: straight lines or graph paths."""
    dt, dev = z0.dtype, z0.device
    n, d = idx.numel(), z0.shape[1]
    if how == "line":
        return z0[idx, None] + t[None, :, None] * (z1[idx] - z0[idx])[:, None]
    c = graph.initial_curves(z0[idx], z1[idx], n_points=n_points)
    c = torch.as_tensor(c, dtype=dt, device=dev)
    if c.shape != (n, n_points, d):
        raise ValueError(f"graph.initial_curves returned shape {tuple(c.shape)}, expected {(n, n_points, d)}")
    c = c.clone()
    c[:, 0], c[:, -1] = z0[idx], z1[idx]
    if t.numel() != n_points or not bool((t == torch.linspace(0, 1, n_points, dtype=dt, device=dev)).all()):
        c = _polyline(c, t)
        c[:, 0], c[:, -1] = z0[idx], z1[idx]
    return c


def _certify_ivp(acc, mfn, z0, z1, v, length, rtol, atol, max_steps):
    """Integrate ``γ'' = a`` from ``(z0, v)`` and measure the endpoint mismatch and speed drift."""
    n, d = z0.shape
    tiny = torch.finfo(z0.dtype).tiny
    y1, _, ok, ns, _, rs, trace = dopri5(_geodesic_rhs(acc, d), torch.cat([z0, v], 1), rtol=rtol, atol=atol,
                                         max_steps=max_steps, record=2 * d)
    m1, mend = mfn(z1), mfn(y1[:, :d])
    mis = y1[:, :d] - z1
    fm = torch.einsum("ni,nij,nj->n", mis, m1, mis).clamp_min(0).sqrt()
    rel = torch.where(length > 0, fm / length.clamp_min(tiny), fm)
    speed1 = torch.einsum("ni,nij,nj->n", y1[:, d:], mend, y1[:, d:]).clamp_min(0).sqrt()
    drift = torch.where(length > 0, (speed1 - length).abs() / length.clamp_min(tiny), speed1)
    kt, Y, F = _trace_to_padded(trace, n, ns)
    return dict(ok=ok, reasons=rs, rel=rel, drift=drift, resid=mis.norm(dim=1), knots=(kt, Y[..., :d], Y[..., d:], F[..., d:]))


def _certificate_failure(ok: bool, why: str, rel: float, drift: float, tol: float, dt, what: str) -> str:
    """Why an integrated geodesic fails the certificate (``""`` if it passes): the integration
    finished, the endpoint mismatch (metric norm, relative to the length) and the speed drift are
    ``≤ tol`` (the drift test is floored at ``100·eps`` of the dtype)."""
    if not ok:
        return f"{what} integration failed: {why}"
    if not rel <= tol:
        return f"{what} failed: endpoint mismatch {rel:.2e} (relative, metric norm) > tol {tol:g}"
    if not drift <= max(tol, 100 * float(torch.finfo(dt).eps)):
        return f"{what} failed: speed drift {drift:.2e} > tol {tol:g}"
    return ""


def _flag_longer_than_line(metric, z0, z1, length, conv, reasons):
    """Minimality: a shortest path is never longer than the straight line (a feasible curve). A
    certified ODE solution longer than it is a geodesic, but not the shortest one: flag it rather
    than report its length as a distance. The line is measured with 129 points; the 2% margin
    covers that discretisation. For embedded metrics a chord sum is a lower bound on the line's
    length (chords are never longer than the arcs they cut), so a 9-point chord sum clears
    almost every pair at 1/14 of the cost and only the rest are measured finely."""
    if not z0.shape[0] or not bool(conv.any()):
        return
    dt, dev = z0.dtype, z0.device
    idx = torch.nonzero(conv).reshape(-1)

    def line_length(ii, T):
        s_line = torch.linspace(0, 1, T, dtype=dt, device=dev)[None, :, None]
        with torch.no_grad():
            return metric.length(z0[ii, None] + s_line * (z1[ii] - z0[ii])[:, None])

    if metric.is_embedded:
        low = line_length(idx, 9)
        idx = idx[length[idx] > 1.02 * low]
        if not idx.numel():
            return
    line_len = line_length(idx, 129)
    longer = length[idx] > 1.02 * line_len
    for j, i in enumerate(idx.tolist()):
        if bool(longer[j]):
            conv[i] = False
            reasons[i] = (
                f"the certified ODE solution (length {float(length[i]):.6g}) is longer than the straight line "
                f"(length {float(line_len[j]):.6g}): a geodesic, but not the shortest path; try init='graph' "
                "or more discretisation points"
            )


def _solve_spectral(metric, z0, z1, *, tol, init, graph, max_iter, n_points, energy_max_iter, rtol, atol,
                    max_steps, recheck, degree, nodes, max_nodes, method):
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    t_lgl = lgl_nodes(degree, dt, dev)
    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    tiny = torch.finfo(dt).tiny

    def attempt(idx, how):
        with torch.no_grad():
            c0 = _initial_curves(z0, z1, idx, how, graph, t_lgl, n_points if how == "graph" else degree + 1)
            er = minimize_spectral_energy(metric, c0, max_iter=energy_max_iter, rtol=max(1e-12, 100 * float(torch.finfo(dt).eps)))
            ser = nodes_to_series(er.nodes)
            cr = collocate(metric, z0[idx], z1[idx], ser, tol=tol, nodes=nodes, max_nodes=max_nodes, max_iter=max_iter)
        return er, ser, cr

    Kmax = max(max_nodes + 2, degree + 1)

    def padk(x):
        return torch.cat([x, x.new_zeros(x.shape[0], Kmax - x.shape[1], d)], 1) if x.shape[1] < Kmax else x

    all_idx = torch.arange(n, device=dev)
    er, ser, cr = attempt(all_idx, init)
    conv = cr.converged.clone()
    series = torch.where(conv[:, None, None], padk(cr.series), padk(ser))
    length, v = cr.length.clone(), cr.velocity0.clone()
    rel, drift, resid = cr.rel_residual.clone(), cr.speed_drift.clone(), cr.residual.clone()
    iters, e_iters, nq = cr.iterations.clone(), er.iterations.clone(), cr.nodes.clone()
    reasons = list(cr.reasons)
    for i in range(n):
        if not bool(conv[i]) and er.reasons[i]:
            reasons[i] = f"{er.reasons[i]}; {reasons[i]}" if reasons[i] else er.reasons[i]
    used = [init] * n
    how_cert = ["collocation" if bool(c) else "" for c in conv]

    # the same endpoints: the constant curve
    same = (z0 == z1).all(1)
    if bool(same.any()):
        conv[same] = True
        series[same] = 0.0
        series[same, 0] = z0[same]
        length[same], v[same], rel[same], drift[same], resid[same] = 0.0, 0.0, 0.0, 0.0, 0.0
        for i in torch.nonzero(same).reshape(-1).tolist():
            reasons[i], how_cert[i] = "", "collocation"

    if graph is not None and init == "line" and not bool(conv.all()):
        bad = torch.nonzero(~conv).reshape(-1)
        try:
            er2, ser2, cr2 = attempt(bad, "graph")
        except ValueError as exc:  # e.g. a pair outside the graph's connected component
            for i in bad.tolist():
                reasons[i] = f"line init: {reasons[i]}; graph init unavailable: {exc}"
        else:
            iters[bad] += cr2.iterations
            e_iters[bad] += er2.iterations
            for j, i in enumerate(bad.tolist()):
                if bool(cr2.converged[j]):
                    used[i], reasons[i], how_cert[i] = "graph", "", "collocation"
                else:
                    reasons[i] = f"line init: {reasons[i]}; graph init: {cr2.reasons[j]}"
            fixed = cr2.converged
            fi = bad[fixed]
            conv[fi] = True
            series[fi] = padk(cr2.series)[fixed]
            length[fi], v[fi], nq[fi] = cr2.length[fixed], cr2.velocity0[fixed], cr2.nodes[fixed]
            rel[fi], drift[fi], resid[fi] = cr2.rel_residual[fixed], cr2.speed_drift[fixed], cr2.residual[fixed]
            # the graph start is kept as the best curve of pairs that still fail (it avoids the obstacle)
            nf = bad[~fixed]
            series[nf] = padk(ser2)[~fixed]
            for j in torch.nonzero(~fixed).reshape(-1).tolist():
                used[int(bad[j])] = "graph"

    knots = None
    from_knots = torch.zeros(n, dtype=torch.bool, device=dev)
    if method == "auto" and not bool(conv.all()):
        bad = torch.nonzero(~conv).reshape(-1)
        with torch.no_grad():
            v_init = _eval_series(series[bad], torch.zeros(1, dtype=dt, device=dev), derivative=True)[:, 0]
            # a geodesic's initial speed is its length: rescale the best curve's γ'(0) to the curve's
            # length (an unconverged polynomial can have a wild end derivative; the length is robust)
            L_best = metric.length(_eval_series(series[bad], torch.linspace(0, 1, 65, dtype=dt, device=dev)))
            speed0 = torch.einsum("ni,nij,nj->n", v_init, mfn(z0[bad]), v_init).clamp_min(0).sqrt()
            scale = torch.where((speed0 > 0) & torch.isfinite(L_best), L_best / speed0.clamp_min(tiny), torch.ones_like(speed0))
            v_init = v_init * scale[:, None]
            # a shortest path does not run off to infinity: trajectories leaving a box 100x the
            # endpoints' scale are stopped (otherwise they shrink their steps until max_steps)
            box = 100.0 * torch.maximum(z0[bad].abs().amax(1), z1[bad].abs().amax(1)).clamp_min(1.0)
            sh = shoot(acc, mfn, z0[bad], z1[bad], v_init, ftol=0.1 * tol, rtol=rtol, atol=atol,
                       max_iter=max_iter, max_steps=max_steps, bound=box)
        iters[bad] += sh["iterations"]
        okb = sh["converged"].clone()
        for j, i in enumerate(bad.tolist()):
            why = sh["reasons"][j] or _certificate_failure(True, "", float(sh["rel_residual"][j]),
                                                           float(sh["speed_drift"][j]), tol, dt, "certification")
            okb[j] = bool(okb[j]) and not why
            if bool(okb[j]):
                reasons[i], how_cert[i] = "", "shooting"
            else:
                reasons[i] = f"{reasons[i]}; shooting fallback: {why}"
        fi = bad[okb]
        conv[fi] = True
        from_knots[fi] = True
        length[fi], v[fi] = sh["length"][okb], sh["v"][okb]
        rel[fi], drift[fi], resid[fi] = sh["rel_residual"][okb], sh["speed_drift"][okb], sh["residual"][okb]
        kt, kz, kv, ka = sh["knots"]
        knots = tuple(torch.zeros(n, kt.shape[1], *x.shape[2:], dtype=dt, device=dev) for x in (kt, kz, kv, ka))
        knots[0][:] = torch.linspace(0, 1, kt.shape[1], dtype=dt, device=dev)
        for dst, src in zip(knots, (kt, kz, kv, ka)):
            dst[bad] = src

    if recheck and bool(conv.any()):
        idx = torch.nonzero(conv & ~same).reshape(-1)
        if idx.numel():
            with torch.no_grad():
                rc = _certify_ivp(acc, mfn, z0[idx], z1[idx], v[idx], length[idx], 0.1 * rtol, 0.1 * atol, max_steps)
            for j, i in enumerate(idx.tolist()):
                why = _certificate_failure(bool(rc["ok"][j]), rc["reasons"][j], float(rc["rel"][j]),
                                           float(rc["drift"][j]), tol, dt, "recheck (IVP from γ'(0))")
                if why:
                    conv[i], reasons[i] = False, why
            rel[idx] = torch.maximum(rel[idx], rc["rel"])
            drift[idx] = torch.maximum(drift[idx], rc["drift"])

    _flag_longer_than_line(metric, z0, z1, length, conv, reasons)
    how_cert = [h if bool(c) else "" for h, c in zip(how_cert, conv)]
    from_knots &= conv
    res = GeodesicResult(
        z0=z0, z1=z1, length=length, energy=length * length, converged=conv, residual=resid, rel_residual=rel,
        speed_drift=drift, iterations=iters, energy_iterations=e_iters, initial_velocity=v, reasons=reasons,
        init=used, method=how_cert, nodes=nq, _series=series, _knots=knots, _from_knots=from_knots,
        discrete_curve=torch.zeros(n, n_points, d, dtype=dt, device=dev),
    )
    # non-converged pairs report the best available curve (flagged), sampled and measured like a polyline
    with torch.no_grad():
        res.discrete_curve = res.curve(torch.linspace(0, 1, n_points, dtype=dt, device=dev))
        if n and not bool(conv.all()):
            bad = ~conv
            res.length = torch.where(bad, metric.length(res.discrete_curve), length)
            res.energy = torch.where(bad, metric.energy(res.discrete_curve), length * length)
            res.initial_velocity = torch.where(
                bad[:, None], _eval_series(series, torch.zeros(1, dtype=dt, device=dev), derivative=True)[:, 0], v)
    return res


def _solve_shooting(metric, z0, z1, *, tol, init, graph, max_iter, n_points, energy_max_iter, rtol, atol, max_steps,
                    recheck, **_):
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    tgrid = torch.linspace(0, 1, n_points, dtype=dt, device=dev)

    def attempt(idx, how):
        with torch.no_grad():
            c_init = _initial_curves(z0, z1, idx, how, graph, tgrid, n_points)
            er = minimize_discrete_energy(metric, c_init, max_iter=energy_max_iter, rtol=1e-10)
            v_init = _initial_velocity(er.curve)
            sh = shoot(acc, mfn, z0[idx], z1[idx], v_init, ftol=0.1 * tol, rtol=rtol, atol=atol,
                       max_iter=max_iter, max_steps=max_steps)
        return er, sh

    all_idx = torch.arange(n, device=dev)
    er, sh = attempt(all_idx, init)
    curve_d = er.curve
    e_iters = er.iterations.clone()
    v = sh["v"].clone()
    sh_len, sh_rel, sh_drift, sh_resid = sh["length"].clone(), sh["rel_residual"].clone(), sh["speed_drift"].clone(), sh["residual"].clone()
    sh_knots = sh["knots"]
    conv = sh["converged"].clone()
    iters = sh["iterations"].clone()
    reasons = list(sh["reasons"])
    used = [init] * n
    sh2 = None
    if graph is not None and init == "line" and not bool(conv.all()):
        bad = torch.nonzero(~conv).reshape(-1)
        try:
            er2, sh2 = attempt(bad, "graph")
        except ValueError as exc:  # e.g. a pair outside the graph's connected component
            for i in bad.tolist():
                reasons[i] = f"line init: {reasons[i]}; graph init unavailable: {exc}"
            er2 = sh2 = None
    if graph is not None and init == "line" and sh2 is not None:
        iters[bad] += sh2["iterations"]
        e_iters[bad] += er2.iterations
        fixed = sh2["converged"]
        for j, i in enumerate(bad.tolist()):
            if bool(fixed[j]):
                used[i] = "graph"
                reasons[i] = ""
            else:
                reasons[i] = f"line init: {reasons[i]}; graph init: {sh2['reasons'][j]}"
        fi = bad[fixed]
        v[fi] = sh2["v"][fixed]
        for name, arr in (("length", sh_len), ("rel_residual", sh_rel), ("speed_drift", sh_drift), ("residual", sh_resid)):
            arr[fi] = sh2[name][fixed]
        kt2 = sh2["knots"]
        merged = _merge_knots((sh_knots[0], torch.cat([sh_knots[1], sh_knots[2]], -1), sh_knots[3]), fi,
                              (kt2[0][fixed], torch.cat([kt2[1][fixed], kt2[2][fixed]], -1), kt2[3][fixed]))
        sh_knots = (merged[0], merged[1][..., :d], merged[1][..., d:], merged[2])
        conv[fi] = True
        curve_d = curve_d.clone()
        curve_d[fi] = er2.curve[fixed]

    # certification: the accepted ODE solution's own endpoint mismatch and speed conservation
    # (optionally re-integrated at a 10x tighter tolerance)
    length = sh_len
    rel, drift, resid, knots = sh_rel, sh_drift, sh_resid, sh_knots
    ok = torch.ones(n, dtype=torch.bool, device=dev)
    rs = [""] * n
    if recheck and n:
        with torch.no_grad():
            rc = _certify_ivp(acc, mfn, z0, z1, v, length, 0.1 * rtol, 0.1 * atol, max_steps)
        ok, rs, rel, drift, resid, knots = rc["ok"], rc["reasons"], rc["rel"], rc["drift"], rc["resid"], rc["knots"]
    for i in torch.nonzero(conv).reshape(-1).tolist():
        why = _certificate_failure(bool(ok[i]), rs[i], float(rel[i]), float(drift[i]), tol, dt, "certification")
        if why:
            conv[i], reasons[i] = False, why
    _flag_longer_than_line(metric, z0, z1, length, conv, reasons)
    # non-converged pairs: report the discrete curve (flagged), never the ODE guess
    disc_len = metric.length(curve_d) if n else torch.zeros(0, dtype=dt)
    disc_en = metric.energy(curve_d) if n else torch.zeros(0, dtype=dt)
    length_out = torch.where(conv, length, disc_len)
    energy_out = torch.where(conv, length * length, disc_en)
    return GeodesicResult(
        z0=z0, z1=z1, length=length_out, energy=energy_out, converged=conv, residual=resid,
        rel_residual=rel, speed_drift=drift, iterations=iters, energy_iterations=e_iters,
        initial_velocity=v, reasons=reasons, init=used, discrete_curve=curve_d, _knots=knots,
        method=["shooting" if bool(c) else "" for c in conv], nodes=torch.zeros(n, dtype=torch.long, device=dev),
        _from_knots=conv.clone(),
    )


def log_map(metric, z0, z1, *, on_failure: str = "raise", **kwargs) -> torch.Tensor:
    """Riemannian logarithm: the initial velocity ``v`` of the geodesic from ``z0`` to ``z1``.

    ``‖v‖_{M(z0)}`` is the geodesic distance and ``exp_map(metric, z0, v) ≈ z1``.

    Args:
        metric, z0, z1: as in :func:`connecting_geodesic` (``kwargs`` are passed on).
        on_failure: ``"raise"`` (:class:`GeodesicConvergenceError` naming the pairs) or
            ``"return"``, which returns ``(v, result)`` so the caller can inspect
            ``result.converged`` (never a silent straight-line guess).

    Returns:
        ``(N, d)`` velocities (``(d,)`` for single codes), or ``(v, GeodesicResult)`` when
        ``on_failure="return"``.
    """
    if on_failure not in ("raise", "return"):
        raise ValueError(f"unknown on_failure {on_failure!r}; expected 'raise' or 'return'")
    single = torch.as_tensor(z0).dim() == 1
    res = connecting_geodesic(metric, z0, z1, **kwargs)
    v = res.initial_velocity[0] if single else res.initial_velocity
    if on_failure == "return":
        return v, res
    if not bool(res.converged.all()):
        raise GeodesicConvergenceError(f"log_map: {res.message}", res)
    return v


class DistanceMatrix:
    """Geodesic distances with per-entry convergence information.

    Attributes:
        distances: ``(n_A, n_B)`` tensor (best available estimate where not converged).
        converged: ``(n_A, n_B)`` bool mask.
        rel_residual: ``(n_A, n_B)`` relative endpoint mismatch of each solved geodesic.
        n_failed: number of entries that did not converge.

    ``np.asarray(result)`` / ``result.numpy()`` give the distances; ``result[i, j]`` indexes them.
    """

    def __init__(self, distances, converged, rel_residual, reasons):
        self.distances = distances
        self.converged = converged
        self.rel_residual = rel_residual
        self.reasons = reasons

    @property
    def n_failed(self) -> int:
        return int((~self.converged).sum())

    @property
    def shape(self):
        return self.distances.shape

    def __getitem__(self, item):
        return self.distances[item]

    def __array__(self, dtype=None, copy=None):
        a = self.distances.detach().cpu().numpy()
        return a if dtype is None else a.astype(dtype)

    def numpy(self):
        return self.distances.detach().cpu().numpy()

    def __repr__(self):
        return f"DistanceMatrix(shape={tuple(self.shape)}, failed={self.n_failed})"


def distance_matrix(metric, A, B=None, *, chunk: int = 1024, progress: bool = False, on_failure: str = "warn", **kwargs) -> DistanceMatrix:
    """Pairwise geodesic distances between the rows of ``A`` and of ``B``.

    Args:
        metric: a latentgeo metric.
        A: ``(n_A, d)`` codes. B: ``(n_B, d)`` codes, or ``None`` for ``A`` against itself (then only
            the ``i < j`` pairs are solved; the result is symmetric with a zero diagonal).
        chunk: pairs per :func:`connecting_geodesic` call.
        progress: show a tqdm progress bar over chunks.
        on_failure: ``"warn"`` (a ``RuntimeWarning`` with the count; see ``.converged``) or ``"raise"``.
        **kwargs: passed to :func:`connecting_geodesic` (``tol``, ``graph``, ...).

    Returns:
        :class:`DistanceMatrix` (``.distances``, ``.converged``, ``.n_failed``).
    """
    metric = _check_metric(metric)
    if on_failure not in ("warn", "raise"):
        raise ValueError(f"unknown on_failure {on_failure!r}; expected 'warn' or 'raise'")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    A, _ = as_latent_batch(A, metric.latent_dim, name="A", allow_single=False)
    sym = B is None
    if sym:
        B = A
    else:
        B, _ = as_latent_batch(B, metric.latent_dim, name="B", allow_single=False)
        if B.shape[1] != A.shape[1]:
            raise ValueError(f"A and B have different latent dimensions ({A.shape[1]} vs {B.shape[1]})")
        B = B.to(A.dtype)
    na, nb = A.shape[0], B.shape[0]
    if sym:
        ii, jj = torch.triu_indices(na, na, offset=1, device=A.device)
    else:
        ii, jj = torch.meshgrid(torch.arange(na, device=A.device), torch.arange(nb, device=A.device), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
    D = torch.zeros(na, nb, dtype=A.dtype, device=A.device)
    C = torch.ones(na, nb, dtype=torch.bool, device=A.device)
    R = torch.zeros(na, nb, dtype=A.dtype, device=A.device)
    reasons = {}
    starts = range(0, ii.numel(), int(chunk))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="geodesic distances", unit="chunk")
    for s in starts:
        i, j = ii[s : s + chunk], jj[s : s + chunk]
        res = connecting_geodesic(metric, A[i], B[j], **kwargs)
        D[i, j] = res.length
        C[i, j] = res.converged
        R[i, j] = res.rel_residual
        for k, r in enumerate(res.reasons):
            if r:
                reasons[(int(i[k]), int(j[k]))] = r
    if sym:
        D = D + D.T
        C = C & C.T
        R = R + R.T
    out = DistanceMatrix(D, C, R, reasons)
    if out.n_failed:
        npairs = len(reasons)
        msg = (f"distance_matrix: {npairs} of {ii.numel()} geodesics did not converge; their entries hold the "
               f"discrete-curve estimate and are False in .converged (first: {next(iter(reasons.items()))})")
        if on_failure == "raise":
            raise GeodesicConvergenceError(msg, out)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return out
