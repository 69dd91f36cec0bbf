"""Gaussian vs von Mises–Fisher vs power-spherical VAEs on the bundled digits (issue 13), and
the speed of the sphere samplers.

Run from the repository root::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/svae_digits.py            # full run
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/svae_digits.py --quick    # smoke test

(a) For latent dimension d ∈ {2, 5, 10}: a Euclidean latent R^d (Gaussian posterior) against
    the sphere S^d ⊂ R^{d+1} with a vMF or a power-spherical posterior. Same encoder/decoder
    MLP (hidden 64, 64), Bernoulli likelihood on the digits' grey levels in [0, 1] (as Davidson
    et al. 2018 on MNIST, though the digits are 8×8 and not binarised, so the numbers are not
    comparable to their table, only the ordering is), a fixed 1500/297 train/test split,
    ``epochs`` epochs of the default trainer. On the test items: IWAE (K = 500), ELBO, the
    reconstruction term and the KL (each the mean over items), mean ± std over 3 seeds.
(b) 10⁶ samples at m = 10, κ = 50: ``scipy.stats.vonmises_fisher`` against ours (float32 and
    float64), best of 3.

Writes ``benchmarks/svae_digits_results.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def run_model(kind, d, seed, epochs, x_train, x_test):
    from latentgeo.models import VAE
    from latentgeo.training import iwae_log_likelihood, train_vae

    if kind == "gaussian":
        vae = VAE(64, d, latent="euclidean", likelihood="bernoulli", hidden=(64, 64), item_shape=(8, 8),
                  random_state=seed)
    else:
        vae = VAE(64, d, latent="sphere", latent_kwargs={"family": kind}, likelihood="bernoulli", hidden=(64, 64),
                  item_shape=(8, 8), random_state=seed)
    t0 = time.perf_counter()
    train_vae(vae, x_train, epochs=epochs, random_state=seed, progress=False, variance=None)
    train_s = time.perf_counter() - t0
    vae.eval()
    with torch.no_grad():
        torch.manual_seed(seed)
        elbo = torch.stack([vae.elbo(x_test) for _ in range(20)]).mean(0)
        q = vae.encode(x_test)
        z = vae.latent.rsample(q, 20)
        kl = vae.latent.kl(q, z)
    iwae = iwae_log_likelihood(vae, x_test, k=500, random_state=seed)
    return {"iwae": float(iwae.mean()), "elbo": float(elbo.mean()), "recon": float((elbo + kl).mean()),
            "kl": float(kl.mean()), "train_s": train_s}


def sampler_speed(n=10**6, m=10, kappa=50.0, reps=3):
    import scipy.stats

    from latentgeo.distributions import PowerSpherical, VonMisesFisher

    mu = np.zeros(m)
    mu[0] = 1.0
    out = {}

    def best(f):
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)

    out["scipy.stats.vonmises_fisher"] = best(lambda: scipy.stats.vonmises_fisher(mu, kappa).rvs(n, random_state=0))
    for dt in (torch.float32, torch.float64):
        loc, k = torch.tensor(mu, dtype=dt), torch.tensor(kappa, dtype=dt)
        out[f"VonMisesFisher {str(dt)[6:]}"] = best(lambda: VonMisesFisher(loc, k).sample((n,), random_state=0))
        out[f"PowerSpherical {str(dt)[6:]}"] = best(lambda: PowerSpherical(loc, k).sample((n,), random_state=0))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from latentgeo.datasets import load_dataset

    ds = load_dataset("digits")
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
    x_train, x_test = x[perm[:1500]], x[perm[1500:]]
    dims, seeds, epochs = ((2,), (0,), 3) if args.quick else ((2, 5, 10), (0, 1, 2), args.epochs)
    rows = []
    for d in dims:
        for kind in ("gaussian", "vmf", "power"):
            res = [run_model(kind, d, s, epochs, x_train, x_test) for s in seeds]
            row = {"d": d, "kind": kind, "epochs": epochs, "seeds": list(seeds)}
            for key in res[0]:
                vals = np.array([r[key] for r in res])
                row[key] = [float(vals.mean()), float(vals.std())]
            rows.append(row)
            print(row, flush=True)
    speed = sampler_speed(n=10**5 if args.quick else 10**6)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "quick": args.quick}
    with open(os.path.join(HERE, "svae_digits_results.json"), "w") as f:
        json.dump({"meta": meta, "vae": rows, "sampler_seconds": speed}, f, indent=1)
    print("\n| d | latent | IWAE | ELBO | recon | KL | train s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        name = {"gaussian": f"Gaussian R^{r['d']}", "vmf": f"vMF S^{r['d']}", "power": f"power S^{r['d']}"}[r["kind"]]
        cells = " | ".join(f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in ("iwae", "elbo", "recon", "kl", "train_s"))
        print(f"| {r['d']} | {name} | {cells} |")
    print("\n| sampler (m = 10, κ = 50) | seconds | speed-up vs scipy |\n|---|---|---|")
    ref = speed["scipy.stats.vonmises_fisher"]
    for k, v in speed.items():
        print(f"| {k} | {v:.3f} | {ref / v:.2f} |")


if __name__ == "__main__":
    main()
