"""Report section ``clustering``: Euclidean vs geodesic k-means on the codes (``clustering.png``).

With ``k = clustering_k`` clusters (default: the number of classes of the labels), the codes (at
most ``clustering_max_codes`` of them, a seeded subsample beyond that) are clustered

* by scikit-learn's ``KMeans`` in the latent coordinates (Euclidean), and
* by :class:`~latentgeo.GeodesicKMeans` under the report's metric, with
  ``algorithm = clustering_algorithm``: ``"graph"`` (the default: k-means++ and k-medoids on the
  shortest-path distances of a metric-weighted kNN graph over the codes, no ODE solves — seconds
  on the demo's 1797 codes, where solved geodesics take minutes per iteration) or ``"geodesic"``
  (solved geodesics; for small code sets).

Both use ``ctx.random_state``. With labels, the F-measure of *Latent Space Oddity* (Table 1;
:func:`latentgeo.clustering.f_measure`) and the adjusted Rand index of each are reported. For a 2-D
latent, ``clustering.png`` shows both labelings over the magnification map, side by side.

Example:
    >>> from latentgeo.report import report_sections
    >>> "clustering" in [s.name for s in report_sections()]
    True
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from .context import ReportContext, ReportError, ReportSection

__all__ = ["SECTION"]


def _section_clustering(ctx: ReportContext) -> dict:
    from matplotlib.colors import LogNorm
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from ..clustering import GeodesicKMeans, f_measure

    algorithm = ctx.options["clustering_algorithm"]
    if algorithm not in ("graph", "geodesic"):
        raise ReportError(f"clustering_algorithm must be 'graph' or 'geodesic', got {algorithm!r}")
    codes, labels = ctx.codes, ctx.labels
    k = ctx.options["clustering_k"]
    if k is None:
        if labels is None:
            return {"skipped": "no labels to take the number of clusters from; set clustering_k"}
        k = int(len(np.unique(labels)))
    k = int(k)
    n = codes.shape[0]
    if k < 2 or k > n:
        return {"skipped": f"clustering needs 2 <= k <= number of codes, got k={k} for {n} codes"}
    idx = np.arange(n)
    max_codes = int(ctx.options["clustering_max_codes"])
    if n > max_codes:
        idx = np.sort(np.random.RandomState(int(ctx.random_state)).choice(n, max_codes, replace=False))
    X = codes[torch.as_tensor(idx)]
    truth = None if labels is None else np.asarray(labels)[idx]
    out = {"k": k, "n_codes": int(len(idx)), "algorithm": algorithm}
    t = time.perf_counter()
    eu = KMeans(k, n_init=10, random_state=int(ctx.random_state)).fit(X.detach().cpu().double().numpy())
    out["euclidean"] = {"seconds": time.perf_counter() - t, "inertia_latent": float(eu.inertia_)}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        km = GeodesicKMeans(ctx.metric, k, algorithm=algorithm, centroid="medoid" if algorithm == "graph" else "karcher",
                            random_state=int(ctx.random_state)).fit(X)
    out["geodesic"] = {"seconds": time.perf_counter() - t, "inertia": float(km.inertia_),
                       "certified_distances": float(np.mean(km.distance_converged_)),
                       "n_geodesics": int(km.n_geodesics_)}
    if truth is not None:
        for key, lab in (("euclidean", eu.labels_), ("geodesic", km.labels_)):
            out[key]["f_measure"] = f_measure(truth, lab)
            out[key]["adjusted_rand"] = float(adjusted_rand_score(truth, lab))
    if ctx.latent_dim == 2:
        mag, _, _ = ctx.magnification_grid
        data = np.ma.masked_less_equal(np.ma.masked_invalid(mag), 0.0)
        pos = data.compressed()
        x0, x1, y0, y1 = ctx.extent
        w = 10.0
        fig, axes = ctx.new_figure(figsize=(w, min(max(0.5 * w * (y1 - y0) / (x1 - x0) * 0.85 + 1.2, 3.5), w)),
                                   nrows=1, ncols=2, squeeze=False)
        Xn = X.detach().cpu().numpy()
        titles = {"euclidean": "Euclidean k-means (latent coordinates)",
                  "geodesic": f"geodesic k-means ({'kNN-graph distances' if algorithm == 'graph' else 'solved geodesics'})"}
        for ax, (key, lab) in zip(axes[0], (("euclidean", eu.labels_), ("geodesic", km.labels_))):
            if pos.size:
                vmin, vmax = float(pos.min()), float(pos.max())
                ax.imshow(data, origin="lower", extent=ctx.extent, cmap=ctx.options["cmap"], interpolation="nearest",
                          norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10)), aspect="equal", alpha=0.85)
            ax.scatter(Xn[:, 0], Xn[:, 1], c=lab, cmap="tab10", vmin=0, vmax=9, s=6, linewidths=0)
            if key == "geodesic":
                C = km.cluster_centers_.detach().cpu().numpy()
                ax.plot(C[:, 0], C[:, 1], "k*", ms=11, mec="w")
            t_ = titles[key]
            if truth is not None:
                t_ += f"\nF-measure {out[key]['f_measure']:.1f}, ARI {out[key]['adjusted_rand']:.3f}"
            ax.set_title(t_, fontsize=9)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_xlabel("$z_1$")
            ax.set_ylabel("$z_2$")
        ctx.save_figure(fig, "clustering.png")
    return out


SECTION = ReportSection(
    "clustering", _section_clustering, order=76,
    description="clustering.png: Euclidean vs geodesic k-means on the codes, F-measure and adjusted Rand index",
    defaults={"clustering_k": None, "clustering_max_codes": 2000, "clustering_algorithm": "graph"},
)
