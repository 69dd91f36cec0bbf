"""Benchmark and experiment for the random walks (issue 12).

(a) Speed: 1000 walkers × 1000 Riemannian Brownian steps (Euler–Maruyama with the drift) on a
    deterministic decoder 2→64→64→50 (tanh, weights N(0, 1/fan_in), zero biases), float32,
    ``torch.set_num_threads(--threads)`` (target: ≤ 10 s on 2 cores). The drift of the fast
    path is checked against the generic ``½ Σ_m a(z, l_m)`` on 200 points.
(b) geomstats 2.8.0 ``distributions.BrownianMotion`` (Euler–Maruyama with Christoffel symbols by
    autodiff, one point at a time) on the same chart of the sphere (inverse stereographic
    projection as an ``ImmersedSet``) and on the same MLP, against latentgeo on the same
    metrics; per walker-step. geomstats' drift is compared with latentgeo's at the start points.
(c) The demo's digits VAE (2-D Gaussian, hidden 64,64, RBF variance, 300 epochs, seed 0, as
    ``latentgeo demo``): Brownian speed (1000 × 1000), then the experiment: for every method,
    walkers started at training codes, the fraction of steps within the data support (distance
    to the nearest training code below the 0.99-quantile of the codes' 5-th-neighbour distances)
    and the decoded strips of one walker per method (``--strips PATH``, a PNG).

Run (in an environment with geomstats 2.8.0; without it (b) is skipped)::

    python benchmarks/bench_walks.py [--quick] [--threads 2] [--strips benchmarks/walks_strips.png]

Timings are wall clock of one run on whatever machine runs this; ratios within one run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

os.environ.setdefault("GEOMSTATS_BACKEND", "pytorch")

import torch
from torch import nn

import latentgeo as lg
from latentgeo import walks as W
from latentgeo.walks import support_fraction, support_threshold
from latentgeo.walks.geometry import brownian_drift, brownian_terms_fn, inverse_factor


def mlp(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 50))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                m.bias.zero_()
    return net


def stereo(z):
    r2 = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z / (1 + r2), (r2 - 1) / (1 + r2)], -1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@torch.no_grad()
def drift_check(metric, z):
    lfac, _, b = brownian_terms_fn(metric)(z)
    ref = brownian_drift(lg.geodesics.acceleration_fn(metric), z, inverse_factor(metric.tensor(z))[0])
    return float((b - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def part_a(args, rows):
    net = mlp(0)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2))
    z0 = torch.randn(args.walkers, 2, generator=torch.Generator().manual_seed(1))
    rel = drift_check(metric, z0[:200])
    lg.random_walk(metric, z0[:10], 3, 1e-3, random_state=0, progress=False)  # trace once
    w, t = timed(lambda: lg.random_walk(metric, z0, args.steps, 1e-3, random_state=0, progress=False))
    ws = args.walkers * args.steps
    rows.append(("latentgeo brownian, MLP 2→64→64→50", args.walkers, args.steps, t, t / ws * 1e6,
                 f"{int(w.success.sum())}/{args.walkers} ok; drift vs generic rel. {rel:.1e}"))
    return net


def part_b(args, rows, net):
    try:
        import geomstats
        import geomstats.backend as gs
        from geomstats.distributions.brownian_motion import BrownianMotion
        from geomstats.geometry.base import ImmersedSet
        from geomstats.geometry.euclidean import Euclidean
    except Exception as exc:  # noqa: BLE001 - report any import failure of the peer
        print(f"geomstats not available ({type(exc).__name__}: {exc}); (b) skipped")
        return
    torch.set_default_dtype(torch.float32)  # geomstats' pytorch backend switches it to float64

    class Immersed(ImmersedSet):
        def __init__(self, fn, k):
            self._fn, self._k = fn, k
            super().__init__(dim=2)

        def _define_embedding_space(self):
            return Euclidean(self._k)

        def immersion(self, point):
            return self._fn(point)

    net64 = mlp(0).double()
    for name, fn, k, (W, S) in (("sphere chart (stereographic)", stereo, 3, args.gs_sphere),
                                ("MLP 2→64→64→50", net64, 50, args.gs_mlp)):
        space = Immersed(fn, k)
        bm = BrownianMotion(space)
        z0 = 0.3 * torch.randn(W, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        dt = 1e-3
        _, t_gs = timed(lambda: bm.sample_path(end_time=dt * S, n_steps=S + 1, initial_point=gs.array(z0)))
        # geomstats' drift at the start points against latentgeo's
        gam = space.metric.christoffels(z0)
        co = space.metric.cometric_matrix(z0)
        b_gs = -0.5 * torch.einsum("...klm,...lm->...k", gam, co)
        metric = lg.PullbackMetric(lg.DeterministicDecoder(fn, latent_dim=2))
        with torch.no_grad():
            b_lg = brownian_terms_fn(metric)(z0)[2]
        diff, scale = float((b_gs.detach() - b_lg).abs().max()), float(b_lg.abs().max())
        rows.append((f"geomstats {geomstats.__version__} BrownianMotion, {name}", W, S, t_gs, t_gs / (W * S) * 1e6,
                     f"float64; drift max abs diff vs latentgeo {diff:.1e} (max abs drift {scale:.1e})"))
        lg.random_walk(metric, z0[:2], 2, dt, random_state=0, progress=False)
        Wl, Sl = args.walkers, args.steps
        zl = 0.3 * torch.randn(Wl, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        _, t_lg = timed(lambda: lg.random_walk(metric, zl, Sl, dt, random_state=0, progress=False))
        rows.append((f"latentgeo brownian, {name}", Wl, Sl, t_lg, t_lg / (Wl * Sl) * 1e6, "float64"))


def train_demo_vae(args):
    ds = lg.load_dataset("digits")
    model = lg.VAE(ds.dim, 2, likelihood="gaussian", hidden=(64, 64), item_shape=tuple(ds.item_shape), random_state=0)
    _, t = timed(lambda: lg.train_vae(model, ds, epochs=args.epochs, random_state=0, progress=False, val_fraction=0.1,
                                      variance="rbf"))
    print(f"demo VAE trained in {t:.1f} s ({args.epochs} epochs)")
    return model, ds


def part_c(args, rows):
    model, ds = train_demo_vae(args)
    dec = model.decoder_for_analysis()
    metric = lg.PullbackMetric(dec, kind="expected")
    codes = model.encode_mean(ds.data).detach()
    g = torch.Generator().manual_seed(3)
    z0 = codes[torch.randint(len(codes), (args.walkers,), generator=g)]
    # step sizes: the Euclidean walk's RMS step is --relative-step of the codes' spread; metric walks
    # take h so that their median RMS step on the codes, sqrt(h tr M⁻¹), is the same
    spread = float(codes.std(0).mean())
    h_e, h_m = W.matched_step_sizes(metric, codes, args.relative_step)
    lg.random_walk(metric, z0[:10], 3, h_m, random_state=0, progress=False)
    w, t = timed(lambda: lg.random_walk(metric, z0, args.steps, h_m, random_state=0, progress=False))
    ws = args.walkers * args.steps
    rows.append(("latentgeo brownian, digits VAE (expected metric)", args.walkers, args.steps, t, t / ws * 1e6,
                 f"{int(w.success.sum())}/{args.walkers} ok; h = {h_m:.2e}"))

    tau = support_threshold(codes)
    prior = torch.distributions.Normal(0.0, 1.0)
    # aggregate posterior q(z) = mean_i N(z; μ_i, σ_i²) over the training items (a data density)
    with torch.no_grad():
        post = model.encode(ds.data)
    log_agg = W.mixture_log_prob(post.mean, post.stddev)

    def log_prior_vol(z):
        return prior.log_prob(z).sum(-1) + metric.log_volume(z)

    ew, es = args.exp_walkers, args.exp_steps
    ze = z0[:ew]
    exp = []
    strips = []
    specs = [("euclidean", h_e, {}), ("lso", h_m, {}), ("brownian", h_m, {}), ("geodesic", h_m, {}),
             ("mmala", h_m, {"log_prob": log_agg}), ("mmala", h_m, {"log_prob": log_prior_vol})]
    labels = ["euclidean", "lso", "brownian", "geodesic", "mmala (aggregate posterior)", "mmala (prior × √det M)"]
    for (method, h, kw), label in zip(specs, labels):
        wk, tt = timed(lambda: lg.random_walk(metric, ze, es, h, method=method, random_state=0, progress=False, **kw))
        frac = support_fraction(wk, codes, tau)
        final = support_fraction(wk.trajectories[:, -1:], codes, tau)
        acc = "" if wk.acceptance_rate is None else f"{float(wk.acceptance_rate.mean()):.2f}"
        disp = float((wk.trajectories[:, -1] - wk.trajectories[:, 0]).norm(dim=1).median() / spread)
        exp.append((label, float(frac.mean()), float(final.mean()), disp, acc, int(wk.stopped.sum()), tt,
                    wk.step_size))
        strips.append((label, wk.decode(dec, steps=slice(None, None, max(1, es // 10)))[0]))
    print(f"\nExperiment: digits VAE, {ew} walkers from training codes, {es} steps, RMS step "
          f"{args.relative_step:g} × the codes' spread ({spread:.3f}); support threshold {tau:.3f}")
    print("| walk | step size h | steps within support | final positions within support | median displacement / spread | acceptance | stopped | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, f, fin, disp, acc, stopped, tt, hh in exp:
        print(f"| {label} | {hh:.2e} | {f:.3f} | {fin:.3f} | {disp:.2f} | {acc or '—'} | {stopped} | {tt:.1f} |")
    if args.strips:
        save_strips(strips, tuple(ds.item_shape), args.strips)
        print(f"decoded strips written to {args.strips}")


def save_strips(strips, item_shape, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(strips), strips[0][1].shape[0]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.8, n_rows * 0.9))
    for r, (label, frames) in enumerate(strips):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(frames[c].reshape(item_shape).numpy(), cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on the shared 2-core machine 2 threads were 10x slower)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    p.add_argument("--strips", default="", help="PNG path for the decoded strips of (c)")
    p.add_argument("--exp-steps", type=int, default=1000, help="steps per walker in the experiment of (c)")
    p.add_argument("--exp-walkers", type=int, default=100, help="walkers in the experiment of (c)")
    p.add_argument("--relative-step", type=float, default=0.05, help="RMS step / codes' spread in (c)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.walkers, args.steps, args.epochs = 1000, 1000, 300
    args.gs_sphere, args.gs_mlp = (20, 50), (2, 10)
    if args.quick:
        args.walkers, args.steps, args.epochs = 100, 50, 20
        args.gs_sphere, args.gs_mlp = (2, 3), (1, 2)
        args.exp_walkers, args.exp_steps = 10, 20
    skip = set(filter(None, args.skip.split(",")))
    print(f"# bench_walks: {platform.platform()}, python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    rows = []
    net = part_a(args, rows) if "a" not in skip else None
    if "b" not in skip:
        part_b(args, rows, net)
    if "c" not in skip:
        part_c(args, rows)
    print("\n| walk | walkers | steps | wall (s) | µs per walker-step | notes |")
    print("|---|---|---|---|---|---|")
    for name, w, s, t, us, note in rows:
        print(f"| {name} | {w} | {s} | {t:.2f} | {us:.2f} | {note} |")


if __name__ == "__main__":
    main()
