"""Connecting geodesics on a 2→64→64→50 tanh MLP decoder: latentgeo vs stochman vs geomstats.

Run from the benchmark environment (stochman 0.3.0, geomstats 2.8.0, latentgeo editable)::

    /tmp/benchenv/bin/python benchmarks/bench_geodesics.py            # full run, prints a table
    /tmp/benchenv/bin/python benchmarks/bench_geodesics.py --quick    # fewer pairs, for a smoke test

What is measured
----------------
* Decoder: ``Linear(2,64) → tanh → Linear(64,64) → tanh → Linear(64,50)``, PyTorch default
  initialisation under ``torch.manual_seed(0)``, float64, deterministic (metric ``JᵀJ``).
* Pairs: ``z0, z1 ~ U[-2, 2]²`` (seeded).
* Reference lengths (float64), two independent methods that must agree:
  (a) discrete curve energy minimisation by Newton's method with the exact block-tridiagonal
  Hessian at ``T = 65, 129, 257`` points, Richardson-extrapolated in ``h = 1/(T−1)``
  (chord sums converge as ``h²``): ``L ≈ L₂₅₇ + (L₂₅₇ − L₁₂₉)/3``;
  (b) for the first ``--bvp-pairs`` pairs (default 2; 25–100 s each),
  ``scipy.integrate.solve_bvp`` on the geodesic ODE with Christoffel symbols from autodiff
  of ``M(z)`` (tol 1e-10, started from (a)), length by 2001-point Gauss–Legendre quadrature of
  ``√(γ̇ᵀMγ̇)`` on the dense solution. The script reports their largest disagreement.
* Relative length error ``|L − L_ref|/L_ref``; a solver's curve is measured by *our* metric on
  ``2001`` points of its own interpolant (so a coarse curve is not flattered by a coarse sum).
* Times are best of 3 (``torch.set_num_threads(2)``), per pair = batch time / pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0


# ---------------------------------------------------------------------------------------------
# problem
# ---------------------------------------------------------------------------------------------
def make_net(seed=SEED, layers=None):
    """The benchmark decoder (``layers`` lets stochman build the same net from nnj layers)."""
    nn = torch.nn if layers is None else layers
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 50))
    return net.double().eval().requires_grad_(False)


def make_pairs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = 4 * torch.rand(2, n, 2, generator=g, dtype=torch.float64) - 2
    return z[0], z[1]


def our_metric(net):
    import latentgeo as lg

    return lg.PullbackMetric(lg.DeterministicDecoder(net))


def best_of(fn, repeats=3):
    """Best wall time and best process CPU time of ``repeats`` runs, and the last output.

    The machine may be shared: wall time then includes waiting for a core, process CPU time
    (all threads of this process) does not, so both are reported."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return (min(walls), min(cpus)), out


@torch.no_grad()
def curve_length(net, curves):
    """Length of curves ``(N, T, 2)`` as a chord sum in the embedding (fine sampling)."""
    g = net(curves)
    return (g[:, 1:] - g[:, :-1]).norm(dim=-1).sum(1)


def rel_err(length, ref):
    return (torch.as_tensor(length, dtype=torch.float64) - ref).abs() / ref


# ---------------------------------------------------------------------------------------------
# reference (a): Newton on the discrete energy, Richardson in T
# ---------------------------------------------------------------------------------------------
def _segment_hessians(f, a, b):
    """Gradients and Hessians of φ(a, b) = ‖f(b) − f(a)‖² for segments ``(S, 2)`` each."""
    from torch.func import grad, hessian, vmap

    def phi(x):
        y = f(x.reshape(2, 2))
        return (y[1] - y[0]).pow(2).sum()

    x = torch.cat([a, b], -1)
    return vmap(grad(phi))(x), vmap(hessian(phi))(x)


def newton_discrete(net, init, tol=1e-13, max_iter=60):
    """Minimise ``Σ‖g(c_{i+1}) − g(c_i)‖²`` over interior points of curves ``(N, T, 2)``.

    Exact Hessian (block tridiagonal, assembled densely per curve), Levenberg damping and a
    backtracking line search; stops per batch when every curve's Newton step is below ``tol``.
    Returns the curves and the final max step.
    """
    c = init.clone()
    n, t, d = c.shape
    m = (t - 2) * d
    lam = torch.full((n,), 1e-10, dtype=c.dtype)

    def energy(cc):
        with torch.no_grad():
            g = net(cc)
            return (g[:, 1:] - g[:, :-1]).pow(2).sum((1, 2))

    step_max = math.inf
    for it in range(max_iter):
        a, b = c[:, :-1].reshape(-1, d), c[:, 1:].reshape(-1, d)
        gs, hs = _segment_hessians(net, a, b)
        gs, hs = gs.reshape(n, t - 1, 2 * d), hs.reshape(n, t - 1, 2 * d, 2 * d)
        G = torch.zeros(n, t, d, dtype=c.dtype)
        G[:, :-1] += gs[..., :d]
        G[:, 1:] += gs[..., d:]
        H = torch.zeros(n, t, d, t, d, dtype=c.dtype)
        idx = torch.arange(t - 1)
        H[:, idx, :, idx, :] += hs[..., :d, :d].transpose(0, 1)
        H[:, idx + 1, :, idx + 1, :] += hs[..., d:, d:].transpose(0, 1)
        H[:, idx, :, idx + 1, :] += hs[..., :d, d:].transpose(0, 1)
        H[:, idx + 1, :, idx, :] += hs[..., d:, :d].transpose(0, 1)
        Hi = H[:, 1:-1, :, 1:-1, :].reshape(n, m, m)
        Gi = G[:, 1:-1].reshape(n, m)
        e0 = energy(c)
        eye = torch.eye(m, dtype=c.dtype)
        while True:
            L, info = torch.linalg.cholesky_ex(Hi + (lam * Hi.diagonal(dim1=1, dim2=2).abs().mean(1))[:, None, None] * eye)
            bad = info != 0
            if not bad.any():
                break
            lam = torch.where(bad, lam * 100, lam)
        step = -torch.cholesky_solve(Gi[..., None], L)[..., 0].reshape(n, t - 2, d)
        alpha = torch.ones(n, dtype=c.dtype)
        for _ in range(30):
            trial = c.clone()
            trial[:, 1:-1] += alpha[:, None, None] * step
            ok = energy(trial) <= e0 + 1e-14 * e0.abs()
            if ok.all():
                break
            alpha = torch.where(ok, alpha, alpha / 4)
        c[:, 1:-1] += alpha[:, None, None] * step
        lam = torch.where(alpha == 1, (lam / 10).clamp_min(1e-14), lam * 10)
        step_max = float((alpha[:, None, None] * step).abs().max())
        if step_max < tol:
            break
    return c, step_max, it + 1


def upsample(c, t_new):
    """Linear re-interpolation of curves ``(N, T, d)`` to ``t_new`` uniform points."""
    n, t, d = c.shape
    s = torch.linspace(0, t - 1, t_new, dtype=c.dtype)
    i = s.floor().long().clamp(max=t - 2)
    w = (s - i)[None, :, None]
    return c[:, i] * (1 - w) + c[:, i + 1] * w


def reference_newton(net, z0, z1, levels=(65, 129, 257), init=None):
    """Richardson-extrapolated lengths of Newton-converged discrete geodesics."""
    c = init if init is not None else z0[:, None] + torch.linspace(0, 1, levels[0], dtype=z0.dtype)[:, None] * (z1 - z0)[:, None]
    c = upsample(c, levels[0])
    lengths, info, curves = [], [], None
    for t in levels:
        c = upsample(c, t)
        c, step, iters = newton_discrete(net, c)
        lengths.append(curve_length(net, c))
        info.append((t, step, iters))
        curves = c
    L1, L2, L3 = lengths[-3], lengths[-2], lengths[-1]
    rich = L3 + (L3 - L2) / 3
    rich_prev = L2 + (L2 - L1) / 3
    return rich, (rich - rich_prev).abs() / rich, curves, info


# ---------------------------------------------------------------------------------------------
# reference (b): scipy solve_bvp with autodiff Christoffel symbols
# ---------------------------------------------------------------------------------------------
def reference_bvp(net, curves, tol=1e-10):
    from scipy.integrate import solve_bvp
    from torch.func import jacfwd, vmap

    def metric(z):
        J = vmap(jacfwd(lambda x: net(x[None])[0]))(z)
        return J.transpose(1, 2) @ J

    def christoffel(z):
        dM = vmap(jacfwd(lambda x: metric(x[None])[0]))(z)  # (N, i, j, k) = ∂_k M_ij
        Minv = torch.linalg.inv(metric(z))
        t = dM.permute(0, 1, 3, 2) + dM - dM.permute(0, 3, 1, 2)  # ∂_k M_ij + ∂_j M_ik − ∂_i M_jk
        return 0.5 * torch.einsum("nli,nijk->nljk", Minv, t.permute(0, 1, 3, 2))

    def rhs(_, y):
        z = torch.as_tensor(y[:2].T)
        v = torch.as_tensor(y[2:].T)
        acc = -torch.einsum("nljk,nj,nk->nl", christoffel(z), v, v)
        return np.vstack([y[2:], acc.T.numpy()])

    xs, ws = np.polynomial.legendre.leggauss(2001)
    tq = 0.5 * (xs + 1)
    out, ok = [], []
    for c in curves:
        t = np.linspace(0, 1, c.shape[0])
        y0 = np.vstack([c.T.numpy(), np.gradient(c.numpy(), t, axis=0).T])
        z0, z1 = c[0].numpy(), c[-1].numpy()
        sol = solve_bvp(rhs, lambda ya, yb: np.r_[ya[:2] - z0, yb[:2] - z1], t, y0, tol=tol, max_nodes=100000)
        yq = sol.sol(tq)
        z, v = torch.as_tensor(yq[:2].T), torch.as_tensor(yq[2:].T)
        speed = torch.einsum("ni,nij,nj->n", v, metric(z), v).clamp_min(0).sqrt().numpy()
        out.append(0.5 * float((ws * speed).sum()))
        ok.append(sol.status == 0)
    return torch.tensor(out, dtype=torch.float64), np.array(ok)


# ---------------------------------------------------------------------------------------------
# stochman 0.3.0
# ---------------------------------------------------------------------------------------------
def stochman_manifold():
    from stochman import nnj
    from stochman.manifold import EmbeddedManifold

    net = make_net(layers=nnj)

    class MLPManifold(EmbeddedManifold):
        def embed(self, points, jacobian=False):
            return net(points, jacobian=jacobian)

    return MLPManifold(), net


def run_stochman(z0, z1, converge=False):
    """stochman's batched ``connecting_geodesic`` (cubic spline, Adam lr 0.1, 150 iterations,
    one global gradient test); ``converge=True`` runs its optimiser until its own criterion
    holds (max 5,000 iterations) on a finer spline (20 nodes, 100 evaluation points)."""
    from stochman.curves import CubicSpline
    from stochman.geodesic import geodesic_minimizing_energy

    manifold, net = stochman_manifold()

    def solve():
        if not converge:
            curve, ok = manifold.connecting_geodesic(z0.clone(), z1.clone())
        else:
            curve = CubicSpline(z0.clone(), z1.clone(), num_nodes=20)
            ok = geodesic_minimizing_energy(curve, manifold, max_iter=5000, eval_grid=100)
        return curve, bool(ok)

    seconds, (curve, ok) = best_of(solve, 1 if converge else 3)
    with torch.no_grad():
        pts = curve(torch.linspace(0, 1, 2001, dtype=torch.float64))
    return seconds, curve_length(make_net(), pts), ok


# ---------------------------------------------------------------------------------------------
# geomstats 2.8.0 (subprocess: it needs GEOMSTATS_BACKEND=pytorch before import)
# ---------------------------------------------------------------------------------------------
def geomstats_worker(n_pairs, timeout_pair):
    os.environ["GEOMSTATS_BACKEND"] = "pytorch"
    import geomstats.backend as gs  # noqa: F401
    from geomstats.geometry.base import ImmersedSet
    from geomstats.geometry.euclidean import Euclidean
    from geomstats.numerics.bvp import ScipySolveBVP
    from geomstats.numerics.geodesic import LogODESolver

    torch.set_num_threads(2)
    net = make_net()

    class MLPImmersion(ImmersedSet):
        def __init__(self):
            super().__init__(dim=2)

        def _define_embedding_space(self):
            return Euclidean(dim=50)

        def immersion(self, point):
            return net(point)

    space = MLPImmersion()
    z0, z1 = make_pairs(100)
    rows = []
    for tol, count in ((1e-3, n_pairs), (1e-8, 1)):
        space.metric.log_solver = LogODESolver(
            space, n_nodes=10, integrator=ScipySolveBVP(tol=tol, max_nodes=10000),
            use_jac=False,  # its analytic Jacobian needs jacobian_christoffels, which PullbackMetric lacks
        )
        for i in range(count):
            t, c = time.perf_counter(), time.process_time()
            try:
                path = space.metric.geodesic(initial_point=z0[i], end_point=z1[i])
                pts = path(torch.linspace(0, 1, 2001, dtype=torch.float64)).reshape(1, -1, 2)
                err = None
            except Exception as exc:  # noqa: BLE001 - report whatever geomstats raises
                pts, err = None, f"{type(exc).__name__}: {exc}"[:200]
            sec, cpu = time.perf_counter() - t, time.process_time() - c
            length = None if pts is None else float(curve_length(net, pts.to(torch.float64))[0])
            rows.append({"pair": i, "tol": tol, "seconds": sec, "cpu": cpu, "length": length, "error": err})
    print(json.dumps(rows))


def run_geomstats(n_pairs, timeout_s=900):
    env = dict(os.environ, GEOMSTATS_BACKEND="pytorch")
    cmd = [sys.executable, os.path.abspath(__file__), "--geomstats-worker", str(n_pairs)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s} s"
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
    return json.loads(out.stdout.strip().splitlines()[-1]), None


# ---------------------------------------------------------------------------------------------
# latentgeo
# ---------------------------------------------------------------------------------------------
def run_ours(metric, z0, z1, tol=1e-6, repeats=3, **kw):
    from latentgeo.geodesics import connecting_geodesic

    seconds, res = best_of(lambda: connecting_geodesic(metric, z0, z1, tol=tol, **kw), repeats)
    return seconds, res


def machine():
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer pairs, no scaling to 10,000")
    ap.add_argument("--geomstats-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--geomstats-pairs", type=int, default=2)
    ap.add_argument("--no-geomstats", action="store_true")
    ap.add_argument("--bvp-pairs", type=int, default=2, help="pairs cross-checked with solve_bvp (25-100 s each)")
    ap.add_argument("--json", default=None, help="write all numbers to this JSON file")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000], help="scaling runs (pairs)")
    ap.add_argument("--reference-only", action="store_true", help="compute (and cache) the reference, then stop")
    ap.add_argument("--reference-cache", default=None, help="load/store the reference lengths here (JSON)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="skip a scaling run whose predicted time (from the previous size) exceeds this")
    args = ap.parse_args()
    if args.geomstats_worker is not None:
        geomstats_worker(args.geomstats_worker, None)
        return
    torch.set_num_threads(2)
    print(f"machine: {machine()}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    results = {"machine": machine()}
    net = make_net()
    n_ref = 20 if args.quick else 100
    z0, z1 = make_pairs(100)
    z0, z1 = z0[:n_ref], z1[:n_ref]

    # reference
    cached = None
    if args.reference_cache and os.path.exists(args.reference_cache):
        with open(args.reference_cache) as fh:
            cached = json.load(fh)
        if cached.get("n_ref") != n_ref or cached.get("seed") != SEED:
            cached = None
    if cached is None:
        t = time.perf_counter()
        ref, rich_diff, ref_curves, info = reference_newton(net, z0, z1)
        t_newton = time.perf_counter() - t
        t = time.perf_counter()
        nb = min(args.bvp_pairs, n_ref)
        ref_bvp, bvp_ok = reference_bvp(net, ref_curves[:nb])
        t_bvp = time.perf_counter() - t
        cached = {
            "n_ref": n_ref, "seed": SEED, "lengths": ref.tolist(), "richardson_change": float(rich_diff.max()),
            "levels": [list(map(float, x)) for x in info], "newton_s": t_newton, "bvp_s": t_bvp, "bvp_pairs": nb,
            "bvp_converged": bool(bvp_ok.all()), "agreement": float(((ref[:nb] - ref_bvp).abs() / ref[:nb]).max()),
            "computed": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        if args.reference_cache:
            with open(args.reference_cache, "w") as fh:
                json.dump(cached, fh)
    ref = torch.tensor(cached["lengths"], dtype=torch.float64)
    print(
        f"reference ({cached['computed']}): Newton+Richardson {cached['newton_s']:.1f} s (levels T, last step, iterations: "
        f"{[(int(a), f'{b:.0e}', int(c)) for a, b, c in cached['levels']]}, change between the last two Richardson "
        f"estimates {cached['richardson_change']:.1e}); solve_bvp tol 1e-10 on the first {cached['bvp_pairs']} pairs "
        f"{cached['bvp_s']:.1f} s (converged: {cached['bvp_converged']}); max relative disagreement {cached['agreement']:.1e}"
    )
    results["reference"] = cached
    if args.reference_only:
        return
    straight = curve_length(net, z0[:, None] + torch.linspace(0, 1, 2001, dtype=torch.float64)[:, None] * (z1 - z0)[:, None])
    print(f"straight line vs geodesic: median excess {float(((straight - ref) / ref).median()):.2%}, max {float(((straight - ref) / ref).max()):.2%}")

    rows = []

    def add(name, n, seconds, err, conv, note=""):
        wall, cpu = seconds
        row = {
            "method": name,
            "pairs": n,
            "wall_s": wall,
            "cpu_s": cpu,
            "ms_per_pair": 1e3 * wall / n,
            "cpu_ms_per_pair": 1e3 * cpu / n,
            "max_rel_err": None if err is None else float(err.max()),
            "median_rel_err": None if err is None else float(err.median()),
            "converged": conv,
            "note": note,
        }
        rows.append(row)
        e = "" if err is None else f"{row['max_rel_err']:9.1e} {row['median_rel_err']:9.1e}"
        print(f"{name:46s} {n:6d} {row['ms_per_pair']:10.2f} {row['cpu_ms_per_pair']:10.2f} {e:20s} {str(conv):>9s}  {note}",
              flush=True)

    print(f"\n{'method':46s} {'pairs':>6s} {'wall ms/p':>10s} {'CPU ms/p':>10s} {'max err':>9s} {'med err':>9s} {'converged':>9s}")

    # latentgeo
    try:
        metric = our_metric(net)
        secs, res = run_ours(metric, z0, z1)
        L = curve_length(net, res.curve(torch.linspace(0, 1, 2001, dtype=torch.float64)))
        add("latentgeo connecting_geodesic tol=1e-6", n_ref, secs, rel_err(L, ref), f"{int(res.converged.sum())}/{n_ref}")
        add("  (its reported .length)", n_ref, secs, rel_err(res.length, ref), "")
        meth = {m: res.method.count(m) for m in set(res.method)}
        print(f"  certified by: {meth}; collocation nodes: {torch.unique(res.nodes, return_counts=True)}")
        results["ours_methods"] = meth
        secs_r, res_r = run_ours(metric, z0, z1, recheck=True)
        L = curve_length(net, res_r.curve(torch.linspace(0, 1, 2001, dtype=torch.float64)))
        add("latentgeo tol=1e-6, recheck=True", n_ref, secs_r, rel_err(L, ref), f"{int(res_r.converged.sum())}/{n_ref}",
            "+ IVP re-integration of every solution")
        secs_s, res_s = run_ours(metric, z0, z1, method="shooting")
        L = curve_length(net, res_s.curve(torch.linspace(0, 1, 2001, dtype=torch.float64)))
        add("latentgeo method='shooting' (previous)", n_ref, secs_s, rel_err(L, ref), f"{int(res_s.converged.sum())}/{n_ref}",
            "discrete energy + Newton shooting")
        # floor: one sweep of geodesic accelerations at 16 collocation nodes per pair — the least
        # work that can check the ODE at all (a certificate needs at least this)
        from latentgeo.geodesics.spectral import _second_order
        from latentgeo.geodesics.ode import acceleration_fn

        acc = acceleration_fn(metric)
        tq = torch.linspace(0, 1, 16, dtype=torch.float64)
        yq = (z0[:, None] + tq[None, :, None] * (z1 - z0)[:, None]).reshape(-1, 2)
        vq = (z1 - z0)[:, None].expand(-1, 16, -1).reshape(-1, 2)
        secs_f, _ = best_of(lambda: _second_order(metric, acc, None, yq, vq), 5)
        add("floor: 16 accelerations per pair (one sweep)", n_ref, secs_f, None, "", "fx Taylor pass + least squares")
        prev = (n_ref, secs[0])
        for n in ([] if args.quick else args.sizes):
            a, b = make_pairs(n, seed=2)
            yq = (a[:, None] + tq[None, :, None] * (b - a)[:, None]).reshape(-1, 2)
            vq = (b - a)[:, None].expand(-1, 16, -1).reshape(-1, 2)
            secs_f, _ = best_of(lambda: _second_order(metric, acc, None, yq, vq), 3)
            add("floor: 16 accelerations per pair (one sweep)", n, secs_f, None, "")
            predicted = prev[1] * n / prev[0]
            if predicted > args.budget_s:
                print(f"latentgeo {n} pairs: skipped, predicted {predicted:.0f} s from {prev[0]} pairs > --budget-s {args.budget_s:g}")
                results.setdefault("skipped", []).append({"pairs": n, "predicted_s": predicted})
                continue
            a, b = make_pairs(n, seed=2)
            secs, res = run_ours(metric, a, b, repeats=3 if n <= 1000 else 1)
            add("latentgeo connecting_geodesic tol=1e-6", n, secs, None, f"{int(res.converged.sum())}/{n}")
            prev = (n, secs[0])
    except ImportError as exc:
        print(f"latentgeo connecting_geodesic not available: {exc}")

    # stochman
    try:
        secs, L, ok = run_stochman(z0, z1)
        add("stochman 0.3.0 connecting_geodesic (defaults)", n_ref, secs, rel_err(L, ref), str(ok), "5-node spline, 150 Adam steps")
        results["stochman_defaults_s"] = secs[0]
        secs, L, ok = run_stochman(z0, z1, converge=True)
        add("stochman 0.3.0 run to its convergence", n_ref, secs, rel_err(L, ref), str(ok), "20 nodes, 100 eval pts")
    except ImportError as exc:
        print(f"stochman not available: {exc}")

    # geomstats
    if not args.no_geomstats:
        gsr, err = run_geomstats(args.geomstats_pairs)
        if gsr is None:
            print(f"geomstats 2.8.0: {err}")
            results["geomstats_error"] = err
        for tol in (1e-3, 1e-8):
            rs = [r for r in (gsr or []) if r["tol"] == tol]
            if not rs:
                continue
            good = [r for r in rs if r["length"] is not None]
            secs = (sum(r["seconds"] for r in rs), sum(r["cpu"] for r in rs))
            e = rel_err([r["length"] for r in good], ref[[r["pair"] for r in good]]) if good else None
            errs = sorted({r["error"] for r in rs if r["error"]})
            add(f"geomstats 2.8.0 LogODESolver (bvp tol {tol:g})", len(rs), secs, e, f"{len(good)}/{len(rs)}",
                "per-pair loop" + (f"; errors: {errs}" if errs else ""))
    results["rows"] = rows
    ours = next((r for r in rows if r["method"].startswith("latentgeo connecting") and r["pairs"] == n_ref), None)
    st = next((r for r in rows if r["method"].startswith("stochman 0.3.0 connecting")), None)
    if ours and st:
        print(f"\nstochman defaults / latentgeo time per pair: wall {st['ms_per_pair'] / ours['ms_per_pair']:.2f}x, "
              f"CPU {st['cpu_ms_per_pair'] / ours['cpu_ms_per_pair']:.2f}x; max error {st['max_rel_err']:.1e} vs {ours['max_rel_err']:.1e}")
        results["ratio_stochman_over_ours"] = {"wall": st["ms_per_pair"] / ours["ms_per_pair"], "cpu": st["cpu_ms_per_pair"] / ours["cpu_ms_per_pair"]}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
