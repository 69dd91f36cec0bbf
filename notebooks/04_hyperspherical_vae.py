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
# # A hyperspherical VAE: codes on S², analysed through a stereographic chart
#
# A VAE whose codes live on the sphere `S^d ⊂ R^{d+1}` (Davidson et al., *Hyperspherical Variational
# Auto-Encoders*, UAI 2018): a von Mises–Fisher posterior `vMF(μ, κ)` (or the power spherical of De Cao & Aziz
# 2020, which needs no rejection sampling) and the uniform prior on the sphere. With `d = 2` the codes are points
# of `S² ⊂ R³`, which we can look at directly.
#
# The geometric analysis (pullback metric, geodesics, clustering, walks) works on free coordinates, so it runs in a
# **stereographic chart** `R² ≅ S² ∖ {pole}`: `chart_decoder(decoder, chart)` is `y ↦ decoder(from_chart(y))`,
# whose pullback metric is the decoder's metric restricted to the sphere. Lengths do not depend on the chart; we
# check that with two different poles.
#
# Runs as a plain script (`python notebooks/04_hyperspherical_vae.py`) or as a notebook with jupytext. Settings are
# small (30 epochs on the 1797 bundled 8×8 digits); `benchmarks/svae_digits.py` has the full comparison.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import latentgeo as lg
from latentgeo.charts import StereographicChart, chart_decoder
from latentgeo.geodesics.plotting import plot_geodesics
from latentgeo.plotting import plot_magnification

torch.manual_seed(0)
EPOCHS = int(os.environ.get("LATENTGEO_NB_EPOCHS", 30))  # the test suite runs the default

ds = lg.load_dataset("digits")
x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32)  # (1797, 64), grey levels in [0, 1]
labels = ds.labels
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
x_train, x_test = x[perm[:1500]], x[perm[1500:]]

# %% [markdown]
# ## 1. Train a vMF VAE, a power-spherical VAE and a Gaussian VAE
#
# Same MLPs (64, 64), Bernoulli likelihood on the grey levels, the default trainer. `latent="sphere"` with
# `latent_dim=2` means codes on `S²` (three coordinates); the encoder emits a direction and `κ = softplus(·) + 1`.

# %%
models, seconds = {}, {}
for name, kw in {"vMF S²": {"latent": "sphere", "latent_kwargs": {"family": "vmf"}},
                 "power S²": {"latent": "sphere", "latent_kwargs": {"family": "power"}},
                 "Gaussian R²": {"latent": "euclidean"}}.items():
    t0 = time.perf_counter()
    vae = lg.VAE(64, 2, likelihood="bernoulli", hidden=(64, 64), item_shape=(8, 8), random_state=0, **kw)
    lg.train_vae(vae, x_train, epochs=EPOCHS, random_state=0, progress=False)
    models[name], seconds[name] = vae, time.perf_counter() - t0

# %% [markdown]
# ## 2. Importance-weighted log-likelihood on held-out digits
#
# `iwae_log_likelihood` (Burda et al. 2016, K = 100 samples). With only 30 epochs and one seed the differences are
# small and noisy; over 3 seeds and 100 epochs the vMF VAE was ahead at `d = 2` (see `benchmarks/RESULTS.md`).

# %%
print(f"{'model':12s} {'test IWAE (K=100)':>18s} {'train s':>8s}")
for name, vae in models.items():
    ll = lg.iwae_log_likelihood(vae, x_test, k=100, random_state=0).mean().item()
    print(f"{name:12s} {ll:18.2f} {seconds[name]:8.1f}")

# %% [markdown]
# ## 3. The codes on the sphere
#
# The code of an item is the posterior's location `μ(x) ∈ S²`.

# %%
vmf = models["vMF S²"].double()
with torch.no_grad():
    codes = vmf.encode_mean(x.double())  # (1797, 3), unit norm
print("‖μ‖ ∈", (codes.norm(dim=1).min().item(), codes.norm(dim=1).max().item()))

fig = plt.figure(figsize=(6, 6))
ax3 = fig.add_subplot(projection="3d")
u, v = np.mgrid[0 : 2 * np.pi : 40j, 0 : np.pi : 20j]
ax3.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
sc = ax3.scatter(*codes.T.numpy(), c=labels.numpy(), cmap="tab10", s=4)
ax3.set_box_aspect((1, 1, 1))
ax3.set_title("vMF VAE codes μ(x) on S²")
fig.colorbar(sc, ax=ax3, shrink=0.6, label="digit")

# %% [markdown]
# ## 4. The stereographic chart and the magnification map
#
# `StereographicChart.opposite_mean(codes)` projects from the pole opposite the codes' mean direction, so the codes
# land near the chart's origin. The decoder is Bernoulli, so the metric is the Fisher–Rao pullback
# `M(y) = J(y)ᵀ diag(1/(p(1−p))) J(y)`; the magnification `√det M(y)` includes the chart's own stretching (the round
# metric in the chart is `4/(1+‖y‖²)² I`).

# %%
chart = StereographicChart.opposite_mean(codes)
print(chart)
dec = chart_decoder(vmf.decoder_for_analysis(), chart)
metric = lg.PullbackMetric(dec)
y = chart.to_chart(codes)  # (1797, 2)
keep = y.norm(dim=1) < torch.quantile(y.norm(dim=1), 0.98)  # a few codes far out would stretch the plot
ax = plot_magnification(metric, codes=y[keep], labels=labels[keep], resolution=50, margin=0.15,
                        title="√det M in the stereographic chart")

# %% [markdown]
# ## 5. A geodesic between two class centres, and its length in two charts
#
# Class centres: the normalised mean code of the digits 0 and 1 (and 0 and 6). The geodesics are solved in the
# chart above and again in a second chart, projected from a different pole (a unit vector orthogonal to the mean
# direction, so the codes sit at a different place and scale in it). The certified lengths must agree: they are
# lengths on the sphere, not in a chart.

# %%
def centre(c):
    m = codes[labels == c].mean(0)
    return m / m.norm()


a = torch.stack([centre(0), centre(0)])
b = torch.stack([centre(1), centre(6)])
mdir = codes.mean(0) / codes.mean(0).norm()
other = torch.linalg.svd(torch.eye(3, dtype=codes.dtype) - torch.outer(mdir, mdir))[0][:, 0]  # ⊥ mean direction
chart2 = StereographicChart(other)
results = {}
for name, ch in (("chart 1 (pole −mean)", chart), ("chart 2 (pole ⊥ mean)", chart2)):
    m = lg.PullbackMetric(chart_decoder(vmf.decoder_for_analysis(), ch))
    t0 = time.perf_counter()
    results[name] = (m, ch, lg.connecting_geodesic(m, ch.to_chart(a), ch.to_chart(b), budget=10.0, progress=False))
    print(f"{name}: {results[name][2]}   ({time.perf_counter() - t0:.1f} s)")

print(f"\n{'pair':7s} " + " ".join(f"{n:>22s}" for n in results) + f" {'rel. difference':>16s}")
for i, pair in enumerate(["0 → 1", "0 → 6"]):
    L = [r[2].length[i].item() for r in results.values()]
    print(f"{pair:7s} " + " ".join(f"{v:22.4f}" for v in L) + f" {abs(L[0] - L[1]) / L[0]:16.1e}")

# the chart-1 geodesic carried into chart 2 through the sphere has the same length there
m1, c1, g1 = results["chart 1 (pole −mean)"]
m2, c2, _ = results["chart 2 (pole ⊥ mean)"]
curve_on_sphere = c1.from_chart(g1.curve(torch.linspace(0, 1, 400, dtype=codes.dtype)))
print("chart-1 geodesic measured in chart 2:", m2.length(c2.to_chart(curve_on_sphere)).detach().numpy().round(4))

# %%
fig = plt.figure(figsize=(12, 5), layout="constrained")
axl = fig.add_subplot(1, 2, 1)
plot_geodesics(metric, g1, codes=y[keep], labels=labels[keep], ax=axl, resolution=50, names=["0 → 1", "0 → 6"],
               title="geodesics (solid) and chart lines (dashed), chart 1")
axr = fig.add_subplot(1, 2, 2, projection="3d")
axr.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
axr.scatter(*codes.T.numpy(), c=labels.numpy(), cmap="tab10", s=3, alpha=0.4)
for i in range(2):
    axr.plot(*curve_on_sphere[i].detach().T.numpy(), lw=2.5)
axr.set_box_aspect((1, 1, 1))
axr.set_title("the same geodesics on S²")

# %% [markdown]
# ## Where next
#
# * `benchmarks/svae_digits.py`: Gaussian vs vMF vs power spherical at d = 2, 5, 10 over 3 seeds.
# * The chart decoder works with everything that takes a decoder: `GeodesicKMeans`, `random_walk`, `write_report`.
# * Hyperbolic latents and the Poincaré chart: `notebooks/05_hyperbolic_vae.py`.
