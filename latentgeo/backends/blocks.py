"""Pairs in fixed blocks, solved by any backend: per-pair results, matrices on disk, nearest centres.

A *block* is a fixed, contiguous range of pairs (the ``k``-th block holds pairs
``k·block_size … (k+1)·block_size − 1`` of the pair order). Each block is one
:func:`~latentgeo.geodesics.connecting_geodesic` call on the worker that receives it, so the
numbers depend on the blocks only, never on the backend, the number of workers or the order
in which blocks finish: serial and Dask results are bit-identical (for the same torch thread
count and as long as the wall-clock ``budget`` does not bind: a budget that runs out on a
loaded worker changes *which* pairs are certified — use ``budget=None`` where reproducibility
matters more than a time limit).

Out-of-core output: :func:`distance_matrix_to_disk` writes ``.npy`` files through
``numpy.lib.format.open_memmap`` rather than zarr: no extra dependency, the files are read by
``numpy.load(..., mmap_mode="r")`` everywhere (and by any tool that reads ``.npy``), and with
blocks that are contiguous runs of the row-major pair order each block is one contiguous
write. A zarr store would add compression and concurrent writers from several machines; here
only the client writes, block by block, so neither is needed.

Example (blocks of 2 pairs; the result is the same on ``backend="dask"``):
    >>> import torch, latentgeo as lg
    >>> from latentgeo.backends import nearest_centres
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(torch.tanh))
    >>> X = torch.tensor([[0.0, 0.1], [0.9, 1.0], [1.1, 0.8]], dtype=torch.float64)
    >>> C = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    >>> nc = nearest_centres(metric, X, C, block_size=2, budget=None)
    >>> nc.labels.tolist(), bool(nc.converged.all())
    ([0, 1, 1], True)
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .._progress import progress_bar
from .._validation import as_latent_batch, check_int, check_on_failure

__all__ = [
    "solve_pair_blocks",
    "PairBlockResult",
    "map_pair_blocks",
    "pair_indices",
    "distance_matrix_to_disk",
    "open_distance_matrix",
    "DistanceMatrixFiles",
    "nearest_centres",
    "NearestCentres",
]

_OPTS = ("solver", "tol", "init", "graph", "budget", "n_points", "recheck", "chunk_size", "dtype")
_STOPPED_MSG = "stopped by the user (KeyboardInterrupt) before this block was solved"


# ---------------------------------------------------------------------------------------- workers
def _solve_block(metric, opts, block):
    """Worker side: one ``connecting_geodesic`` call on the block's pairs (and its reduction)."""
    from ..geodesics import connecting_geodesic

    t0 = time.perf_counter()
    if "x" in block:  # nearest-centre block: every point against every centre, point-major
        x, c = block["x"], block["centres"]
        k = c.shape[0]
        z0, z1 = x.repeat_interleave(k, 0), c.repeat(x.shape[0], 1)
    else:
        z0, z1, k = block["z0"], block["z1"], None
    res = connecting_geodesic(metric, z0, z1, progress=False, **opts)
    msgs = {n: m for n, m in enumerate(res.messages) if m}
    out = dict(evaluations=int(res.stats["evaluations"].sum()), pid=os.getpid())
    if k is None:
        out.update(length=res.length, status=res.status, rel_residual=res.rel_residual, messages=msgs)
        if block.get("velocity"):
            out["initial_velocity"] = res.initial_velocity
    else:
        L = res.length.reshape(-1, k)
        S = res.status.reshape(-1, k)
        lab = torch.argmin(L, 1)
        rows = torch.arange(L.shape[0])
        flat = rows * k + lab
        out.update(labels=lab, length=L[rows, lab], status=S[rows, lab],
                   rel_residual=res.rel_residual.reshape(-1, k)[rows, lab], certain=(S == 0).all(1),
                   messages={p: msgs[int(f)] for p, f in enumerate(flat.tolist()) if int(f) in msgs},
                   n_failed_pairs=int((S != 0).sum()))
    out["wall_time"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------- helpers
def pair_indices(start: int, stop: int, n_a: int, n_b: int, symmetric: bool = False):
    """Row and column indices of pairs ``start … stop-1`` in the pair order of a distance matrix.

    The order is row-major over ``(n_a, n_b)``, or, with ``symmetric=True`` (``A`` against
    itself), that of ``torch.triu_indices(n_a, n_a, offset=1)`` — computed for the range only,
    so a 10⁵ × 10⁵ matrix's 5·10⁹ pairs are never listed.

    >>> from latentgeo.backends import pair_indices
    >>> [t.tolist() for t in pair_indices(1, 5, 4, 4, symmetric=True)]
    [[0, 0, 1, 1], [2, 3, 2, 3]]
    """
    p = torch.arange(start, stop, dtype=torch.long)
    if not symmetric:
        return p // n_b, p % n_b
    r = torch.arange(max(n_a - 1, 1), dtype=torch.long)
    off = r * (n_a - 1) - r * (r - 1) // 2  # first pair of row r
    i = torch.searchsorted(off, p, right=True) - 1
    return i, i + 1 + (p - off[i])


def _n_pairs(n_a, n_b, symmetric):
    return n_a * (n_a - 1) // 2 if symmetric else n_a * n_b


def _check_opts(opts):
    from ..geodesics import Collocation, Shooting

    bad = sorted(set(opts) - set(_OPTS))
    if bad:
        extra = " (progress is an argument of the blocked function itself)" if "progress" in bad else ""
        raise TypeError(f"unexpected keyword argument(s) {', '.join(bad)}; connecting_geodesic options accepted "
                        f"per block are {', '.join(_OPTS)}{extra}")
    init = opts.get("init", "line")
    if not (isinstance(init, str) and init in ("line", "graph")):
        raise ValueError(f"init must be 'line' or 'graph' when pairs are solved in blocks, got {type(init).__name__} "
                         f"{init!r:.60}")
    solver = opts.get("solver")
    if solver is not None and not isinstance(solver, (Collocation, Shooting)):
        raise TypeError(f"solver must be a Collocation(...) or Shooting(...) object, got {type(solver).__name__}")
    tol = opts.get("tol", 1e-6)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1 and math.isfinite(tol)):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    budget = opts.get("budget", 1.0)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not (0 < budget < math.inf)):
        raise ValueError(f"budget must be a positive number of seconds per pair or None, got {budget!r}")
    if opts.get("chunk_size") is not None:
        check_int(opts["chunk_size"], "chunk_size", minimum=1)
    if opts.get("dtype") is not None:
        from ..geodesics.connecting import check_dtype

        check_dtype(opts["dtype"], tol)
    return dict(opts)


def _prepare(metric, codes, backend, client, opts):
    """Checked metric (a float64 copy, or the ``dtype`` option's, when needed), working dtype, backend and options."""
    from ..geodesics import working_metric
    from ..metric import Metric
    from . import get_backend

    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a latentgeo Metric (PullbackMetric or MetricField), got {type(metric).__name__}")
    backend = get_backend(backend, client)
    opts = _check_opts(opts)
    metric, wdt = working_metric(metric, codes, opts.get("dtype"))
    backend.check_transferable(metric, "metric")
    backend.check_transferable(opts, "the solver options")
    return metric, wdt, backend, opts


def map_pair_blocks(metric, blocks, *, backend="serial", client=None, check: bool = True, **geodesic_kwargs):
    """Solve blocks of pairs on ``backend``; yield ``(block_id, output)`` as blocks complete.

    The building block of the functions here and of :func:`~latentgeo.geodesics.distance_matrix`
    (``backend=``). ``blocks`` is an iterable (it may be lazy) of dicts ``{"z0": (n, d), "z1":
    (n, d)}`` (add ``"velocity": True`` for initial velocities) or ``{"x": (m, d), "centres": (k,
    d)}`` (every point against every centre, reduced to the nearest centre on the worker).
    ``metric`` must already be in the working dtype of the codes (see
    :func:`~latentgeo.geodesics.float64_metric`). Each output is a dict of tensors (``length``,
    ``status``, ``rel_residual``, …), ``messages`` ``{index in block: reason}`` for the pairs not
    certified, ``evaluations``, ``wall_time`` (s) and the worker's ``pid``.
    """
    from ..metric import Metric

    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a latentgeo Metric (PullbackMetric or MetricField), got {type(metric).__name__}")
    backend = get_backend_checked = _backend(backend, client)
    opts = _check_opts(geodesic_kwargs)
    if check:
        get_backend_checked.check_transferable(metric, "metric")
        get_backend_checked.check_transferable(opts, "the solver options")
    return backend.map_blocks(_solve_block, blocks, common=(metric, opts))


def _backend(backend, client):
    from . import get_backend

    return get_backend(backend, client)


def _status_counts(status_values):
    from ..geodesics import GeodesicStatus

    counts = {}
    for s in status_values:
        if s:
            counts[GeodesicStatus(s).name] = counts.get(GeodesicStatus(s).name, 0) + 1
    return counts


def _report_failures(what, n_bad, n_total, counts, first, on_failure, result):
    from ..geodesics import GeodesicConvergenceError

    if not n_bad or on_failure == "ignore":
        return
    msg = (f"{what}: {n_bad} of {n_total} {'pairs' if what != 'nearest_centres' else 'points'} not certified "
           f"({', '.join(f'{k} {v}' for k, v in counts.items())}); their entries hold upper bounds (the shortest "
           f"curve found) and are False in .converged (first: {first})")
    if on_failure == "raise":
        raise GeodesicConvergenceError(msg, result)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _cast(x, dtype):
    return x.to(dtype) if dtype.is_floating_point and x.is_floating_point() else x


# ---------------------------------------------------------------------------------------- pairs
class PairBlockResult:
    """Per-pair results of :func:`solve_pair_blocks`.

    Attributes:
        length: ``(N,)`` certified distance where ``converged``, else the shortest curve found.
        status: ``(N,)`` long tensor of :class:`~latentgeo.geodesics.GeodesicStatus` values.
        converged: ``(N,)`` bool (``status == 0``).
        rel_residual: ``(N,)`` relative ODE residual.
        initial_velocity: ``(N, d)`` ``γ'(0)`` of each curve (the log map where converged).
        messages: ``N`` strings, ``""`` for certified pairs.
        stats: ``pairs``, ``blocks``, ``backend``, ``wall_time`` (s), ``evaluations``,
            ``block_wall_time`` (s per block, in block order), ``workers`` (distinct worker processes).
    """

    def __init__(self, length, status, rel_residual, initial_velocity, messages, stats):
        self.length, self.status, self.rel_residual = length, status, rel_residual
        self.initial_velocity, self.messages, self.stats = initial_velocity, messages, stats

    @property
    def converged(self):
        return self.status == 0

    def __len__(self):
        return int(self.length.shape[0])

    @property
    def message(self) -> str:
        bad = [(i, m) for i, m in enumerate(self.messages) if m]
        if not bad:
            return f"all {len(self)} pairs certified"
        return f"{len(bad)} of {len(self)} pairs not certified (first: pair {bad[0][0]}: {bad[0][1]})"

    def __repr__(self):
        counts = _status_counts(self.status.tolist())
        tail = "".join(f", {v} {k}" for k, v in counts.items())
        return (f"PairBlockResult({len(self)} pairs in {self.stats.get('blocks')} blocks on {self.stats.get('backend')}: "
                f"{int(self.converged.sum())} certified{tail})")


def solve_pair_blocks(metric, z0, z1, *, block_size: int = 256, backend="serial", client=None,
                      progress: Optional[bool] = None, on_failure: str = "ignore", **geodesic_kwargs) -> PairBlockResult:
    """Geodesics ``z0[n] → z1[n]`` solved in fixed blocks of pairs, on any backend.

    This is the function :class:`~latentgeo.clustering.GeodesicKMeans` (assignment) and other
    callers use to send their pairs to a cluster: it returns what ``GeodesicKMeans._pairs``
    needs (lengths, certified mask, initial velocities from ``z0``). Inside ``_pairs`` the call
    ``connecting_geodesic(self.metric, z0, z1, **self._opts)`` becomes::

        res = solve_pair_blocks(self.metric, z0, z1, block_size=self.block_size,
                                backend=self.backend, client=self.client, progress=False, **self._opts)
        length, conv, v = res.length, res.converged, res.initial_velocity

    (``self._opts`` must then hold only ``init="line"``/``"graph"``; a warm-start tensor is not
    split into blocks). With ``backend="serial"`` and ``block_size`` at least the number of
    pairs this is the same single ``connecting_geodesic`` call as before, bit for bit.

    Args:
        metric: a latentgeo metric (float32 models are solved on a float64 copy made once, here, or
            on a copy in the ``dtype`` option's precision).
        z0, z1: ``(N, d)`` endpoints.
        block_size: pairs per block (one task each on a cluster). The blocks, and hence the
            numbers, do not depend on the backend.
        backend: ``"serial"``, ``"dask"`` or a :class:`~latentgeo.backends.Backend`.
        client: ``distributed.Client`` for ``backend="dask"`` (``None``: the current one).
        progress: progress bar over pairs (``None``: in terminals/Jupyter).
        on_failure: ``"ignore"`` (default: the result flags the pairs), ``"warn"`` or ``"raise"``.
        **geodesic_kwargs: :func:`~latentgeo.geodesics.connecting_geodesic` options applied to
            every block (``solver``, ``tol``, ``init`` ``"line"``/``"graph"``, ``graph``, ``budget``,
            ``n_points``, ``recheck``, ``chunk_size`` within a block, ``dtype``).

    Returns:
        :class:`PairBlockResult`, in the dtype of ``z0``.

    Raises:
        TypeError: a metric that cannot be pickled for ``backend="dask"`` (naming the attribute).
        ValueError / TypeError: bad inputs or options, naming the argument.
    """
    from ..geodesics import GeodesicStatus

    on_failure = check_on_failure(on_failure)
    block_size = check_int(block_size, "block_size", minimum=1)
    latent_dim = getattr(metric, "latent_dim", None)
    a, _ = as_latent_batch(z0, latent_dim, name="z0", allow_single=False)
    b, _ = as_latent_batch(z1, a.shape[1], name="z1", allow_single=False)
    if a.shape != b.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out_dtype = a.dtype
    metric, wdt, backend, opts = _prepare(metric, a, backend, client, geodesic_kwargs)
    a, b = a.to(wdt), b.to(wdt)
    n, d = a.shape
    starts = list(range(0, n, block_size))
    L = torch.full((n,), math.nan, dtype=wdt)
    S = torch.full((n,), int(GeodesicStatus.STOPPED), dtype=torch.long)
    R = torch.full((n,), math.nan, dtype=wdt)
    V = torch.zeros(n, d, dtype=wdt)
    msgs = [_STOPPED_MSG] * n
    block_time = [math.nan] * len(starts)
    pids, evals, t0 = set(), 0, time.perf_counter()
    blocks = ({"z0": a[s:s + block_size], "z1": b[s:s + block_size], "velocity": True} for s in starts)
    with progress_bar(total=n, desc="geodesics", progress=progress, unit="pair") as bar:
        it = backend.map_blocks(_solve_block, blocks, common=(metric, opts))
        try:
            for k, o in it:
                sl = slice(starts[k], starts[k] + block_size)
                L[sl], S[sl], R[sl], V[sl] = o["length"], o["status"], o["rel_residual"], o["initial_velocity"]
                for p in range(sl.start, min(sl.stop, n)):
                    msgs[p] = o["messages"].get(p - sl.start, "")
                block_time[k] = o["wall_time"]
                evals += o["evaluations"]
                pids.add(o["pid"])
                bar.update(int(o["length"].shape[0]))
        except KeyboardInterrupt:
            pass
        finally:
            it.close()
    stats = dict(pairs=n, blocks=len(starts), backend=backend.name, wall_time=time.perf_counter() - t0,
                 evaluations=evals, block_wall_time=block_time, workers=len(pids))
    res = PairBlockResult(_cast(L, out_dtype), S, _cast(R, out_dtype), _cast(V, out_dtype), msgs, stats)
    bad = [(p, m) for p, m in enumerate(msgs) if m]
    _report_failures("solve_pair_blocks", len(bad), n, _status_counts(S.tolist()), bad[0] if bad else None,
                     on_failure, res)
    return res


# ---------------------------------------------------------------------------------------- nearest centres
class NearestCentres:
    """The nearest centre of every point, from :func:`nearest_centres`.

    Attributes:
        labels: ``(n,)`` index of the nearest centre (smallest length; first on ties).
        distances: ``(n,)`` its distance (certified where ``converged``; else an upper bound).
        status: ``(n,)`` :class:`~latentgeo.geodesics.GeodesicStatus` of that pair.
        converged: ``(n,)`` bool: the chosen pair is certified.
        certain: ``(n,)`` bool: *every* centre's pair for that point is certified, so no
            uncertified (possibly too long) distance can have hidden a nearer centre.
        rel_residual: ``(n,)`` relative ODE residual of the chosen pair.
        reasons: ``{point: reason}`` where the chosen pair is not certified.
        stats: ``points``, ``centres``, ``pairs``, ``blocks``, ``failed_pairs`` (any centre),
            ``backend``, ``wall_time``, ``evaluations``, ``block_wall_time``, ``workers``.
    """

    def __init__(self, labels, distances, status, certain, rel_residual, reasons, stats):
        self.labels, self.distances, self.status = labels, distances, status
        self.certain, self.rel_residual, self.reasons, self.stats = certain, rel_residual, reasons, stats

    @property
    def converged(self):
        return self.status == 0

    def __len__(self):
        return int(self.labels.shape[0])

    def __repr__(self):
        return (f"NearestCentres({len(self)} points, {self.stats.get('centres')} centres: "
                f"{int(self.converged.sum())} certified, {int(self.certain.sum())} with every centre certified)")


def nearest_centres(metric, X, C, *, block_size: int = 1024, backend="serial", client=None,
                    progress: Optional[bool] = None, on_failure: str = "warn", **geodesic_kwargs) -> NearestCentres:
    """Geodesic nearest centre of every point, never holding more than one block of distances.

    The pairs ``X[i] → C[j]`` (from the point to the centre; :class:`~latentgeo.clustering.GeodesicKMeans`
    solves centre → point for the velocities at the centre, which agrees to the solver's
    tolerance, not bit for bit) are solved point-major (the pair order of
    ``distance_matrix(metric, X, C)``) in blocks of ``max(1, block_size // len(C))`` whole
    points; each block is reduced to its points' nearest centres where it was solved (on the
    worker), so only ``O(len(X))`` numbers come back. With ``block_size`` a multiple of
    ``len(C)`` the distances equal ``distance_matrix(metric, X, C, block_size=block_size,
    backend=...)`` bit for bit.

    Args:
        metric, X, C: a latentgeo metric, ``(n, d)`` points and ``(k, d)`` centres.
        block_size: pairs per block (rounded down to whole points).
        backend, client, progress: as in :func:`solve_pair_blocks`.
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"``, about points whose chosen
            pair is not certified.
        **geodesic_kwargs: per-block :func:`~latentgeo.geodesics.connecting_geodesic` options.

    Returns:
        :class:`NearestCentres`, float outputs in the dtype of ``X``.
    """
    from ..geodesics import GeodesicStatus

    on_failure = check_on_failure(on_failure)
    block_size = check_int(block_size, "block_size", minimum=1)
    X, _ = as_latent_batch(X, getattr(metric, "latent_dim", None), name="X", allow_single=False)
    C, _ = as_latent_batch(C, X.shape[1], name="C", allow_single=False)
    out_dtype = X.dtype
    metric, wdt, backend, opts = _prepare(metric, X, backend, client, geodesic_kwargs)
    X, C = X.to(wdt), C.to(wdt)
    n, k = X.shape[0], C.shape[0]
    per = max(1, block_size // k)
    starts = list(range(0, n, per))
    lab = torch.zeros(n, dtype=torch.long)
    D = torch.full((n,), math.nan, dtype=wdt)
    S = torch.full((n,), int(GeodesicStatus.STOPPED), dtype=torch.long)
    R = torch.full((n,), math.nan, dtype=wdt)
    certain = torch.zeros(n, dtype=torch.bool)
    reasons = {}
    block_time = [math.nan] * len(starts)
    done, pids, evals, failed_pairs, t0 = set(), set(), 0, 0, time.perf_counter()
    blocks = ({"x": X[s:s + per], "centres": C} for s in starts)
    with progress_bar(total=n, desc="nearest centres", progress=progress, unit="point") as bar:
        it = backend.map_blocks(_solve_block, blocks, common=(metric, opts))
        try:
            for b, o in it:
                s = starts[b]
                sl = slice(s, s + per)
                lab[sl], D[sl], S[sl], R[sl], certain[sl] = o["labels"], o["length"], o["status"], o["rel_residual"], \
                    o["certain"]
                reasons.update({s + p: m for p, m in o["messages"].items()})
                failed_pairs += o["n_failed_pairs"]
                block_time[b] = o["wall_time"]
                evals += o["evaluations"]
                pids.add(o["pid"])
                done.add(b)
                bar.update(int(o["labels"].shape[0]))
        except KeyboardInterrupt:
            pass
        finally:
            it.close()
    for b in set(range(len(starts))) - done:
        reasons.update({p: _STOPPED_MSG for p in range(starts[b], min(starts[b] + per, n))})
    stats = dict(points=n, centres=k, pairs=n * k, blocks=len(starts), failed_pairs=failed_pairs, backend=backend.name,
                 wall_time=time.perf_counter() - t0, evaluations=evals, block_wall_time=block_time, workers=len(pids))
    res = NearestCentres(lab, _cast(D, out_dtype), S, certain, _cast(R, out_dtype), reasons, stats)
    first = next(iter(sorted(reasons.items())), None)
    _report_failures("nearest_centres", len(reasons), n, _status_counts(S.tolist()), first, on_failure, res)
    return res


# ---------------------------------------------------------------------------------------- on disk
class DistanceMatrixFiles:
    """A distance matrix in ``.npy`` files (from :func:`distance_matrix_to_disk` / :func:`open_distance_matrix`).

    Attributes:
        path: the directory.
        distances: ``(n_A, n_B)`` memory-mapped array (dtype of ``A``).
        status: ``(n_A, n_B)`` int8 memory-mapped :class:`~latentgeo.geodesics.GeodesicStatus` values.
        rel_residual: ``(n_A, n_B)`` float32 memory-mapped relative ODE residuals.
        blocks_done: ``(n_blocks,)`` bool: blocks written (entries of the others are meaningless).
        reasons: ``{(i, j): reason}`` for the pairs not certified.
        stats: ``pairs``, ``blocks``, ``backend``, ``wall_time``, ``evaluations``, ``workers``,
            ``block_wall_time``.

    ``np.asarray(files)`` reads the whole distance matrix into memory; index ``files.distances``
    for parts of it.
    """

    def __init__(self, path, mode="r", stats=None):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.distances = np.load(self.path / "distances.npy", mmap_mode=mode)
        self.status = np.load(self.path / "status.npy", mmap_mode=mode)
        self.rel_residual = np.load(self.path / "rel_residual.npy", mmap_mode=mode)
        self.blocks_done = np.load(self.path / "blocks_done.npy", mmap_mode=mode)
        self.reasons = {}
        rp = self.path / "reasons.jsonl"
        if rp.exists():
            for line in rp.read_text().splitlines():
                if line.strip():
                    i, j, msg = json.loads(line)
                    self.reasons[(i, j)] = msg
        self.stats = stats or {}

    @property
    def shape(self):
        return self.distances.shape

    @property
    def complete(self) -> bool:
        return bool(np.all(self.blocks_done))

    @property
    def n_failed(self) -> int:
        return len(self.reasons)

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.distances)
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, item):
        return self.distances[item]

    def __repr__(self):
        done = int(np.sum(self.blocks_done))
        return (f"DistanceMatrixFiles({str(self.path)!r}, shape={tuple(self.shape)}, blocks {done}/"
                f"{len(self.blocks_done)}, failed pairs={self.n_failed})")


def open_distance_matrix(path) -> DistanceMatrixFiles:
    """Open (read-only, memory-mapped) a matrix written by :func:`distance_matrix_to_disk`."""
    return DistanceMatrixFiles(path, "r")


def distance_matrix_to_disk(metric, A, B, path, *, block_size: int = 1024, backend="serial", client=None,
                            resume: bool = False, progress: Optional[bool] = None, on_failure: str = "warn",
                            **geodesic_kwargs) -> DistanceMatrixFiles:
    """Pairwise geodesic distances written block by block into ``.npy`` memmaps in ``path``.

    For matrices too large to gather (10⁵ × 10⁵ float32 is 40 GB). Pairs are taken in the order
    of :func:`~latentgeo.geodesics.distance_matrix` (row-major; ``i < j`` when ``B`` is ``None``)
    in blocks of ``block_size``, so the entries equal ``distance_matrix(metric, A, B,
    block_size=block_size, chunk_size=..., backend=...)`` bit for bit (pass the same
    ``chunk_size``). Only the blocks in flight are in memory; each finished block is written
    and marked in ``blocks_done.npy``, so ``resume=True`` after a crash or Ctrl-C solves only
    the blocks not yet written. Why ``.npy`` and not zarr: see the module text.

    Files: ``distances.npy`` (dtype of ``A``), ``status.npy`` (int8 ``GeodesicStatus``),
    ``rel_residual.npy`` (float32), ``blocks_done.npy`` (bool per block), ``reasons.jsonl``
    (``[i, j, reason]`` per uncertified pair), ``meta.json``. With ``B=None`` the matrix is
    symmetric with a zero diagonal (both triangles are written).

    Args:
        metric, A, B: as in :func:`~latentgeo.geodesics.distance_matrix`.
        path: a directory (created; existing files are overwritten unless ``resume=True``).
        block_size, backend, client, progress: as in :func:`solve_pair_blocks`.
        resume: continue an interrupted run in ``path`` (same shapes and ``block_size``).
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"``.
        **geodesic_kwargs: per-block :func:`~latentgeo.geodesics.connecting_geodesic` options.

    Returns:
        :class:`DistanceMatrixFiles` opened read-only.
    """
    on_failure = check_on_failure(on_failure)
    block_size = check_int(block_size, "block_size", minimum=1)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike directory, got {type(path).__name__}")
    A, _ = as_latent_batch(A, getattr(metric, "latent_dim", None), name="A", allow_single=False)
    sym = B is None
    if not sym:
        B, _ = as_latent_batch(B, A.shape[1], name="B", allow_single=False)
        B = B.to(A.dtype)
    out_dtype = A.dtype
    metric, wdt, backend, opts = _prepare(metric, A, backend, client, geodesic_kwargs)
    A = A.to(wdt)
    B = A if sym else B.to(wdt)
    na, nb = A.shape[0], B.shape[0]
    npairs = _n_pairs(na, nb, sym)
    nblocks = -(-npairs // block_size)
    path = Path(path)
    meta = dict(shape=[na, nb], symmetric=sym, block_size=block_size, pairs=npairs, blocks=nblocks,
                dtype=str(out_dtype).replace("torch.", ""))
    np_dtype = np.dtype(meta["dtype"]) if out_dtype.is_floating_point else np.float64
    files = ["distances.npy", "status.npy", "rel_residual.npy", "blocks_done.npy"]
    if resume and (path / "meta.json").exists():
        old = json.loads((path / "meta.json").read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"resume=True but {path} holds a different run ({old}); expected {meta}")
        mm = [np.load(path / f, mmap_mode="r+") for f in files]
    else:
        path.mkdir(parents=True, exist_ok=True)
        mm = [np.lib.format.open_memmap(path / "distances.npy", "w+", np_dtype, (na, nb)),
              np.lib.format.open_memmap(path / "status.npy", "w+", np.int8, (na, nb)),
              np.lib.format.open_memmap(path / "rel_residual.npy", "w+", np.float32, (na, nb)),
              np.lib.format.open_memmap(path / "blocks_done.npy", "w+", np.bool_, (nblocks,))]
        (path / "reasons.jsonl").write_text("")
        (path / "meta.json").write_text(json.dumps(meta))
    Dm, Sm, Rm, done = mm
    todo = [k for k in range(nblocks) if not done[k]]

    def blocks():
        for k in todo:
            i, j = pair_indices(k * block_size, min((k + 1) * block_size, npairs), na, nb, sym)
            yield {"z0": A[i], "z1": B[j]}

    block_time = [math.nan] * nblocks
    pids, evals, t0 = set(), 0, time.perf_counter()
    with progress_bar(total=npairs, initial=npairs - sum(min(block_size, npairs - k * block_size) for k in todo),
                      desc="geodesic distances", progress=progress, unit="pair") as bar, \
            open(path / "reasons.jsonl", "a") as rf:
        it = backend.map_blocks(_solve_block, blocks(), common=(metric, opts))
        try:
            for b, o in it:
                k = todo[b]
                s, e = k * block_size, min((k + 1) * block_size, npairs)
                i, j = (x.numpy() for x in pair_indices(s, e, na, nb, sym))
                d = o["length"].to(out_dtype).numpy() if out_dtype.is_floating_point else o["length"].numpy()
                st, r = o["status"].numpy().astype(np.int8), o["rel_residual"].numpy().astype(np.float32)
                if sym:
                    Dm[i, j], Sm[i, j], Rm[i, j] = d, st, r
                    Dm[j, i], Sm[j, i], Rm[j, i] = d, st, r
                else:  # a contiguous run of the row-major file
                    Dm.reshape(-1)[s:e], Sm.reshape(-1)[s:e], Rm.reshape(-1)[s:e] = d, st, r
                for p, m in o["messages"].items():
                    rf.write(json.dumps([int(i[p]), int(j[p]), m]) + "\n")
                rf.flush()
                done[k] = True
                block_time[k] = o["wall_time"]
                evals += o["evaluations"]
                pids.add(o["pid"])
                bar.update(e - s)
        except KeyboardInterrupt:
            pass
        finally:
            it.close()
            for m in mm:
                m.flush()
    del Dm, Sm, Rm, done, mm
    stats = dict(pairs=npairs, blocks=nblocks, backend=backend.name, wall_time=time.perf_counter() - t0,
                 evaluations=evals, block_wall_time=block_time, workers=len(pids))
    out = DistanceMatrixFiles(path, "r", stats)
    if out.n_failed:
        first = next(iter(out.reasons.items()))
        counts = _status_counts(int(out.status[p]) for p in list(out.reasons)[:100000])
        _report_failures("distance_matrix_to_disk", out.n_failed, npairs, counts, first, on_failure, out)
    if not out.complete:
        warnings.warn(f"distance_matrix_to_disk: stopped with {int(np.sum(~np.asarray(out.blocks_done)))} of {nblocks} "
                      f"blocks not written; call again with resume=True to finish", RuntimeWarning, stacklevel=2)
    return out
