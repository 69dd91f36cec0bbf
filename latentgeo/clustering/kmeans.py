"""Geodesic k-means: k-means under the geodesic distance of a latent metric.

:class:`GeodesicKMeans` follows scikit-learn's conventions (``fit``/``predict``/``transform``,
fitted attributes with a trailing underscore, ``random_state``, ``get_params``/``set_params``,
:func:`sklearn.base.clone`). Each iteration alternates

1. **assignment** by certified geodesic distance, with exact geodesics only where the choice is
   open: the distance ``d(x, c_a)`` of every point to its current centre and the centre–centre
   distances ``d(c_a, c_j)`` are solved exactly, and by the triangle inequality a centre ``c_j``
   with ``d(c_a, c_j) ≥ 2·d(x, c_a)`` cannot be closer (Elkan, ICML 2003), so only the
   remaining pairs are solved. The first assignment uses graph distances over the codes
   (:class:`~latentgeo.geodesics.LatentGraph`: shortest paths of metric-weighted kNN edges, an
   upper bound of the geodesic distance) and k-means++ seeding on them;
2. **centre update** by a Riemannian gradient step of the weighted Fréchet function of each
   cluster, ``c ← Exp_c(τ · mean_i Log_c(x_i))`` (Karcher's iteration, :mod:`.frechet`), with
   the step halved until the cluster's sum of squared distances decreases — so the inertia never
   increases — or by the cluster medoid (``centroid="medoid"``).

The log maps ``Log_c(x_i)`` are the initial velocities of the geodesics solved for the
assignment (centre → point), so a Karcher step costs no extra geodesics beyond the check of its
candidate. The final labels are the argmin of the geodesic distances; ``distance_converged_``
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
        tol: stop when no label changes and every centre moved less than ``tol`` times the
            median distance of its points.
        centroid: ``"karcher"`` (Fréchet mean by Riemannian gradient steps) or ``"medoid"``.
        n_neighbors: ``k`` of the kNN graph over the codes used for seeding and bounds.
        geodesic_options: keyword options for :func:`latentgeo.geodesics.connecting_geodesic`
            (``solver``, ``tol``, ``budget``, ...); defaults: ``tol=1e-4``, ``budget=1.0`` s per pair.
        random_state: ``None``, an int or a numpy random generator (scikit-learn's ``check_random_state``).
        verbose: print per-iteration inertia and show a progress bar over ``n_init × max_iter``.

    Attributes:
        labels_: ``(n,)`` int64 numpy array; cluster_centers_: ``(k, d)`` tensor;
        inertia_: ``Σ d(x_i, c_{label_i})²``; n_iter_: iterations of the kept run;
        distances_: ``(n,)`` distance of each point to its centre; distance_converged_: ``(n,)``
        bool, whether that distance is certified; inertia_history_: inertia after each iteration
        of the kept run; n_geodesics_: geodesics solved in ``fit`` (all runs); graph_: the
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
        n_neighbors: int = 10,
        geodesic_options: Optional[dict] = None,
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
        self.n_neighbors = n_neighbors
        self.geodesic_options = geodesic_options
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
        check_int(self.n_neighbors, "n_neighbors", 1)
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

    def _options(self):
        opts = {"tol": 1e-4, "budget": 1.0, "progress": False}
        opts.update(self.geodesic_options or {})
        return opts

    # ------------------------------------------------------------------ geodesics
    def _pairs(self, C, X, ci, xi):
        """Geodesics centre ``C[ci]`` → point ``X[xi]``: lengths, certified mask, initial velocities."""
        from ..geodesics import connecting_geodesic

        if len(ci) == 0:
            e = X.new_zeros(0)
            return e, torch.zeros(0, dtype=torch.bool), X.new_zeros(0, X.shape[1])
        z0, z1 = C[ci], X[xi]
        res = connecting_geodesic(self.metric, z0, z1, **self._opts)
        self._n_geo += len(ci)
        length = res.length.detach()
        conv = res.converged.clone().cpu()
        v = res.initial_velocity.detach()
        same = (z0 - z1).abs().amax(-1) == 0
        length = torch.where(same, torch.zeros_like(length), length)
        v = torch.where(same[:, None], torch.zeros_like(v), v)
        return length, conv | same.cpu(), v

    def _centre_distances(self, C):
        k = C.shape[0]
        iu = torch.triu_indices(k, k, 1)
        cc = torch.zeros(k, k, dtype=C.dtype, device=C.device)
        if iu.shape[1]:
            d, _, _ = self._pairs(C, C, iu[0], iu[1])
            cc[iu[0], iu[1]] = d
            cc[iu[1], iu[0]] = d
        return cc

    def _assign(self, X, C, labels):
        """Exact assignment with Elkan pruning. Returns labels, distances, certified, velocities (from the centre)."""
        n, k = X.shape[0], C.shape[0]
        idx = torch.arange(n)
        dist, conv, vel = self._pairs(C, X, labels, idx)
        if k == 1:
            return labels, dist, conv, vel
        cc = self._centre_distances(C)
        # c_j can be closer only if d(c_a, c_j) < 2 d(x, c_a) (triangle inequality)
        open_ = cc[labels] < 2.0 * dist[:, None]
        open_[idx, labels] = False
        pi, pj = torch.nonzero(open_, as_tuple=True)
        D = torch.full((n, k), math.inf, dtype=dist.dtype, device=dist.device)
        CV = torch.zeros(n, k, dtype=torch.bool)
        V = vel.new_zeros(n, k, vel.shape[1])
        D[idx, labels], CV[idx, labels], V[idx, labels] = dist, conv, vel
        if len(pi):
            d2, c2, v2 = self._pairs(C, X, pj, pi)
            D[pi, pj], CV[pi, pj], V[pi, pj] = d2, c2, v2
        lab = torch.argmin(D, 1)
        return lab, D[idx, lab], CV[idx, lab], V[idx, lab]

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
                p = (d2 / total).double().numpy()
                nxt = int(rng.choice(n, p=p / p.sum()))
            chosen.append(nxt)
            d2 = torch.minimum(d2, G[nxt] ** 2)
        return X[torch.tensor(chosen)].clone()

    # ------------------------------------------------------------------ centre update
    def _karcher(self, X, C, labels, dist, vel):
        """One step-controlled Karcher step per cluster. Returns new centres, and the members'
        distances/certification/velocities from the new centres (reused by the next assignment)."""
        from ..geodesics import exp_map

        C = C.clone()
        dist, vel = dist.clone(), vel.clone()
        conv = torch.ones(X.shape[0], dtype=torch.bool)
        moved = torch.zeros(C.shape[0], dtype=X.dtype)
        for j in range(C.shape[0]):
            members = torch.nonzero(labels == j, as_tuple=True)[0]
            if len(members) == 0:
                continue
            g = vel[members].mean(0)
            value = float((dist[members] ** 2).sum())
            step = 1.0
            while step >= 1.0 / 16:
                e = exp_map(self.metric, C[j][None], (step * g)[None])
                cand = e.z1[0].detach()
                if bool(e.converged[0]) and bool(torch.isfinite(cand).all()):
                    d2, c2, v2 = self._pairs(cand[None], X, torch.zeros(len(members), dtype=torch.long), members)
                    if float((d2**2).sum()) <= value * (1 + 1e-12):
                        moved[j] = float(self.metric.norm(C[j], step * g))
                        C[j] = cand
                        dist[members], conv[members], vel[members] = d2, c2, v2
                        break
                step *= 0.5
        return C, moved

    def _medoid(self, X, G, labels, k):
        C = []
        for j in range(k):
            members = torch.nonzero(labels == j, as_tuple=True)[0]
            sub = G[members][:, members]
            C.append(X[members[int(torch.argmin((sub**2).sum(1)))]])
        return torch.stack(C)

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
        self._opts = self._options()
        self._n_geo = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # bridging of disconnected kNN components
            graph = LatentGraph(self.metric, X, k=min(self.n_neighbors, n - 1), disconnected="bridge") if n > 1 else None
        G = graph.distances(X).to(X.dtype) if graph is not None else X.new_zeros(1, 1)
        best = None
        bar = progress_bar(total=self.n_init * self.max_iter, desc="geodesic k-means", progress=bool(self.verbose))
        for run in range(self.n_init):
            C = self._seed(X, G, rng, k)
            # first assignment by graph distances (an upper bound), then exact
            GC = graph.distances(X, C).to(X.dtype) if graph is not None else X.new_zeros(n, k)
            labels = torch.argmin(GC, 1)
            history = []
            n_iter = 0
            for it in range(self.max_iter):
                labels_new, dist, conv, vel = self._assign(X, C, labels)
                # empty clusters: re-seed at the point farthest from its centre
                for j in range(k):
                    if not bool((labels_new == j).any()):
                        far = int(torch.argmax(torch.where(torch.bincount(labels_new, minlength=k)[labels_new] > 1, dist,
                                                           torch.full_like(dist, -1.0))))
                        C[j] = X[far]
                        labels_new[far], dist[far], conv[far] = j, 0.0, True
                        vel[far] = 0.0
                changed = int((labels_new != labels).sum()) if it > 0 else n
                labels = labels_new
                history.append(float((dist**2).sum()))
                n_iter = it + 1
                bar.update(1)
                if self.verbose:
                    print(f"run {run} iteration {it}: inertia {history[-1]:.6g}, {changed} labels changed")
                if self.centroid == "karcher":
                    C_new, moved = self._karcher(X, C, labels, dist, vel)
                else:
                    C_new = self._medoid(X, G, labels, k)
                    moved = torch.as_tensor([float((a - b).norm()) for a, b in zip(C_new, C)], dtype=X.dtype)
                scale = torch.stack([dist[labels == j].median() if bool((labels == j).any()) else dist.new_tensor(0.0)
                                     for j in range(k)])
                C = C_new
                if changed == 0 and bool((moved <= self.tol * scale.clamp_min(1e-300)).all()):
                    break
            # final exact assignment to the final centres
            labels, dist, conv, _ = self._assign(X, C, labels)
            inertia = float((dist**2).sum())
            history.append(inertia)
            if best is None or inertia < best[0]:
                best = (inertia, labels, C, dist, conv, n_iter, history)
        bar.close()
        inertia, labels, C, dist, conv, n_iter, history = best
        self.labels_ = labels.cpu().numpy().astype(np.int64)
        self.cluster_centers_ = C
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self.distances_ = dist
        self.distance_converged_ = conv.cpu().numpy().astype(bool)
        self.inertia_history_ = history
        self.n_geodesics_ = self._n_geo
        self.graph_ = graph
        self.fit_time_ = time.perf_counter() - t0
        self.n_features_in_ = X.shape[1]
        return self

    def _check_fitted(self):
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' with appropriate arguments first"
            )

    def transform(self, X):
        """Geodesic distances ``(n_samples, n_clusters)`` to the centres (upper bounds where not certified)."""
        self._check_fitted()
        X = self._check_X(X)
        self._opts = self._options()
        self._n_geo = 0
        C = self.cluster_centers_
        n, k = X.shape[0], C.shape[0]
        ci = torch.arange(k).repeat_interleave(n)
        xi = torch.arange(n).repeat(k)
        d, _, _ = self._pairs(C, X, ci, xi)
        return d.reshape(k, n).T.contiguous()

    def predict(self, X):
        """Index of the geodesically nearest centre for each code ``(n_samples,)``."""
        self._check_fitted()
        X = self._check_X(X)
        self._opts = self._options()
        self._n_geo = 0
        C = self.cluster_centers_
        if self.graph_ is not None:
            start = torch.argmin(self.graph_.distances(X, C), 1)
        else:
            start = torch.zeros(X.shape[0], dtype=torch.long)
        labels, _, _, _ = self._assign(X, C, start)
        return labels.cpu().numpy().astype(np.int64)

    def fit_predict(self, X, y=None):
        """``fit(X).labels_``."""
        return self.fit(X).labels_
