"""Latent Space Oddity Table 1 on the bundled 8×8 digits: Euclidean vs geodesic k-means.

Per triplet ({0,1,2}, {3,4,7}, {5,6,9}) a 2-D VAE with the RBF variance is trained with the demo's
settings (hidden (64, 64), 300 epochs, ``random_state=0``); its codes (encoder means) are clustered
with k = 3 by

* scikit-learn's ``KMeans`` (Euclidean, in the latent space);
* ``lg.GeodesicKMeans(algorithm="graph", centroid="medoid")``: k-means++ seeding and k-medoids on the
  shortest-path distances of a metric-weighted kNN graph over the codes (no ODE solves; the
  distances are upper bounds of the geodesic ones);
* ``lg.GeodesicKMeans()`` (the default: the graph phase, Karcher iterations and the final assignment
  with solved geodesics) on all codes (or a stratified subsample of ``--geodesic-codes`` codes) for
  ``--geodesic-seeds`` seeds; its labels are compared with the graph variant's on the same codes.

Reported: F-measure (per class, the best-matching cluster's F1, weighted by class size) and adjusted
Rand index, mean ± std over the seeds, wall time per fit, the fractions of certified final
distances and of proven labels (``labels_certified_``).

    python benchmarks/clustering_digits.py [--seeds 10] [--epochs 300] [--threads 2]
                                           [--geodesic-codes -1] [--geodesic-seeds 10]
"""

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, f1_score

import latentgeo as lg

TRIPLETS = [(0, 1, 2), (3, 4, 7), (5, 6, 9)]
LSO = {(0, 1, 2): (94.3, 77.6), (3, 4, 7): (89.5, 77.8), (5, 6, 9): (81.1, 64.9)}  # geodesic, Euclidean (MNIST)
HERE = os.path.dirname(os.path.abspath(__file__))


def f_measure(truth, labels):
    """Σ_c (n_c/n) max_k F1(class c, cluster k), in percent."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    total = 0.0
    for c in np.unique(truth):
        t = truth == c
        best = max(f1_score(t, labels == k) for k in np.unique(labels))
        total += t.mean() * best
    return 100.0 * total


def ms(x, digits=1):
    return f"{np.mean(x):.{digits}f} ± {np.std(x):.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--geodesic-codes", type=int, default=-1,
                    help="stratified subsample size for the solved-geodesic variant (-1: all codes; 0: skip)")
    ap.add_argument("--geodesic-seeds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RuntimeWarning)
    rows, raw = [], {}
    for trip in TRIPLETS:
        ds = lg.load_dataset("digits", classes=list(trip))
        model = lg.VAE(ds.dim, 2, hidden=(64, 64), item_shape=ds.item_shape, random_state=0)
        t = time.perf_counter()
        lg.train_vae(model, ds, epochs=args.epochs, variance="rbf", random_state=0, progress=False)
        train_s = time.perf_counter() - t
        with torch.no_grad():
            codes = model.encode_mean(ds.data)
        metric = lg.PullbackMetric(model.decoder_for_analysis())
        truth = ds.labels.numpy()
        r = {k: [] for k in ("eu_f", "eu_a", "gr_f", "gr_a", "gr_t", "ge_f", "ge_a", "ge_t", "ge_cert", "ge_proven", "ge_agree",
                             "ge_eu_f", "ge_gr_f")}
        for s in range(args.seeds):
            eu = KMeans(3, n_init=1, random_state=s).fit(codes.numpy())
            r["eu_f"].append(f_measure(truth, eu.labels_))
            r["eu_a"].append(adjusted_rand_score(truth, eu.labels_))
            t = time.perf_counter()
            gr = lg.GeodesicKMeans(metric, 3, algorithm="graph", centroid="medoid", random_state=s).fit(codes)
            r["gr_t"].append(time.perf_counter() - t)
            r["gr_f"].append(f_measure(truth, gr.labels_))
            r["gr_a"].append(adjusted_rand_score(truth, gr.labels_))
        if args.geodesic_codes:
            if args.geodesic_codes < 0:
                sub = np.arange(len(truth))
            else:
                rng = np.random.RandomState(0)
                per = args.geodesic_codes // 3
                sub = np.concatenate([rng.choice(np.nonzero(truth == c)[0], per, replace=False) for c in trip])
            for s in range(args.geodesic_seeds):
                t = time.perf_counter()
                ge = lg.GeodesicKMeans(metric, 3, random_state=s).fit(codes[sub])
                r["ge_t"].append(time.perf_counter() - t)
                gr = lg.GeodesicKMeans(metric, 3, algorithm="graph", centroid="medoid", random_state=s).fit(codes[sub])
                eu = KMeans(3, n_init=1, random_state=s).fit(codes[sub].numpy())
                r["ge_f"].append(f_measure(truth[sub], ge.labels_))
                r["ge_a"].append(adjusted_rand_score(truth[sub], ge.labels_))
                r["ge_cert"].append(float(ge.distance_converged_.mean()))
                r["ge_proven"].append(float(np.mean(ge.labels_certified_)))
                r["ge_agree"].append(adjusted_rand_score(gr.labels_, ge.labels_))
                r["ge_gr_f"].append(f_measure(truth[sub], gr.labels_))
                r["ge_eu_f"].append(f_measure(truth[sub], eu.labels_))
        raw[str(trip)] = {"n": int(len(truth)), "train_s": train_s, **r}
        rows.append((trip, len(truth), r))
        print(f"{trip}: n={len(truth)} train {train_s:.1f}s  Euclidean F {ms(r['eu_f'])}  graph F {ms(r['gr_f'])} "
              f"({np.median(r['gr_t']):.2f} s/fit)" + (f"  geodesic ({len(sub)} codes) F {ms(r['ge_f'])} "
              f"{np.median(r['ge_t']):.1f} s/fit, certified {np.mean(r['ge_cert']):.3f}, proven {np.mean(r['ge_proven']):.3f}, ARI vs graph labels "
              f"{np.mean(r['ge_agree']):.3f}" if r["ge_t"] else ""), flush=True)
    with open(os.path.join(HERE, "clustering_digits_results.json"), "w") as f:
        json.dump({"args": vars(args), "torch": torch.__version__, "results": raw}, f, indent=1)
    print("\n| triplet | n | Euclidean F | graph-geodesic F | Euclidean ARI | graph-geodesic ARI | graph fit, s | LSO MNIST F (geo / Euc) |")
    print("|---|---|---|---|---|---|---|---|")
    for trip, n, r in rows:
        print(f"| {trip} | {n} | {ms(r['eu_f'])} | {ms(r['gr_f'])} | {ms(r['eu_a'], 3)} | {ms(r['gr_a'], 3)} | "
              f"{np.median(r['gr_t']):.2f} | {LSO[trip][0]} / {LSO[trip][1]} |")
    if args.geodesic_codes:
        what = "all codes" if args.geodesic_codes < 0 else f"a stratified subsample of {args.geodesic_codes} codes"
        print(f"\nSolved-geodesic k-means on {what} per triplet ({args.geodesic_seeds} seed(s)):\n")
        print("| triplet | Euclidean F | graph F | geodesic F | geodesic ARI | fit, s (median, max) | certified distances | "
              "proven labels | ARI(geodesic, graph labels) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for trip, n, r in rows:
            print(f"| {trip} | {ms(r['ge_eu_f'])} | {ms(r['ge_gr_f'])} | {ms(r['ge_f'])} | {ms(r['ge_a'], 3)} | "
                  f"{np.median(r['ge_t']):.1f}, {np.max(r['ge_t']):.1f} | {np.mean(r['ge_cert']):.3f} | "
                  f"{np.mean(r['ge_proven']):.3f} | {ms(r['ge_agree'], 3)} |")


if __name__ == "__main__":
    main()
