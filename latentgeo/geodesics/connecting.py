"""Connecting geodesics, the log map and geodesic distance matrices.

Pipeline of :func:`connecting_geodesic` (batched over pairs, every pair on its own criterion):

1. **Initial curve**: the straight line, or a shortest path in a kNN graph over latent codes
   (:class:`latentgeo.geodesics.graph.LatentGraph`, ``init="graph"``; when a ``graph=`` is
   given with ``init="line"``, pairs that fail are retried from the graph path).
2. **Discrete energy minimisation** (:mod:`.energy`): Levenberg–Marquardt on the discrete
   curve energy with fixed endpoints — forward passes and Jacobians only for embedded metrics.
3. **Newton shooting** (:mod:`.bvp`) from the discrete curve's initial velocity: adaptive
   Dormand–Prince integration of the geodesic ODE with its variational equations.
4. **Certification**: the accepted integration's endpoint mismatch (``‖F‖_{M(z1)} ≤ tol·L``)
   and conservation of speed (``|‖γ'(1)‖ − ‖γ'(0)‖| ≤ tol·L``) are checked; with
   ``recheck=True`` the solution is re-integrated at a 10× tighter tolerance and that run is
   certified instead. Its steps give the quintic Hermite dense output of
   :meth:`GeodesicResult.curve`. The length is ``‖γ'(0)‖_{M(z0)}`` of the certified solution
   (constant along a geodesic; the speed at the end is the cross-check).

A pair is ``converged`` only if every check passes; otherwise the result keeps the best
available curve (the discrete energy minimiser), flags the pair and says why. A straight
line is never reported as a geodesic unless the ODE confirms that it is one.

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
from .ode import _check_metric, acceleration_fn, metric_tensor_fn

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
        length: ``(N,)`` geodesic lengths ``‖γ'(0)‖_{M(z0)}`` (discrete-curve length where not converged).
        energy: ``(N,)`` curve energies ``∫‖γ'‖² dt = length²`` on ``[0, 1]`` (discrete energy where not converged).
        converged: ``(N,)`` bool — certified geodesic (Newton converged, certification passed) that is
            not longer than the straight line (otherwise a non-shortest geodesic, flagged with a reason).
        residual: ``(N,)`` Euclidean endpoint mismatch ``‖γ(1) − z1‖`` of the certified ODE solution.
        rel_residual: ``(N,)`` ``‖γ(1) − z1‖_{M(z1)} / length`` (the relative length accuracy to first order).
        speed_drift: ``(N,)`` ``|‖γ'(1)‖ − ‖γ'(0)‖| / ‖γ'(0)‖`` along the certified solution.
        iterations: ``(N,)`` Newton (shooting) iterations; ``energy_iterations`` for stage 1.
        initial_velocity: ``(N, d)`` ``γ'(0)`` (the log map).
        reasons: per-pair explanation (empty string for converged pairs); ``message`` summarises.
        init: per-pair initialisation actually used (``"line"`` or ``"graph"``).
        discrete_curve: ``(N, T, d)`` the stage-1 discrete energy minimisers.

    ``curve(t)`` evaluates the geodesics at ``t ∈ [0, 1]``.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def curve(self, t) -> torch.Tensor:
        """Points ``(N, Q, d)`` at times ``t (Q,)`` in ``[0, 1]`` (quintic Hermite dense output of the
        certified ODE solution; piecewise-linear discrete curve for non-converged pairs)."""
        dt, dev = self.z0.dtype, self.z0.device
        t = torch.as_tensor(t, dtype=dt, device=dev)
        if t.dim() == 0:
            t = t[None]
        if t.dim() != 1 or not bool(torch.isfinite(t).all()) or not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError("t must be a 1-d tensor of times in [0, 1]")
        out = _polyline(self.discrete_curve, t)
        if self._knots is not None:
            kt, z, v, a = self._knots
            ode = hermite5(kt, z, v, a, t)
            out = torch.where(self.converged[:, None, None], ode, out)
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
            f"mean Newton iterations={float(self.iterations.double().mean()):.1f})"
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
        tol: target relative length accuracy; Newton stops at ``‖F‖_{M(z1)} ≤ 0.1·tol·L`` and the
            certification requires ``≤ tol·L`` and a speed drift ``≤ tol``.
        init: ``"line"`` (straight line) or ``"graph"`` (shortest path in ``graph``).
        graph: a ``LatentGraph``; with ``init="line"`` the failed pairs are retried from it.
        max_iter: Newton iterations (ODE integrations) per pair.
        n_points: points of the discrete curve of stage 1 (≥ 4).
        energy_max_iter: Levenberg–Marquardt iterations of stage 1.
        ivp_rtol, ivp_atol: integrator tolerances (default ``0.1·tol`` and ``0.01·tol``, not below
            ``10·eps`` of the dtype; float32 reaches ``tol ≈ 1e-5`` at best — pairs that cannot be
            certified at ``tol`` are reported as not converged).
        max_steps: RK step attempts per integration.
        chunk_size: pairs solved together (default: all, or fewer when stage 1 would need much memory).
        recheck: re-integrate every solution at a 10× tighter tolerance and certify that run
            (about one extra ODE solve; guards against integrator error).

    Returns:
        :class:`GeodesicResult`.

    Raises:
        ValueError: bad shapes, NaN/inf, wrong latent dimension, unknown ``init``, bad options.
    """
    metric = _check_metric(metric)
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {_INITS}")
    if init == "graph" and graph is None:
        raise ValueError("init='graph' needs graph=LatentGraph(metric, nodes) (see latentgeo.geodesics.graph)")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1 and math.isfinite(tol)):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    for name, val, lo in (("max_iter", max_iter, 1), ("n_points", n_points, 4), ("energy_max_iter", energy_max_iter, 0), ("max_steps", max_steps, 1)):
        if int(val) != val or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
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
        P = (n_points - 2) * d
        chunk_size = max(1, min(n, int(2**25 // max(P * P, 1))))
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    parts = []
    for s in range(0, n, int(chunk_size)):
        parts.append(
            _solve(metric, a[s : s + chunk_size], b[s : s + chunk_size], tol, init, graph, int(max_iter),
                   int(n_points), int(energy_max_iter), rtol, atol, int(max_steps), bool(recheck))
        )
    return parts[0] if len(parts) == 1 else _concat(parts)


def _concat(parts):
    kw = {}
    for key in ("z0", "z1", "length", "energy", "converged", "residual", "rel_residual", "speed_drift",
                "iterations", "energy_iterations", "initial_velocity", "discrete_curve"):
        kw[key] = torch.cat([p.__dict__[key] for p in parts], 0)
    kw["reasons"] = sum((p.reasons for p in parts), [])
    kw["init"] = sum((p.init for p in parts), [])
    kts = [p._knots for p in parts]
    if all(k is not None for k in kts):
        s = max(k[0].shape[1] for k in kts)

        def pad(x):
            if x.shape[1] == s:
                return x
            rep = x[:, -1:].expand(-1, s - x.shape[1], *x.shape[2:])
            return torch.cat([x, rep], 1)

        kw["_knots"] = tuple(torch.cat([pad(k[i]) for k in kts], 0) for i in range(4))
    else:
        kw["_knots"] = None
    return GeodesicResult(**kw)


def _solve(metric, z0, z1, tol, init, graph, max_iter, n_points, energy_max_iter, rtol, atol, max_steps, recheck):
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    acc = acceleration_fn(metric)
    mfn = metric_tensor_fn(metric)
    tgrid = torch.linspace(0, 1, n_points, dtype=dt, device=dev)

    def initial_curves(idx, how):
        if how == "line":
            return z0[idx, None] + tgrid[None, :, None] * (z1[idx] - z0[idx])[:, None]
        c = graph.initial_curves(z0[idx], z1[idx], n_points=n_points)
        c = torch.as_tensor(c, dtype=dt, device=dev)
        if c.shape != (idx.numel(), n_points, d):
            raise ValueError(f"graph.initial_curves returned shape {tuple(c.shape)}, expected {(idx.numel(), n_points, d)}")
        c = c.clone()
        c[:, 0], c[:, -1] = z0[idx], z1[idx]
        return c

    def attempt(idx, how):
        with torch.no_grad():
            c_init = initial_curves(idx, how)
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
    if recheck:
        with torch.no_grad():
            y0 = torch.cat([z0, v], 1)
            y1, f1, ok, ns, _, rs, trace = dopri5(_geodesic_rhs(acc, d), y0, rtol=0.1 * rtol, atol=0.1 * atol,
                                                  max_steps=max_steps, record=2 * d)
            kt, Y, F = _trace_to_padded(trace, n, ns)
            knots = (kt, Y[..., :d], Y[..., d:], F[..., d:])
            m1 = mfn(z1)
            mend = mfn(y1[:, :d])
            mis = y1[:, :d] - z1
            fm = torch.einsum("ni,nij,nj->n", mis, m1, mis).clamp_min(0).sqrt()
            rel = torch.where(length > 0, fm / length.clamp_min(torch.finfo(dt).tiny), fm)
            speed1 = torch.einsum("ni,nij,nj->n", y1[:, d:], mend, y1[:, d:]).clamp_min(0).sqrt()
            drift = torch.where(length > 0, (speed1 - length).abs() / length.clamp_min(torch.finfo(dt).tiny), speed1)
            resid = mis.norm(dim=1)
    for i in range(n):
        if not bool(conv[i]):
            continue
        if not bool(ok[i]):
            reasons[i] = f"certification integration failed: {rs[i]}"
            conv[i] = False
        elif not bool(rel[i] <= tol):
            reasons[i] = f"certification failed: endpoint mismatch {float(rel[i]):.2e} (relative, metric norm) > tol {tol:g}"
            conv[i] = False
        elif not bool(drift[i] <= max(tol, 100 * torch.finfo(dt).eps)):
            reasons[i] = f"certification failed: speed drift {float(drift[i]):.2e} > tol {tol:g}"
            conv[i] = False
    # minimality: a shortest path is never longer than the straight line (a feasible curve). A
    # certified ODE solution longer than it is a geodesic, but not the shortest one (shooting
    # can land on another critical point of the energy): flag it rather than report its length
    # as a distance. The line is measured with 129 points (forward passes only for embedded
    # metrics); the 2% margin covers its discretisation error, so only clear cases are flagged.
    if n and bool(conv.any()):
        s_line = torch.linspace(0, 1, 129, dtype=dt, device=dev)[None, :, None]
        idx = torch.nonzero(conv).reshape(-1)
        with torch.no_grad():
            line_len = metric.length(z0[idx, None] + s_line * (z1[idx] - z0[idx])[:, None])
        longer = length[idx] > 1.02 * line_len
        for j, i in enumerate(idx.tolist()):
            if bool(longer[j]):
                conv[i] = False
                reasons[i] = (
                    f"the certified ODE solution (length {float(length[i]):.6g}) is longer than the straight line "
                    f"(length {float(line_len[j]):.6g}): a geodesic, but not the shortest path; try init='graph' "
                    "or more discretisation points"
                )
    # non-converged pairs: report the discrete curve (flagged), never the ODE guess
    disc_len = metric.length(curve_d) if n else torch.zeros(0, dtype=dt)
    disc_en = metric.energy(curve_d) if n else torch.zeros(0, dtype=dt)
    length_out = torch.where(conv, length, disc_len)
    energy_out = torch.where(conv, length * length, disc_en)
    return GeodesicResult(
        z0=z0, z1=z1, length=length_out, energy=energy_out, converged=conv, residual=resid,
        rel_residual=rel, speed_drift=drift, iterations=iters, energy_iterations=e_iters,
        initial_velocity=v, reasons=reasons, init=used, discrete_curve=curve_d, _knots=knots,
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
