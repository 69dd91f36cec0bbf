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
# # latentgeo quickstart: the geometry a decoder induces on its latent space
#
# A decoder `f: z ↦ p(x | z)` maps a 2-D latent plane into data space. Distances measured *in the data
# space* pull back to a Riemannian metric `M(z)` on the latent plane. For a Gaussian decoder with mean `μ(z)`
# and standard deviation `σ(z)` the **expected metric** (Arvanitidis, Hansen & Hauberg, *Latent Space Oddity*,
# ICLR 2018) is
#
# $$M(z) = J_\mu(z)^\top J_\mu(z) + J_\sigma(z)^\top J_\sigma(z).$$
#
# This notebook wraps a decoder, computes its metric, draws the magnification factor `√det M(z)`, solves a
# geodesic and compares it with the straight line, and decodes along both. It runs as a plain script too
# (`python notebooks/01_quickstart.py`) or opens as a notebook with jupytext.
# For a trained VAE on real data, run `latentgeo demo --out report` instead.

# %%
import matplotlib.pyplot as plt
import torch

import latentgeo as lg
from latentgeo.geodesics.plotting import plot_decoded_strips, plot_geodesics
from latentgeo.plotting import plot_curves, plot_magnification

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # geodesics certified to 1e-6 need float64

# %% [markdown]
# ## 1. A decoder and some data
#
# Three clusters of latent codes, a small network as the decoder mean (4×5 "images"), and data = mean + noise.
# `fit_rbf_variance` then fits the post-hoc RBF variance of *Latent Space Oddity* §4: σ(z) is small near the
# codes and grows away from them, so the decoder admits it does not know what lies between the clusters.

# %%
centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
labels = torch.arange(300) % 3
codes = centres[labels] + 0.4 * torch.randn(300, 2)

mean_net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 20)).eval()
for p in mean_net.parameters():
    p.requires_grad_(False)
data = mean_net(codes) + 0.05 * torch.randn(300, 20)

# a GaussianDecoder; bandwidth_scale=2 lets σ rise smoothly between the clusters
decoder = lg.fit_rbf_variance(mean_net, codes, data, n_centers=12, bandwidth_scale=2.0, random_state=0)
print(decoder)

# %% [markdown]
# ## 2. The metric
#
# `PullbackMetric` computes `M(z)` for a whole batch with `torch.func` (no per-point loops).
# `kind="expected"` is the default for Gaussian decoders; `kind="mean"` ignores σ.

# %%
metric = lg.PullbackMetric(decoder, kind="expected")
G = metric.tensor(codes[:4])                 # (4, 2, 2)
print(G.shape)
print("magnification on the data :", metric.magnification(codes).median().item())
print("magnification between clusters:", metric.magnification(torch.tensor([[0.0, 0.8]])).item())

# %% [markdown]
# ## 3. The magnification map
#
# Bright regions are where the decoder stretches the latent plane the most. With the RBF variance that is a
# *ring* just outside the data, where σ(z) rises from its on-data value to its plateau (`far_std`); on the data the
# magnification is moderate, and far away σ is flat again, so it falls (the demo VAE: median 4.7 on the data, 9.7 near
# it, 0.33 far from it). Curves that cross the ring are long under the metric.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
plot_magnification(lg.PullbackMetric(decoder, kind="mean"), codes=codes, labels=labels, ax=axes[0],
                   resolution=60, margin=0.3, title="mean only: J_μᵀJ_μ")
ax = plot_magnification(metric, codes=codes, labels=labels, ax=axes[1], resolution=60, margin=0.3,
                        title="expected metric: J_μᵀJ_μ + J_σᵀJ_σ")

t = torch.linspace(0, 1, 64)[:, None]
line = (1 - t) * centres[0] + t * centres[1]          # (64, 2)
plot_curves(line, ax=ax, color="cyan", label="straight line")
print("length, mean-only metric:", lg.PullbackMetric(decoder, kind="mean").length(line).item())
print("length, expected metric :", metric.length(line).item())

# %% [markdown]
# ## 4. A geodesic vs the straight line
#
# `connecting_geodesic` solves the boundary-value problem between batches of endpoints and certifies
# each solution (`converged`, `message`); it starts from shortest paths in a grid graph of the metric
# (`LatentGraph`), which puts it in the right valley. Between two cluster centres the geodesic leaves the straight line,
# which crosses the region between the clusters where σ(z) grows; a geodesic is never longer than the line
# (here, with a gently rising σ, only slightly shorter — sharper variances bend it far more; see the report).

# %%
z0, z1 = centres[[0, 0]], centres[[1, 2]]
graph = lg.LatentGraph.grid(metric, [(-3.5, 3.5), (-1.5, 4.0)], 31)
geo = lg.connecting_geodesic(metric, z0, z1, init="graph", graph=graph)
print(geo)
s = torch.linspace(0, 1, 257)[None, :, None]
straight = metric.length(z0[:, None] + s * (z1 - z0)[:, None])
for i in range(len(z0)):
    print(f"pair {i}: geodesic {geo.length[i].item():.3f}  straight line {straight[i].item():.3f}")

ax = plot_geodesics(metric, geo, codes=codes, labels=labels, resolution=60, names=["0 → 1", "0 → 2"])

# %% [markdown]
# ## 5. Decoded along the curves
#
# What the decoder produces along the geodesic and along the straight line (rows alternate): the straight line
# passes through decodings the data never showed.

# %%
tt = torch.linspace(0, 1, 10)
rows = torch.stack([geo.curve(tt).detach(), z0[:, None] + tt[None, :, None] * (z1 - z0)[:, None]], 1).reshape(4, 10, 2)
fig = plot_decoded_strips(decoder, rows, n_images=10, item_shape=(4, 5), clip=None,
                          row_labels=["0→1 geodesic", "0→1 straight", "0→2 geodesic", "0→2 straight"])

# %% [markdown]
# ## 6. The whole analysis as a report
#
# `write_report` takes any decoder and codes (a `Subject`; the VAE is optional) and writes the figures,
# `summary.json` and `index.html` (open it in a browser; it works offline). From the shell the same is
# `latentgeo analyze --decoder mymodule:make_decoder --codes codes.npy --labels labels.npy --out report`.

# %%
import tempfile  # noqa: E402

from latentgeo.report import Subject  # noqa: E402

out = tempfile.mkdtemp(prefix="latentgeo_quickstart_")
summary = lg.write_report(Subject(decoder, codes, labels=labels, data=data, name="three clusters"), None, None, out,
                          resolution=40, geodesic_classes=3, geodesic_max_nodes=64, walks_walkers=4, walks_steps=30)
print("report:", out + "/index.html")
print("sections:", ", ".join(k for k in summary["sections"] if "skipped" not in summary[k]))

# %% [markdown]
# ## Where next
#
# * Any metric you can write down: `lg.MetricField(lambda z: ...)` (e.g. the Poincaré disk).
# * Bernoulli or categorical decoders: `lg.BernoulliDecoder(logits=...)` with the Fisher–Rao metric.
# * A trained VAE, the full report and the command line: `latentgeo demo --out report`.
# * Random walks on the metric: `notebooks/03_random_walks.py`.
