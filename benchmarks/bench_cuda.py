"""Does a GPU help? The same workloads on the CPU and on a CUDA device, in one run.

Workloads (the demo's model family: the {0,1,2} digits VAE of ``kmeans_phases.py``, 2-D latent,
hidden (64, 64), RBF variance, 300 epochs, ``random_state=0``, analysed in float64):

* the expected metric ``M(z)`` at ``--points`` random latent points (batched ``torch.func``);
* ``connecting_geodesic`` with the default solver at ``tol=1e-6`` on ``--pairs`` random pairs of
  codes (one batch), and at ``tol=1e-2`` with ``GeodesicKMeans``' lighter iteration solver;
* one ``GeodesicKMeans(metric, 3, random_state=0)`` fit on ``--codes`` codes (``0``: skipped).

Prints one table row per workload and device (wall time, and certified pairs where it applies).
CI has no GPU; without one the CUDA rows are left out.

    PYTHONPATH=. python benchmarks/bench_cuda.py --threads 16
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

import latentgeo as lg


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(dev, fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--codes", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RuntimeWarning)
    ds = lg.load_dataset("digits", classes=[0, 1, 2])
    model = lg.VAE(ds.dim, 2, hidden=(64, 64), item_shape=ds.item_shape, random_state=0)
    t = time.perf_counter()
    lg.train_vae(model, ds, epochs=args.epochs, variance="rbf", random_state=0, progress=False)
    print(f"trained on the CPU in {time.perf_counter() - t:.1f} s ({args.threads} threads)")
    with torch.no_grad():
        codes = model.encode_mean(ds.data).double()
    model = model.double()
    g = torch.Generator().manual_seed(0)
    z = codes[torch.randint(len(codes), (args.points,), generator=g)] + 0.3 * torch.randn(args.points, 2, generator=g, dtype=torch.float64)
    i, j = torch.randint(len(codes), (2, args.pairs), generator=g)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    light = lg.Collocation(nodes=32, max_nodes=128, degree=16, energy_max_iter=20, max_iter=12)
    print(f"\n| workload | device | wall, s | certified |\n|---|---|---|---|")
    ref = {}
    for dev in devices:
        m = lg.PullbackMetric(copy.deepcopy(model).to(dev).decoder_for_analysis())
        zd, a, b = z.to(dev), codes[i].to(dev), codes[j].to(dev)
        m.tensor(zd[:100])  # warm-up (CUDA context, kernels)
        s, G = timed(dev, lambda: m.tensor(zd), repeat=3)
        ref.setdefault("G", G.detach().cpu())
        err = float((G.detach().cpu() - ref["G"]).abs().max() / ref["G"].abs().max())
        print(f"| metric tensor, {args.points} points | {dev} | {s:.3f} | (max rel. diff. to CPU {err:.1e}) |")
        for name, kw in (("tol 1e-6, default solver", dict(tol=1e-6)),
                         ("tol 1e-2, k-means iteration solver", dict(tol=1e-2, solver=light))):
            s, r = timed(dev, lambda: lg.connecting_geodesic(m, a, b, progress=False, **kw))
            print(f"| {args.pairs} geodesics, {name} | {dev} | {s:.1f} | {int(r.converged.sum())}/{args.pairs} |")
        if args.codes:
            X = codes[: args.codes].to(dev)
            s, km = timed(dev, lambda: lg.GeodesicKMeans(m, 3, random_state=0).fit(X))
            print(f"| k-means fit, {args.codes} codes, k=3 | {dev} | {s:.1f} | "
                  f"{100 * km.distance_converged_.mean():.0f} % (inertia {km.inertia_:.1f}) |")


if __name__ == "__main__":
    main()
