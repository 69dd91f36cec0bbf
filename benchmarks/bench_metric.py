"""Benchmark of the pullback-metric tensor ``M(z) = JᵀJ`` (issue 2).

Two cases, all methods timed in ONE run so that ratios are comparable:

(a) deterministic decoder 2→64→64→50 (tanh), 1000 points, float32, ``torch.set_num_threads(1)``:
    latentgeo ``PullbackMetric(...).tensor(z)`` (forward and reverse mode), a naive per-point
    ``torch.autograd.functional.jacobian`` loop, stochman 0.3.0 ``EmbeddedManifold.metric``
    (hand-derived ``nnj`` layer Jacobians), geomstats 2.8.0 ``PullbackMetric.metric_matrix``
    (on a subset, extrapolated linearly), and the FLOOR: ``1 + d`` forward passes of the same
    network on the same batch plus the ``JᵀJ`` product (bmm).
(b) Gaussian decoder 10→512→512→784, 4096 points, float32, expected metric
    ``JμᵀJμ + JσᵀJσ``. One network with a shared tanh trunk 10→512→512 and two linear heads:
    ``μ = W_μ h + b_μ`` and ``σ = softplus(W_σ h + b_σ) + 1e-3`` (σ floored at 1e-3). Compared
    with the naive loop (on a subset, extrapolated linearly) and the floor (11 forward passes +
    bmm).

Every method's tensors are compared with latentgeo's (max abs diff, and relative to max|M|):
a fast wrong answer does not count.

Prototypes of faster implementations (candidates to port into ``latentgeo/_jacobian.py`` /
``latentgeo/metric.py``) are measured next to the library code:

* ``proto: lean checks`` — the same vmap-over-tangents ``jvp`` as the library, ``JᵀJ`` formed
  from the ``(d, N, K)`` columns without the permute, and the NaN/inf check done on ``diag M``
  (``M_ii = Σ_k J_ki²`` is non-finite iff column ``i`` of ``J`` is) instead of the full ``J``;
* ``proto: replicated-batch jvp`` — one ``jvp`` of the batched map on the batch replicated
  ``d`` times (tangent ``e_i`` on block ``i``), no ``vmap``;
* ``proto: vmap(jacfwd)`` — ``torch.func.jacfwd`` of the single-point map, vmapped over points;
* ``proto: layerwise`` — for ``nn.Sequential`` decoders: the tangents ``(d, N, width)`` are
  pushed layer by layer; ``nn.Linear`` layers by one matmul, any other layer by
  ``vmap(jvp(layer))`` (generic), elementwise activations by ``t * σ'(x)`` where ``σ'(x)`` is
  one ``jvp`` with a tangent of ones (no hand-written derivatives).

* ``proto: fx-traced forward mode`` — the layerwise idea for any ``torch.fx``-traceable module
  (e.g. a trunk with two heads): the traced graph is interpreted node by node with batched
  tangents; ``nn.Linear`` by a matmul, elementwise activations (modules or functions) by
  ``t·σ'(x)``, sums of tangents directly, every other node by ``vmap(jvp(node))``.

Run: ``python benchmarks/bench_metric.py`` (``--quick`` for a fast smoke run). Needs stochman
0.3.0 and geomstats 2.8.0 (``pip install -e .[bench]``); missing peers are reported and
skipped. Timings are best-of-N after warm-up, wall clock, on whatever machine runs this.
"""

from __future__ import annotations

import argparse
import operator
import math
import os
import platform
import random
import subprocess
import sys
import time
import warnings

os.environ.setdefault("GEOMSTATS_BACKEND", "pytorch")

import torch
from torch import nn
from torch.func import jvp, vmap

import latentgeo
from latentgeo.decoders import DeterministicDecoder, GaussianDecoder
from latentgeo.metric import PullbackMetric


# ----------------------------------------------------------------------------- timing
def _clock():
    return time.perf_counter(), time.process_time()


def best_time(fn, *, repeat=7, warmup=2, budget_s=20.0):
    """Best wall and best process-CPU time (s) of ``fn()`` over up to ``repeat`` runs after warm-up.

    Returns ``((wall, cpu), n_runs)``.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = math.inf, math.inf
    start = time.perf_counter()
    done = 0
    for _ in range(repeat):
        w0, c0 = _clock()
        fn()
        w1, c1 = _clock()
        wall, cpu = min(wall, w1 - w0), min(cpu, c1 - c0)
        done += 1
        if time.perf_counter() - start > budget_s and done >= 2:
            break
    return (wall, cpu), done


def round_robin(fns: dict, *, rounds=15, warmup=2, budget_s=90.0):
    """Best wall and best process-CPU time (s) of each ``fns[name]()``, in interleaved rounds.

    Every round runs each function once, in a shuffled order, so a burst of load from other processes on a shared
    machine hits all methods alike instead of whichever happened to be timed then. With one
    torch thread, process CPU time is the work done, hardly affected by other processes
    taking turns on the cores (wall time is). Returns ``{name: ((wall, cpu), n_rounds)}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {k: [math.inf, math.inf] for k in fns}
    start = time.perf_counter()
    done = 0
    order = list(fns)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)  # no method always sits at the same phase of a periodic disturbance
        for k in order:
            fn = fns[k]
            w0, c0 = _clock()
            fn()
            w1, c1 = _clock()
            best[k][0] = min(best[k][0], w1 - w0)
            best[k][1] = min(best[k][1], c1 - c0)
        done += 1
        if time.perf_counter() - start > budget_s and done >= 3:
            break
    return {k: (tuple(v), done) for k, v in best.items()}


def machine_info() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except Exception:
        pass
    return (
        f"CPU: {model}; logical cores: {os.cpu_count()}; torch {torch.__version__}; "
        f"python {platform.python_version()}; latentgeo {getattr(latentgeo, '__version__', '?')}"
    )


# ----------------------------------------------------------------------------- references
def naive_metric(f, z):
    """Per-point ``torch.autograd.functional.jacobian`` loop (what a user would write first)."""
    out = []
    for zi in z:
        j = torch.autograd.functional.jacobian(lambda x: f(x[None])[0], zi)  # (K, d)
        out.append(j.T @ j)
    return torch.stack(out)


def floor_fn(f, z, jac):
    """The floor: ``1 + d`` forward passes of the network on the batch, plus ``JᵀJ`` (bmm)."""
    d = z.shape[1]

    def run():
        with torch.no_grad():
            for _ in range(1 + d):
                f(z)
            return torch.bmm(jac.transpose(1, 2), jac)

    return run


# ----------------------------------------------------------------------------- prototypes
def proto_lean_metric(f, z, chunk_size=2048):
    """vmap-over-tangents jvp (as the library), JᵀJ from the (d, N, K) columns, check on diag M."""
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    outs = []
    for s in range(0, n, chunk_size):
        zc = z[s : s + chunk_size]
        tangents = eye[:, None, :].expand(d, zc.shape[0], d)
        out, cols = vmap(lambda t: jvp(f, (zc,), (t,)), out_dims=(None, 0))(tangents)  # (d, n, K)
        a = cols.permute(1, 0, 2)  # (n, d, K), a view
        g = torch.bmm(a, a.transpose(1, 2))  # (n, d, d)
        if not bool(torch.isfinite(out).all()):
            raise ValueError("decoder returned NaN/inf")
        if not bool(torch.isfinite(g.diagonal(dim1=1, dim2=2)).all()):
            raise ValueError("decoder Jacobian contains NaN/inf")
        outs.append(g)
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


def proto_replicated_metric(f, z):
    """One ``jvp`` of the batched map on the d-times replicated batch (primal computed d times)."""
    n, d = z.shape
    zz = z.repeat(d, 1)  # (d·N, d), block i gets tangent e_i
    tangents = torch.eye(d, dtype=z.dtype, device=z.device).repeat_interleave(n, 0)
    _, cols = jvp(f, (zz,), (tangents,))
    a = cols.reshape(d, n, -1).permute(1, 0, 2)
    return torch.bmm(a, a.transpose(1, 2))


def proto_jacfwd_vmap_metric(f, z):
    """``vmap`` over points of ``jacfwd`` of the single-point map."""
    from torch.func import jacfwd

    jac = vmap(jacfwd(lambda x: f(x[None])[0]))(z)  # (N, K, d)
    return jac.transpose(1, 2) @ jac


_ELEMENTWISE = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.Softplus, nn.ELU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Softsign)


def proto_layerwise_metric(seq: nn.Sequential, z):
    """Forward-mode through an ``nn.Sequential`` layer by layer, tangents batched ``(d, N, w)``.

    Linear layers: ``t @ Wᵀ``; elementwise activations: ``t * σ'(x)`` with ``σ'(x)`` from one
    ``jvp`` with a tangent of ones; any other layer: ``vmap(jvp(layer))`` (generic).
    """
    n, d = z.shape
    x = z
    t = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)
    for layer in seq:
        if isinstance(layer, nn.Linear):
            t = torch.matmul(t, layer.weight.T)
            x = layer(x)
        elif isinstance(layer, _ELEMENTWISE):
            x, dx = jvp(layer, (x,), (torch.ones_like(x),))
            t = t * dx
        else:
            x_in = x
            x, t = vmap(lambda tt: jvp(layer, (x_in,), (tt,)), out_dims=(None, 0))(t)
    a = t.permute(1, 0, 2)  # (N, d, K)
    g = torch.bmm(a, a.transpose(1, 2))
    if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(g.diagonal(dim1=1, dim2=2)).all()):
        raise ValueError("decoder returned NaN/inf")
    return g


# fx-traced forward mode (generic over traceable modules)
_ELEMENTWISE_MODULES = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.Softplus, nn.ELU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Softsign)
_ELEMENTWISE_FUNCTIONS = (torch.tanh, torch.sigmoid, torch.relu, torch.exp, nn.functional.softplus, torch._C._nn.softplus, nn.functional.relu,
                          nn.functional.elu, nn.functional.gelu, nn.functional.silu, nn.functional.leaky_relu, torch.nn.functional.sigmoid, torch.nn.functional.tanh)


_TRACES = {}


def _generic(fn, vals, tans):
    """(fn(*vals), batched jvp) where tans[i] is None for constant args."""
    idx = [i for i, t in enumerate(tans) if t is not None]

    def f_sub(*xs):
        args = list(vals)
        for i, x in zip(idx, xs):
            args[i] = x
        return fn(*args)

    prim = tuple(vals[i] for i in idx)
    return vmap(lambda *ts: jvp(f_sub, prim, ts), out_dims=(None, 0))(*(tans[i] for i in idx))


def proto_fx_jacobian(module, z):
    """Forward mode through a torch.fx trace of ``module``: tangents ``(d, N, ...)`` pushed node by node.

    ``nn.Linear`` by a matmul, elementwise activations by ``t·σ'(x)`` (σ' from one jvp with a
    tangent of ones), sums/differences of tangents directly, anything else by ``vmap(jvp(node))``.
    Returns ``(outputs, tangents)`` with the module's output structure (tensors or tuples).
    """
    gm = _TRACES.get(id(module))
    if gm is None:
        gm = _TRACES[id(module)] = torch.fx.symbolic_trace(module)
    n, d = z.shape
    env = {}
    modules = dict(gm.named_modules())

    def load(a):
        vals = torch.fx.node.map_arg(a, lambda nd: env[nd][0])
        tans = torch.fx.node.map_aggregate(a, lambda x: env[x][1] if isinstance(x, torch.fx.Node) else None)
        return vals, tans

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = (z, torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d))
            continue
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            env[node] = (obj, None)
            continue
        if node.op == "output":
            vals, tans = load(node.args[0])
            return vals, tans
        vals, tans = load(node.args)
        kwargs, ktans = load(node.kwargs)
        has_t = [isinstance(t, torch.Tensor) for t in tans]
        if node.op == "call_module":
            mod = modules[node.target]
            fn = lambda *a, _m=mod, _k=kwargs: _m(*a, **_k)  # noqa: E731
        elif node.op == "call_function":
            fn = lambda *a, _f=node.target, _k=kwargs: _f(*a, **_k)  # noqa: E731
        else:  # call_method
            fn = lambda *a, _m=node.target, _k=kwargs: getattr(a[0], _m)(*a[1:], **_k)  # noqa: E731
        if not any(has_t):
            env[node] = (fn(*vals), None)
            continue
        if node.op == "call_module" and isinstance(mod, nn.Linear) and has_t == [True]:
            env[node] = (mod(vals[0]), torch.matmul(tans[0], mod.weight.T))
        elif ((node.op == "call_module" and isinstance(mod, _ELEMENTWISE_MODULES)) or
              (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS)) and has_t[0] and not any(has_t[1:]):
            y, dy = jvp(lambda x: fn(x, *vals[1:]), (vals[0],), (torch.ones_like(vals[0]),))
            env[node] = (y, tans[0] * dy)
        elif node.op == "call_function" and node.target in (operator.add, torch.add, operator.sub) and not kwargs:
            y = fn(*vals)
            ta, tb = tans
            if ta is None:
                t = tb if node.target is not operator.sub else -tb
            elif tb is None:
                t = ta
            else:
                t = ta + tb if node.target is not operator.sub else ta - tb
            env[node] = (y, t.expand((d,) + y.shape) if t.dim() == y.dim() + 1 else t)
        elif node.op == "call_function" and node.target is getattr or (
            node.op == "call_method" and node.target in ("size", "dim")
        ):
            env[node] = (fn(*vals), None)  # shapes: no tangent
        else:
            tt = [t if isinstance(t, torch.Tensor) else None for t in tans]
            env[node] = _generic(fn, vals, tt)
    raise RuntimeError("no output node")


def proto_fx_metric(module, z, chunk_size=1024):
    outs = []
    for s in range(0, z.shape[0], chunk_size):
        vals, tans = proto_fx_jacobian(module, z[s:s + chunk_size])
        if isinstance(tans, torch.Tensor):
            tans = (tans,)
        g = None
        for t in tans:
            a = t.reshape(t.shape[0], t.shape[1], -1).permute(1, 0, 2)
            g = torch.bmm(a, a.transpose(1, 2)) if g is None else torch.baddbmm(g, a, a.transpose(1, 2))
        if not bool(torch.isfinite(g.diagonal(dim1=1, dim2=2)).all()):
            raise ValueError("decoder Jacobian contains NaN/inf")
        outs.append(g)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# ----------------------------------------------------------------------------- networks
def net_a(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 50))
    return net.to(dtype).eval().requires_grad_(False)


class GaussHeads(nn.Module):
    """Shared tanh trunk 10→512→512, μ head and σ head (softplus + 1e-3)."""

    def __init__(self, d=10, h=512, k=784, min_std=1e-3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.mu = nn.Linear(h, k)
        self.sd = nn.Linear(h, k)
        self.min_std = min_std

    def forward(self, z):
        h = self.trunk(z)
        return self.mu(h), nn.functional.softplus(self.sd(h)) + self.min_std

    def coordinates(self, z):
        mu, sd = self(z)
        return torch.cat([mu, sd], 1)


# ----------------------------------------------------------------------------- table
class Table:
    """Rows of (method, wall s, CPU s, ...); times are scaled linearly to all points."""

    def __init__(self, title, n_points):
        self.title, self.n = title, n_points
        self.rows = []

    def add(self, method, times, n_timed, reps, diff=None, scale=None, note=""):
        wall, cpu = (t * self.n / n_timed for t in times)
        self.rows.append((method, n_timed, reps, wall, cpu, diff, scale, note))
        print(f"  ... {method}: wall {wall * 1e3:.2f} ms, CPU {cpu * 1e3:.2f} ms", flush=True)

    def value(self, method, which="cpu"):
        for r in self.rows:
            if r[0] == method:
                return r[4] if which == "cpu" else r[3]
        return math.nan

    def render(self, ratios_to):
        lines = [f"### {self.title}", ""]
        head = (
            "| method | points timed | reps | wall (ms) | CPU (ms) | "
            + " | ".join(f"CPU ÷ {name}" for name in ratios_to)
            + " | max abs diff vs latentgeo | rel. diff | note |"
        )
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for method, n_timed, reps, wall, cpu, diff, scale, note in self.rows:
            rs = " | ".join(f"{cpu / self.value(name):.2f}" for name in ratios_to)
            ds = "—" if diff is None else f"{diff:.1e}"
            rel = "—" if diff is None else f"{diff / scale:.1e}"
            extra = f"extrapolated from {n_timed} points" if n_timed != self.n else ""
            note = "; ".join(x for x in (note, extra) if x)
            lines.append(
                f"| {method} | {n_timed} | {reps} | {wall * 1e3:.2f} | {cpu * 1e3:.2f} | {rs} | {ds} | {rel} | {note} |"
            )
        return "\n".join(lines)


def chunk_note(metric, z):
    """How the metric object chunks ``z`` by default (for the table's note column)."""
    try:
        m = metric.tensor(z[:2]) is not None and metric._rows_per_chunk(z)
        return f"default chunk_size={metric.chunk_size!r} → {m} rows per chunk ({-(-z.shape[0] // m)} chunk(s))"
    except Exception:  # private helper; the note is informative only
        return f"default chunk_size={metric.chunk_size!r}"


def maxdiff(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max())


# ----------------------------------------------------------------------------- case (a)
def case_a(args):
    torch.set_num_threads(1)
    n = 1000
    net = net_a(0)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(n, 2, generator=gen) * 1.5
    tab = Table(f"(a) decoder 2→64→64→50 tanh, {n} points, float32, 1 thread", n)

    dec = DeterministicDecoder(net)
    m_fwd = PullbackMetric(dec, mode="forward")
    m_rev = PullbackMetric(dec, mode="reverse")
    m_auto = PullbackMetric(dec)
    assert m_auto.mode == "auto"
    ref = m_fwd.tensor(z)
    scale = float(ref.abs().max())
    jac = torch.randn(n, 50, 2, generator=gen)

    # (name, fn, note) timed round-robin on all n points
    fast = [
        ("latentgeo forward", lambda: m_auto.tensor(z), "default mode='auto' picks forward (d ≤ K); " + chunk_note(m_auto, z)),
        ("latentgeo reverse", lambda: m_rev.tensor(z), "mode='reverse' (K=50 vjps)"),
        ("latentgeo forward, no input checks", lambda: m_fwd._raw_tensor(z), "`_raw_tensor` (skips validation of z)"),
        ("proto: lean checks", lambda: proto_lean_metric(net, z), "vmap-jvp as library, check on diag M"),
        ("proto: layerwise", lambda: proto_layerwise_metric(net, z), "nn.Sequential only"),
        ("proto: fx-traced forward mode", lambda: proto_fx_metric(net, z), "any fx-traceable module; see docstring"),
        ("proto: replicated-batch jvp", lambda: proto_replicated_metric(net, z), "one jvp on d·N rows, no vmap"),
        ("proto: vmap(jacfwd)", lambda: proto_jacfwd_vmap_metric(net, z), "torch.func.jacfwd per point, vmapped"),
        ("FLOOR: (1+d) forward passes + bmm", floor_fn(net, z, jac), "no_grad forward passes, d=2"),
    ]
    try:
        import stochman
        from stochman import nnj
        from stochman.manifold import EmbeddedManifold

        snet = nnj.Sequential(nnj.Linear(2, 64), nnj.Tanh(), nnj.Linear(64, 64), nnj.Tanh(), nnj.Linear(64, 50))
        snet.load_state_dict(net.state_dict())
        snet = snet.float().eval().requires_grad_(False)

        class StochmanDecoderManifold(EmbeddedManifold):
            def embed(self, points, jacobian=False):
                return snet(points, jacobian=jacobian)

        man = StochmanDecoderManifold()
        stoch_name = f"stochman {stochman.__version__} EmbeddedManifold.metric"
        fast.append((stoch_name, lambda: man.metric(z), "hand-derived nnj Jacobians"))
    except ImportError as exc:
        print(f"  stochman not available ({exc}); skipped")

    timings = round_robin({k: f for k, f, _ in fast}, rounds=args.repeat)
    for name, fn, note in fast:
        t, r = timings[name]
        diff = None if name.startswith("FLOOR") else maxdiff(fn(), ref)
        tab.add(name, t, n, r, diff, None if diff is None else scale, note)

    n_naive = n if not args.quick else 100
    g = naive_metric(net, z[:n_naive])
    t, r = best_time(lambda: naive_metric(net, z[:n_naive]), repeat=3, warmup=1)
    tab.add("naive autograd loop", t, n_naive, r, maxdiff(g, ref[:n_naive]), scale, "torch.autograd.functional.jacobian per point")

    try:
        dtype_before = torch.get_default_dtype()
        import geomstats
        from geomstats.geometry.base import ImmersedSet
        from geomstats.geometry.euclidean import Euclidean

        # geomstats' pytorch backend sets torch's default dtype to float64 at import; restore it
        torch.set_default_dtype(dtype_before)

        class Immersed(ImmersedSet):
            def __init__(self):
                super().__init__(dim=2)

            def _define_embedding_space(self):
                return Euclidean(50)

            def immersion(self, point):
                return net(point)

        space = Immersed()
        n_gs = args.geomstats_points
        g = space.metric.metric_matrix(z[:n_gs])
        t, r = best_time(lambda: space.metric.metric_matrix(z[:n_gs]), repeat=2, warmup=1)
        tab.add(f"geomstats {geomstats.__version__} PullbackMetric.metric_matrix", t, n_gs, r, maxdiff(g, ref[:n_gs]), scale, "ImmersedSet(immersion=net); per-point jacobian loop inside")
    except ImportError as exc:
        print(f"  geomstats not available ({exc}); skipped")
    return tab


# ----------------------------------------------------------------------------- case (b)
def proto_split_blocks(model, z, chunk_size=2048):
    """Expected metric without concatenating [μ; σ]: ``JμᵀJμ + JσᵀJσ`` from one vmap-jvp of the
    tuple-valued decoder, each block's ``AᵀA`` formed from the ``(d, n, D)`` columns, checks on
    the outputs and on ``diag M``."""
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    res = []
    for s in range(0, n, chunk_size):
        zc = z[s : s + chunk_size]
        tangents = eye[:, None, :].expand(d, zc.shape[0], d)
        (mu, sd), (cmu, csd) = vmap(lambda t: jvp(model, (zc,), (t,)), out_dims=(None, 0))(tangents)
        a, b = cmu.permute(1, 0, 2), csd.permute(1, 0, 2)  # (n, d, D) views
        g = torch.baddbmm(torch.bmm(a, a.transpose(1, 2)), b, b.transpose(1, 2))
        if not (bool(torch.isfinite(mu).all()) and bool((sd > 0).all()) and bool(torch.isfinite(sd).all())):
            raise ValueError("decoder returned NaN/inf or σ <= 0")
        if not bool(torch.isfinite(g.diagonal(dim1=1, dim2=2)).all()):
            raise ValueError("decoder Jacobian contains NaN/inf")
        res.append(g)
    return res[0] if len(res) == 1 else torch.cat(res, 0)


def case_b(args):
    torch.set_num_threads(args.threads_b)
    n = 4096 if not args.quick else 1024
    torch.manual_seed(0)
    model = GaussHeads().float().eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(n, 10, generator=gen)
    tab = Table(
        f"(b) Gaussian decoder 10→512→512→784 (μ, σ heads), {n} points, float32, expected metric, "
        f"{args.threads_b} thread(s)",
        n,
    )
    dec = GaussianDecoder(model=model)
    m_fwd = PullbackMetric(dec, kind="expected", mode="forward")
    m_auto = PullbackMetric(dec, kind="expected")
    m_nochunk = PullbackMetric(dec, kind="expected", mode="forward", chunk_size=None)
    m_1024 = PullbackMetric(dec, kind="expected", chunk_size=1024)
    ref = m_fwd.tensor(z)
    scale = float(ref.abs().max())
    jac = torch.randn(n, 2 * 784, 10, generator=gen)
    fast = [
        ("latentgeo forward", lambda: m_auto.tensor(z), "default mode='auto' picks forward; " + chunk_note(m_auto, z)),
        ("latentgeo forward, chunk_size=1024", lambda: m_1024.tensor(z), "4 chunks"),
        ("latentgeo forward, chunk_size=None", lambda: m_nochunk.tensor(z), "one chunk"),
        ("proto: lean checks", lambda: proto_lean_metric(model.coordinates, z, 1024), "vmap-jvp of [μ; σ], check on diag M, chunk 1024"),
        ("proto: split μ/σ blocks", lambda: proto_split_blocks(model, z, 2048), "no [μ; σ] concatenation, check on diag M, chunk 2048"),
        ("proto: split μ/σ blocks, chunk 1024", lambda: proto_split_blocks(model, z, 1024), "as above, chunk 1024"),
        ("proto: fx-traced forward mode", lambda: proto_fx_metric(model, z, 1024), "traced GaussHeads, μ/σ blocks, chunk 1024"),
        ("FLOOR: (1+d) forward passes + bmm", floor_fn(model, z, jac), "no_grad forward passes of both heads, d=10"),
    ]
    timings = round_robin({k: f for k, f, _ in fast}, rounds=max(3, args.repeat // 2), warmup=1, budget_s=args.budget_b)
    for name, fn, note in fast:
        t, r = timings[name]
        diff = None if name.startswith("FLOOR") else maxdiff(fn(), ref)
        tab.add(name, t, n, r, diff, None if diff is None else scale, note)

    n_rev = 64 if not args.quick else 32
    m_rev = PullbackMetric(dec, kind="expected", mode="reverse", chunk_size=64)
    g = m_rev.tensor(z[:n_rev])
    t, r = best_time(lambda: m_rev.tensor(z[:n_rev]), repeat=2, warmup=1)
    tab.add("latentgeo reverse", t, n_rev, r, maxdiff(g, ref[:n_rev]), scale, "mode='reverse', chunk_size=64 (K=1568 vjps)")

    n_naive = args.naive_points_b
    g = naive_metric(model.coordinates, z[:n_naive])
    t, r = best_time(lambda: naive_metric(model.coordinates, z[:n_naive]), repeat=2, warmup=1)
    tab.add("naive autograd loop", t, n_naive, r, maxdiff(g, ref[:n_naive]), scale, "torch.autograd.functional.jacobian per point")
    return tab


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    p.add_argument("--repeat", type=int, default=15, help="timed repetitions per method (best is kept)")
    p.add_argument("--threads-b", type=int, default=1, help="torch threads for case (b) (case (a) uses 1)")
    p.add_argument("--geomstats-points", type=int, default=200, help="subset size for geomstats (extrapolated)")
    p.add_argument("--naive-points-b", type=int, default=16, help="subset size for the naive loop in (b)")
    p.add_argument("--only", choices=["a", "b"], help="run only one case")
    p.add_argument("--budget-b", type=float, default=150.0, help="seconds for the round-robin timing of (b)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.geomstats_points, args.naive_points_b = 3, 20, 4
    warnings.simplefilter("ignore", UserWarning)

    print(machine_info())
    print(time.strftime("run at %Y-%m-%d %H:%M UTC", time.gmtime()), flush=True)
    out = []
    floor = "FLOOR: (1+d) forward passes + bmm"

    def ratio_line(tab, num, den, target, label):
        rc = tab.value(num) / tab.value(den)
        rw = tab.value(num, "wall") / tab.value(den, "wall")
        ok = "MET" if rc <= target else "MISSED"
        return f"{label}: {num} ÷ {den} = {rc:.2f} (CPU time), {rw:.2f} (wall) → {ok} (target ≤ {target:.2f})"

    if args.only in (None, "a"):
        ta = case_a(args)
        st = [r[0] for r in ta.rows if r[0].startswith("stochman")]
        out.append(ta.render(["latentgeo forward", floor] + st))
        if not st:
            out.append("Target (a) not evaluated: stochman is not installed (pip install -e .[bench]).")
        if st:
            out.append(
                ratio_line(ta, "latentgeo forward", st[0], 1.0, "Target (a)")
                + "\n\n"
                + ratio_line(ta, "proto: lean checks", st[0], 1.0, "Prototype (a)")
                + "\n\n"
                + ratio_line(ta, "proto: layerwise", st[0], 1.0, "Prototype (a)")
                + "\n\n"
                + ratio_line(ta, "proto: fx-traced forward mode", st[0], 1.0, "Prototype (a)")
            )
    if args.only in (None, "b"):
        tb = case_b(args)
        out.append(tb.render(["latentgeo forward", floor]))
        out.append(
            ratio_line(tb, "latentgeo forward", floor, 1.5, "Target (b)")
            + "\n\n"
            + ratio_line(tb, "proto: lean checks", floor, 1.5, "Prototype (b)")
            + "\n\n"
            + ratio_line(tb, "latentgeo forward, chunk_size=1024", floor, 1.5, "Default chunk 1024 (b)")
            + "\n\n"
            + ratio_line(tb, "proto: split μ/σ blocks, chunk 1024", floor, 1.5, "Prototype (b)")
            + "\n\n"
            + ratio_line(tb, "proto: fx-traced forward mode", floor, 1.5, "Prototype (b)")
        )
    print()
    print("\n\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
