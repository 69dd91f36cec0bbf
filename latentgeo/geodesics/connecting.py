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
4. **Piecewise collocation** (:mod:`.piecewise`, ``Collocation(piecewise=True)``, the default) for
   the pairs a global polynomial did not certify: Gauss collocation on meshes that adapt to the
   curve (the pregeodesic at constant Euclidean speed, reparametrised by metric arclength), from
   the pair's best curve or the straight line, whichever is shorter, then the other; a solution
   is kept only if it is no longer than both. Then one finer global pass for the rest.
5. **Fallback** — Newton shooting (:mod:`.bvp`, adaptive Dormand–Prince with internal
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

import copy
import math
import time
import warnings
from typing import Optional

import torch

from .._progress import progress_bar
from .._validation import as_latent_batch, check_int, check_on_failure
from .bvp import _merge_knots, shoot
from .piecewise import _kink_fn, collocate_piecewise, crosses_kinks
from .energy import minimize_discrete_energy
from .ivp import _geodesic_rhs, _trace_to_padded, dopri5
from .ode import _check_metric, acceleration_fn
from .result import GeodesicConvergenceError, GeodesicResult, GeodesicStatus, _polyline
from .solvers import Collocation, Shooting
from .spectral import (CollocationResult, SpectralEnergyResult, _eval_series, _expired, _pad_nodes, collocate,
                       lgl_nodes, minimize_spectral_energy, nodes_to_series)

__all__ = [
    "connecting_geodesic",
    "GeodesicResult",
    "log_map",
    "distance_matrix",
    "DistanceMatrix",
    "GeodesicConvergenceError",
    "GeodesicStatus",
    "float64_metric",
    "working_metric",
]


_INITS = ("line", "graph")


def _initial_velocity(curve: torch.Tensor) -> torch.Tensor:
    """Third-order one-sided difference for ``c'(0)`` of an evenly parameterised discrete curve."""
    T = curve.shape[1]
    h = 1.0 / (T - 1)
    if T >= 4:
        return (-11 * curve[:, 0] + 18 * curve[:, 1] - 9 * curve[:, 2] + 2 * curve[:, 3]) / (6 * h)
    return (-3 * curve[:, 0] + 4 * curve[:, 1] - curve[:, 2]) / (2 * h)


def _modules_of(obj, depth=4, seen=None):
    """The ``nn.Module`` objects reachable from ``obj``'s attributes (a metric, its decoder, …)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, (list, tuple)):
        vals = list(obj)
    elif isinstance(obj, dict):
        vals = list(obj.values())
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)) and not callable(getattr(obj, "__func__", None)):
        vals = list(vars(obj).values())
    else:
        return []
    out = []
    for v in vals:
        out += _modules_of(v, depth - 1, seen)
    return out


def _decoder_kinks(metric) -> list:
    """What makes the metric's decoder not twice continuously differentiable
    (:func:`latentgeo._autodiff.nonsmooth_ops` over its traced callables; ``[]`` if nothing or
    unknown)."""
    from .._autodiff import decoder_modules, nonsmooth_ops

    out = []
    for m in decoder_modules(getattr(metric, "decoder", None)):
        try:
            found = nonsmooth_ops(m)
        except Exception:  # noqa: BLE001 - a diagnosis only: an untraceable callable is "unknown"
            found = None
        out += [k for k in (found or []) if k not in out]
    return out


def _uncertify_kink_crossings(res, metric):
    """Certified curves of a decoder with C⁰ kinks that cross one (the metric jumps there: the
    geodesic equation the certificate checks does not hold across it) are reported as not certified."""
    ok = torch.nonzero(res.converged).reshape(-1)
    if ok.numel() == 0:
        return res
    k0 = _kink_fn(metric, c0=True)
    if k0 is None:
        return res
    with torch.no_grad():
        t = torch.linspace(0, 1, 513, dtype=res.z0.dtype, device=res.z0.device)
        cross = crosses_kinks(k0, res[ok].curve(t).to(res.z0.dtype))
    for j in torch.nonzero(cross).reshape(-1).tolist():
        i = int(ok[j])
        res.status[i] = int(GeodesicStatus.NOT_CONVERGED)
        res.reasons[i] = ("the curve solves the geodesic equation between the jumps of the metric but crosses one (a first "
                          "derivative of the decoder jumps there), where the equation does not hold")
    return res


def _note_kinks(res, metric):
    """Append to the reasons of the pairs not certified what makes the decoder non-smooth."""
    bad = [i for i, s in enumerate(res.status.tolist()) if s in (int(GeodesicStatus.NOT_CONVERGED), int(GeodesicStatus.BUDGET))]
    if not bad:
        return res
    kinks = _decoder_kinks(metric)
    if kinks:
        c0 = any("its derivative jumps" in k for k in kinks)
        note = "; the decoder is not twice continuously differentiable: " + ", ".join(kinks) + ". " + (
            "Where a first derivative jumps the metric itself jumps and the geodesic refracts, which the "
            "solvers do not model; smooth activations such as Softplus, SiLU, GELU or tanh avoid this"
            if c0 else
            "The geodesic equation's right-hand side jumps where a unit switches along the curve; the "
            "piecewise meshes put a point at each such kink, and this pair was still not certified"
        ) + "; the length is the shortest curve found, an upper bound"
        for i in bad:
            res.reasons[i] = res.reasons[i] + note
    return res


def _probe_dtype(metric, z):
    with torch.no_grad():
        try:
            if metric.is_embedded:
                return metric.embedding(z[:1]).dtype
            return metric.tensor_fn()(z[:1]).dtype
        except (RuntimeError, TypeError):
            return None


FLOAT32_MIN_TOL = 1e-4  # the finest ``tol`` a float32 solve accepts (its speed-drift floor is 100·eps ≈ 1.2e-5)


def check_eval_mode(modules) -> None:
    """Raise ``ValueError`` naming the layers of ``modules`` that are random or couple the rows of a
    batch in training mode (dropout, batch norm, RReLU): a geodesic of such a decoder is not
    defined (its metric changes from call to call)."""
    bad = []
    for m in modules:
        for name, mod in m.named_modules():
            if mod.training and isinstance(mod, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm,
                                                 torch.nn.RReLU)):
                bad.append(f"{type(mod).__name__}" + (f" ({name})" if name else ""))
    if bad:
        raise ValueError(f"the decoder has layers in training mode that make its outputs random or batch-dependent: "
                         f"{', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}; call .eval() on the model first")


def working_metric(metric, z, dtype=None):
    """The metric to solve on in ``dtype`` (default float64) and the working dtype.

    A metric whose decoder modules hold floating-point parameters of another dtype is deep-copied
    and the copy's modules converted (the user's model is left untouched); a model already in
    ``dtype``, or plain functions that follow their input's dtype, are used as they are. Where
    neither works (for instance a closure over float32 tensors) the solve stays in the model's
    dtype: certification to ``tol ≈ 1e-6`` then usually fails, with that reason.

    Example:
        >>> import torch, latentgeo as lg
        >>> net = torch.nn.Linear(2, 3)  # float32 parameters
        >>> m64, dt = lg.geodesics.working_metric(lg.PullbackMetric(lg.DeterministicDecoder(net)), torch.zeros(1, 2))
        >>> dt, next(net.parameters()).dtype
        (torch.float64, torch.float32)
    """
    dtype = torch.float64 if dtype is None else dtype
    mods = _modules_of(metric)
    check_eval_mode(mods)
    params = [p for m in mods for p in m.parameters()] + [b for m in mods for b in m.buffers()]
    if any(p.is_floating_point() and p.dtype != dtype for p in params):
        mc = copy.deepcopy(metric)
        for m in _modules_of(mc):
            m.to(dtype)
        if _probe_dtype(mc, z.to(dtype)) == dtype:
            return mc, dtype
        return metric, params[0].dtype
    if z.dtype == dtype or _probe_dtype(metric, z.to(dtype)) == dtype:
        return metric, dtype
    return metric, z.dtype


def float64_metric(metric, z):
    """:func:`working_metric` in float64: the metric to solve on and the working dtype."""
    return working_metric(metric, z, torch.float64)


def check_dtype(dtype, tol=None, name="dtype"):
    """``None`` (float64), ``torch.float64`` or ``torch.float32`` (also as ``"float64"``/``"float32"``),
    returned as a torch dtype; float32 only with ``tol ≥ FLOAT32_MIN_TOL`` (when ``tol`` is given)."""
    if dtype is None:
        return torch.float64
    if isinstance(dtype, str):
        dtype = {"float64": torch.float64, "float32": torch.float32}.get(dtype, dtype)
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"{name} must be torch.float64 or torch.float32 (the working precision of the solves), "
                         f"got {dtype!r}")
    if dtype == torch.float32 and tol is not None and tol < FLOAT32_MIN_TOL:
        raise ValueError(f"{name}=torch.float32 needs tol >= {FLOAT32_MIN_TOL:g} (float32 has about 7 digits; its "
                         f"speed-drift floor is 1.2e-5), got tol={tol:g}: use torch.float64")
    return dtype


def _check_solver(solver):
    if solver is None:
        return Collocation()
    if not isinstance(solver, (Collocation, Shooting)):
        raise TypeError(f"solver must be a Collocation(...) or Shooting(...) object, got {type(solver).__name__}")
    return solver


def _check_budget(budget):
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (0 < budget < math.inf):
        raise ValueError(f"budget must be a positive number of seconds per pair or None, got {budget!r}")
    return float(budget)


class _WarmStart:
    """Warm-start curves ``(N, T, d)`` and, for pairs certified by collocation, their Legendre
    series ``(N, K, d)`` (shifted to the new endpoints) and nodes: those pairs are collocated
    directly at that resolution, without the energy stage; ``jac``, their Newton node blocks where
    the result kept them (``Collocation(keep_jacobians=True)``). ``piece`` marks the pairs
    certified by piecewise collocation, ``pseries`` their moved paths (in Euclidean arclength,
    :func:`~latentgeo.geodesics.piecewise.path_series`): they are re-solved by piecewise
    collocation from there, without the global stages."""

    def __init__(self, curves, series=None, nodes=None, direct=None, jac=None, piece=None, pseries=None):
        self.curves, self.series, self.nodes, self.direct, self.jac = curves, series, nodes, direct, jac
        self.piece, self.pseries = piece, pseries

    def __getitem__(self, sl):
        pc = {} if self.piece is None else {"piece": self.piece[sl], "pseries": self.pseries[sl]}
        if self.series is None:
            return _WarmStart(self.curves[sl], **pc)
        return _WarmStart(self.curves[sl], self.series[sl], self.nodes[sl], self.direct[sl],
                          None if self.jac is None else self.jac[sl], **pc)


def _piece_starts(init: GeodesicResult, da, db):
    """``(piece, pseries)`` of a warm start: the pairs of ``init`` certified by piecewise
    collocation and their paths (:meth:`GeodesicResult._piecewise_paths`) moved by ``da``/``db`` at
    the ends (``None, None`` when there are none)."""
    piece, pseries = init._piecewise_paths(_PATH_K)
    if not bool(piece.any()):
        return None, None
    pseries = pseries.to(device=da.device, dtype=da.dtype)
    # (in x = 2u − 1: u = (P0 + P1)/2, 1 − u = (P0 − P1)/2)
    pseries[:, 0] += 0.5 * (da + db)
    pseries[:, 1] += 0.5 * (db - da)
    return piece.to(da.device), pseries


_PATH_K = 33  # Legendre coefficients of a piecewise warm start's path
_GLOBAL_UNKNOWNS = 1280  # global collocation up to Q·d unknowns when the piecewise stage is on


def _warm_from_result(init: GeodesicResult, a, b):
    """A :class:`_WarmStart` from a solved result, moved to the endpoints ``a``, ``b``: each curve
    becomes ``γ(t) + (1 − t)(a − γ(0)) + t(b − γ(1))``."""
    dt = a.dtype
    da, db = a - init.z0.to(dt), b - init.z1.to(dt)
    t = torch.linspace(0, 1, 33, dtype=dt, device=a.device)
    with torch.no_grad():
        curves = init.curve(t).detach().to(dt)
    curves = curves + (1 - t)[None, :, None] * da[:, None] + t[None, :, None] * db[:, None]
    curves[:, 0], curves[:, -1] = a, b
    piece, pseries = _piece_starts(init, da, db)
    if init._series is None or "nodes" not in init.stats:
        return _WarmStart(curves, piece=piece, pseries=pseries)
    series = init._series.detach().to(dt).clone()
    # (in x = 2t − 1: t = (P0 + P1)/2, 1 − t = (P0 − P1)/2)
    series[:, 0] += 0.5 * (da + db)
    series[:, 1] += 0.5 * (db - da)
    direct = init._collocation_certified().to(a.device) & torch.isfinite(series).all(2).all(1)
    jac = init.__dict__.get("_jacobian")
    if piece is not None:
        direct &= ~piece
    return _WarmStart(curves, series, init.stats["nodes"].to(a.device), direct,
                      None if jac is None else jac.detach().to(dt), piece=piece, pseries=pseries)


def _check_init(init, a, b, graph):
    """``(how, warm start or None)`` from ``init``."""
    if isinstance(init, GeodesicResult):
        if len(init) != a.shape[0]:
            raise ValueError(f"init: a GeodesicResult for {len(init)} pairs given for {a.shape[0]} pairs")
        if init.z0.shape[1] != a.shape[1]:
            raise ValueError(f"init: a GeodesicResult in {init.z0.shape[1]} latent dimensions given for {a.shape[1]}")
        return "warm", _warm_from_result(init, a, b)
    if isinstance(init, torch.Tensor):
        if init.dim() != 3 or init.shape[0] != a.shape[0] or init.shape[2] != a.shape[1] or init.shape[1] < 2:
            raise ValueError(f"init curves must have shape (N, T, d) = ({a.shape[0]}, T>=2, {a.shape[1]}), got {tuple(init.shape)}")
        w = init.detach().to(a.dtype)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("init curves contain NaN or inf")
        scale = torch.maximum(a.abs().amax(1), b.abs().amax(1)).clamp_min(1.0)
        off = torch.maximum((w[:, 0] - a).abs().amax(1), (w[:, -1] - b).abs().amax(1))
        if bool((off > 1e-4 * scale).any()):
            raise ValueError("init curves must start at z0 and end at z1 (a warm start for the same pairs)")
        return "warm", _WarmStart(w)
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}; expected 'line', 'graph', a tensor of curves (N, T, d) or a GeodesicResult")
    if init == "graph" and graph is None:
        raise ValueError("init='graph' needs graph=LatentGraph(metric, codes) (see latentgeo.geodesics.graph)")
    return init, None


def connecting_geodesic(
    metric,
    z0,
    z1,
    *,
    solver=None,
    tol: float = 1e-6,
    init="line",
    graph=None,
    budget: Optional[float] = 1.0,
    n_points: int = 17,
    recheck: bool = False,
    chunk_size: Optional[int] = None,
    progress: Optional[bool] = None,
    dtype=None,
) -> GeodesicResult:
    """Shortest geodesics between batches of latent codes, certified or honestly bounded.

    Args:
        metric: :class:`~latentgeo.metric.PullbackMetric` or :class:`~latentgeo.metric.MetricField`.
        z0, z1: ``(N, d)`` endpoints (or ``(d,)`` each).
        solver: :class:`~latentgeo.geodesics.Collocation` (default) or
            :class:`~latentgeo.geodesics.Shooting`, carrying the method's options.
        tol: certification tolerance: the ODE residual relative to the length (a first-order bound
            on the relative length error) and the relative speed drift must be ``≤ tol``.
        init: ``"line"`` (straight line), ``"graph"`` (shortest path in ``graph``), a tensor
            ``(N, T, d)`` of curves from ``z0`` to ``z1``, or a previous :class:`GeodesicResult`
            of ``N`` nearby pairs (the same pairs, or pairs whose endpoints moved a little: each
            curve is moved to the new endpoints, ``γ(t) + (1 − t)Δz0 + tΔz1``). From a result,
            pairs certified by collocation are solved directly at their resolution (Newton, no
            energy stage: on the demo VAE 1.7× faster at tol 1e-6 and 2.6× at 1e-3, with 4–9× fewer
            evaluations); pairs certified by piecewise collocation are re-solved by piecewise
            collocation from their moved paths, without the global stages (on the demo VAE's
            moved pairs, 28 → 21 ms/pair at tol 1e-6 and 16 → 7.4 at 1e-3, with 7 and 6 of 65
            pairs on that route). Those that fail, or converge to a geodesic
            longer than the straight line, are solved afresh from the line. A warm start tries
            fewer candidate curves than a cold one (no other starts; the graph path competes only
            when strictly shorter), so it can keep a nearby pair's branch: certified means
            shortest among the curves tried.
        graph: a :class:`~latentgeo.geodesics.graph.LatentGraph`. Its shortest paths are both a
            second start (for pairs the first start does not certify, or whose certified length
            is longer than the graph path) and a competitor in the minimality check.
        budget: wall-clock seconds per pair (a batch of ``n`` pairs gets ``n·budget``), or ``None``
            for no limit; pairs not certified when it runs out get status ``BUDGET``.
        n_points: points of the sampled curve ``discrete_curve`` (≥ 4).
        recheck: re-integrate every certified solution as an initial-value problem from its initial
            velocity at a tight tolerance and certify that run too.
        chunk_size: pairs solved together (default: all, or fewer when stage 1 would need much memory).
        progress: ``None`` (a bar in terminals/Jupyter when there is more than one chunk), ``True``, ``False``.
        dtype: the working precision: ``None``/``torch.float64`` (default: float32 models are solved
            on a float64 copy, since 1e-6 is out of float32's reach) or ``torch.float32`` for
            ``tol ≥ 1e-4`` (float64 models on a float32 copy): the decoder's second-order jets cost
            half as much (3.8 against 7.9 µs a point on the {0, 1, 2} digits VAE, 2 threads) and
            the lengths certified at ``tol=1e-2`` agreed with float64 tol-1e-6 ones as closely as
            float64 tol-1e-2 ones did (median 1.9e-7 relative against 1.2e-7).

    The outputs follow the dtype of the codes. Ctrl-C between chunks returns what is solved, the rest with
    status ``STOPPED``.

    Returns:
        :class:`~latentgeo.geodesics.GeodesicResult`: ``length`` is a certified distance where
        ``converged``; elsewhere the length of the shortest curve found (an upper bound, never
        above the straight line's), with ``status`` and ``reasons`` saying why.

    Raises:
        ValueError / TypeError: bad shapes, NaN/inf, wrong latent dimension, bad options, a decoder
            with dropout or batch norm in training mode.
    """
    metric = _check_metric(metric)
    check_eval_mode(_modules_of(metric))  # (before the decoder is first called: batch norm would update its statistics)
    solver = _check_solver(solver)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1 and math.isfinite(tol)):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    budget = _check_budget(budget)
    n_points = check_int(n_points, "n_points", minimum=4)
    dtype = check_dtype(dtype, tol)
    a, single = as_latent_batch(z0, metric.latent_dim, name="z0")
    b, _ = as_latent_batch(z1, metric.latent_dim, name="z1")
    if a.shape != b.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out_dtype = a.dtype
    if hasattr(metric, "_check_z"):
        metric._check_z(a, "z0")
        metric._check_z(b.to(a.dtype), "z1")
    metric, wdt = working_metric(metric, a, dtype)
    a, b = a.to(wdt), b.to(wdt)
    how, warm = _check_init(init, a, b, graph)
    floor = 10 * float(torch.finfo(wdt).eps)
    srt = solver.rtol if isinstance(solver, Shooting) else None
    sat = solver.atol if isinstance(solver, Shooting) else None
    rtol = srt if srt is not None else max(0.1 * tol, 1e-13, floor)
    atol = sat if sat is not None else max(1e-2 * tol, 1e-15, floor)
    n, d = a.shape
    if chunk_size is None:
        if isinstance(solver, Shooting):
            P = (solver.n_points - 2) * d
            chunk_size = max(1, min(n, int(2**25 // max(P * P, 1))))
        else:
            K = _output_size(metric, a[:1]) if n else d
            per_pair = (solver.degree + 1) * K * d * 3 + 3 * ((solver.degree - 1) * d) ** 2
            chunk_size = max(1, min(n, int(2**24 // per_pair)))
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    solve = _solve_shooting if isinstance(solver, Shooting) else _solve_spectral
    opts = dict(solver=solver, tol=tol, init=how, graph=graph, n_points=n_points, rtol=rtol, atol=atol,
                recheck=bool(recheck))
    starts = list(range(0, n, chunk_size)) or [0]
    parts = []
    with progress_bar(total=n, desc="geodesics", progress=progress if len(starts) > 1 or progress else False,
                      unit="pair") as bar:
        try:
            for s in starts:
                sl = slice(s, s + chunk_size)
                parts.append(_solve_chunk(metric, a[sl], b[sl], None if warm is None else warm[sl], solve, opts, budget))
                bar.update(len(parts[-1]))
                bar.set_postfix(certified=sum(int(p.converged.sum()) for p in parts))
        except KeyboardInterrupt:
            done = sum(len(p) for p in parts)
            parts.append(_line_result(metric, a[done:], b[done:], n_points, GeodesicStatus.STOPPED,
                                      "stopped by the user (KeyboardInterrupt)"))
    res = parts[0] if len(parts) == 1 else _concat(parts)
    res = _uncertify_kink_crossings(res, metric)
    res = _note_kinks(res, metric)
    if out_dtype != wdt and out_dtype.is_floating_point:
        res = _cast(res, out_dtype)
    return res


def _warm_up(metric, z):
    """Evaluate the decoder jets the solvers use at one point, once per metric, before the budget's
    clock starts. The first such calls in a process pay one-time costs that are not the pair's:
    the decoder's fx trace, and torch's forward-mode decompositions (loaded on first use: ~1.1 s
    for a decoder with a batch-norm layer, whose first pair then ran out of its 1 s budget)."""
    if metric.__dict__.get("_warmed_up"):
        return
    with torch.no_grad():
        try:
            v = torch.ones_like(z[:1])
            if metric.is_embedded:
                metric.jet(z[:1], v, mixed=True)
                metric.jet(z[:1], v)
            else:
                acceleration_fn(metric)(z[:1], v)
        except Exception:  # noqa: BLE001 - the solve itself raises or reports whatever fails here
            return
    metric.__dict__["_warmed_up"] = True


def _solve_chunk(metric, a, b, warm, solve, opts, budget):
    """Solve one batch within its time budget, then certify minimality and bound the rest."""
    if a.shape[0]:
        _warm_up(metric, a)
    t0 = time.perf_counter()
    n = a.shape[0]
    deadline = None if budget is None else t0 + budget * max(n, 1)
    r = solve(metric, a, b, warm=warm, deadline=deadline, **opts)
    _finalize(metric, r, opts["tol"], opts["n_points"], graph=opts.get("graph"))
    r.stats["wall_time"] = torch.full((n,), (time.perf_counter() - t0) / max(n, 1), dtype=torch.float64)
    return r


def _cast(res, dtype):
    for k, v in list(res.__dict__.items()):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            res.__dict__[k] = v.to(dtype)
        elif k == "_knots" and v is not None:
            res.__dict__[k] = tuple(x.to(dtype) for x in v)
    return res


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


_PLAIN = ("z0", "z1", "length", "energy", "status", "residual", "rel_residual", "speed_drift", "initial_velocity",
          "discrete_curve", "line_length", "_from_knots", "_polyline")


def _concat(parts):
    kw = {k: torch.cat([p.__dict__[k] for p in parts], 0) for k in _PLAIN}
    for key in ("reasons", "init", "method"):
        kw[key] = sum((p.__dict__[key] for p in parts), [])
    kw["stats"] = {k: torch.cat([p.stats[k] for p in parts], 0) for k in parts[0].stats}
    sers = [p._series for p in parts]
    if any(x is not None for x in sers):
        k = max(x.shape[1] for x in sers if x is not None)
        full = []
        for p, x in zip(parts, sers):
            if x is None:  # (a part without series: its curves are polylines)
                x = p.z0.new_zeros(len(p), k, p.z0.shape[1])
                x[:, 0] = p.z0
            full.append(torch.cat([x, x.new_zeros(x.shape[0], k - x.shape[1], x.shape[2])], 1))
        kw["_series"] = torch.cat(full, 0)
        kw["_polyline"] = torch.cat([p._polyline | (torch.ones_like(p._polyline) if x is None else False)
                                     for p, x in zip(parts, sers)], 0)
    jacs = [p.__dict__.get("_jacobian") for p in parts]
    if any(j is not None for j in jacs):
        ref = next(j for j in jacs if j is not None)
        Q = max(j.shape[1] for j in jacs if j is not None)
        kw["_jacobian"] = torch.cat([ref.new_full((len(p), Q) + ref.shape[2:], float("nan")) if j is None
                                     else _pad_nodes(j, Q) for p, j in zip(parts, jacs)], 0)
    kts = [p._knots for p in parts]
    if any(k is not None for k in kts):
        ref = next(k for k in kts if k is not None)
        s = max(k[0].shape[1] for k in kts if k is not None)
        full = []
        for p, k in zip(parts, kts):
            if k is None:
                m = len(p)
                k = (ref[0].new_ones(m, 2), *(ref[i].new_zeros(m, 2, ref[i].shape[2]) for i in (1, 2, 3)))
                k[0][:, 0] = 0.0
            full.append(k)
        kw["_knots"] = tuple(torch.cat([_pad_rows(k[i], s) for k in full], 0) for i in range(4))
    return GeodesicResult(**kw)


def _line_result(metric, a, b, n_points, status, reason):
    """Straight lines for pairs that were not solved (``status`` says why)."""
    n, d = a.shape
    dt, dev = a.dtype, a.device
    t = torch.linspace(0, 1, n_points, dtype=dt, device=dev)
    curves = a[:, None] + t[None, :, None] * (b - a)[:, None]
    with torch.no_grad():
        L = _dense_length(metric, a, b, None)[0] if n else torch.zeros(0, dtype=dt, device=dev)
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    nan = torch.full((n,), float("nan"), dtype=dt, device=dev)
    return GeodesicResult(
        z0=a, z1=b, length=L, energy=L * L, status=torch.full((n,), int(status), dtype=torch.long, device=dev),
        residual=nan, rel_residual=nan.clone(), speed_drift=nan.clone(), initial_velocity=b - a, discrete_curve=curves,
        line_length=L.clone(), reasons=[reason] * n, init=["line"] * n, method=[""] * n,
        _polyline=torch.ones(n, dtype=torch.bool, device=dev),
        stats=dict(iterations=zeros, energy_iterations=zeros.clone(), evaluations=zeros.clone(), nodes=zeros.clone(),
                   wall_time=torch.zeros(n, dtype=torch.float64)),
    )


def _initial_curves(z0, z1, idx, how, graph, t, n_points, warm=None):
    """Initial curves for the pairs ``idx`` at times ``t (T,)``: straight lines, graph paths or
    the given warm-start curves ``warm (N, T', d)`` (evenly spaced in time)."""
    dt, dev = z0.dtype, z0.device
    n, d = idx.numel(), z0.shape[1]
    if how == "line":
        return z0[idx, None] + t[None, :, None] * (z1[idx] - z0[idx])[:, None]
    if how == "warm":
        c = _polyline(warm.curves[idx], t)
        c[:, 0], c[:, -1] = z0[idx], z1[idx]
        return c
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


def _dense_length(metric, a, b, curve_fn=None, T: int = 129):
    """Length of curves from ``a`` to ``b`` (the straight lines when ``curve_fn`` is ``None``; else
    ``curve_fn(t) -> (N, T, d)``) by ``T``-point chord sums, Richardson-extrapolated from ``T`` and
    ``(T+1)/2`` points (chord sums converge as ``h²``). Returns ``(estimate, error estimate)``."""
    dt, dev = a.dtype, a.device
    t = torch.linspace(0, 1, T, dtype=dt, device=dev)
    with torch.no_grad():
        c = a[:, None] + t[None, :, None] * (b - a)[:, None] if curve_fn is None else curve_fn(t)
        return metric._richardson_length(c)


def _put_knots(knots, n, idx, new):
    """Knots ``(t, z, v, a)`` for ``n`` pairs with the rows ``idx`` set to ``new`` (each ``(k, P, ·)``);
    ``knots`` is ``None`` or an earlier such tuple. Shorter rows are padded by repeating their last
    knot (a zero-length last interval, which :func:`~.ivp.hermite5` evaluates as that knot)."""
    P = new[0].shape[1] if knots is None else max(new[0].shape[1], knots[0].shape[1])

    def pad(x):
        return x if x.shape[1] == P else torch.cat([x, x[:, -1:].expand(-1, P - x.shape[1], *x.shape[2:])], 1)

    if knots is None:
        t = torch.linspace(0, 1, P, dtype=new[0].dtype, device=new[0].device)[None].expand(n, -1).clone()
        knots = (t,) + tuple(torch.zeros(n, P, *x.shape[2:], dtype=x.dtype, device=x.device) for x in new[1:])
    out = tuple(pad(k).clone() for k in knots)
    for dst, src in zip(out, new):
        dst[idx] = pad(src)
    return out


def _line_series_like(a, b, K):
    s = a.new_zeros(a.shape[0], K, a.shape[1])
    s[:, 0] = 0.5 * (a + b)
    s[:, 1] = 0.5 * (b - a)
    return s


def _cleared_by_line_bound(metric, a, b, L, tol):
    """Pairs whose length ``L`` is certainly no longer than the straight line's: below a cheap lower
    bound of the line's length (its 9-point chord sum, embedded metrics); the rest need the line
    measured densely."""
    if not metric.is_embedded:
        return torch.zeros_like(L, dtype=torch.bool)
    tt = torch.linspace(0, 1, 9, dtype=a.dtype, device=a.device)
    with torch.no_grad():
        low = metric.length(a[:, None] + tt[None, :, None] * (b - a)[:, None])
    return L <= low * (1 + tol)


def _finalize(metric, r, tol, n_points, graph=None):
    """Status, minimality and honest upper bounds of a solved batch ``r`` (in place).

    Certified pairs (ODE residual, speed drift, resolution ``≤ tol``) keep ``SUCCESS`` only if no
    competitor is shorter: the straight line (a feasible curve: a shortest path is never longer)
    and the energy-minimised curve of the other start (graph path). Every other pair reports the
    shortest curve found — its best curve, the straight line or (with a ``graph``) the graph path,
    resampled to ``n_points`` points — measured by a 129-point Richardson-extrapolated chord sum."""
    n = len(r.reasons)
    dt, dev = r.z0.dtype, r.z0.device
    a, b = r.z0, r.z1
    L = r.length.clone()
    conv = r._conv & torch.isfinite(L)
    reasons = list(r.reasons)
    status = torch.full((n,), int(GeodesicStatus.NOT_CONVERGED), dtype=torch.long, device=dev)
    status[conv] = int(GeodesicStatus.SUCCESS)
    for i in torch.nonzero(~conv).reshape(-1).tolist():
        if bool(r._budget[i]):
            status[i] = int(GeodesicStatus.BUDGET)
        elif "non-finite" in reasons[i] or "not finite" in reasons[i]:
            status[i] = int(GeodesicStatus.NONFINITE)
    same = (a == b).all(1)
    line_len = torch.full((n,), float("nan"), dtype=dt, device=dev)
    line_len[same] = 0.0
    # which pairs need the straight line measured: all uncertified ones; certified ones unless a
    # cheap lower bound of the line (9-point chord sum, embedded metrics) already clears them
    need = ~conv & ~same
    cand = conv & ~same
    if bool(cand.any()):
        ci = torch.nonzero(cand).reshape(-1)
        cand[ci] = ~_cleared_by_line_bound(metric, a[ci], b[ci], L[ci], tol)
    need |= cand
    to_line = torch.zeros(n, dtype=torch.bool, device=dev)
    if bool(need.any()):
        ni = torch.nonzero(need).reshape(-1)
        Ll, El = _dense_length(metric, a[ni], b[ni])
        line_len[ni] = Ll
        longer = conv[ni] & (L[ni] > Ll + El + tol * Ll)
        for j in torch.nonzero(longer).reshape(-1).tolist():
            i = int(ni[j])
            status[i] = int(GeodesicStatus.NOT_SHORTEST)
            reasons[i] = (f"the certified ODE solution (length {float(L[i]):.6g}) is longer than the straight line "
                          f"(length {float(Ll[j]):.6g}): a geodesic, but not the shortest path; try graph=LatentGraph(...)")
            to_line[i] = True
    # the other start's curve competes with certified pairs
    if r._alt is not None:
        ai, ser = r._alt
        ser = ser.to(dt)

        def alt_fn(t):
            out = _eval_series(ser, t)
            out[:, 0], out[:, -1] = a[ai], b[ai]
            return out

        La, Ea = _dense_length(metric, a[ai], b[ai], alt_fn)
        shorter = (status[ai] == 0) & (La + Ea < L[ai] * (1 - tol))
        for j in torch.nonzero(shorter).reshape(-1).tolist():
            i = int(ai[j])
            status[i] = int(GeodesicStatus.NOT_SHORTEST)
            reasons[i] = (f"the certified ODE solution (length {float(L[i]):.6g}) is longer than the curve from the "
                          f"graph start (length {float(La[j]):.6g}): a geodesic, but not the shortest path")
            r._series[i] = 0.0
            r._series[i, : ser.shape[1]] = ser[j]
            r._polyline[i] = False
            r._from_knots[i] = False
            L[i] = La[j]
    bad = (status != 0) & ~to_line & ~same
    if bool(bad.any()):
        bi = torch.nonzero(bad).reshape(-1)
        if not bool(((status[bi] == int(GeodesicStatus.NOT_SHORTEST))).all()):
            fix = bi[status[bi] != int(GeodesicStatus.NOT_SHORTEST)]
            r._from_knots[fix] = False  # (an unconverged ODE guess is never reported)
            Lb, _ = _dense_length(metric, a[fix], b[fix], lambda t: r.curve(t)[fix])
            Lb = torch.where(torch.isfinite(Lb), Lb, torch.full_like(Lb, float("inf")))
            L[fix] = Lb
        lt = line_len[bi] < L[bi]
        to_line[bi[lt]] = True
        if graph is not None:
            # the graph path is a real curve too: where it is shorter than the best curve (and the
            # line), the pair reports it (as a polyline of n_points points, measured densely)
            try:
                with torch.no_grad():
                    gp = graph.shortest_paths(a[bi], b[bi])
            except ValueError:  # e.g. endpoints in different components of the graph
                gp = None
            if gp is not None:
                from .graph import resample_polylines

                poly = resample_polylines(gp.polylines.to(dt), gp.arclength.to(dt), n_points)
                Lg, _ = _dense_length(metric, a[bi], b[bi], lambda t: _polyline(poly, t))
                best = torch.where(to_line[bi], line_len[bi], L[bi])
                use = torch.isfinite(Lg) & (Lg < best)
                for j in torch.nonzero(use).reshape(-1).tolist():
                    i = int(bi[j])
                    to_line[i] = False
                    L[i] = Lg[j]
                    r.discrete_curve[i] = poly[j]
                    r._polyline[i] = True
                    r._from_knots[i] = False
                    r.init[i] = "graph path"
    if bool(to_line.any()):
        li = torch.nonzero(to_line).reshape(-1)
        L[li] = line_len[li]
        r._from_knots[li] = False
        if r._series is not None:
            r._series[li] = _line_series_like(a[li], b[li], r._series.shape[1])
            r._polyline[li] = False
        else:
            t = torch.linspace(0, 1, r.discrete_curve.shape[1], dtype=dt, device=dev)
            r.discrete_curve[li] = a[li, None] + t[None, :, None] * (b[li] - a[li])[:, None]
            r._polyline[li] = True
        for i in li.tolist():
            r.init[i] = "line"
    L[same] = 0.0
    status[same] = int(GeodesicStatus.SUCCESS)
    for i in torch.nonzero(same).reshape(-1).tolist():
        reasons[i] = ""
    for i in torch.nonzero(status != 0).reshape(-1).tolist():
        r.method[i] = ""
    r.length, r.energy, r.status, r.reasons, r.line_length = L, L * L, status, reasons, line_len
    with torch.no_grad():
        if r._series is not None:
            r.discrete_curve = r.curve(torch.linspace(0, 1, n_points, dtype=dt, device=dev))
        ubad = status != 0
        if bool(ubad.any()):
            if r._series is not None:
                v_s = _eval_series(r._series, torch.zeros(1, dtype=dt, device=dev), derivative=True)[:, 0]
                v_s = torch.where(r._polyline[:, None], _initial_velocity(r.discrete_curve), v_s)
            else:
                v_s = _initial_velocity(r.discrete_curve)
            v_s = torch.where(to_line[:, None], b - a, v_s)
            r.initial_velocity = torch.where(ubad[:, None], v_s, r.initial_velocity)
    for k in ("_conv", "_budget", "_alt"):
        r.__dict__.pop(k, None)
    return r


def _bulged_curves(lines: torch.Tensor, t: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` (even) curves per straight line ``lines (n, T, d)`` sampled at times ``t (T,)``: the line
    plus ``±a_k sin(πt) ν``, ``a_k = 0.25·k·|z1 − z0|`` for ``k = 1 … m/2``, ``ν`` a unit normal to the
    line (the coordinate axis least aligned with it, orthogonalised). Shape ``(m·n, T, d)``, the
    ``n`` pairs repeated per curve."""
    d = lines.shape[2]
    tiny = torch.finfo(lines.dtype).tiny
    u = lines[:, -1] - lines[:, 0]
    L = u.norm(dim=1, keepdim=True)
    uh = u / L.clamp_min(tiny)
    e = torch.nn.functional.one_hot(uh.abs().argmin(1), d).to(u.dtype)
    nu = e - (e * uh).sum(1, keepdim=True) * uh
    nu = nu / nu.norm(dim=1, keepdim=True).clamp_min(tiny)
    bulge = (L * nu)[:, None, :] * torch.sin(torch.pi * t)[None, :, None]  # (n, T, d)
    return torch.cat([lines + (sign * 0.25 * k) * bulge for k in range(1, m // 2 + 1) for sign in (1.0, -1.0)], 0)


def _empty_collocation(K, d, dt, dev, jac=None):
    """A :class:`CollocationResult` of no pairs (for :func:`_merge_direct` without direct pairs)."""
    z, zl = torch.zeros(0, dtype=dt, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    no = torch.zeros(0, dtype=torch.bool, device=dev)
    return CollocationResult(series=torch.zeros(0, K, d, dtype=dt, device=dev), length=z, velocity0=z.reshape(0, 1).expand(0, d),
                             residual=z, rel_residual=z, speed_drift=z, converged=no, iterations=zl, nodes=zl, reasons=[],
                             evaluations=zl, budget=no, jacobian=jac)


def _shortest_start(er, n: int, starts: int, L):
    """Per pair, the stage-1 result of its ``starts`` curves whose length ``L (starts·n,)`` is the
    shortest (finite lengths only; the line, first, wins ties within ``1e-9`` relative), and the
    indices ``(n,)`` of the chosen curves."""
    E = L.reshape(starts, n)
    inf = torch.full_like(E, float("inf"))
    score = torch.where(torch.isfinite(E), E, inf)
    score[0] = score[0] * (1 - 1e-9)
    pick = score.argmin(0) * n + torch.arange(n, device=E.device)
    return type(er)(nodes=er.nodes[pick], energy=er.energy[pick], converged=er.converged[pick],
                    iterations=er.iterations.reshape(starts, n).sum(0),
                    reasons=[er.reasons[j] for j in pick.tolist()],
                    evaluations=None if er.evaluations is None else er.evaluations.reshape(starts, n).sum(0)), pick


# Iterations of the energy stage after which the shortest of several starts is chosen and only it
# goes on. Measured on the demo VAE (145 pairs, 3 starts, degree 24): the start chosen after 20
# iterations, continued to convergence, was at most 5.2e-6 longer than the one chosen after 100
# (after 10: 7.3e-4), and the certified lengths were the same to 2e-14; on the variance-preserving
# MLP (200 pairs) the choice never changed from 15 iterations on.
_PICK_AT = 20


def _merge_direct(idx, di, cd, parts, K, d):
    """One ``(energy result, series, collocation result)`` for the pairs ``idx`` from the direct
    warm collocation of ``di`` (result ``cd``) and the full attempts ``parts``, a list of
    ``(rest, er, ser, cr)`` for the other pairs. ``cr.direct`` marks the pairs certified directly."""
    n, dev = idx.numel(), idx.device
    pos = torch.full((int(idx.max()) + 1,), -1, dtype=torch.long, device=dev)
    pos[idx] = torch.arange(n, device=dev)

    def pad(x):
        x = x[:, :K]
        return torch.cat([x, x.new_zeros(x.shape[0], K - x.shape[1], d)], 1) if x.shape[1] < K else x

    dt = cd.series.dtype
    out = {f: getattr(cd, f).new_zeros((n,) + getattr(cd, f).shape[1:]) for f in
           ("length", "velocity0", "residual", "rel_residual", "speed_drift", "converged", "iterations", "nodes",
            "evaluations", "budget")}
    out["series"] = torch.zeros(n, K, d, dtype=dt, device=dev)
    if cd.jacobian is not None:
        out["jacobian"] = torch.full((n,) + cd.jacobian.shape[1:], float("nan"), dtype=dt, device=dev)
    reasons = [""] * n
    e_iters = torch.zeros(n, dtype=torch.long, device=dev)
    e_reasons = [""] * n
    e_ser = torch.zeros(n, K, d, dtype=dt, device=dev)
    ok = cd.converged
    pd = pos[di]
    for f in out:
        src = pad(cd.series) if f == "series" else getattr(cd, f)
        out[f][pd[ok]] = src[ok]
    e_ser[pd[ok]] = pad(cd.series)[ok]
    tried = torch.zeros(n, dtype=torch.long, device=dev)  # failed direct attempts' cost and reasons stay
    tried[pd[~ok]] = cd.iterations[~ok]
    for j, i in enumerate(pd.tolist()):
        if not bool(ok[j]):
            reasons[i] = f"warm collocation: {cd.reasons[j]}"
    for rest, er, ser, cr in parts:
        pr = pos[rest]
        for f in out:
            src = pad(cr.series) if f == "series" else getattr(cr, f)
            out[f][pr] = _pad_nodes(src, out[f].shape[1]) if f == "jacobian" else src  # (attempts differ in max_nodes)
        e_ser[pr] = pad(ser)
        e_iters[pr] = er.iterations
        for j, i in enumerate(pr.tolist()):
            reasons[i] = f"{reasons[i]}; {cr.reasons[j]}" if reasons[i] and cr.reasons[j] else cr.reasons[j]
            e_reasons[i] = er.reasons[j]
    out["iterations"] += tried
    direct = torch.zeros(n, dtype=torch.bool, device=dev)
    direct[pd[ok]] = True
    res = CollocationResult(reasons=reasons, direct=direct, **out)
    return SpectralEnergyResult(nodes=None, energy=None, converged=None, iterations=e_iters, reasons=e_reasons), e_ser, res


def _reject_longer_than_line(metric, a, b, length, conv, reasons, tol):
    """Un-certify (in place: ``conv``, ``reasons``) the converged pairs whose geodesic of ``length``
    is longer than the straight line ``a → b`` (a warm curve moved to new endpoints can converge
    to a geodesic that is not the shortest, the long way round)."""
    ok = torch.nonzero(conv).reshape(-1)
    if not ok.numel():
        return
    a, b = a[ok], b[ok]
    chk = ~_cleared_by_line_bound(metric, a, b, length[ok], tol)
    with torch.no_grad():
        if bool(chk.any()):
            ci = torch.nonzero(chk).reshape(-1)
            Ll, El = _dense_length(metric, a[ci], b[ci])
            longer = length[ok[ci]] > Ll + El + tol * Ll
            for j in ok[ci[longer]].tolist():
                conv[j] = False
                reasons[j] = (f"warm curve converged to a geodesic longer than the straight line "
                              f"(length {float(length[j]):.6g})")


def _solve_spectral(metric, z0, z1, *, solver, tol, init, warm, graph, n_points, rtol, atol, recheck, deadline):
    degree, nodes, max_nodes, max_iter = solver.degree, solver.nodes, solver.max_nodes, solver.max_iter
    n, d = z0.shape
    # global collocation's Newton systems are dense in Q·d unknowns: above about 1280 of them the
    # piecewise stage (block systems per segment) is the cheaper way to resolve a pair
    if solver.piecewise:
        max_nodes = min(max_nodes, max(nodes, _GLOBAL_UNKNOWNS // d))
    # the first pass stops at half the finest resolution (or the solver's first_max_nodes)
    first_max = max(nodes, max_nodes // 2) if solver.first_max_nodes is None else min(solver.first_max_nodes, max_nodes)
    energy_max_iter, max_steps = solver.energy_max_iter, 10_000
    e_rtol = max(solver.energy_rtol, 100 * float(torch.finfo(z0.dtype).eps))  # (below rounding: no use)
    dt, dev = z0.dtype, z0.device
    t_lgl = lgl_nodes(degree, dt, dev)
    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    tiny = torch.finfo(dt).tiny

    def direct(idx):
        """Warm-started pairs whose start is a certified collocation curve (shifted to the new
        endpoints): Newton at that curve's resolution, no energy stage. Returns the result, or None."""
        if warm is None or warm.series is None:
            return None
        di = idx[warm.direct[idx]]
        if di.numel() == 0:
            return None
        with torch.no_grad():
            cr = collocate(metric, z0[di], z1[di], warm.series[di], tol=tol, nodes=nodes, max_nodes=max_nodes,
                           max_iter=max_iter, deadline=deadline, start_nodes=warm.nodes[di], newton=True,
                           start_jacobian=None if warm.jac is None else warm.jac[di], keep_jacobian=keep_jac)
        evals[di] += cr.evaluations
        # a moved curve can converge to a geodesic that is not the shortest (the long way round):
        # pairs longer than the straight line take the full pipeline instead
        _reject_longer_than_line(metric, z0[di], z1[di], cr.length, cr.converged, cr.reasons, tol)
        return di, cr

    def kept(idx):
        """``warm_fallback="keep"``: the pairs ``idx`` are not solved; their moved warm curves are
        returned as the best curves found (uncertified; ``_finalize`` measures them)."""
        k = idx.numel()
        if warm.series is not None:
            ser = padk(warm.series[idx, :Kmax].to(dt))
        else:
            ser = padk(nodes_to_series(_initial_curves(z0, z1, idx, "warm", graph, t_lgl, degree + 1, warm)))
        kept_mask[idx] = True
        cr = not_collocated(k, ser, "not re-solved (warm_fallback='keep'): the moved warm curve is the best curve found")
        er = SpectralEnergyResult(nodes=None, energy=None, converged=None, iterations=cr.iterations.clone(), reasons=[""] * k)
        return er, ser, cr

    def not_collocated(k, ser, why):
        """A failed collocation result for ``k`` pairs whose curves ``ser`` were not collocated."""
        z = torch.zeros(k, dtype=dt, device=dev)
        zl = torch.zeros(k, dtype=torch.long, device=dev)
        return CollocationResult(series=ser, length=z.clone(), velocity0=torch.zeros(k, d, dtype=dt, device=dev),
                                 residual=z + float("inf"), rel_residual=z + float("inf"), speed_drift=z + float("nan"),
                                 converged=torch.zeros(k, dtype=torch.bool, device=dev), iterations=zl, nodes=zl.clone(),
                                 reasons=[why] * k, evaluations=zl.clone(), budget=torch.zeros(k, dtype=torch.bool, device=dev),
                                 jacobian=no_jac(k))

    def attempt(idx, how, colloc=True):
        got = direct(idx) if how == "warm" else None
        if how == "warm" and solver.warm_fallback == "keep":
            if got is None:
                return kept(idx)
            di, cd = got
            rest = torch.cat([di[~cd.converged], idx[~torch.isin(idx, di)]])
            return _merge_direct(idx, di, cd, [(rest, *kept(rest))] if rest.numel() else [], Kmax, d)
        if got is not None:
            di, cd = got
            # pairs whose warm collocation failed start afresh (the usual start from the line);
            # pairs without a certified warm curve go through the energy stage from their curves
            parts = []
            for rest, start in ((di[~cd.converged], "line"), (idx[~torch.isin(idx, di)], "warm_curves")):
                if rest.numel():
                    parts.append((rest, *attempt(rest, start)))
            return _merge_direct(idx, di, cd, parts, Kmax, d)
        how = "warm" if how == "warm_curves" else how
        with torch.no_grad():
            c0 = _initial_curves(z0, z1, idx, how, graph, t_lgl, n_points if how == "graph" else degree + 1, warm)
            k = idx.numel()
            bulges = how == "line" and solver.starts > 1 and k > 0
            if bulges:
                c0 = torch.cat([c0, _bulged_curves(c0, t_lgl, solver.starts - 1)], 0)
            # with several starts, the shortest is chosen after _PICK_AT iterations and only it
            # goes on (the choice rarely changes later, see _PICK_AT)
            first_iters = min(energy_max_iter, _PICK_AT) if bulges else energy_max_iter
            er = minimize_spectral_energy(metric, c0, max_iter=first_iters, rtol=e_rtol, deadline=deadline)
            if bulges:
                # the shortest of the starts (dense length) is collocated: not the lowest energy,
                # which for curves the energy stage left unconverged (uneven speed, E > L²) often
                # picks a start that converges to a longer geodesic
                sr = nodes_to_series(er.nodes)
                Ls, _ = _dense_length(metric, z0[idx].repeat(solver.starts, 1), z1[idx].repeat(solver.starts, 1),
                                      lambda t: _eval_series(sr, t))
                ran_out = ~er.converged & (er.iterations >= first_iters)
                er, pick = _shortest_start(er, k, solver.starts, Ls)
                go = torch.nonzero(ran_out[pick]).reshape(-1)
                if energy_max_iter > first_iters and go.numel() and not _expired(deadline):
                    er2 = minimize_spectral_energy(metric, er.nodes[go], max_iter=energy_max_iter - first_iters, rtol=e_rtol,
                                                   deadline=deadline)
                    er.nodes[go], er.energy[go], er.converged[go] = er2.nodes, er2.energy, er2.converged
                    er.iterations[go] += er2.iterations
                    if er.evaluations is not None:
                        er.evaluations[go] += er2.evaluations
                    rest = f"no convergence in {energy_max_iter - first_iters} iterations"
                    for j, i in enumerate(go.tolist()):  # (the count in a reason is the stage's total)
                        er.reasons[i] = er2.reasons[j].replace(rest, f"no convergence in {energy_max_iter} iterations")
            ser = nodes_to_series(er.nodes)
            if colloc:
                cr = collocate(metric, z0[idx], z1[idx], ser, tol=tol, nodes=nodes, max_nodes=first_max, max_iter=max_iter,
                               deadline=deadline, keep_jacobian=keep_jac, refine_failed=not solver.piecewise,
                               fixed_point_iter=solver.fixed_point_iter)
            else:
                cr = not_collocated(k, ser, "energy curve only (a start of the piecewise stage)")
        evals[idx] += cr.evaluations + er.evaluations
        budget[idx] = cr.budget | (_expired(deadline) & ~cr.converged)
        return er, ser, cr

    Kmax = max(max_nodes + 2, degree + 1)

    def padk(x):
        return torch.cat([x, x.new_zeros(x.shape[0], Kmax - x.shape[1], d)], 1) if x.shape[1] < Kmax else x

    keep_jac = solver.keep_jacobians

    def no_jac(k):
        return torch.full((k, max_nodes, d, d, 2), float("nan"), dtype=dt, device=dev) if keep_jac else None

    def padj(j):
        return _pad_nodes(j, max_nodes)

    all_idx = torch.arange(n, device=dev)
    evals = torch.zeros(n, dtype=torch.long, device=dev)
    budget = torch.zeros(n, dtype=torch.bool, device=dev)
    kept_mask = torch.zeros(n, dtype=torch.bool, device=dev)  # (warm_fallback="keep": not solved)
    same = (z0 == z1).all(1)
    # warm pairs certified by piecewise collocation: piecewise collocation again, from their moved
    # paths (no global stages); those it certifies are done, the rest take the usual route
    pre = None
    if warm is not None and warm.piece is not None and solver.piecewise and n and not _expired(deadline):
        pm = warm.piece & ~same
        if bool(pm.any()):
            pi = torch.nonzero(pm).reshape(-1)
            starts = warm.pseries[pi].to(dt)
            with torch.no_grad():
                pr = collocate_piecewise(metric, z0[pi], z1[pi], starts, tol=tol,
                                         max_segments=solver.max_segments, max_iter=2 * solver.max_iter, deadline=deadline,
                                         stall_retry=solver.stall_retry)
            evals[pi] += pr.evaluations
            pok = pr.converged.clone()
            preasons = list(pr.reasons)
            _reject_longer_than_line(metric, z0[pi], z1[pi], pr.length, pok, preasons, tol)
            pre = (pi, pr, pok, preasons, starts)
    first = all_idx if pre is None else all_idx[~torch.isin(all_idx, pre[0][pre[2]])]
    # a decoder with C¹ kinks (ELU, ...): a global polynomial does not resolve the jumps of the
    # equations, so the energy curves go straight to the piecewise stage, whose meshes have a point
    # at every kink (on a plain-PyTorch ELU digits VAE the global passes were most of the budget)
    kinked = solver.piecewise and _kink_fn(metric) is not None
    # a decoder with C⁰ kinks (ReLU, ...): its metric jumps where a unit switches, and a geodesic
    # refracts there, which no stage models. Pairs whose straight line crosses such a kink get the
    # energy stage only (its curve is the upper bound: on a plain-PyTorch ReLU digits VAE the other
    # stages took the 1 s budget and found the same lengths); the others are solved as usual, and a
    # certified curve that crosses a kink is not reported as certified (connecting_geodesic)
    bound_only = torch.zeros(n, dtype=torch.bool, device=dev)
    k0 = _kink_fn(metric, c0=True)
    if k0 is not None and n:
        tl = torch.linspace(0, 1, 257, dtype=dt, device=dev)[None, :, None]
        with torch.no_grad():
            bound_only = crosses_kinks(k0, z0[:, None] + tl * (z1 - z0)[:, None]) & ~same
    groups = []
    for sel, colloc in ((first[~bound_only[first]], not kinked), (first[bound_only[first]], False)):
        if sel.numel():
            groups.append((sel, *attempt(sel, init, colloc)))
    if len(groups) == 1 and groups[0][0].numel() == n:
        _, er, ser, cr = groups[0]
    else:
        er, ser, cr = _merge_direct(all_idx, all_idx[:0], _empty_collocation(Kmax, d, dt, dev, no_jac(0)), groups, Kmax, d)
        for g in groups:
            if g[3].direct is not None:
                cr.direct[g[0]] = g[3].direct
    for i in torch.nonzero(bound_only).reshape(-1).tolist():
        cr.reasons[i] = ("the straight line crosses a jump of the metric (a first derivative of the decoder jumps there): "
                         "energy minimisation only")
    # pairs certified straight from a warm collocation curve compete with the graph path only
    # when it is strictly shorter (their curve was the shortest found for a nearby pair)
    warm_direct = cr.direct if cr.direct is not None else torch.zeros(n, dtype=torch.bool, device=dev)
    conv = cr.converged.clone()
    series = torch.where(conv[:, None, None], padk(cr.series), padk(ser))
    length, v = cr.length.clone(), cr.velocity0.clone()
    rel, drift, resid = cr.rel_residual.clone(), cr.speed_drift.clone(), cr.residual.clone()
    iters, e_iters, nq = cr.iterations.clone(), er.iterations.clone(), cr.nodes.clone()
    jacs = padj(cr.jacobian).clone() if keep_jac else None
    reasons = list(cr.reasons)
    for i in range(n):
        if not bool(conv[i]) and er.reasons[i]:
            reasons[i] = f"{er.reasons[i]}; {reasons[i]}" if reasons[i] else er.reasons[i]
    used = [init] * n
    how_cert = ["collocation" if bool(c) else "" for c in conv]

    knots = None
    from_knots = torch.zeros(n, dtype=torch.bool, device=dev)
    if pre is not None:
        pi, pr, pok, preasons, _ = pre
        fi = pi[pok]
        iters[pi] += pr.iterations
        budget[pi] |= pr.budget & ~pok
        if fi.numel():
            if series.shape[1] < _PATH_K:
                series = torch.cat([series, series.new_zeros(n, _PATH_K - series.shape[1], d)], 1)
                Kmax = _PATH_K
            conv[fi], from_knots[fi], warm_direct[fi] = True, True, True
            length[fi], v[fi], nq[fi] = pr.length[pok], pr.velocity0[pok], pr.segments[pok] * solver.stages
            rel[fi], drift[fi], resid[fi] = pr.rel_residual[pok], pr.speed_drift[pok], pr.residual[pok]
            series[fi] = padk(pre[4][pok])
            knots = _put_knots(knots, n, fi, tuple(k[pok] for k in pr.knots))
        for j, i in enumerate(pi.tolist()):
            if bool(pok[j]):
                reasons[i], how_cert[i] = "", "piecewise collocation"
            else:
                reasons[i] = f"warm piecewise collocation: {preasons[j]}; {reasons[i]}" if reasons[i] else \
                    f"warm piecewise collocation: {preasons[j]}"

    # the same endpoints: the constant curve
    if bool(same.any()):
        conv[same] = True
        series[same] = 0.0
        series[same, 0] = z0[same]
        length[same], v[same], rel[same], drift[same], resid[same] = 0.0, 0.0, 0.0, 0.0, 0.0
        for i in torch.nonzero(same).reshape(-1).tolist():
            reasons[i], how_cert[i] = "", "collocation"

    alt_curves = None
    first_series = series  # the first start's curves, kept where the graph start's replace them (from_graph)
    from_graph = torch.zeros(n, dtype=torch.bool, device=dev)
    frozen = kept_mask | bound_only  # (not solved further)
    retry = ~conv & ~frozen
    if graph is not None and init != "graph" and n:
        # the graph path is a competitor: certified pairs longer than it are re-solved from it too
        with torch.no_grad():
            glen = torch.as_tensor(graph.shortest_paths(z0, z1).lengths, dtype=dt, device=dev)
        # (a kNN path is typically 5-15 % longer than the geodesic it follows: relaxing a path up
        # to 15 % longer than the certified curve can still find a shorter geodesic)
        retry = retry | (glen < length * torch.where(warm_direct, 1.0, 1.15))
    parts = []
    if graph is not None and init != "graph" and bool(retry.any()) and not _expired(deadline):
        first_series = series.clone()
        bad_all = torch.nonzero(retry).reshape(-1)
        # pairs the first start did not certify take only the graph start's energy stage when the
        # piecewise stage follows: its curve is a piecewise start and bounds the length; global
        # collocation from it certified few of them (on the hard pairs of a digits VAE, 9 of 68 in
        # 0.9 s; the piecewise stage certified as many without it, and the k-means fits came out
        # identical). Certified pairs longer than the graph path are collocated from it as before
        parts = [(bad_all, True)]
        if solver.piecewise:
            parts = [(bad_all[conv[bad_all]], True), (bad_all[~conv[bad_all]], False)]
    for bad, colloc in parts:
        if bad.numel() == 0 or _expired(deadline):
            continue
        was = conv[bad].clone()
        try:
            er2, ser2, cr2 = attempt(bad, "graph", colloc)
        except ValueError as exc:  # e.g. a pair outside the graph's connected component
            for i in bad.tolist():
                reasons[i] = f"line init: {reasons[i]}; graph init unavailable: {exc}"
        else:
            iters[bad] += cr2.iterations
            e_iters[bad] += er2.iterations
            # a certified graph start replaces the first solution when it is shorter (or the first failed)
            fixed = cr2.converged & (~was | (cr2.length < length[bad]))
            for j, i in enumerate(bad.tolist()):
                if bool(fixed[j]):
                    used[i], reasons[i], how_cert[i] = "graph", "", "collocation"
                elif not bool(was[j]):
                    reasons[i] = f"{init} init: {reasons[i]}; graph init: {cr2.reasons[j]}"
            fi = bad[fixed]
            conv[fi] = True
            from_knots[fi] = False  # (a warm piecewise solution the graph start beat)
            series[fi] = padk(cr2.series)[fixed]
            length[fi], v[fi], nq[fi] = cr2.length[fixed], cr2.velocity0[fixed], cr2.nodes[fixed]
            if keep_jac:
                jacs[fi] = padj(cr2.jacobian)[fixed]
            rel[fi], drift[fi], resid[fi] = cr2.rel_residual[fixed], cr2.speed_drift[fixed], cr2.residual[fixed]
            # the graph start's curve is kept as the best curve of pairs that still fail (it avoids
            # obstacles); certified pairs keep theirs (the minimality check compares lengths later)
            keep2 = ~fixed & ~was
            nf = bad[keep2]
            series[nf] = padk(ser2)[keep2]
            from_graph[nf] = True
            for j in torch.nonzero(keep2).reshape(-1).tolist():
                used[int(bad[j])] = "graph"
            alt = ~fixed & was  # certified from the first start; the graph start's curve is a competitor
            if bool(alt.any()):
                alt_curves = (bad[alt], padk(ser2)[alt])

    # piecewise collocation on adaptive meshes (a constant-Euclidean-speed pregeodesic, then
    # reparametrised by arclength; see .piecewise) for the pairs still not certified, from their
    # best curves: it resolves the sharp features of RBF variances that a global polynomial needs
    # hundreds of nodes for
    pwm = ~conv & ~budget & ~same & ~frozen
    if solver.piecewise and bool(pwm.any()) and not _expired(deadline):
        pi = torch.nonzero(pwm).reshape(-1)
        a_, b_ = z0[pi], z1[pi]
        with torch.no_grad():
            # two starts: the pair's best curve (its start's energy curve) and the straight line,
            # the shorter first (the best curve of a failed solve can be far from any geodesic; the
            # line then often is not). Where the graph start was tried too, its energy curve is a
            # third candidate, after the first start's: on the hard pairs of a digits VAE (k-means
            # centre -> code, tol 1e-2) the graph curves, often the shortest, were the worse
            # piecewise starts (from them 34 of 58 certified, 2.5 s; preferring the first start's
            # curves 45 of 58, 2.0 s)
            K_ = series.shape[1]
            third = bool(from_graph[pi].any())
            if not third:
                cands, names = [series[pi], _line_series_like(a_, b_, K_)], ["best curve", "line"]
            else:
                cands = [first_series[pi], series[pi], _line_series_like(a_, b_, K_)]
                names = ["first start's curve", "graph start's curve", "line"]
            Ls, bound = [], None
            for cs in cands[:-1]:
                L_, E_ = _dense_length(metric, a_, b_, lambda t, cs=cs: _eval_series(cs, t))
                Ls.append(torch.where(torch.isfinite(L_), L_, torch.full_like(L_, float("inf"))))
                bound = Ls[-1] + E_ if bound is None else torch.minimum(bound, Ls[-1] + E_)
            Ll, El = _dense_length(metric, a_, b_)
            Ls.append(Ll)
            bound = torch.minimum(bound, Ll + El)  # the shortest curve found so far
            Lo = torch.stack(Ls, 1)
            if third:
                # the first start's curve first, then the shorter of the others; pairs without a
                # graph start's curve (graph start certified, unavailable or out of time) have only
                # the line after it
                Lo[:, 0] = -1.0
                Lo[:, 1] = torch.where(from_graph[pi], Lo[:, 1], torch.full_like(Lo[:, 1], float("inf")))
            order = torch.argsort(Lo, 1)  # (n, candidates)
            stack = torch.stack(cands, 1)  # (n, candidates, K, d)
            rows = torch.arange(len(pi), device=dev)
            starts = stack[rows, order[:, 0]]
            okp = torch.zeros(len(pi), dtype=torch.bool, device=dev)
            why = [""] * len(pi)
            todo = torch.arange(len(pi), device=dev)
            for attempt_no in range(2):
                pr = collocate_piecewise(metric, a_[todo], b_[todo], starts[todo], tol=tol, max_segments=solver.max_segments,
                                         max_iter=2 * solver.max_iter, deadline=deadline, stall_retry=solver.stall_retry)
                ok = pr.converged & (pr.length <= bound[todo] * (1 + tol))
                evals[pi[todo]] += pr.evaluations
                iters[pi[todo]] += pr.iterations
                budget[pi[todo]] |= pr.budget & ~ok
                for j, k in enumerate(todo.tolist()):
                    if bool(ok[j]):
                        continue
                    w = pr.reasons[j] or (f"piecewise collocation converged to a geodesic (length {float(pr.length[j]):.6g}) "
                                          f"longer than the best curve found")
                    src = names[int(order[k, attempt_no])]
                    why[k] = f"{why[k]}; from the {src}: {w}" if why[k] else f"from the {src}: {w}"
                fi = pi[todo[ok]]
                if fi.numel():
                    okp[todo[ok]] = True
                    conv[fi] = True
                    from_knots[fi] = True
                    length[fi], v[fi], nq[fi] = pr.length[ok], pr.velocity0[ok], pr.segments[ok] * solver.stages
                    rel[fi], drift[fi], resid[fi] = pr.rel_residual[ok], pr.speed_drift[ok], pr.residual[ok]
                    knots = _put_knots(knots, n, fi, tuple(k[ok] for k in pr.knots))
                # the pairs that failed (not for lack of time) try the other start
                todo = todo[~ok & ~pr.budget]
                if todo.numel() == 0 or _expired(deadline):
                    break
                starts[todo] = stack[todo, order[todo, 1]]
        for j, i in enumerate(pi.tolist()):
            if bool(okp[j]):
                reasons[i], how_cert[i] = "", "piecewise collocation"
            else:
                reasons[i] = f"{reasons[i]}; piecewise: {why[j]}"

    # escalation: pairs still not certified (and not out of time) get one finer pass from their
    # best curve — twice the degree and the first nodes, up to max_nodes (sharp features of RBF
    # variances need up to 512 nodes; most pairs never get here)
    esc = ~conv & ~budget & ~same & ~frozen
    if bool(esc.any()) and 2 * nodes <= max_nodes and not kinked and not _expired(deadline):
        ei = torch.nonzero(esc).reshape(-1)
        with torch.no_grad():
            t2 = lgl_nodes(2 * degree, dt, dev)
            c0 = _eval_series(series[ei], t2)
            c0[:, 0], c0[:, -1] = z0[ei], z1[ei]
            er3 = minimize_spectral_energy(metric, c0, max_iter=energy_max_iter,
                                           rtol=e_rtol, deadline=deadline)
            ser3 = nodes_to_series(er3.nodes)
            cr3 = collocate(metric, z0[ei], z1[ei], ser3, tol=tol, nodes=2 * nodes, max_nodes=max_nodes,
                            max_iter=max_iter, deadline=deadline, keep_jacobian=keep_jac,
                            fixed_point_iter=solver.fixed_point_iter)
        evals[ei] += cr3.evaluations + er3.evaluations
        budget[ei] |= cr3.budget
        iters[ei] += cr3.iterations
        e_iters[ei] += er3.iterations
        K3 = max(Kmax, max_nodes + 2)
        if K3 > series.shape[1]:
            series = torch.cat([series, series.new_zeros(n, K3 - series.shape[1], d)], 1)
            Kmax = K3
        fixed = cr3.converged
        for j, i in enumerate(ei.tolist()):
            if bool(fixed[j]):
                reasons[i], how_cert[i] = "", "collocation"
            else:
                reasons[i] = f"{reasons[i]}; finer pass: {cr3.reasons[j]}"
        fi = ei[fixed]
        conv[fi] = True
        series[fi] = padk(cr3.series)[fixed]
        length[fi], v[fi], nq[fi] = cr3.length[fixed], cr3.velocity0[fixed], cr3.nodes[fixed]
        if keep_jac:
            jacs[fi] = padj(cr3.jacobian)[fixed]
        rel[fi], drift[fi], resid[fi] = cr3.rel_residual[fixed], cr3.speed_drift[fixed], cr3.residual[fixed]

    if solver.shooting_fallback and not bool((conv | frozen).all()) and not _expired(deadline):
        bad = torch.nonzero(~conv & ~frozen).reshape(-1)
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
                       max_iter=max_iter, max_steps=max_steps, bound=box, deadline=deadline)
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
        budget[bad] |= ~okb & torch.tensor(["budget" in r for r in sh["reasons"]], dtype=torch.bool, device=dev)
        fi = bad[okb]
        conv[fi] = True
        from_knots[fi] = True
        length[fi], v[fi] = sh["length"][okb], sh["v"][okb]
        rel[fi], drift[fi], resid[fi] = sh["rel_residual"][okb], sh["speed_drift"][okb], sh["residual"][okb]
        knots = _put_knots(knots, n, fi, tuple(k[okb] for k in sh["knots"]))

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

    how_cert = [h if bool(c) else "" for h, c in zip(how_cert, conv)]
    from_knots &= conv
    res = GeodesicResult(
        z0=z0, z1=z1, length=length, residual=resid, rel_residual=rel, speed_drift=drift, initial_velocity=v,
        reasons=reasons, init=used, method=how_cert, _series=series, _knots=knots, _from_knots=from_knots,
        discrete_curve=torch.zeros(n, n_points, d, dtype=dt, device=dev), _conv=conv, _budget=budget & ~conv,
        _alt=alt_curves, status=torch.zeros(n, dtype=torch.long, device=dev),
        stats=dict(iterations=iters, energy_iterations=e_iters, evaluations=evals, nodes=nq),
    )
    if keep_jac:  # (only a collocation-certified pair's blocks are used: they belong to its series)
        jacs[~conv | same] = float("nan")
        res._jacobian = jacs[:, : int(nq[conv].max()) if bool(conv.any()) else 1]  # (up to the finest Q used)
    return res


def _solve_shooting(metric, z0, z1, *, solver, tol, init, warm, graph, n_points, rtol, atol, recheck, deadline):
    n_points, max_iter, energy_max_iter, max_steps = solver.n_points, solver.max_iter, solver.energy_max_iter, solver.max_steps
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    tgrid = torch.linspace(0, 1, n_points, dtype=dt, device=dev)

    def attempt(idx, how):
        with torch.no_grad():
            c_init = _initial_curves(z0, z1, idx, how, graph, tgrid, n_points, warm)
            er = minimize_discrete_energy(metric, c_init, max_iter=energy_max_iter, rtol=1e-10)
            v_init = _initial_velocity(er.curve)
            sh = shoot(acc, mfn, z0[idx], z1[idx], v_init, ftol=0.1 * tol, rtol=rtol, atol=atol,
                       max_iter=max_iter, max_steps=max_steps, deadline=deadline)
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
    if graph is not None and init != "graph" and not bool(conv.all()) and not _expired(deadline):
        bad = torch.nonzero(~conv).reshape(-1)
        try:
            er2, sh2 = attempt(bad, "graph")
        except ValueError as exc:  # e.g. a pair outside the graph's connected component
            for i in bad.tolist():
                reasons[i] = f"line init: {reasons[i]}; graph init unavailable: {exc}"
            er2 = sh2 = None
    if sh2 is not None:
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
    budget = ~conv & torch.tensor(["budget" in r for r in reasons], dtype=torch.bool, device=dev)
    return GeodesicResult(
        z0=z0, z1=z1, length=length, residual=resid, rel_residual=rel, speed_drift=drift,
        initial_velocity=v, reasons=reasons, init=used, discrete_curve=curve_d, _knots=knots,
        method=["shooting" if bool(c) else "" for c in conv], _from_knots=conv.clone(), _polyline=~conv,
        _conv=conv, _budget=budget, _alt=None, status=torch.zeros(n, dtype=torch.long, device=dev),
        stats=dict(iterations=iters, energy_iterations=e_iters, nodes=torch.zeros(n, dtype=torch.long, device=dev),
                   evaluations=iters * 0),
    )


def log_map(metric, z0, z1, *, on_failure: str = "raise", return_result: bool = False, **kwargs):
    """Riemannian logarithm: the initial velocity ``v`` of the shortest geodesic from ``z0`` to ``z1``.

    ``‖v‖_{M(z0)}`` is the geodesic distance and ``exp_map(metric, z0, v) ≈ z1``.

    Args:
        metric, z0, z1: as in :func:`connecting_geodesic`; ``kwargs`` are its keyword options
            (``solver``, ``tol``, ``init``, ``graph``, ``budget``, ...).
        on_failure: ``"raise"`` (:class:`GeodesicConvergenceError` naming the pairs, with
            ``.result``), ``"warn"`` (a ``RuntimeWarning`` with the count) or ``"ignore"``; for
            uncertified pairs ``v`` is ``γ'(0)`` of the shortest curve found (see ``result.status``).
        return_result: also return the :class:`GeodesicResult`.

    Returns:
        ``(N, d)`` velocities (``(d,)`` for single codes), or ``(v, GeodesicResult)`` with
        ``return_result=True``.
    """
    on_failure = check_on_failure(on_failure)
    single = torch.as_tensor(z0).dim() == 1
    res = connecting_geodesic(metric, z0, z1, **kwargs)
    v = res.initial_velocity[0] if single else res.initial_velocity
    if not bool(res.converged.all()):
        msg = f"log_map: {res.message}"
        if on_failure == "raise":
            raise GeodesicConvergenceError(msg, res)
        if on_failure == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return (v, res) if return_result else v


class DistanceMatrix:
    """Geodesic distances with per-entry certification.

    Attributes:
        distances: ``(n_A, n_B)``: the certified distance where ``converged``, elsewhere the length
            of the shortest curve found (an upper bound, never above the straight line's).
        converged: ``(n_A, n_B)`` bool mask (``status == SUCCESS``).
        status: ``(n_A, n_B)`` long tensor of :class:`GeodesicStatus` values.
        rel_residual: ``(n_A, n_B)`` relative ODE residual of each solved geodesic.
        reasons: ``{(i, j): reason}`` for the pairs not certified (``i < j`` when ``B`` is ``None``).
        n_failed: number of solved pairs that are not certified (``len(reasons)``; the warning
            states the same count).
        stats: dict: ``pairs`` solved, ``wall_time`` (s), ``evaluations`` (total).

    ``np.asarray(result)`` / ``result.numpy()`` give the distances; ``result[i, j]`` indexes them.
    """

    def __init__(self, distances, converged, status, rel_residual, reasons, stats=None):
        self.distances = distances
        self.converged = converged
        self.status = status
        self.rel_residual = rel_residual
        self.reasons = reasons
        self.stats = stats or {}

    @property
    def n_failed(self) -> int:
        return len(self.reasons)

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
        return f"DistanceMatrix(shape={tuple(self.shape)}, failed pairs={self.n_failed})"


def distance_matrix(
    metric,
    A,
    B=None,
    *,
    solver=None,
    tol: float = 1e-6,
    graph=None,
    budget: Optional[float] = 1.0,
    chunk_size: int = 1024,
    progress: Optional[bool] = None,
    on_failure: str = "warn",
    backend="serial",
    client=None,
    block_size: Optional[int] = None,
) -> DistanceMatrix:
    """Pairwise geodesic distances between the rows of ``A`` and of ``B``.

    Args:
        metric: a latentgeo metric (float32 models are solved on a float64 copy made once).
        A: ``(n_A, d)`` codes. B: ``(n_B, d)`` codes, or ``None`` for ``A`` against itself (then only
            the ``i < j`` pairs are solved; the result is symmetric with a zero diagonal).
        solver, tol, graph, budget: as in :func:`connecting_geodesic` (``graph``: e.g.
            ``LatentGraph(metric, A)``, built once by the caller and reused).
        chunk_size: pairs per :func:`connecting_geodesic` call.
        progress: progress bar over pairs (solved / certified); Ctrl-C stops early and returns the
            matrix so far (unsolved entries: the straight line's length, status ``STOPPED``).
        on_failure: ``"warn"`` (a ``RuntimeWarning`` with the count), ``"raise"`` or ``"ignore"``.
        backend: ``"serial"`` (default: the pairs are solved here, chunk by chunk), ``"dask"`` or a
            :class:`latentgeo.backends.Backend`: blocks of ``block_size`` consecutive pairs become
            tasks (see :mod:`latentgeo.backends.dask` for clients, pickling and threads).
        client: a ``distributed.Client`` for ``backend="dask"`` (``None``: the current client).
        block_size: pairs per block/task (default ``chunk_size``; each block is solved with
            ``chunk_size``). The blocks are the pair order cut every ``block_size`` pairs whatever
            the backend, so every backend gives the same numbers bit for bit; with the default
            ``block_size`` they equal the serial path's. For matrices too large to hold, see
            :func:`latentgeo.backends.distance_matrix_to_disk` and :func:`latentgeo.backends.nearest_centres`.

    Returns:
        :class:`DistanceMatrix`.
    """
    metric = _check_metric(metric)
    on_failure = check_on_failure(on_failure)
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    A, _ = as_latent_batch(A, metric.latent_dim, name="A", allow_single=False)
    sym = B is None
    if sym:
        B = A
    else:
        B, _ = as_latent_batch(B, metric.latent_dim, name="B", allow_single=False)
        if B.shape[1] != A.shape[1]:
            raise ValueError(f"A and B have different latent dimensions ({A.shape[1]} vs {B.shape[1]})")
        B = B.to(A.dtype)
    out_dtype = A.dtype
    metric, wdt = float64_metric(metric, A)
    A, B = A.to(wdt), B.to(wdt)
    na, nb = A.shape[0], B.shape[0]
    if sym:
        ii, jj = torch.triu_indices(na, na, offset=1, device=A.device)
    else:
        ii, jj = torch.meshgrid(torch.arange(na, device=A.device), torch.arange(nb, device=A.device), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
    D = torch.zeros(na, nb, dtype=wdt, device=A.device)
    S = torch.zeros(na, nb, dtype=torch.long, device=A.device)
    R = torch.zeros(na, nb, dtype=wdt, device=A.device)
    reasons = {}
    t0 = time.perf_counter()
    evals = 0
    npairs = ii.numel()
    done = 0
    blocked = not (isinstance(backend, str) and backend == "serial" and block_size is None and client is None)
    if blocked:
        evals, extra = _distance_blocks(metric, A, B, ii, jj, D, S, R, reasons, solver=solver, tol=tol, graph=graph,
                                        budget=budget, chunk_size=chunk_size, progress=progress, backend=backend,
                                        client=client, block_size=chunk_size if block_size is None else block_size)
    with progress_bar(total=0 if blocked else npairs, desc="geodesic distances",
                      progress=False if blocked else progress, unit="pair") as bar:
        try:
            for s in range(0, 0 if blocked else npairs, chunk_size):
                i, j = ii[s : s + chunk_size], jj[s : s + chunk_size]
                res = connecting_geodesic(metric, A[i], B[j], solver=solver, tol=tol, graph=graph, budget=budget,
                                          chunk_size=chunk_size, progress=False)
                D[i, j], S[i, j], R[i, j] = res.length, res.status, res.rel_residual
                evals += int(res.stats["evaluations"].sum())
                for k, r in enumerate(res.messages):
                    if r:
                        reasons[(int(i[k]), int(j[k]))] = r
                done = s + i.numel()
                bar.update(i.numel())
                bar.set_postfix(failed=len(reasons))
        except KeyboardInterrupt:
            i, j = ii[done:], jj[done:]
            lr = _line_result(metric, A[i], B[j], 5, GeodesicStatus.STOPPED, "stopped by the user (KeyboardInterrupt)")
            D[i, j], S[i, j], R[i, j] = lr.length, lr.status, lr.rel_residual
            for k, r in enumerate(lr.messages):
                reasons[(int(i[k]), int(j[k]))] = r
    if sym:
        D = D + D.T
        S = torch.maximum(S, S.T)
        R = R + R.T
    out = DistanceMatrix(D.to(out_dtype) if out_dtype.is_floating_point else D, S == 0, S,
                         R.to(out_dtype) if out_dtype.is_floating_point else R, reasons,
                         dict(pairs=npairs, wall_time=time.perf_counter() - t0, evaluations=evals,
                              **(extra if blocked else {})))
    if out.n_failed:
        counts = {}
        for s_ in S[ii, jj].tolist():
            if s_:
                counts[GeodesicStatus(s_).name] = counts.get(GeodesicStatus(s_).name, 0) + 1
        first = next(iter(reasons.items()))
        msg = (f"distance_matrix: {out.n_failed} of {npairs} geodesics not certified "
               f"({', '.join(f'{k} {v}' for k, v in counts.items())}); their entries hold upper bounds (the "
               f"shortest curve found) and are False in .converged (first: {first})")
        if on_failure == "raise":
            raise GeodesicConvergenceError(msg, out)
        if on_failure == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return out


def _distance_blocks(metric, A, B, ii, jj, D, S, R, reasons, *, solver, tol, graph, budget, chunk_size, progress,
                     backend, client, block_size):
    """``distance_matrix`` on a backend: fill ``D, S, R, reasons`` block by block; return evaluations, stats."""
    from ..backends import get_backend, map_pair_blocks

    block_size = check_int(block_size, "block_size", minimum=1)
    backend = get_backend(backend, client)
    npairs = ii.numel()
    starts = list(range(0, npairs, block_size))
    blocks = ({"z0": A[ii[s:s + block_size]], "z1": B[jj[s:s + block_size]]} for s in starts)
    it = map_pair_blocks(metric, blocks, backend=backend, solver=solver, tol=tol, graph=graph, budget=budget,
                         chunk_size=chunk_size)
    evals, done, pids, block_time = 0, set(), set(), [math.nan] * len(starts)
    with progress_bar(total=npairs, desc="geodesic distances", progress=progress, unit="pair") as bar:
        try:
            for k, o in it:
                i, j = ii[starts[k]:starts[k] + block_size], jj[starts[k]:starts[k] + block_size]
                D[i, j], S[i, j], R[i, j] = o["length"], o["status"], o["rel_residual"]
                for p, r in o["messages"].items():
                    reasons[(int(i[p]), int(j[p]))] = r
                evals += o["evaluations"]
                pids.add(o["pid"])
                block_time[k] = o["wall_time"]
                done.add(k)
                bar.update(i.numel())
                bar.set_postfix(failed=len(reasons))
        except KeyboardInterrupt:
            pass
        finally:
            it.close()
    for k in sorted(set(range(len(starts))) - done):
        i, j = ii[starts[k]:starts[k] + block_size], jj[starts[k]:starts[k] + block_size]
        lr = _line_result(metric, A[i], B[j], 5, GeodesicStatus.STOPPED, "stopped by the user (KeyboardInterrupt)")
        D[i, j], S[i, j], R[i, j] = lr.length, lr.status, lr.rel_residual
        for p, r in enumerate(lr.messages):
            reasons[(int(i[p]), int(j[p]))] = r
    return evals, dict(backend=backend.name, blocks=len(starts), block_size=block_size, block_wall_time=block_time,
                       workers=len(pids))
