"""Connecting geodesics on trained decoders (issue 9): certification rate, time per pair, budget.

Run from the benchmark environment (``make bench`` builds ``.venv-bench``: stochman 0.3.0, latentgeo
installed from the checkout)::

    .venv-bench/bin/python benchmarks/bench_geodesics.py          # full run
    .venv-bench/bin/python benchmarks/bench_geodesics.py --quick  # fewer pairs

Workloads (all in one run, float64, ``torch.set_num_threads(2)``):

(a) the demo's VAE: ``lg.VAE`` on the bundled digits, 2-D latent, hidden (64, 64), Gaussian
    likelihood with the post-hoc RBF variance, 300 epochs, ``random_state=0`` (the settings of
    ``latentgeo demo``); pairs: random pairs of data codes (encoder means) plus all pairs of the
    10 class centres; tol 1e-6 and 1e-4.
(b) the same family with a 10-D latent.
(c) ``2→64→64→50`` tanh MLP with variance-preserving weights ``N(0, 1/fan_in)`` (biases 0),
    pairs ``z ~ N(0, 1.5²)``; and the near-linear PyTorch-default-initialised net (``U[-2, 2]²``).
(d) (a) with the decoder given as plain functions (lambdas around the same modules).
(e) the inverse stereographic sphere (plain function), great-circle arcs up to 170°; closed form.
(f) what users have: digits VAEs trained with plain PyTorch outside latentgeo (float32, fixed seed;
    decoder activations tanh, SiLU, ELU and ReLU), analysed as the README says
    (``lg.fit_rbf_variance(net, codes, data, n_centers=16)``, defaults); random pairs of data codes.

Per workload: certified fraction, status counts, median / 90 % / max time per pair (each pair
timed alone: ``connecting_geodesic`` on one pair, after one untimed batched solve of the same
pairs, and stochman after one untimed pair: first calls pay one-time costs), and for (a), (c): stochman 0.3.0's
``connecting_geodesic`` with its defaults on the same pairs, its curve measured densely (2001
points) with our metric; a certified length must not exceed stochman's. The floor for (a): the
same pairs solved again from their own certified solutions (``init=`` the result), i.e. what the
certificate alone costs. The machine is shared: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
D64 = torch.float64


def train_demo_vae(latent_dim):
    from latentgeo.datasets import load_dataset
    from latentgeo.models import VAE
    from latentgeo.training import train_vae

    ds = load_dataset("digits")
    m = VAE(ds.dim, latent_dim, latent="euclidean", likelihood="gaussian", hidden=(64, 64),
            item_shape=tuple(ds.item_shape), random_state=0)
    train_vae(m, ds, epochs=300, random_state=0, progress=False, val_fraction=0.1, variance="rbf")
    m = m.double().eval()
    x = torch.as_tensor(ds.data, dtype=D64)
    with torch.no_grad():
        codes = m.encode_mean(x)
    return m, codes, np.asarray(ds.labels)


def data_pairs(codes, labels, n, seed=0, centres=True):
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, codes.shape[0], (n,), generator=g)
    j = torch.randint(0, codes.shape[0], (n,), generator=g)
    z0, z1 = codes[i], codes[j]
    if centres:
        cls = np.unique(labels)
        c = torch.stack([codes[torch.as_tensor(labels == k)].mean(0) for k in cls])
        a, b = torch.triu_indices(len(cls), len(cls), 1)
        z0, z1 = torch.cat([z0, c[a]]), torch.cat([z1, c[b]])
    return z0, z1


def train_plain_vae(act="tanh", epochs=200, seed=0, latent_dim=2):
    """A digits VAE as a user trains it without latentgeo: plain PyTorch, float32, Gaussian
    likelihood with a fixed σ = 0.1 (a scaled MSE), Adam, no KL warm-up; the decoder is
    ``2→64→64→64`` with the activation ``act``. Returns ``(decoder, codes, data, labels)``, the codes
    being the encoder means."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    torch.manual_seed(seed)
    A = {"tanh": torch.nn.Tanh, "silu": torch.nn.SiLU, "elu": torch.nn.ELU, "relu": torch.nn.ReLU}[act]
    enc = torch.nn.Sequential(torch.nn.Linear(64, 64), A(), torch.nn.Linear(64, 64), A(), torch.nn.Linear(64, 2 * latent_dim))
    dec = torch.nn.Sequential(torch.nn.Linear(latent_dim, 64), A(), torch.nn.Linear(64, 64), A(), torch.nn.Linear(64, 64))
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=g)
        for i in range(0, X.shape[0], 128):
            xb = X[perm[i:i + 128]]
            h = enc(xb)
            mu, lv = h[:, :latent_dim], h[:, latent_dim:]
            z = mu + torch.randn(mu.shape, generator=g) * (0.5 * lv).exp()
            loss = (((dec(z) - xb) ** 2).sum(1) / (2 * 0.1**2) + 0.5 * (mu**2 + lv.exp() - 1 - lv).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        codes = enc(X)[:, :latent_dim]
    return dec.eval().requires_grad_(False), codes, X, y


def vp_mlp(seed=0, near_linear=False):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 50)).double()
    if not near_linear:
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0, 1 / math.sqrt(layer.in_features))
                    layer.bias.zero_()
    return net.eval().requires_grad_(False)


def stereo(z):
    s = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z, s - 1], -1) / (1 + s)


def sphere_pairs(n, max_deg=170.0, seed=0):
    """Pairs on S² with angles uniform in (5°, max_deg), kept away from the north pole."""
    g = torch.Generator().manual_seed(seed)
    out0, out1, ang = [], [], []
    while len(out0) < n:
        x = torch.randn(3, generator=g, dtype=D64)
        x = x / x.norm()
        u = torch.randn(3, generator=g, dtype=D64)
        u = u - (u @ x) * x
        u = u / u.norm()
        th = math.radians(5 + (max_deg - 5) * float(torch.rand(1, generator=g)))
        y = math.cos(th) * x + math.sin(th) * u
        if x[2] > 0.6 or y[2] > 0.6:
            continue
        out0.append(x[:2] / (1 - x[2]))
        out1.append(y[:2] / (1 - y[2]))
        ang.append(th)
    return torch.stack(out0), torch.stack(out1), torch.tensor(ang, dtype=D64)


def solve_each(metric, z0, z1, **kw):
    """Each pair alone (so times are per pair); returns the concatenated-like arrays."""
    from latentgeo.geodesics import connecting_geodesic

    secs, L, st, nodes, evals = [], [], [], [], []
    for k in range(z0.shape[0]):
        t = time.perf_counter()
        r = connecting_geodesic(metric, z0[k : k + 1], z1[k : k + 1], progress=False, **kw)
        secs.append(time.perf_counter() - t)
        L.append(float(r.length[0]))
        st.append(int(r.status[0]))
        nodes.append(int(r.stats["nodes"][0]))
        evals.append(int(r.stats["evaluations"][0]))
    return dict(secs=np.array(secs), length=np.array(L), status=np.array(st), nodes=np.array(nodes), evals=np.array(evals))


def warm_up(metric, z0, z1):
    """One untimed batched solve: the first solves of a process pay one-time costs (the decoder's
    trace, per-resolution quadrature caches) that would otherwise land on the first pairs timed."""
    from latentgeo.geodesics import connecting_geodesic

    connecting_geodesic(metric, z0, z1, progress=False)


def solve_batch(metric, z0, z1, **kw):
    from latentgeo.geodesics import connecting_geodesic

    t = time.perf_counter()
    r = connecting_geodesic(metric, z0, z1, progress=False, **kw)
    return time.perf_counter() - t, r


def floor_row(name, metric, z0, z1, res, rows, **kw):
    """The certification floor: the pairs of ``res`` solved again from ``res`` itself (same endpoints:
    Newton at the stored resolution, then the certificate), one batched call."""
    ft, fr = solve_batch(metric, z0, z1, init=res, **kw)
    both = fr.converged & res.converged
    gap = float((fr.length / res.length - 1)[both].abs().max()) if bool(both.any()) else float("nan")
    rows.append(dict(workload=name, pairs=len(z0), certified=int(fr.converged.sum()),
                     pct=100.0 * float(fr.converged.double().mean()), median_ms=ft / len(z0) * 1e3, p90_ms=None,
                     max_ms=None, failed={},
                     note=f"floor: re-certifying solved pairs from their own solutions; {int(fr.stats['evaluations'].sum())} "
                          f"evaluations against {int(res.stats['evaluations'].sum())} cold; lengths agree to {gap:.1e}"))
    print(rows[-1], flush=True)


def summary(name, out, rows, extra=""):
    from latentgeo.geodesics import GeodesicStatus

    n = len(out["status"])
    ok = int((out["status"] == 0).sum())
    counts = {GeodesicStatus(s).name: int((out["status"] == s).sum()) for s in np.unique(out["status"]) if s}
    ms = out["secs"] * 1e3
    row = dict(workload=name, pairs=n, certified=ok, pct=100.0 * ok / max(n, 1), median_ms=float(np.median(ms)),
               p90_ms=float(np.percentile(ms, 90)), max_ms=float(ms.max()), failed=counts, note=extra)
    rows.append(row)
    print(f"{name:55s} {ok:4d}/{n:<4d} ({row['pct']:5.1f} %)  median {row['median_ms']:8.1f} ms  p90 {row['p90_ms']:8.1f}"
          f"  max {row['max_ms']:8.1f} ms  {counts} {extra}", flush=True)
    return row


def stochman_run(embed, z0, z1, metric):
    """stochman 0.3.0 ``EmbeddedManifold.connecting_geodesic`` with its defaults, one pair at a time
    (as our per-pair timing); its curve measured at 2001 points with our metric."""
    from stochman.manifold import EmbeddedManifold

    class M(EmbeddedManifold):
        def embed(self, points, jacobian=False):
            # stochman passes curves as (B, N, d); latentgeo embeddings take (n, d) batches
            lead, dim = points.shape[:-1], points.shape[-1]
            flat = points.reshape(-1, dim)
            y = embed(flat).reshape(*lead, -1)
            if jacobian:
                J = torch.func.vmap(torch.func.jacrev(lambda p: embed(p[None])[0]))(flat)
                return y, J.reshape(*lead, J.shape[-2], dim)
            return y

    man = M()
    secs, L = [], []
    t = torch.linspace(0, 1, 2001, dtype=D64)
    man.connecting_geodesic(z0[:1].clone(), z1[:1].clone())  # warm-up, untimed (as ours: see warm_up)
    for k in range(z0.shape[0]):
        s = time.perf_counter()
        curve, _ = man.connecting_geodesic(z0[k : k + 1].clone(), z1[k : k + 1].clone())
        secs.append(time.perf_counter() - s)
        with torch.no_grad():
            pts = curve(t).reshape(1, -1, z0.shape[1])
            L.append(float(metric.length(pts)[0]))
    return np.array(secs), np.array(L)


def main():
    import latentgeo as lg
    from latentgeo.geodesics import Collocation, distance_matrix

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-stochman", action="store_true")
    ap.add_argument("--only", default="abcdefm")
    ap.add_argument("--dm-codes", type=int, default=None,
                    help="codes of workload (m)'s distance matrix (default 12 with --quick, else 20; the issue's row: 500)")
    ap.add_argument("--out", default=os.path.join(HERE, "bench_geodesics_results.json"), help="JSON results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    n_a = 20 if q else 100
    n_small = 10 if q else 30
    rows, results = [], {}
    print(f"latentgeo {lg.__version__}, torch {torch.__version__}, {platform.machine()}, threads {args.threads}", flush=True)

    if set("abdm") & set(args.only):
        t = time.perf_counter()
        vae, codes, labels = train_demo_vae(2)
        print(f"(a) demo VAE trained in {time.perf_counter() - t:.1f} s", flush=True)
        metric_a = lg.PullbackMetric(vae.decoder_for_analysis())
        z0a, z1a = data_pairs(codes, labels, n_a)
    if "a" in args.only:
        warm_up(metric_a, z0a, z1a)
        out = solve_each(metric_a, z0a, z1a)
        results["a"] = summary("(a) demo VAE 2-D, tol 1e-6", out, rows, f"nodes used {sorted(set(out['nodes'].tolist()))}")
        ncent = 45
        cen = {k: v[-ncent:] for k, v in out.items()}
        summary("(a) class-centre pairs only, tol 1e-6", cen, rows)
        bt, br = solve_batch(metric_a, z0a, z1a)
        rows.append(dict(workload="(a) same pairs, one batched call, tol 1e-6", pairs=len(z0a), certified=int(br.converged.sum()),
                         pct=100.0 * float(br.converged.double().mean()), median_ms=bt / len(z0a) * 1e3, p90_ms=None,
                         max_ms=None, failed={}, note="time per pair = batch time / pairs"))
        print(rows[-1], flush=True)
        floor_row("(a) the same pairs from their own solutions, tol 1e-6", metric_a, z0a, z1a, br, rows)
        # warm starts (what k-means iterations and neighbouring rows of a distance matrix have): the
        # same pairs with each endpoint moved to its nearest other code, started from the solved
        # curves, against a cold solve of the moved pairs; both one batched call
        def nearest_other(z):
            D = torch.cdist(z.double(), codes.double())
            D[D < 1e-12] = float("inf")
            return codes[D.argmin(1)].to(z.dtype)

        m0, m1 = nearest_other(z0a), nearest_other(z1a)
        for wtol in (1e-6, 1e-3):
            base = br if wtol == 1e-6 else lg.connecting_geodesic(metric_a, z0a, z1a, tol=wtol, progress=False)
            t = time.perf_counter()
            wr = lg.connecting_geodesic(metric_a, m0, m1, tol=wtol, init=base, progress=False)
            wt = time.perf_counter() - t
            t = time.perf_counter()
            cr = lg.connecting_geodesic(metric_a, m0, m1, tol=wtol, progress=False)
            ct = time.perf_counter() - t
            both = wr.converged & cr.converged
            longer = int((wr.length > cr.length * (1 + 1e-6))[both].sum())
            gap = float(((wr.length - cr.length) / cr.length)[both].abs().max()) if bool(both.any()) else float("nan")
            rows.append(dict(workload=f"(a) warm start from the solved pairs, endpoints moved to their nearest codes, tol {wtol:g}",
                             pairs=len(z0a), certified=int(wr.converged.sum()), pct=100.0 * float(wr.converged.double().mean()),
                             median_ms=wt / len(z0a) * 1e3, p90_ms=None, max_ms=None, failed={},
                             note=f"batched; cold solve of the moved pairs {ct / len(z0a) * 1e3:.1f} ms/pair "
                                  f"({int(cr.converged.sum())} certified); {longer} warm lengths longer than cold "
                                  f"(max rel gap {gap:.1e})"))
            print(rows[-1], flush=True)
        out4 = solve_each(metric_a, z0a, z1a, tol=1e-4)
        results["a4"] = summary("(a) demo VAE 2-D, tol 1e-4", out4, rows)
        # the same at float32 working precision (connecting_geodesic(dtype=torch.float32), allowed
        # for tol >= 1e-4): each pair alone, then all pairs in one batched call, against float64
        out4f = solve_each(metric_a, z0a, z1a, tol=1e-4, dtype=torch.float32)
        both = (out4f["status"] == 0) & (out4["status"] == 0)
        gap = float(np.max(np.abs(out4f["length"][both] / out4["length"][both] - 1), initial=0.0))
        results["a4f"] = summary("(a) demo VAE 2-D, tol 1e-4, dtype float32", out4f, rows,
                                 f"max rel length difference to float64 on {int(both.sum())} pairs certified by both: {gap:.1e}")
        for dt in (torch.float64, torch.float32):
            bt, br = solve_batch(metric_a, z0a, z1a, tol=1e-4, dtype=dt)
            rows.append(dict(workload=f"(a) one batched call, tol 1e-4, dtype {str(dt).split('.')[-1]}", pairs=len(z0a),
                             certified=int(br.converged.sum()), pct=100.0 * float(br.converged.double().mean()),
                             median_ms=bt / len(z0a) * 1e3, p90_ms=None, max_ms=None, failed={},
                             note="time per pair = batch time / pairs"))
            print(rows[-1], flush=True)
            floor_row(f"(a) the same pairs from their own solutions, tol 1e-4, dtype {str(dt).split('.')[-1]}",
                      metric_a, z0a, z1a, br, rows, tol=1e-4, dtype=dt)
        if not args.no_stochman:
            try:
                ns = n_small
                s_secs, s_len = stochman_run(metric_a.embedding, z0a[:ns], z1a[:ns], metric_a)
                ours = out["length"][:ns]
                okm = out["status"][:ns] == 0
                worse = ours[okm] > s_len[okm] * (1 + 1e-9)
                ratio = np.median(s_secs) / np.median(out["secs"][:ns])
                rows.append(dict(workload="(a) stochman 0.3.0 connecting_geodesic (defaults)", pairs=ns, certified=None,
                                 pct=None, median_ms=float(np.median(s_secs) * 1e3), p90_ms=float(np.percentile(s_secs, 90) * 1e3),
                                 max_ms=float(s_secs.max() * 1e3), failed={},
                                 note=f"median ratio stochman/ours {ratio:.2f}x; certified lengths longer than stochman's: "
                                      f"{int(worse.sum())} of {int(okm.sum())} (max excess {float(np.max((ours[okm] / s_len[okm] - 1), initial=0)):.2e}); "
                                      f"stochman shorter-or-equal curve on uncertified: {int((s_len[~okm] < ours[~okm]).sum())}"))
                print(rows[-1], flush=True)
                results["a_stochman_ratio"] = ratio
            except Exception as exc:  # noqa: BLE001
                print("stochman (a) failed:", repr(exc), flush=True)
    if "b" in args.only:
        vae10, codes10, labels10 = train_demo_vae(10)
        metric_b = lg.PullbackMetric(vae10.decoder_for_analysis())
        z0b, z1b = data_pairs(codes10, labels10, n_small, centres=False)
        warm_up(metric_b, z0b, z1b)
        out = solve_each(metric_b, z0b, z1b)
        results["b"] = summary("(b) demo VAE family, 10-D latent, tol 1e-6", out, rows)
    if "c" in args.only:
        net = vp_mlp()
        metric_c = lg.PullbackMetric(lg.DeterministicDecoder(net))
        g = torch.Generator().manual_seed(1)
        n_c = 2 * n_a
        z = 1.5 * torch.randn(2, n_c, 2, generator=g, dtype=D64)
        warm_up(metric_c, z[0], z[1])
        out = solve_each(metric_c, z[0], z[1])
        results["c"] = summary("(c) VP tanh MLP 2-64-64-50, z~N(0,1.5²), tol 1e-6", out, rows)
        bt, br = solve_batch(metric_c, z[0], z[1])
        rows.append(dict(workload="(c) same pairs, one batched call", pairs=n_c, certified=int(br.converged.sum()),
                         pct=100.0 * float(br.converged.double().mean()), median_ms=bt / n_a * 1e3, p90_ms=None, max_ms=None,
                         failed={}, note="time per pair = batch time / pairs"))
        rows[-1]["median_ms"] = bt / n_c * 1e3
        print(rows[-1], flush=True)
        netl = vp_mlp(near_linear=True)
        metric_l = lg.PullbackMetric(lg.DeterministicDecoder(netl))
        zl = 4 * torch.rand(2, n_c, 2, generator=g, dtype=D64) - 2
        warm_up(metric_l, zl[0], zl[1])
        outl = solve_each(metric_l, zl[0], zl[1])
        summary("(c') near-linear default-init MLP, U[-2,2]², tol 1e-6", outl, rows)
        if not args.no_stochman:
            try:
                ns = n_small
                s_secs, s_len = stochman_run(net, z[0][:ns], z[1][:ns], metric_c)
                ours = out["length"][:ns]
                okm = out["status"][:ns] == 0
                worse = ours[okm] > s_len[okm] * (1 + 1e-9)
                ratio = np.median(s_secs) / np.median(out["secs"][:ns])
                rows.append(dict(workload="(c) stochman 0.3.0 connecting_geodesic (defaults)", pairs=ns, certified=None, pct=None,
                                 median_ms=float(np.median(s_secs) * 1e3), p90_ms=float(np.percentile(s_secs, 90) * 1e3),
                                 max_ms=float(s_secs.max() * 1e3), failed={},
                                 note=f"median ratio stochman/ours {ratio:.2f}x; certified lengths longer than stochman's: "
                                      f"{int(worse.sum())} of {int(okm.sum())}"))
                print(rows[-1], flush=True)
                results["c_stochman_ratio"] = ratio
            except Exception as exc:  # noqa: BLE001
                print("stochman (c) failed:", repr(exc), flush=True)
    if "d" in args.only:
        dec = vae.decoder_for_analysis()
        mean_m, std_m = dec.mean, dec.std
        plain = lg.GaussianDecoder(mean=lambda z: mean_m(z), std=lambda z: std_m(z), latent_dim=2)
        metric_d = lg.PullbackMetric(plain)
        warm_up(metric_d, z0a[:n_small], z1a[:n_small])
        out = solve_each(metric_d, z0a[:n_small], z1a[:n_small])
        ref = solve_each(metric_a, z0a[:n_small], z1a[:n_small])
        both = (out["status"] == 0) & (ref["status"] == 0)
        agree = float(np.max(np.abs(out["length"][both] / ref["length"][both] - 1), initial=0))
        ratio = np.median(out["secs"]) / np.median(ref["secs"])
        results["d"] = summary("(d) = (a) as plain functions (lambdas), tol 1e-6", out, rows,
                               f"median time vs nn.Module on the same pairs {ratio:.2f}x; max rel length gap {agree:.1e}")
    if "e" in args.only:
        metric_e = lg.PullbackMetric(lg.DeterministicDecoder(stereo, latent_dim=2))
        z0e, z1e, ang = sphere_pairs(n_small)
        warm_up(metric_e, z0e, z1e)
        out = solve_each(metric_e, z0e, z1e)
        okm = out["status"] == 0
        err = float(np.max(np.abs(out["length"][okm] - ang.numpy()[okm]) / ang.numpy()[okm], initial=0))
        results["e"] = summary("(e) stereographic sphere, arcs 5°-170°, tol 1e-6", out, rows, f"max rel error vs arc {err:.1e}")
    if "f" in args.only:
        # what users have: a VAE trained outside latentgeo, analysed as the README says
        # (lg.fit_rbf_variance(net, codes, data, n_centers=16), float32 model, default solver)
        for act in ("tanh", "silu", "elu", "relu"):
            t = time.perf_counter()
            net, codes_f, X_f, y_f = train_plain_vae(act)
            dec_f = lg.fit_rbf_variance(net, codes_f, X_f, n_centers=16)
            metric_f = lg.PullbackMetric(dec_f)
            print(f"(f) plain-PyTorch {act} VAE trained and its variance fitted in {time.perf_counter() - t:.1f} s", flush=True)
            z0f, z1f = data_pairs(codes_f, y_f, n_small, centres=False)
            warm_up(metric_f, z0f, z1f)
            out = solve_each(metric_f, z0f, z1f)
            bt, br = solve_batch(metric_f, z0f, z1f)
            results[f"f_{act}"] = summary(f"(f) plain-PyTorch digits VAE ({act}), README recipe, tol 1e-6", out, rows,
                                          f"one batched call {bt / len(z0f) * 1e3:.1f} ms/pair, {int(br.converged.sum())} certified")
    if "m" in args.only:
        nm = args.dm_codes or (12 if q else 20)
        A = codes[torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(3))[:nm]]
        t = time.perf_counter()
        D = distance_matrix(metric_a, A, progress=nm > 50, on_failure="ignore")
        el = time.perf_counter() - t
        npairs = nm * (nm - 1) // 2
        iu = torch.triu_indices(nm, nm, offset=1)
        st = D.status[iu[0], iu[1]]
        failed = {lg.GeodesicStatus(int(k)).name: int((st == k).sum()) for k in st.unique().tolist() if k}
        note = f"{el:.1f} s total"
        if npairs < 124750:
            note += f"; 500 codes (124,750 pairs) extrapolated: {el / npairs * 124750 / 3600:.1f} h"
        rows.append(dict(workload=f"(a) distance_matrix of {nm} data codes ({npairs} pairs)", pairs=npairs,
                         certified=npairs - D.n_failed, pct=100.0 * (npairs - D.n_failed) / npairs,
                         median_ms=el / npairs * 1e3, p90_ms=None, max_ms=None, failed=failed,
                         note=note + f"; {int(D.stats['evaluations'])} evaluations"))
        print(rows[-1], flush=True)
    with open(args.out, "w") as fh:
        json.dump(dict(rows=rows, results=results), fh, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
