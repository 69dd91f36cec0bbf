"""Latent Space Oddity Table 1 on the bundled 8×8 digits: Euclidean vs geodesic k-means.

Per triplet ({0,1,2}, {3,4,7}, {5,6,9}) a 2-D VAE with the RBF variance is trained with the demo's
settings (fixed seed); its codes (encoder means) are clustered with k = 3 by scikit-learn's
KMeans (Euclidean, in the latent space) and by lg.GeodesicKMeans (geodesic distance of the expected
pullback metric), for several k-means seeds. Reported: F-measure (per class, the best-matching
cluster's F1, weighted by class size) and adjusted Rand index, mean ± std over the seeds, and the
wall time of one geodesic fit (exact final assignment included).

    python benchmarks/clustering_digits.py [--seeds 10] [--epochs 300] [--threads 2]
"""

import argparse
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, f1_score

import latentgeo as lg

TRIPLETS = [(0, 1, 2), (3, 4, 7), (5, 6, 9)]
LSO = {(0, 1, 2): (94.3, 77.6), (3, 4, 7): (89.5, 77.8), (5, 6, 9): (81.1, 64.9)}  # geodesic, Euclidean (MNIST)


def f_measure(truth, labels):
    """Σ_c (n_c/n) max_k F1(class c, cluster k)."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    total = 0.0
    for c in np.unique(truth):
        t = truth == c
        best = max(f1_score(t, labels == k) for k in np.unique(labels))
        total += t.mean() * best
    return 100.0 * total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
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
        eu_f, eu_a, ge_f, ge_a, times, cert = [], [], [], [], [], []
        for s in range(args.seeds):
            eu = KMeans(3, n_init=1, random_state=s).fit(codes.numpy())
            eu_f.append(f_measure(truth, eu.labels_))
            eu_a.append(adjusted_rand_score(truth, eu.labels_))
            t = time.perf_counter()
            km = lg.GeodesicKMeans(metric, n_clusters=3, n_init=1, random_state=s).fit(codes)
            times.append(time.perf_counter() - t)
            ge_f.append(f_measure(truth, km.labels_))
            ge_a.append(adjusted_rand_score(truth, km.labels_))
            cert.append(float(km.distance_converged_.mean()))
        rows.append((trip, len(truth), train_s, eu_f, eu_a, ge_f, ge_a, times, cert))
        print(f"{trip}: n={len(truth)} train {train_s:.1f}s  Euclidean F {np.mean(eu_f):.1f}±{np.std(eu_f):.1f} "
              f"ARI {np.mean(eu_a):.3f}  geodesic F {np.mean(ge_f):.1f}±{np.std(ge_f):.1f} ARI {np.mean(ge_a):.3f} "
              f"fit {np.median(times):.1f}s (max {np.max(times):.1f}) certified {np.mean(cert):.3f}", flush=True)
    print("\n| triplet | n | Euclidean F | geodesic F | Euclidean ARI | geodesic ARI | geodesic fit, s (median / max) | certified | LSO MNIST F (geo / Euc) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for trip, n, _, eu_f, eu_a, ge_f, ge_a, times, cert in rows:
        print(f"| {trip} | {n} | {np.mean(eu_f):.1f} ± {np.std(eu_f):.1f} | {np.mean(ge_f):.1f} ± {np.std(ge_f):.1f} | "
              f"{np.mean(eu_a):.3f} ± {np.std(eu_a):.3f} | {np.mean(ge_a):.3f} ± {np.std(ge_a):.3f} | "
              f"{np.median(times):.1f} / {np.max(times):.1f} | {np.mean(cert):.3f} | {LSO[trip][0]} / {LSO[trip][1]} |")


if __name__ == "__main__":
    main()
