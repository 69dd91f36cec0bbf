"""Scale-out benchmark (issue 16): geodesic nearest centres and a distance-matrix block, serial vs Dask.

Workload (a cheap metric on purpose, so the numbers measure the machinery, not the model):
``PullbackMetric(DeterministicDecoder(MLP))`` with the MLP 2→32→32→10 (``tanh``, torch's
default init under ``torch.manual_seed(0)``, float64; an ``nn.Sequential``, so it pickles by
reference), codes ``N(0, I)``, ``tol=1e-4``, ``budget=None`` (reproducible), default
``Collocation`` solver, one torch thread everywhere.

(a) ``nearest_centres``: 10⁴ codes × 16 centres (``--quick``: 400 × 16), blocks of 512 pairs.
(b) ``distance_matrix``: a 2000 × 2000 block ``A × B`` (``--quick``: 80 × 80), blocks of 512 pairs.

Each runs serially (``SerialBackend``) and on a ``LocalCluster`` of 2 worker processes
(``threads_per_worker=1``, ``MALLOC_TRIM_THRESHOLD_`` unset); the two results are checked to be
bit-identical. The per-task overhead is measured twice: no-op tasks through the scheduler,
and (2 × Dask wall − Σ block compute) / blocks in the real run. The projection to 10⁶ codes ×
16 centres on 100 workers is ``pairs × (per-pair compute time) / 100 + tasks × overhead / 100``
(it assumes the 100 workers are as fast as this machine's cores and ignores cluster start-up
and data loading).

Run::

    python benchmarks/bench_scale.py [--quick]

The full sizes take hours on 2 cores at ~3 ms per pair (4·10⁶ pairs in (b)); ``--quick`` takes
about two minutes. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch


def _metric():
    import latentgeo as lg

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 10)).double()
    return lg.PullbackMetric(lg.DeterministicDecoder(net))


def _codes(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 × 16 codes and an 80 × 80 block")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--codes", type=int, default=None, help="override the number of codes of nearest_centres")
    ap.add_argument("--matrix", type=int, default=None, help="override the side of the distance-matrix block")
    args = ap.parse_args(argv)

    import dask
    import distributed
    from latentgeo.backends import DaskBackend, SerialBackend, nearest_centres
    from latentgeo.geodesics import distance_matrix

    torch.set_num_threads(1)
    n_codes, n_c, n_mat = (400, 16, 80) if args.quick else (10_000, 16, 2000)
    n_codes = args.codes or n_codes
    n_mat = args.matrix or n_mat
    bs = args.block_size
    opts = dict(tol=1e-4, budget=None)
    metric = _metric()
    X, C = _codes(n_codes, 1), _codes(n_c, 2)
    A, B = _codes(n_mat, 3), _codes(n_mat, 4)
    nearest_centres(metric, X[:4], C[:2], on_failure="ignore", progress=False, **opts)  # warm-up (tracing)
    rows = []

    t = time.perf_counter()
    ns = nearest_centres(metric, X, C, block_size=bs, backend=SerialBackend(), progress=False, on_failure="ignore",
                         **opts)
    t_ns = time.perf_counter() - t
    t = time.perf_counter()
    ms = distance_matrix(metric, A, B, block_size=bs, chunk_size=bs, backend=SerialBackend(), progress=False,
                         on_failure="ignore", **opts)
    t_ms = time.perf_counter() - t

    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                          "distributed.nanny.environ": env}):
        t = time.perf_counter()
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = distributed.Client(cluster, set_as_default=False)
        t_start = time.perf_counter() - t
        try:
            be = DaskBackend(client)
            # warm the workers (imports, tracing) so the timed runs measure steady state
            nearest_centres(metric, X[:8], C[:2], block_size=2, backend=be, on_failure="ignore", progress=False, **opts)
            n_noop = 400
            t = time.perf_counter()
            for _ in be.map_blocks(len, ([k] for k in range(n_noop))):
                pass
            t_noop = (time.perf_counter() - t) / n_noop
            t = time.perf_counter()
            nd = nearest_centres(metric, X, C, block_size=bs, backend=be, progress=False, on_failure="ignore", **opts)
            t_nd = time.perf_counter() - t
            t = time.perf_counter()
            md = distance_matrix(metric, A, B, block_size=bs, chunk_size=bs, backend=be, progress=False,
                                 on_failure="ignore", **opts)
            t_md = time.perf_counter() - t
        finally:
            client.close()
            cluster.close()

    same_n = torch.equal(ns.distances, nd.distances) and torch.equal(ns.labels, nd.labels) and torch.equal(
        ns.status, nd.status)
    same_m = torch.equal(ms.distances, md.distances) and torch.equal(ms.status, md.status)

    def row(name, pairs, ts, td, serial_stats, dask_stats, same, certified):
        compute = sum(serial_stats["block_wall_time"])
        dcompute = sum(dask_stats["block_wall_time"])
        over = (2 * td - dcompute) / dask_stats["blocks"]
        rows.append((name, pairs, dask_stats["blocks"], ts, td, ts / td, 1e3 * compute / pairs, 1e3 * over, same,
                     certified))
        return compute / pairs, over

    tp_n, over_n = row(f"nearest_centres {n_codes} × {n_c}", n_codes * n_c, t_ns, t_nd, ns.stats, nd.stats, same_n,
                       f"{int(ns.converged.sum())}/{n_codes} points")
    row(f"distance_matrix {n_mat} × {n_mat}", n_mat * n_mat, t_ms, t_md, ms.stats, md.stats, same_m,
        f"{int(ms.converged.sum())}/{n_mat * n_mat} pairs")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, distributed {distributed.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{'; --quick' if args.quick else ''}")
    print(f"workload: MLP 2→32→32→10 tanh decoder, float64, tol=1e-4, budget=None, blocks of {bs} pairs, "
          f"1 torch thread per process; 2 worker processes started in {t_start:.1f} s\n")
    print("| workload | pairs | blocks | serial (s) | Dask 2 workers (s) | speed-up | compute per pair (ms) "
          "| overhead per task (ms) | bit-identical | certified |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f}× | {r[6]:.2f} | {r[7]:.0f} | "
              f"{'yes' if r[8] else 'NO'} | {r[9]} |")
    print(f"\nno-op tasks through the scheduler: {1e3 * t_noop:.2f} ms per task ({n_noop} tasks, 2 workers)")
    P, W = 10**6 * 16, 100
    tasks = -(-P // bs)
    comp, ovh = P * tp_n / W, tasks * max(over_n, t_noop) / W
    print(f"projection, 10^6 codes × 16 centres on {W} workers: {P:.2e} pairs × {1e3 * tp_n:.2f} ms / {W} = "
          f"{comp / 60:.1f} min compute + {tasks} tasks × {1e3 * max(over_n, t_noop):.0f} ms / {W} = "
          f"{ovh:.0f} s overhead ≈ {(comp + ovh) / 60:.1f} min (serial on one core: {P * tp_n / 3600:.1f} h)")
    return 0 if (same_n and same_m) else 1


if __name__ == "__main__":
    sys.exit(main())
