# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Geodesic clustering: Euclidean vs geodesic k-means on digits codes
#
# k-means in a VAE's latent space measures distances with a ruler that ignores the decoder. Under the
# pullback metric (expected metric with the RBF variance of *Latent Space Oddity*), paths between clusters
# that cross empty regions are long, so geodesic k-means (`lg.GeodesicKMeans`, a scikit-learn estimator)
# respects the gaps between classes. We compare both on the codes of a small digits VAE by the
# **F-measure** against the digit labels (each class matched with its best cluster, weighted by class size).
#
# Small settings so it runs in well under a minute; raise `EPOCHS`/`N` for a sharper comparison.
# Runs as a plain script (`python notebooks/02_geodesic_clustering.py`) or as a notebook with jupytext.

# %%
import os

import numpy as np
import torch
from sklearn.cluster import KMeans

import latentgeo as lg

EPOCHS = int(os.environ.get("LATENTGEO_NB_EPOCHS", 60))
N = 300          # codes clustered
CLASSES = (0, 1, 4, 7)  # four digits keep the example small

# %% [markdown]
# ## 1. A 2-D VAE on the digits (mean first, then the RBF variance)

# %%
ds = lg.load_dataset("digits")
keep = torch.isin(ds.labels, torch.tensor(CLASSES))
ds = ds.subset(torch.nonzero(keep).ravel())
model = lg.VAE(ds.dim, 2, item_shape=ds.item_shape, random_state=0)
history = lg.train_vae(model, ds, epochs=EPOCHS, random_state=0, progress=False)
model.eval()
idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:N]
with torch.no_grad():
    codes = model.encode_mean(ds.data[idx]).double()
labels = ds.labels[idx].numpy()
model64 = model.double()
metric = lg.PullbackMetric(model64.decoder_for_analysis())

# %% [markdown]
# ## 2. Euclidean and geodesic k-means

# %%
k = len(CLASSES)
euclid = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(codes.numpy())
gkm = lg.GeodesicKMeans(metric, n_clusters=k, centroid="medoid", max_iter=10, random_state=0)
geodesic = gkm.fit_predict(codes)
print(gkm)


def f_measure(y, c):
    """Clustering F-measure: Σ_classes (n_class / n) · max_cluster F1(class, cluster)."""
    y, c = np.asarray(y), np.asarray(c)
    total = 0.0
    for cls in np.unique(y):
        in_cls = y == cls
        best = 0.0
        for cl in np.unique(c):
            in_cl = c == cl
            tp = np.sum(in_cls & in_cl)
            if tp:
                p, r = tp / in_cl.sum(), tp / in_cls.sum()
                best = max(best, 2 * p * r / (p + r))
        total += in_cls.mean() * best
    return total


print(f"{'k-means':12s} {'F-measure':>10s}")
print(f"{'Euclidean':12s} {f_measure(labels, euclid):10.3f}")
print(f"{'geodesic':12s} {f_measure(labels, geodesic):10.3f}")

# %% [markdown]
# ## 3. The clusters on the magnification map

# %%
import matplotlib.pyplot as plt  # noqa: E402

from latentgeo.plotting import plot_magnification  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
for ax, lab, title in ((axes[0], euclid, "Euclidean k-means"), (axes[1], geodesic, "geodesic k-means")):
    plot_magnification(metric, codes=codes, labels=lab, ax=ax, resolution=40, title=title, colorbar=False)
