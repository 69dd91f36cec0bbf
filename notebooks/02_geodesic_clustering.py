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
#
# `algorithm="graph"` clusters by the shortest-path distances of a metric-weighted kNN graph over the
# codes (k-means++ seeding, k-medoids; no ODE solves, about a second here). The default
# `algorithm="geodesic"` continues with solved geodesics and Karcher means — minutes on this metric, so
# below we only check a few of the graph's distances against certified geodesics.

# %%
from latentgeo.clustering import f_measure  # noqa: E402

k = len(CLASSES)
euclid = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(codes.numpy())
gkm = lg.GeodesicKMeans(metric, n_clusters=k, algorithm="graph", centroid="medoid", random_state=0)
geodesic = gkm.fit_predict(codes)
print(gkm)
print(f"{'k-means':12s} {'F-measure':>10s}")
print(f"{'Euclidean':12s} {f_measure(labels, euclid):10.1f}")
print(f"{'geodesic':12s} {f_measure(labels, geodesic):10.1f}")

# %% [markdown]
# ## 3. How close are the graph distances to geodesic distances?
#
# The graph distance of a code to its centre is the length of a real curve (a path through the codes),
# so it bounds the geodesic distance from above. Certified geodesics for a few codes:

# %%
from latentgeo.geodesics import GeodesicStatus, connecting_geodesic  # noqa: E402

pick = torch.arange(0, N, N // 4)[:4]
centres = gkm.cluster_centers_[torch.as_tensor(gkm.labels_)[pick]]
res = connecting_geodesic(metric, centres, codes[pick], tol=1e-4, graph=gkm.graph_, budget=3.0, progress=False)
print(res)
for i, p in enumerate(pick.tolist()):
    print(f"code {p:3d}: graph {float(gkm.distances_[p]):.4f}  geodesic {float(res.length[i]):.4f} "
          f"({GeodesicStatus(int(res.status[i])).name})")

# %% [markdown]
# ## 4. The clusters on the magnification map

# %%
import matplotlib.pyplot as plt  # noqa: E402

from latentgeo.plotting import plot_magnification  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
for ax, lab, title in ((axes[0], euclid, "Euclidean k-means"), (axes[1], geodesic, "geodesic k-means (graph)")):
    plot_magnification(metric, codes=codes, labels=lab, ax=ax, resolution=40, title=title, colorbar=False)
