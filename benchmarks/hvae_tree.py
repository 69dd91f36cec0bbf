"""Euclidean vs hyperbolic VAEs, with and without posterior flows, on tree data and on the digits (issue 14).

Run from the repository root::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/hvae_tree.py            # full run (~10 min on 2 loaded cores)
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/hvae_tree.py --quick    # smoke test

Latent dimension 2 throughout. Six models: a Euclidean VAE (diagonal Gaussian posterior, N(0, I) prior), + an
amortised planar flow, + zuko's conditional RealNVP (4 layers each); a hyperbolic VAE (wrapped normal on H², wrapped
normal prior, Nagano et al. 2019), + tangent coupling (TC), + wrapped hyperboloid coupling (WHC) (Bose et al. 2020;
4 layers each). For d = 2 a WHC layer is mathematically a TC layer (see ``latentgeo.flows.hyperbolic``), so the
two rows must agree; they are run anyway, as a check.

Data sets:

* ``tree``: branching diffusion (Mathieu et al. 2019, §5.1), depth 6, branching 2, R^50, 5 noisy copies per node
  (635 items), fixed 80/20 split; Gaussian likelihood with a learned constant std (``variance="constant"``),
  batch 64, lr 3e-3. The IWAE here is a log *density* in R^50.
* ``digits``: the bundled 8×8 digits, fixed 1500/297 split (as ``svae_digits.py``), Bernoulli likelihood on the grey
  levels, batch 128, lr 1e-3.

MLPs (64, 64), the default trainer (``train_vae``: KL warm-up, 10 % validation split, patience 20) for ``epochs``
epochs. On the test items: IWAE (K = 500) and a 100-sample ELBO, mean over items; then mean ± std over seeds
0, 1, 2. Writes ``benchmarks/hvae_tree_results.json`` (after every model, so a partial run keeps its numbers) and
prints a Markdown table.
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

MODELS = {
    "Euclidean": ("euclidean", {}),
    "Euclidean + RealNVP": ("euclidean", {"flow": "realnvp"}),
    "Euclidean + planar": ("euclidean", {"flow": "planar"}),
    "hyperbolic": ("hyperbolic", {}),
    "hyperbolic + TC": ("hyperbolic", {"flow": "tc"}),
    "hyperbolic + WHC": ("hyperbolic", {"flow": "whc"}),
}


def load(name):
    from latentgeo.datasets import load_dataset

    if name == "tree":
        ds = load_dataset("tree", depth=6, branching=2, dim=50, random_state=0)
        x = ds.data.float()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
        n = int(0.8 * len(x))
        return x[perm[:n]], x[perm[n:]], {"likelihood": "gaussian"}, {"batch_size": 64, "lr": 3e-3,
                                                                        "variance": "constant"}
    ds = load_dataset("digits")
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
    return x[perm[:1500]], x[perm[1500:]], {"likelihood": "bernoulli", "item_shape": (8, 8)}, {
        "batch_size": 128, "lr": 1e-3}


def run_model(latent, kw, seed, epochs, x_train, x_test, vae_kw, train_kw):
    from latentgeo.models import VAE
    from latentgeo.training import elbo_estimate, iwae_log_likelihood, train_vae

    vae = VAE(x_train.shape[1], 2, latent=latent, latent_kwargs=kw, hidden=(64, 64), random_state=seed, **vae_kw)
    t0 = time.perf_counter()
    hist = train_vae(vae, x_train, epochs=epochs, random_state=seed, progress=False, **train_kw)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    iwae = iwae_log_likelihood(vae, x_test, k=500, random_state=seed)
    elbo = elbo_estimate(vae, x_test, n_samples=100, random_state=seed)
    return {"iwae": float(iwae.mean()), "elbo": float(elbo.mean()), "train_s": train_s,
            "eval_s": time.perf_counter() - t0, "epochs_run": len(hist)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tree-epochs", type=int, default=150)
    ap.add_argument("--digits-epochs", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = (0,) if args.quick else (0, 1, 2)
    epochs = {"tree": 3 if args.quick else args.tree_epochs, "digits": 3 if args.quick else args.digits_epochs}
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "utc_start": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "quick": args.quick,
            "epochs": epochs, "seeds": list(seeds), "iwae_k": 500,
            "load_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    out = {"meta": meta, "runs": []}
    path = os.path.join(HERE, "hvae_tree_results.json")
    t_all = time.perf_counter()
    for data in ("tree", "digits"):
        x_train, x_test, vae_kw, train_kw = load(data)
        for name, (latent, kw) in MODELS.items():
            for s in seeds:
                r = run_model(latent, kw, s, epochs[data], x_train, x_test, vae_kw, train_kw)
                out["runs"].append({"data": data, "model": name, "seed": s, **r})
                print(data, name, s, {k: round(v, 3) for k, v in r.items()}, flush=True)
                meta["wall_s"] = time.perf_counter() - t_all
                with open(path, "w") as f:
                    json.dump(out, f, indent=1)
    meta["utc_end"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    meta["load_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(table(out))


def table(out):
    runs = out["runs"]
    lines = ["| model | tree: IWAE | tree: ELBO | digits: IWAE | digits: ELBO | train s (tree / digits) |",
             "|---|---|---|---|---|---|"]
    for name in MODELS:
        cells = []
        secs = []
        for data in ("tree", "digits"):
            rs = [r for r in runs if r["data"] == data and r["model"] == name]
            for key in ("iwae", "elbo"):
                v = np.array([r[key] for r in rs])
                cells.append(f"{v.mean():.2f} ± {v.std():.2f}" if len(v) else "–")
            secs.append(f"{np.mean([r['train_s'] for r in rs]):.1f}" if rs else "–")
        note = " (≡ TC for d = 2)" if name.endswith("WHC") else ""
        lines.append(f"| {name}{note} | " + " | ".join(cells) + f" | {' / '.join(secs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
