"""Where a solved-geodesic ``GeodesicKMeans`` fit spends its time (numbers in RESULTS.md, sessions 7-12).

Per digit triplet (``--triplets``, default the {0,1,2} one) trains the digits VAE exactly as
``clustering_digits.py`` does (2-D latent, RBF variance, 300 epochs, ``random_state=0``), fits
``GeodesicKMeans(metric, 3, random_state=0)`` with the defaults on all its codes (or a random
subsample, ``--codes``) for each working precision in ``--dtypes`` (``auto``: float32 at the
default tolerances), and prints a table per phase: the geodesic solves of the iterations and of the
final assignment (pairs, wall time, certified), next to the fit's totals, F-measure, and agreement
with the graph variant's labels; with more than one fit, a summary table.

    PYTHONPATH=. .venv/bin/python benchmarks/kmeans_phases.py --threads 2 --triplets 012,347,569 --dtypes auto,float64
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clustering_digits import f_measure  # noqa: E402

import latentgeo as lg  # noqa: E402
from latentgeo.clustering.kmeans import GeodesicKMeans  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--codes", type=int, default=0, help="random subsample size (0: all codes)")
    ap.add_argument("--triplets", default="012", help="comma-separated digit triplets, e.g. 012,347,569")
    ap.add_argument("--dtypes", default="auto", help="comma-separated GeodesicKMeans dtypes: auto, float32, float64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RuntimeWarning)
    rows = []
    for trip in args.triplets.split(","):
        classes = [int(c) for c in trip]
        ds = lg.load_dataset("digits", classes=classes)
        model = lg.VAE(ds.dim, 2, hidden=(64, 64), item_shape=ds.item_shape, random_state=0)
        lg.train_vae(model, ds, epochs=args.epochs, variance="rbf", random_state=0, progress=False)
        with torch.no_grad():
            codes = model.encode_mean(ds.data)
        truth = ds.labels.numpy()
        if 0 < args.codes < len(codes):
            p = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))[: args.codes]
            codes, truth = codes[p], truth[p.numpy()]
        metric = lg.PullbackMetric(model.decoder_for_analysis())
        gr = GeodesicKMeans(metric, n_clusters=3, random_state=0, algorithm="graph", centroid="medoid").fit(codes)
        for dtype in args.dtypes.split(","):
            rows.append(fit_one(trip, dtype, metric, codes, truth, gr, args.threads))
    if len(rows) > 1:
        print("| triplet | dtype | fit, s | geodesics | iterations | distances certified | labels proven | inertia | F | ARI vs graph |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print("| {" + ",".join(r["triplet"]) + f"}} | {r['dtype']} | {r['fit']:.1f} | {r['n_geo']} | {r['n_iter']} | "
                  f"{r['cert']:.1f} % | {r['proven']:.1f} % | {r['inertia']:.1f} | {r['F']:.1f} | {r['ari']:.3f} |")


def fit_one(trip, dtype, metric, codes, truth, gr, threads):
    """One timed default fit (``dtype`` aside), with the per-phase table of its geodesic solves."""
    T, N, OK = collections.defaultdict(float), collections.Counter(), collections.Counter()
    solve = GeodesicKMeans._solve

    def timed(self, z0, z1, init, opts):  # every batch of geodesics the fit solves
        t = time.perf_counter()
        r = solve(self, z0, z1, init, opts)
        key = ("final" if opts is self._opts else "iterations") + (", warm" if init is not None else ", cold")
        T[key] += time.perf_counter() - t
        N[key] += len(z0)
        OK[key] += int(r.converged.sum())
        return r

    GeodesicKMeans._solve = timed
    try:
        t = time.perf_counter()
        km = GeodesicKMeans(metric, n_clusters=3, random_state=0,
                            dtype=dtype if dtype == "auto" else getattr(torch, dtype)).fit(codes)
        fit_s = time.perf_counter() - t
    finally:
        GeodesicKMeans._solve = solve
    F = f_measure(truth, km.labels_)
    ari = adjusted_rand_score(gr.labels_, km.labels_)
    print(f"{{{','.join(trip)}}} dtype={dtype} ({km._dtype}): {len(codes)} codes, {threads} thread(s): fit {fit_s:.1f} s, "
          f"{km.n_geodesics_} geodesics, {km.n_iter_} iterations, {100 * km.distance_converged_.mean():.1f} % of final "
          f"distances certified, {100 * km.labels_certified_.mean():.1f} % of labels proven, inertia {km.inertia_:.1f}, F {F:.1f} (graph variant {f_measure(truth, gr.labels_):.1f}), "
          f"ARI against the graph labels {ari:.3f}\n")
    print("| solves | pairs | time, s | ms per pair | certified |")
    print("|---|---|---|---|---|")
    for key in sorted(T):
        print(f"| {key} | {N[key]} | {T[key]:.1f} | {1e3 * T[key] / max(N[key], 1):.0f} | {100 * OK[key] / max(N[key], 1):.0f} % |")
    print(flush=True)
    return dict(triplet=trip, dtype=dtype, fit=fit_s, n_geo=km.n_geodesics_, n_iter=km.n_iter_,
                cert=100 * km.distance_converged_.mean(), proven=100 * km.labels_certified_.mean(), inertia=km.inertia_, F=F, ari=ari)


if __name__ == "__main__":
    main()
