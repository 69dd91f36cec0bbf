"""Geodesic k-means: k-means under the geodesic distance of a latent metric.

:class:`GeodesicKMeans` follows scikit-learn's conventions (``fit``/``predict``/``transform``,
fitted attributes with a trailing underscore, ``random_state``, ``get_params``/``set_params``,
:func:`sklearn.base.clone`). Each iteration alternates

0. **seeding and a first clustering on graph distances**: k-means++ (D² seeding) and k-medoids
   iterations on the shortest-path distances of a metric-weighted kNN graph over the codes
   (:class:`~latentgeo.geodesics.LatentGraph`; upper bounds of the geodesic distance, cheap), until
   the labels settle; then, with exact geodesics from the medoids,
1. **assignment** by certified geodesic distance, with exact geodesics only where the choice is
   open: the distance ``d(x, c_a)`` of every point to its current centre is solved, and a centre
   ``c_j`` is solved for only if a lower bound of ``d(x, c_j)`` is below it — for a Euclidean
   pullback ``M = JᵀJ`` of an embedding ``g``, the chord ``‖g(x) − g(c_j)‖``; for other metrics
   the triangle inequality with solved centre–centre distances, ``d(c_a, c_j) − d(x, c_a)``
   (Elkan, ICML 2003); and for either, a distance certified in an earlier assignment less the
   lengths of the centre's steps since (``d(x, c') ≥ d(x, c) − d(c, c')``, Elkan's carried lower
   bounds: on the {3, 4, 7} digits fit the final assignment solved 20 instead of 87 such pairs);
2. **centre update** by a Riemannian gradient step of the weighted Fréchet function of each
   cluster, ``c ← Exp_c(τ · mean_i Log_c(x_i))`` (Karcher's iteration, :mod:`.frechet`): ``τ = 1``
   first; a step that does not lower the cluster's sum of squared distances is replaced by the
   minimiser of the parabola through the value and slope at ``τ = 0`` and the rejected value
   (at most three candidates; otherwise the centre stays), so the inertia never increases — or by
   the cluster medoid (``centroid="medoid"``).

The log maps ``Log_c(x_i)`` are the initial velocities of the geodesics solved for the
assignment (centre → point), so a Karcher step costs no extra geodesics beyond the check of its
candidate. For a pair whose geodesic is not certified, its distance is the length of the curve found
(an upper bound), and the step follows the slope of that length as the centre moves
(:func:`~latentgeo.clustering.frechet.curve_log`), not the curve's initial velocity. The final labels are the argmin of the geodesic distances; ``distance_converged_``
says, per point, whether the distance to its centre is a certified geodesic (otherwise it is the
length of the shortest curve found: an upper bound).

References: Arvanitidis, Hansen & Hauberg, *Latent Space Oddity*, ICLR 2018 (§5, geodesic
k-means on VAE codes); Arthur & Vassilvitskii, *k-means++*, SODA 2007; Elkan, *Using the
triangle inequality to accelerate k-means*, ICML 2003.

Example (under a linear decoder the geodesic distance is Euclidean in the mapped space):
    >>> import torch, latentgeo as lg
    >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.cat([torch.randn(20, 2, generator=g, dtype=torch.float64) * 0.2 + c for c in (-2.0, 2.0)])
    >>> km = lg.GeodesicKMeans(metric, n_clusters=2, random_state=0).fit(X)
    >>> sorted(torch.bincount(torch.as_tensor(km.labels_)).tolist())
    [20, 20]
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state

from .._progress import progress_bar
from .._validation import as_latent_batch, check_choice, check_int, check_real
from .frechet import JAC_MAX_DIM

__all__ = ["GeodesicKMeans"]


class GeodesicKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """k-means with geodesic distances of a latent metric (see the module docstring).

    Args:
        metric: a latentgeo metric (:class:`~latentgeo.metric.PullbackMetric`, :class:`~latentgeo.metric.MetricField`).
        n_clusters: number of clusters ``k``.
        init: ``"k-means++"`` (D² seeding on graph distances) or ``"random"`` (k distinct codes),
            or an array ``(k, d)`` of initial centres.
        n_init: independent runs; the one with the lowest inertia is kept.
        max_iter: iterations per run.
        tol: stop when no label changes and either every centre moved less than ``tol`` times
            the median distance of its points or the centre update lowered the inertia by less
            than ``tol`` (relative); or when a whole iteration (re-assignment and centre update)
            lowered it by less than ``tol``, even if a few labels changed (the final assignment
            re-assigns them: on the {0, 1, 2} digits triplet this ended the fit after 3 iterations
            instead of 7, at inertia 1043.5 instead of 1043.2).
        centroid: ``"karcher"`` (Fréchet mean by Riemannian gradient steps) or ``"medoid"``.
        algorithm: ``"geodesic"`` (the default: the graph phase, then iterations and the final
            assignment with solved geodesics) or ``"graph"`` (k-medoids on the kNN graph's
            shortest-path distances only, no ODE solves: seconds instead of minutes on the codes of
            a trained VAE; its distances are upper bounds of the geodesic ones, so
            ``distance_converged_`` is all ``False``; ``centroid`` must be ``"medoid"``).
        n_neighbors: ``k`` of the kNN graph over the codes used for seeding and bounds.
        geodesic_options: keyword options for :func:`latentgeo.geodesics.connecting_geodesic`
            used by the final assignment, ``transform`` and ``predict`` (``solver``, ``tol``,
            ``budget``, ...); defaults: ``tol=1e-2``, a lighter solver
            (``Collocation(nodes=32, max_nodes=128, degree=16, energy_max_iter=20, max_iter=12, first_max_nodes=32, stall_retry=False)``: one first global pass, see :class:`~latentgeo.geodesics.Collocation`),
            ``budget=1.0`` s per pair, and the codes' graph as a competitor (``graph=graph_``: a
            certified distance is never longer than the graph path). ``tol`` bounds the ODE
            residual; the length's error is second order in it. Measured on the {0, 1, 2} digits
            VAE of ``benchmarks/clustering_digits.py`` (medoid → code pairs): the lengths certified
            at ``1e-2`` agreed with ``tol=1e-6`` ones to 1e-5 relative (60 random pairs) and to
            1.8e-5 on the 40 hardest (those this solver did not certify at ``1e-3``); there the
            lighter solver at ``1e-2`` certified 35 of 40 at 67 ms a pair, the full default solver at
            ``1e-3`` 36 of 40 at 640 ms. Pass ``{"tol": 1e-6, "solver": Collocation()}`` for
            tighter distances. Distances the last Karcher check certified from the final centres
            at a tolerance at least as strict are kept; the rest are solved again with these
            options (a re-solve longer than the curve kept is not the shortest known: the pair
            keeps the shorter length, uncertified).
        iteration_options: the same for the geodesics of the intermediate iterations (Karcher
            steps and re-assignments), which only steer the centres: defaults as above but with
            ``warm_fallback="keep"``, no graph and ``max_nodes=32`` (no finer global pass after
            the piecewise stage: on the three digits triplets of ``clustering_digits.py``, median
            fits of 10 seeds 12.2 / 11.5 / 4.2 → 9.1 / 9.2 / 3.8 s, lower inertias, F-measures
            94.6 / 98.0 / 89.1 → 94.6 / 97.8 / 89.0, certified final distances 97.8 → 96.1 % on
            {0, 1, 2} and 97.3 → 98.0 % on {3, 4, 7}): a pair that its stored curve does not carry (a
            failed direct Newton solve, or no certified curve) keeps the moved curve — an upper
            bound — instead of the whole pipeline (on the {0, 1, 2} triplet a fit took 96 s instead of 277 s);
            the final assignment solves those pairs. Their curves warm-start the next iteration's
            and the final solves; up to 8 latent dimensions with their Newton Jacobians
            (``keep_jacobians=True``: the warm Newton solves of certified pairs took 5.3 instead
            of 8.1 evaluations per node on that triplet).
        backend: ``"serial"`` (default) or ``"dask"`` / a :class:`latentgeo.backends.Backend`: the
            geodesics of each assignment and Karcher check are solved in blocks of
            ``block_size`` pairs on that backend (:func:`latentgeo.backends.solve_pair_blocks`;
            warm starts from stored curves are off there, since only lengths and velocities come back).
        client: the ``distributed.Client`` for ``backend="dask"`` (``None``: the current one).
        block_size: pairs per task with a non-serial backend.
        dtype: the working precision of the geodesics, Karcher steps and bounds: ``"auto"`` (float32
            when the tolerances of both option sets are at least ``1e-3``, as the defaults' ``1e-2``
            are; float64 otherwise), ``torch.float32`` (tolerances ``≥ 1e-4``) or ``torch.float64``.
            A model in another precision is copied once per ``fit``. Measured on the {0, 1, 2}
            digits fit: float32 took 24 s against 35 s in float64 (2 threads, same run), with
            3,025 against 3,029 geodesics, 94.4 % against 94.8 % of the final distances certified
            and inertia 1044.1 against 1043.5; the certified distances of both agreed with
            float64 ``tol=1e-6`` solves to a median 2e-7 relative.
        random_state: ``None``, an int or a numpy random generator (scikit-learn's ``check_random_state``).
        verbose: print per-iteration inertia and show a progress bar over ``n_init × max_iter``.

    The geodesics, Karcher steps and bounds are computed in the working precision ``dtype`` (on a
    copy of the model in it, made once per ``fit``); ``cluster_centers_`` and ``distances_`` come
    back in the codes' dtype.

    Attributes:
        labels_: ``(n,)`` int64 numpy array; cluster_centers_: ``(k, d)`` tensor;
        inertia_: ``Σ d(x_i, c_{label_i})²``; n_iter_: iterations of the kept run;
        distances_: ``(n,)`` distance of each point to its centre; distance_converged_: ``(n,)``
        bool, whether that distance is certified; labels_certified_: ``(n,)`` bool, whether the label
        is provably the nearest centre: the distance to it (certified or an upper bound) below a
        lower bound of every other centre's (certified distance, chord or triangle bound); on the
        {3, 4, 7} digits triplet 47 of the 91 points with uncertified distances still had proven
        labels, and 44 did not (their labels are the argmin of upper bounds); inertia_history_: inertia after each iteration
        of the kept run; n_geodesics_: geodesics solved in ``fit`` (all runs); n_open_pairs_: pairs
        (point, other centre) the lower bounds could not rule out; graph_: the
        :class:`~latentgeo.geodesics.LatentGraph` over the codes.
    """

    def __init__(
        self,
        metric=None,
        n_clusters: int = 8,
        *,
        init="k-means++",
        n_init: int = 1,
        max_iter: int = 20,
        tol: float = 1e-3,
        centroid: str = "karcher",
        algorithm: str = "geodesic",
        n_neighbors: int = 10,
        geodesic_options: Optional[dict] = None,
        iteration_options: Optional[dict] = None,
        backend="serial",
        client=None,
        block_size: int = 256,
        dtype="auto",
        random_state=None,
        verbose: bool = False,
    ):
        self.metric = metric
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.centroid = centroid
        self.algorithm = algorithm
        self.n_neighbors = n_neighbors
        self.geodesic_options = geodesic_options
        self.iteration_options = iteration_options
        self.backend = backend
        self.client = client
        self.block_size = block_size
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self, n: int):
        from ..metric import Metric

        if not isinstance(self.metric, Metric):
            raise TypeError(f"metric must be a latentgeo Metric, got {type(self.metric).__name__}")
        k = check_int(self.n_clusters, "n_clusters", 1)
        if k > n:
            raise ValueError(f"n_clusters={k} is larger than the number of samples n_samples={n}")
        check_int(self.n_init, "n_init", 1)
        check_int(self.max_iter, "max_iter", 1)
        check_real(self.tol, "tol", 0.0)
        check_choice(self.centroid, "centroid", ("karcher", "medoid"))
        check_choice(self.algorithm, "algorithm", ("geodesic", "graph"))
        if self.algorithm == "graph" and self.centroid != "medoid":
            raise ValueError("algorithm='graph' clusters by graph distances between codes: it needs centroid='medoid' "
                             f"(got centroid={self.centroid!r})")
        check_int(self.n_neighbors, "n_neighbors", 1)
        check_int(self.block_size, "block_size", 1)
        self._dtype = self._resolve_dtype()
        if isinstance(self.init, str):
            check_choice(self.init, "init", ("k-means++", "random"))
        return k

    def _check_X(self, X, name="X"):
        if X is None:
            raise ValueError(f"{name} is None; expected latent codes of shape (n_samples, d)")
        if not isinstance(X, torch.Tensor):
            arr = np.asarray(X)
            if arr.dtype == object:
                raise TypeError(f"{name} must be a numeric array of shape (n_samples, d)")
            p = self._param_dtype()
            X = torch.as_tensor(arr, dtype=p if np.issubdtype(arr.dtype, np.number) else None)
        if X.dim() != 2:
            raise ValueError(f"{name} must have shape (n_samples, d), got shape {tuple(X.shape)} "
                             "(reshape a single code to (1, d))")
        X, _ = as_latent_batch(X, self.metric.latent_dim, name=name, allow_single=False)
        return X

    def _param_dtype(self):
        dec = getattr(self.metric, "decoder", None)
        for m in (dec._modules() if dec is not None else []):
            p = next(iter(m.parameters()), None)
            if p is not None:
                return p.dtype
        return torch.get_default_dtype()

    _JAC_MAX_DIM = JAC_MAX_DIM  # latent dimensions up to which the iterations keep Newton Jacobians

    def _options(self, final=True, d=None):
        from ..geodesics import Collocation

        # one lighter solver and tol=1e-2 for both (see the class docstring for what was measured);
        # the iterations only steer the centres: a pair its stored curve does not carry keeps that
        # curve (an upper bound) instead of the whole pipeline, and the final assignment solves it.
        # The iterations keep each pair's Newton Jacobian with its curve: the next solve of the
        # pair (after the centre moved a little) starts with chord steps on it. The iterations also
        # skip the finer global pass (64-128 nodes, after the piecewise stage): on the first
        # assignment of the {3,4,7} digits fit it certified 5 of 28 pairs for 0.5 of 3.1 s
        # (stall_retry off: on the digits fits it certified more distances, 98.0 -> 99.1 % on
        # {3,4,7}, with a lower inertia, but made a fit ~3 s slower; benchmarks/RESULTS.md, session 21)
        solver = Collocation(nodes=32, max_nodes=128 if final else 32, degree=16, energy_max_iter=20, max_iter=12, first_max_nodes=32,
                             stall_retry=False, warm_fallback="solve" if final else "keep",
                             keep_jacobians=not final and (d is None or d <= self._JAC_MAX_DIM))
        opts = {"tol": 1e-2, "budget": 1.0, "progress": False, "solver": solver}
        if final:
            opts["graph"] = getattr(self, "_graph", None)
        opts.update((self.geodesic_options if final else self.iteration_options) or {})
        for bad in ("init", "return_result"):
            if bad in opts:
                raise ValueError(f"geodesic options may not set {bad!r} (GeodesicKMeans chooses the starting curves)")
        if "dtype" in opts:
            raise ValueError("geodesic options may not set 'dtype': pass GeodesicKMeans(dtype=...), the working "
                             "precision of the whole fit")
        opts["dtype"] = getattr(self, "_dtype", None)
        return opts

    _FLOAT32_TOL = 1e-3  # dtype="auto": float32 when every tolerance is at least this

    def _resolve_dtype(self):
        """The working dtype: ``dtype``, or for ``"auto"`` float32 when both option sets' tolerances
        are ``≥ 1e-3`` (float64 otherwise)."""
        from ..geodesics.connecting import check_dtype

        tols = [float(((o or {}).get("tol", 1e-2))) for o in (self.geodesic_options, self.iteration_options)]
        if isinstance(self.dtype, str) and self.dtype == "auto":
            return torch.float32 if min(tols) >= self._FLOAT32_TOL else torch.float64
        return check_dtype(self.dtype, min(tols))

    # ------------------------------------------------------------------ geodesics
    _T_WARM = 17  # points per stored curve (warm starts)
    _PATH_K = 33  # Legendre coefficients of a stored piecewise-certified path

    def _store(self, j, xj, C, res, X):
        """Keep the curves of the pairs centre ``j`` → points ``xj`` (for warm starts): the
        Legendre series and nodes of collocation-certified pairs (their next solve starts at that
        resolution, without the energy stage), the paths of pairs certified by piecewise
        collocation (their next solve is piecewise collocation from there), the sampled curve of
        every pair."""
        n, d = X.shape
        t = torch.linspace(0, 1, self._T_WARM, dtype=X.dtype, device=X.device)
        with torch.no_grad():
            curves = res.curve(t).detach().to(X.dtype)
        ser = getattr(res, "_series", None)
        direct = res._collocation_certified().cpu()
        # pairs certified by piecewise collocation: their path (in Euclidean arclength), from
        # which the next solve starts piecewise collocation directly
        piece, pser = res._piecewise_paths(self._PATH_K)
        piece = piece.cpu() & (ser is not None)
        if bool(piece.any()):
            rows = torch.nonzero(piece).reshape(-1)
            ser = ser.detach().clone()
            if ser.shape[1] < self._PATH_K:
                ser = torch.cat([ser, ser.new_zeros(ser.shape[0], self._PATH_K - ser.shape[1], d)], 1)
            ser[rows] = 0.0
            ser[rows, : self._PATH_K] = pser[rows.to(pser.device)].to(ser.dtype)
        jac = res.__dict__.get("_jacobian")
        K = 1 if ser is None else ser.shape[1]
        w = self._warm.get(j)
        if w is None or w["series"].shape[1] < K:
            old = w
            w = dict(pos=X.new_zeros(n, d), curves=X.new_zeros(n, self._T_WARM, d), have=torch.zeros(n, dtype=torch.bool),
                     series=torch.zeros(n, K, d, dtype=torch.float64), nodes=torch.zeros(n, dtype=torch.long),
                     direct=torch.zeros(n, dtype=torch.bool), piece=torch.zeros(n, dtype=torch.bool), jac=None)
            if old is not None:
                for key in ("pos", "curves", "have", "nodes", "direct", "piece", "jac"):
                    w[key] = old[key]
                w["series"][:, : old["series"].shape[1]] = old["series"]
            self._warm[j] = w
        if jac is not None and ser is not None:
            Q = jac.shape[1]
            if w["jac"] is None or w["jac"].shape[1] < Q:
                old = w["jac"]
                w["jac"] = torch.full((n, Q, d, d, 2), float("nan"), dtype=torch.float64)
                if old is not None:
                    w["jac"][:, : old.shape[1]] = old
            w["jac"][xj] = float("nan")
            w["jac"][xj, :Q] = jac.detach().double().cpu()
        elif w["jac"] is not None:
            w["jac"][xj] = float("nan")
        w["pos"][xj] = C[j]
        w["curves"][xj] = curves
        w["have"][xj] = True
        w["piece"][xj] = piece
        if ser is None:
            w["direct"][xj] = False
        else:
            S = ser.detach().double().cpu()
            w["series"][xj] = 0.0
            w["series"][xj, : S.shape[1]] = S
            w["nodes"][xj] = res.stats["nodes"].cpu()
            w["direct"][xj] = direct

    def _stored(self, cj, rows, X):
        """A :class:`~latentgeo.geodesics.GeodesicResult` of the stored pairs centre ``cj[i]`` →
        ``X[rows[i]]`` (as solved: from the centre's position then), to warm-start pairs near them."""
        from ..geodesics.result import GeodesicResult

        m, d = len(rows), X.shape[1]
        K = max(self._warm[j]["series"].shape[1] for j in torch.unique(cj).tolist())
        pos, curves = X.new_zeros(m, d), X.new_zeros(m, self._T_WARM, d)
        series = X.new_zeros(m, K, d)
        nodes, direct = torch.zeros(m, dtype=torch.long), torch.zeros(m, dtype=torch.bool)
        piece = torch.zeros(m, dtype=torch.bool)
        Qj = max((self._warm[j]["jac"].shape[1] for j in torch.unique(cj).tolist() if self._warm[j]["jac"] is not None),
                 default=0)
        jac = torch.full((m, Qj, d, d, 2), float("nan"), dtype=torch.float64) if Qj else None
        for j in torch.unique(cj).tolist():
            sel = cj == j
            w, r = self._warm[j], rows[sel]
            pos[sel], curves[sel], nodes[sel], direct[sel] = w["pos"][r], w["curves"][r], w["nodes"][r], w["direct"][r]
            piece[sel] = w["piece"][r]
            series[sel, : w["series"].shape[1]] = w["series"][r].to(X.dtype)
            if jac is not None and w["jac"] is not None:
                jac[sel, : w["jac"].shape[1]] = w["jac"][r]
        return GeodesicResult(
            z0=pos, z1=X[rows], length=X.new_zeros(m), status=(~(direct | piece)).long(),
            method=["collocation" if bool(c) else "piecewise collocation" if bool(p) else "" for c, p in zip(direct, piece)],
            _series=series, _polyline=~(direct | piece), discrete_curve=curves, stats={"nodes": nodes}, reasons=[""] * m, init=["warm"] * m,
            _jacobian=jac)

    def _pairs(self, C, X, ci, xi, final=False, store=True, source=None):
        """Geodesics centre ``C[ci]`` → point ``X[xi]``: lengths, certified mask, initial velocities.

        With ``store``, each pair's curve is kept (per centre index and point). A pair whose
        ``source`` point (default: the point itself) has a stored curve for the same centre —
        solved before, possibly from an earlier position of the centre — starts from that curve
        moved to the new endpoints (:func:`~latentgeo.geodesics.connecting_geodesic` with
        ``init=`` a result); a certified collocation curve is collocated directly at its
        resolution (Newton, no energy stage).
        """
        n = len(ci)
        length = X.new_zeros(n)
        conv = torch.zeros(n, dtype=torch.bool)
        v = X.new_zeros(n, X.shape[1])
        if n == 0:
            return length, conv, v
        opts = self._opts if final else self._opts_iter
        points = store  # X holds the codes (not the centres): stored curves and graph bounds apply
        z0, z1 = C[ci], X[xi]
        same = (z0 - z1).abs().amax(-1) == 0
        todo = torch.nonzero(~same).reshape(-1)
        ci_t, xi_t = torch.as_tensor(ci)[todo], torch.as_tensor(xi)[todo]
        src_t = xi_t if source is None else torch.as_tensor(source)[todo]
        store = store and self.backend == "serial"  # a cluster returns lengths and velocities, not curves
        have = torch.zeros(len(todo), dtype=torch.bool)
        if store:
            for j in torch.unique(ci_t).tolist():
                if j in self._warm:
                    sel = ci_t == j
                    have[sel] = self._warm[j]["have"][src_t[sel]]
        for warm in (True, False):
            sel = have == warm
            if not bool(sel.any()):
                continue
            ps, cj, xj, sj = todo[sel], ci_t[sel], xi_t[sel], src_t[sel]
            init = self._stored(cj, sj, X) if warm else None
            res = self._solve(z0[ps], z1[ps], init, opts)
            self._n_geo += len(ps)
            length[ps] = res.length.detach().to(X.dtype)
            conv[ps] = res.converged.cpu()
            v[ps] = res.initial_velocity.detach().to(X.dtype)
            bad = torch.nonzero(~res.converged.to(ps.device)).reshape(-1)
            if not final and bad.numel():
                # an uncertified pair's length is that of the curve found (an upper bound): the
                # Karcher step follows that bound's slope, not the curve's initial velocity
                from .frechet import curve_log

                v[ps[bad]] = curve_log(self._wm, res[bad], z0[ps[bad]]).to(X.dtype)
            if store:
                for j in torch.unique(cj).tolist():
                    m = torch.nonzero(cj == j).reshape(-1)
                    self._store(j, xj[m], C, res[m], X)
        conv |= same.cpu()
        if points and self._graph is not None and not bool(conv.all()):
            # an uncertified pair's length is the shortest curve the solver found; the graph path
            # through the codes is a real curve too, so the shorter of the two is the upper bound
            bad = torch.nonzero(~conv).reshape(-1)
            with torch.no_grad():
                gd = self._graph.distances(X[torch.as_tensor(xi)[bad]], C).to(X.dtype)
            gl = gd[torch.arange(len(bad)), torch.as_tensor(ci)[bad]]
            length[bad] = torch.minimum(length[bad], gl)
        return length, conv, v

    def _continued(self, C, X, labels, med):
        """Every point's geodesic from its centre ``C[j] = X[med[j]]`` (a code), solved outward along
        the shortest-path tree of the kNN graph from that centre: a point's start is the curve to
        its parent in the tree (one graph edge closer), moved to the point, so each wave after the
        first is warm-started. Returns ``(dist, conv, vel)`` like :meth:`_pairs`."""
        from scipy.sparse.csgraph import dijkstra

        n, k = X.shape[0], C.shape[0]
        _, pred = dijkstra(self._graph.adjacency, directed=False, indices=med.numpy(), return_predecessors=True)
        pred = np.atleast_2d(pred)
        need = []  # (centre, point, parent) including the members' ancestors on the tree
        for j in range(k):
            root = int(med[j])
            dj = {root: 0}
            for x in torch.nonzero(labels == j).reshape(-1).tolist():
                chain = []
                y = x
                while y not in dj and y >= 0:
                    chain.append(y)
                    y = int(pred[j, y])
                if y < 0:  # not reachable in the graph: solved cold
                    for c in chain:
                        dj[c] = 1
                    continue
                for c in reversed(chain):
                    dj[c] = dj[int(pred[j, c])] + 1
            for x, dx in dj.items():
                if x != root:
                    par = int(pred[j, x])
                    need.append((j, x, par if dx > 1 and par >= 0 and par != root else -1, dx))
        out_d, out_c = X.new_zeros(n), torch.zeros(n, dtype=torch.bool)
        out_v = X.new_zeros(n, X.shape[1])
        roots = set((j, int(med[j])) for j in range(k))
        for level in sorted(set(nd[3] for nd in need)):
            wave = [nd for nd in need if nd[3] == level]
            ci = torch.tensor([w[0] for w in wave], dtype=torch.long)
            xi = torch.tensor([w[1] for w in wave], dtype=torch.long)
            src = torch.tensor([w[2] if w[2] >= 0 else w[1] for w in wave], dtype=torch.long)
            dl, cl, vl = self._pairs(C, X, ci, xi, source=src)
            mine = labels[xi] == ci
            out_d[xi[mine]], out_c[xi[mine]], out_v[xi[mine]] = dl[mine], cl[mine], vl[mine]
        for j, r in roots:
            if int(labels[r]) == j:
                out_d[r], out_c[r], out_v[r] = 0.0, True, 0.0
        return out_d, out_c, out_v

    def _solve(self, z0, z1, init, opts):
        """One batch of pairs: here (``connecting_geodesic``, from ``init`` curves when given) or in
        blocks on the backend (:func:`latentgeo.backends.solve_pair_blocks`, from their default starts)."""
        if self.backend == "serial":
            from ..geodesics import connecting_geodesic

            return connecting_geodesic(self._wm, z0, z1, **opts, **({} if init is None else {"init": init}))
        from ..backends import solve_pair_blocks

        return solve_pair_blocks(self._wm, z0, z1, block_size=self.block_size, backend=self.backend,
                                 client=self.client, **opts)

    def _final_known(self, X, C, labels, known):
        """``known`` for the final assignment: the last Karcher check's distances of every point to
        ``C[labels]`` where certified at a tolerance ``≤`` the final one and not longer than the
        graph path, the rest re-solved with the final options; ``None`` (all solved again) when
        there is no such check."""
        from .frechet import keep_shorter

        if known is None or self._opts_iter.get("tol", 1e-6) > self._opts.get("tol", 1e-6):
            return None
        dist, conv, vel = (x.clone() for x in known)
        redo = ~conv
        if self._graph is not None and self._opts.get("graph") is not None:
            # the iterations' solves had no graph competitor: a kept distance longer than the graph
            # path (beyond the tolerance) is not the shortest known, so it is solved again
            with torch.no_grad():
                gl = self._graph.distances(X, C).to(dist.dtype)[torch.arange(X.shape[0]), labels]
            redo |= (dist > gl * (1 + self._opts.get("tol", 1e-6))).cpu()
        bad = torch.nonzero(redo).reshape(-1)
        if bad.numel():
            d2, c2, v2 = self._pairs(C, X, labels[bad], bad, final=True)
            # the kept length is that of a real curve from the same centre: a re-solve that comes
            # out longer (certified or not) is not the shortest curve known; the pair keeps the
            # shorter length, uncertified
            dist[bad], conv[bad], vel[bad], _ = keep_shorter(d2, c2, v2, dist[bad], vel[bad],
                                                             self._opts.get("tol", 1e-6) ** 2)
        return dist, conv, vel

    def _centre_distances(self, C, final):
        """Centre–centre distances and whether each is certified (``(k, k)`` each)."""
        k = C.shape[0]
        iu = torch.triu_indices(k, k, 1)
        cc = torch.zeros(k, k, dtype=C.dtype, device=C.device)
        ok = torch.ones(k, k, dtype=torch.bool)
        if iu.shape[1]:
            d, c, _ = self._pairs(C, C, iu[0], iu[1], final=final, store=False)
            cc[iu[0], iu[1]] = cc[iu[1], iu[0]] = d
            ok[iu[0], iu[1]] = ok[iu[1], iu[0]] = c
        return cc, ok

    def _assign(self, X, C, labels, final=False, known=None):
        """Assignment with Elkan pruning. Returns labels, distances, certified, velocities (from the centre).

        ``known``: ``(dist, conv, vel)`` of every point to ``C[labels]``, when already solved (by
        the Karcher step's check); otherwise those geodesics are solved first.
        """
        n, k = X.shape[0], C.shape[0]
        idx = torch.arange(n)
        dist, conv, vel = known if known is not None else self._pairs(C, X, labels, idx, final=final)
        if k == 1:
            self._proven = torch.ones(n, dtype=torch.bool)
            return labels, dist, conv, vel
        # c_j can be closer only if a lower bound of d(x, c_j) is below d(x, c_a) (≤ dist): for a
        # Euclidean pullback M = JᵀJ of an embedding g, every curve's length is at least the chord
        # ‖g(x) − g(c_j)‖ (its image is a curve in the embedding space)
        chord = low = self._chord_bounds(X, C)
        # lower bounds carried from earlier assignments (Elkan 2003, *Using the triangle inequality
        # to accelerate k-means*): a distance certified from a centre, less the length of every
        # step the centre has taken since (d(x, c') ≥ d(x, c) − d(c, c'))
        carried = getattr(self, "_lower", None)  # (n, k) float64 during a fit; None in predict
        lower = None if carried is None else carried.to(dist.dtype).to(dist.device)
        if lower is not None:
            low = lower if low is None else torch.maximum(low, lower)
        cc = cc_ok = None
        if chord is not None:
            # (this bound is at least the triangle inequality's with chords, ‖g(c_a) − g(c_j)‖ −
            # d(x, c_a); the centre–centre geodesics Elkan's rule needs cross the gaps between
            # clusters — the hardest pairs to solve — and are not solved)
            open_ = low < dist[:, None]
        else:
            cc, cc_ok = self._centre_distances(C, final)
            # c_j can be closer only if d(c_a, c_j) < 2 d(x, c_a) (triangle inequality: d(x, c_j) ≥
            # d(c_a, c_j) − d(x, c_a), valid with an upper bound of d(x, c_a) but only with a
            # certified centre–centre distance)
            open_ = (cc[labels] < 2.0 * dist[:, None]) | ~cc_ok[labels]
            if lower is not None:
                open_ &= lower < dist[:, None]
        open_[idx, labels] = False
        pi, pj = torch.nonzero(open_, as_tuple=True)
        D = torch.full((n, k), math.inf, dtype=dist.dtype, device=dist.device)
        CV = torch.zeros(n, k, dtype=torch.bool)
        V = vel.new_zeros(n, k, vel.shape[1])
        D[idx, labels], CV[idx, labels], V[idx, labels] = dist, conv, vel
        if len(pi):
            d2, c2, v2 = self._pairs(C, X, pj, pi, final=final)
            D[pi, pj], CV[pi, pj], V[pi, pj] = d2, c2, v2
        self._n_open += len(pi)
        if carried is not None:
            # the certified distances solved here are lower bounds (to their length accuracy tol²)
            slack = 1 - (self._opts if final else self._opts_iter).get("tol", 1e-6) ** 2
            self._lower = torch.where(CV, torch.maximum(carried, D.to(torch.float64).cpu() * slack), carried)
        lab = torch.argmin(D, 1)
        self._proven = self._labels_proven(D, CV, lab, low, cc, cc_ok)
        return lab, D[idx, lab], CV[idx, lab], V[idx, lab]

    def _labels_proven(self, D, CV, lab, low, cc, cc_ok):
        """Per point, whether its label is provably the nearest centre: its distance to ``C[lab]``
        (certified, or the length of a curve found: an upper bound either way) is below a lower
        bound of the distance to every other centre — that distance where certified (less its
        length accuracy ``tol²``), else the largest of the chord bound, a bound carried from an
        earlier assignment (see :meth:`_assign`) and, for metrics without an embedding, the
        triangle bound ``d(c_a, c_j) − d(x, c_a)`` with a certified centre–centre distance."""
        n, k = D.shape
        idx = torch.arange(n)
        up = D[idx, lab].to(torch.float64)
        lb = torch.zeros(n, k, dtype=torch.float64)
        if low is not None:
            lb = torch.maximum(lb, low.to(torch.float64).cpu())
        if cc is not None:
            tri = cc.to(torch.float64).cpu()[lab] - up.cpu()[:, None]
            lb = torch.maximum(lb, torch.where(cc_ok[lab], tri, torch.zeros_like(tri)))
        slack = 1 - self._opts.get("tol", 1e-6) ** 2
        lb = torch.where(CV, torch.maximum(lb, D.to(torch.float64).cpu() * slack), lb)
        lb[idx, lab] = math.inf
        return up.cpu() < lb.min(1).values

    def _working(self, X):
        """The codes in the working dtype, with ``self._wm`` the metric to solve on (a copy of the
        model in ``self._dtype``, made once here instead of by every ``connecting_geodesic`` call; in
        float64 on the {0, 1, 2} digits fit this gave the identical result, 13 % faster). The Karcher
        acceptance sums are Python floats (float64) in either precision."""
        from ..geodesics.connecting import working_metric

        if getattr(self, "_mw", None) is None:
            self._mw = working_metric(self.metric, X, getattr(self, "_dtype", None))
        self._wm = self._mw[0]
        return X.to(self._mw[1])

    def _chord_bounds(self, X, C):
        """``(n, k)`` lower bounds ``‖g(x) − g(c)‖`` of the geodesic distances (embedded metrics;
        ``None`` otherwise): the embeddings in the working dtype, their distances in float64, shrunk
        by 1e-9 relative and ``64·eps·(‖g(x)‖ + ‖g(c)‖)`` for the embeddings' rounding."""
        if not getattr(self.metric, "is_embedded", False):
            return None
        self._working(X)
        mw, wdt = self._mw
        with torch.no_grad():
            gx = mw.embedding(X.to(wdt)).double()
            gc = mw.embedding(C.to(wdt)).double()
        slack = 64 * torch.finfo(wdt).eps * (gx.norm(dim=-1)[:, None] + gc.norm(dim=-1)[None, :])
        return (torch.cdist(gx, gc) * (1 - 1e-9) - slack).clamp_min(0).to(X.dtype)

    # ------------------------------------------------------------------ seeding
    def _seed(self, X, G, rng, k):
        n = X.shape[0]
        if not isinstance(self.init, str):
            C = torch.as_tensor(np.asarray(self.init), dtype=X.dtype, device=X.device)
            if C.shape != (k, X.shape[1]):
                raise ValueError(f"init must have shape (n_clusters, d) = {(k, X.shape[1])}, got {tuple(C.shape)}")
            C, _ = as_latent_batch(C, self.metric.latent_dim, name="init", allow_single=False)
            return C.clone()
        if self.init == "random":
            return X[torch.as_tensor(rng.choice(n, size=k, replace=False))].clone()
        first = int(rng.randint(n))
        chosen = [first]
        d2 = G[first].clone() ** 2
        for _ in range(1, k):
            d2[torch.tensor(chosen)] = 0.0
            total = float(d2.sum())
            if not math.isfinite(total) or total <= 0:
                cand = [i for i in range(n) if i not in chosen]
                nxt = int(rng.choice(cand))
            else:
                p = (d2 / total).double().cpu().numpy()
                nxt = int(rng.choice(n, p=p / p.sum()))
            chosen.append(nxt)
            d2 = torch.minimum(d2, G[nxt] ** 2)
        return X[torch.tensor(chosen)].clone()

    # ------------------------------------------------------------------ centre update

    def _karcher(self, X, C, labels, dist, conv, vel):
        """One step-controlled Karcher step per cluster. Returns new centres, and the members'
        distances/certification/velocities from the new centres (reused by the next assignment)."""
        from .frechet import karcher_line_search, triangle_cap

        C = C.clone()
        dist, conv, vel = dist.clone(), conv.clone(), vel.clone()
        moved = torch.zeros(C.shape[0], dtype=X.dtype)
        for j in range(C.shape[0]):
            members = torch.nonzero(labels == j, as_tuple=True)[0]
            if len(members) == 0:
                continue
            state = (C[j].clone(), members.clone(), dist[members].clone(), conv[members].clone())
            last = self._rejected.get(j)
            if last is not None and all(torch.equal(a, b) for a, b in zip(last, state)):
                # every candidate was rejected from exactly this state (centre, members and their
                # distances) in the previous iteration: the same trials would be rejected again
                self._n_karcher_repeats += 1
                continue
            g = vel[members].mean(0)
            value = float((dist[members] ** 2).sum())
            with torch.no_grad():
                gn2 = float(self._wm.norm(C[j][None], g[None])[0]) ** 2
            slope = -2.0 * len(members) * gn2  # d/dτ Σ d(Exp_c(τg), x_i)² at τ = 0
            idx_j = torch.full((len(members),), j, dtype=torch.long)

            def evaluate(cand, step, j=j, members=members, idx_j=idx_j, gn=gn2**0.5):
                Cj = C.clone()
                Cj[j] = cand
                d2, c2, v2 = self._pairs(Cj, X, idx_j, members)
                # d(c', x) ≤ d(c', c) + d(c, x): a warm solve that came out longer than the exp-map
                # curve followed by the old curve (another, longer branch) is replaced by that bound,
                # uncertified, which keeps f(τ) continuous as τ → 0 (without it one such member
                # rejected every step of its cluster on the digits VAEs)
                d2, c2 = triangle_cap(d2, c2, dist[members], step * gn, self._opts_iter.get("tol", 1e-6) ** 2)
                return float((d2**2).sum()), (d2, c2, v2)

            step, cand, _, out = karcher_line_search(self._wm, C[j], g, value, slope, evaluate)
            if cand is not None:
                moved[j] = step * gn2**0.5
                C[j] = cand
                dist[members], conv[members], vel[members] = out
            if moved[j] == 0:
                self._rejected[j] = state
            else:
                self._rejected.pop(j, None)
        return C, moved, (dist, conv, vel)

    @staticmethod
    def _medoid_index(G, labels, k):
        """Per cluster, the member minimising the sum of squared (graph) distances to the others."""
        out = []
        for j in range(k):
            members = torch.nonzero(labels == j, as_tuple=True)[0]
            if len(members) == 0:  # an empty cluster keeps a point far from the others
                out.append(int(torch.argmax(G.min(1).values)))
                continue
            sub = G[members][:, members]
            out.append(int(members[int(torch.argmin((sub**2).sum(1)))]))
        return torch.tensor(out)

    def _medoid(self, X, G, labels, k):
        return X[self._medoid_index(G, labels, k)].clone()

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Cluster the codes ``X`` ``(n_samples, d)``. Returns ``self``."""
        from ..geodesics.graph import LatentGraph

        from ..metric import Metric

        t0 = time.perf_counter()
        if not isinstance(self.metric, Metric):
            raise TypeError(f"metric must be a latentgeo Metric, got {type(self.metric).__name__}")
        X = self._check_X(X)
        n = X.shape[0]
        k = self._check_params(n)
        rng = check_random_state(self.random_state)
        self._n_geo = 0
        self._n_karcher_repeats = 0
        self._n_open = 0
        self._warm = {}
        self._mw = None
        out_dtype = X.dtype
        X = self._working(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # bridging of disconnected kNN components
            graph = LatentGraph(self._wm, X, k=min(self.n_neighbors, n - 1), disconnected="bridge") if n > 1 else None
        G = graph.distances(X).to(X.dtype) if graph is not None else X.new_zeros(1, 1)
        self._graph = graph
        self._opts, self._opts_iter = self._options(True, X.shape[1]), self._options(False, X.shape[1])
        best = None
        bar = progress_bar(total=self.n_init * self.max_iter, desc="geodesic k-means", progress=bool(self.verbose))
        for run in range(self.n_init):
            C = self._seed(X, G, rng, k)
            # phase 1, on graph distances (cheap upper bounds of the geodesic distance): k-medoids
            # iterations until the labels settle; phase 2 below refines with exact geodesics
            GC = graph.distances(X, C).to(X.dtype) if graph is not None else X.new_zeros(n, k)
            labels = torch.argmin(GC, 1)
            if graph is not None and isinstance(self.init, str):
                for _ in range(self.max_iter):
                    med = self._medoid_index(G, labels, k)
                    new = torch.argmin(G[:, med], 1)
                    if bool((new == labels).all()):
                        break
                    labels = new
                C = X[self._medoid_index(G, labels, k)].clone()
            if self.algorithm == "graph":
                med = self._medoid_index(G, labels, k)
                dist = G[torch.arange(n), med[labels]]
                inertia = float((dist**2).sum())
                bar.update(self.max_iter)
                if best is None or inertia < best[0]:
                    none = torch.zeros(n, dtype=torch.bool)
                    best = (inertia, labels, X[med].clone(), dist, none, 1, [inertia], none)
                continue
            history = []
            n_iter = 0
            known = None
            prev_after = None
            self._warm = {}
            self._rejected = {}  # cluster -> the state its last Karcher step was rejected from
            self._lower = torch.zeros(n, k, dtype=torch.float64)  # Elkan bounds (see _assign)
            if graph is not None and isinstance(self.init, str):
                # the centres are codes (medoids): solve outward along the graph's shortest-path trees
                med = self._medoid_index(G, labels, k)
                known = self._continued(C, X, labels, med)
            for it in range(self.max_iter):
                labels_new, dist, conv, vel = self._assign(X, C, labels, known=known)
                # empty clusters: re-seed at the point farthest from its centre
                for j in range(k):
                    if not bool((labels_new == j).any()):
                        far = int(torch.argmax(torch.where(torch.bincount(labels_new, minlength=k)[labels_new] > 1, dist,
                                                           torch.full_like(dist, -1.0))))
                        C[j] = X[far]
                        self._lower[:, j] = 0.0
                        labels_new[far], dist[far], conv[far] = j, 0.0, True
                        vel[far] = 0.0
                changed = int((labels_new != labels).sum()) if it > 0 else n
                labels = labels_new
                history.append(float((dist**2).sum()))
                n_iter = it + 1
                bar.update(1)
                if self.verbose:
                    print(f"run {run} iteration {it}: inertia {history[-1]:.6g}, {changed} labels changed, "
                          f"{self._n_geo} geodesics so far ({time.perf_counter() - t0:.1f} s)")
                if self.centroid == "karcher":
                    C_new, moved, known = self._karcher(X, C, labels, dist, conv, vel)
                    # the step's exp-map curve (of length moved, to the exp map's accuracy) bounds
                    # d(c, c'): the carried lower bounds shrink by it
                    self._lower = (self._lower - moved.double().cpu()[None, :] * (1 + 1e-3)).clamp_min(0.0)
                else:
                    C_new = self._medoid(X, G, labels, k)
                    moved = torch.as_tensor([float((a - b).norm()) for a, b in zip(C_new, C)], dtype=X.dtype)
                    known = None
                    self._lower[:, moved.cpu() > 0] = 0.0  # (no bound of the geodesic step)
                scale = torch.stack([dist[labels == j].median() if bool((labels == j).any()) else dist.new_tensor(0.0)
                                     for j in range(k)])
                C = C_new
                if changed == 0 and bool((moved <= self.tol * scale.clamp_min(1e-300)).all()):
                    break
                # ... or when the centre update lowered the inertia by less than tol (relative):
                # Karcher's steps approach the Fréchet means only linearly, and labels that no
                # longer change are what the clustering is for
                if known is not None and it > 0:
                    after = float((known[0] ** 2).sum())
                    if changed == 0 and history[-1] - after <= self.tol * history[-1]:
                        break
                    # ... or when a whole iteration (re-assignment and centre update) lowered it by
                    # less than tol, whatever a few labels did: the final assignment re-assigns
                    if prev_after is not None and prev_after - after <= self.tol * prev_after:
                        break
                    prev_after = after
            # final assignment to the final centres, at the full tolerance (warm-started from the
            # iterations' curves); distances the last Karcher check certified from these centres
            # at a tolerance at least as strict are kept, the others solved again
            labels, dist, conv, _ = self._assign(X, C, labels, final=True, known=self._final_known(X, C, labels, known))
            inertia = float((dist**2).sum())
            history.append(inertia)
            if best is None or inertia < best[0]:
                best = (inertia, labels, C, dist, conv, n_iter, history, self._proven)
        bar.close()
        inertia, labels, C, dist, conv, n_iter, history, proven = best
        self.labels_ = labels.cpu().numpy().astype(np.int64)
        self.cluster_centers_ = C.to(out_dtype)  # (solved in the working dtype: see _working)
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self.distances_ = dist.to(out_dtype)
        self.distance_converged_ = conv.cpu().numpy().astype(bool)
        self.labels_certified_ = proven.cpu().numpy().astype(bool)
        self.inertia_history_ = history
        self.n_geodesics_ = self._n_geo
        self.n_open_pairs_ = self._n_open
        self.graph_ = graph
        self.fit_time_ = time.perf_counter() - t0
        self.n_features_in_ = X.shape[1]
        return self

    def _prepare_solves(self, X):
        """Solver state for ``transform``/``predict``; returns ``X`` and the centres in the working dtype."""
        self._graph = self.graph_
        self._dtype = self._resolve_dtype()
        self._opts, self._opts_iter = self._options(True), self._options(False)
        self._n_geo, self._n_open, self._warm, self._mw, self._lower = 0, 0, {}, None, None
        X = self._working(X)
        return X, self.cluster_centers_.to(X.dtype)

    def _check_fitted(self):
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' with appropriate arguments first"
            )

    def transform(self, X):
        """Geodesic distances ``(n_samples, n_clusters)`` to the centres (upper bounds where not certified)."""
        self._check_fitted()
        X = self._check_X(X)
        out_dtype = X.dtype
        X, C = self._prepare_solves(X)
        if self.algorithm == "graph":
            return self.graph_.distances(X, C).to(out_dtype)
        n, k = X.shape[0], C.shape[0]
        ci = torch.arange(k).repeat_interleave(n)
        xi = torch.arange(n).repeat(k)
        d, _, _ = self._pairs(C, X, ci, xi, final=True, store=False)
        return d.reshape(k, n).T.contiguous().to(out_dtype)

    def predict(self, X):
        """Index of the geodesically nearest centre for each code ``(n_samples,)``."""
        self._check_fitted()
        X = self._check_X(X)
        X, C = self._prepare_solves(X)
        if self.algorithm == "graph":
            return torch.argmin(self.graph_.distances(X, C), 1).cpu().numpy().astype(np.int64)
        if self.graph_ is not None:
            start = torch.argmin(self.graph_.distances(X, C), 1)
        else:
            start = torch.zeros(X.shape[0], dtype=torch.long)
        labels, _, _, _ = self._assign(X, C, start, final=True)
        return labels.cpu().numpy().astype(np.int64)

    def fit_predict(self, X, y=None):
        """``fit(X).labels_``."""
        return self.fit(X).labels_
