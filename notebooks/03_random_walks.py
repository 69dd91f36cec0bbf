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
# # Random walks on a latent metric: which ones stay on the data?
#
# A random walk in the latent space of a decoder generates a sequence of plausible samples — if it stays where
# the data are. `lg.random_walk` runs five kinds side by side, with one `WalkResult` (trajectories, a status
# per walker, acceptance rates):
#
# * `euclidean`: `z' = z + √h ξ` (the baseline, blind to the decoder);
# * `lso`: steps with covariance `h M(z)⁻¹` (the *Latent Space Oddity* slides' walk): short where the
#   metric is large, i.e. where the decoder's variance rises off the data;
# * `brownian`: Riemannian Brownian motion, the `lso` step plus the drift of the Laplace–Beltrami operator;
# * `geodesic`: the `lso` tangent step followed along the exponential map;
# * `mmala`: Riemannian-manifold MALA (Girolami & Calderhead 2011), Metropolis-corrected, for a target density
#   (here the aggregate posterior, a mixture of Gaussians at the codes).
#
# Runs as a plain script (`python notebooks/03_random_walks.py`) or as a notebook with jupytext.

# %%
import os

import matplotlib.pyplot as plt
import torch

import latentgeo as lg
from latentgeo import walks as W
from latentgeo.plotting import plot_magnification

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
STEPS = int(os.environ.get("LATENTGEO_NB_STEPS", 200))  # walk length (the test suite runs the default)

# %% [markdown]
# ## 1. A decoder whose variance rises off the data
#
# Three clusters of codes, a small mean network, and the post-hoc RBF variance (LSO §4) fitted to noisy data.

# %%
centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
labels = torch.arange(300) % 3
codes = centres[labels] + 0.4 * torch.randn(300, 2)
mean_net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 20)).eval()
for p in mean_net.parameters():
    p.requires_grad_(False)
data = mean_net(codes) + 0.05 * torch.randn(300, 20)
decoder = lg.fit_rbf_variance(mean_net, codes, data, n_centers=12, random_state=0)
metric = lg.PullbackMetric(decoder)

# %% [markdown]
# ## 2. The walks, with comparable step sizes
#
# `matched_step_sizes` makes every walk's RMS step the same fraction of the codes' spread at the median code,
# so the comparison is about *where* the walks go, not how fast.

# %%
h_e, h_m = W.matched_step_sizes(metric, codes, relative_step=0.1)
z0 = codes[torch.randint(len(codes), (16,))]
log_prob = W.mixture_log_prob(codes, torch.full_like(codes, 0.3))
results = {}
for method in W.METHODS:
    kw = {"log_prob": log_prob} if method == "mmala" else {}
    h = h_e if method == "euclidean" else (0.05 if method == "mmala" else h_m)
    results[method] = lg.random_walk(metric, z0, STEPS, h, method=method, random_state=0, progress=False, **kw)
    print(f"{method:9s}", results[method])

# %% [markdown]
# ## 3. Which stay on the data?
#
# The fraction of visited positions whose nearest code is within `support_threshold(codes)` (the 99 % quantile
# of the codes' distances to their 5th neighbour).

# %%
tau = W.support_threshold(codes)
print(f"{'walk':10s} {'within support':>15s} {'final within':>13s} {'acceptance':>11s}")
for method, res in results.items():
    inside = W.support_fraction(res, codes, tau).mean().item()
    final = W.support_fraction(res.trajectories[:, -1:], codes, tau).mean().item()
    acc = "" if res.acceptance_rate is None else f"{res.acceptance_rate.mean().item():.2f}"
    print(f"{method:10s} {inside:15.2f} {final:13.2f} {acc:>11s}")

# %%
fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4), layout="constrained")
for ax, (method, res) in zip(axes, results.items()):
    plot_magnification(metric, codes=codes, ax=ax, resolution=40, margin=0.4, title=method, colorbar=False)
    for w in range(4):
        tr = res.trajectories[w, : int(res.steps_taken[w]) + 1]
        ax.plot(tr[:, 0], tr[:, 1], lw=0.8)

# %% [markdown]
# ## 4. Decoded along a walk
#
# `WalkResult.decode` gives the decoder's means along the trajectories (here every 20th step of walker 0).

# %%
steps = torch.arange(0, STEPS + 1, max(STEPS // 10, 1))
frames = results["brownian"].decode(decoder, steps=steps)[0]  # (len(steps), 20)
fig, axes = plt.subplots(1, len(steps), figsize=(len(steps), 1.3), layout="constrained")
for ax, f in zip(axes, frames):
    ax.imshow(f.reshape(4, 5), cmap="gray")
    ax.set_axis_off()
