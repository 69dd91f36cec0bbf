"""latentgeo.backends: blocks of pairs on a serial or Dask backend give the same numbers.

Independent references: the serial ``distance_matrix`` (the path that existed before the
backends), ``argmin`` of a full matrix, and re-running the same blocks in-process. The Dask
tests use ``LocalCluster(processes=False)`` (starts in ~0.02 s) and, once, two worker
processes, one of which is killed mid-run.
"""

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import latentgeo as lg
from latentgeo.backends import (
    Backend,
    SerialBackend,
    distance_matrix_to_disk,
    get_backend,
    nearest_centres,
    open_distance_matrix,
    pair_indices,
    solve_pair_blocks,
)
from latentgeo.geodesics import Collocation, GeodesicStatus, distance_matrix

# -------------------------------------------------------------------- module-level (picklable) model
W = torch.tensor([[1.0, 0.5], [-0.3, 1.2], [0.7, -0.8]], dtype=torch.float64)


def tanh_decoder(z):
    return torch.tanh(z @ W.T)


class KillOnce:
    """A decoder that kills the worker process evaluating it, once (the marker file is the token)."""

    def __init__(self, marker):
        self.marker = str(marker)
        self.driver_pid = os.getpid()

    def __call__(self, z):
        if os.getpid() != self.driver_pid and os.path.exists(self.marker):
            try:
                os.remove(self.marker)
            except FileNotFoundError:  # the other worker took the token
                pass
            else:
                os._exit(1)
        return torch.tanh(z @ W.T)


def _metric():
    return lg.PullbackMetric(lg.DeterministicDecoder(tanh_decoder))


def _codes(n, seed, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, generator=g, dtype=torch.float64)


CHEAP = Collocation(nodes=6, max_nodes=6, degree=4, max_iter=3, piecewise=False)  # fails some pairs, deterministically
OPTS = dict(budget=None, tol=1e-6)  # no wall-clock budget: reproducible across machines


def _same_matrix(a, b):
    assert torch.equal(a.distances, b.distances)
    assert torch.equal(a.status, b.status)
    assert torch.equal(a.rel_residual.nan_to_num(-1.0), b.rel_residual.nan_to_num(-1.0))
    assert a.reasons == b.reasons


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster, set_as_default=False) as c:
            yield c


# -------------------------------------------------------------------- no Dask needed
def test_pair_indices_match_the_matrix_order():
    ii, jj = torch.triu_indices(7, 7, offset=1)
    i, j = pair_indices(0, ii.numel(), 7, 7, symmetric=True)
    assert torch.equal(i, ii) and torch.equal(j, jj)
    i, j = pair_indices(3, 11, 7, 7, symmetric=True)
    assert torch.equal(i, ii[3:11]) and torch.equal(j, jj[3:11])
    i, j = pair_indices(5, 17, 4, 6)
    assert (i * 6 + j).tolist() == list(range(5, 17))


def test_get_backend_and_errors():
    assert isinstance(get_backend("serial"), SerialBackend)
    b = SerialBackend()
    assert get_backend(b) is b
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("ray")
    with pytest.raises(TypeError, match="backend must be"):
        get_backend(3)
    with pytest.raises(ValueError, match="client= was given"):
        get_backend("serial", client=object())
    with pytest.raises(ValueError, match="block_size"):
        solve_pair_blocks(_metric(), _codes(2, 0), _codes(2, 1), block_size=0)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) progres;"):
        nearest_centres(_metric(), _codes(2, 0), _codes(2, 1), progress=False, init="line", progres=1)
    with pytest.raises(ValueError, match="init must be 'line' or 'graph'"):
        solve_pair_blocks(_metric(), _codes(2, 0), _codes(2, 1), init=torch.zeros(2, 5, 2))


def test_blocked_serial_equals_the_existing_path_and_keeps_failures():
    metric, A, B = _metric(), _codes(5, 0), _codes(4, 1)
    ref = distance_matrix(metric, A, B, chunk_size=6, solver=CHEAP, on_failure="ignore", budget=None)
    assert 0 < ref.n_failed < 20  # some pairs fail: their statuses must survive the blocks
    got = distance_matrix(metric, A, B, chunk_size=6, solver=CHEAP, on_failure="ignore", budget=None,
                          backend=SerialBackend())
    _same_matrix(ref, got)
    assert got.stats["blocks"] == 4 and got.stats["backend"] == "serial"
    res = solve_pair_blocks(metric, A[:4], B, block_size=3, solver=CHEAP, budget=None)
    one = lg.connecting_geodesic(metric, A[:3], B[:3], solver=CHEAP, budget=None)
    assert torch.equal(res.length[:3], one.length) and torch.equal(res.status[:3], one.status)
    assert torch.equal(res.initial_velocity[:3], one.initial_velocity)
    assert res.messages[:3] == one.messages and "blocks on serial" in repr(res)


def test_import_does_not_load_dask():
    code = "import sys, latentgeo.backends, latentgeo.backends.dask; print('distributed' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"


class StopAfter(Backend):
    """Serial, but Ctrl-C after ``n`` blocks (an interrupted run)."""

    name = "stop-after"

    def __init__(self, n):
        self.n = n

    def map_blocks(self, fn, blocks, *, common=()):
        for k, block in enumerate(blocks):
            if k == self.n:
                raise KeyboardInterrupt
            yield k, fn(*common, block)


def test_disk_matrix_equals_in_memory_and_resumes(tmp_path):
    metric, A, B = _metric(), _codes(5, 2), _codes(3, 3)
    ref = distance_matrix(metric, A, B, chunk_size=4, solver=CHEAP, on_failure="ignore", budget=None)
    f = distance_matrix_to_disk(metric, A, B, tmp_path / "ab", block_size=4, chunk_size=4, solver=CHEAP,
                                on_failure="ignore", budget=None)
    assert f.complete and f.shape == (5, 3)
    assert np.array_equal(np.asarray(f), ref.numpy())
    assert np.array_equal(np.asarray(f.status), ref.status.numpy())
    assert f.reasons == ref.reasons and f.n_failed == ref.n_failed
    # symmetric, interrupted after 2 of 3 blocks, then resumed: the same as one uninterrupted run
    sym = distance_matrix(metric, A, chunk_size=4, on_failure="ignore", **OPTS)
    with pytest.warns(RuntimeWarning, match="resume=True"):
        part = distance_matrix_to_disk(metric, A, None, tmp_path / "aa", block_size=4, chunk_size=4,
                                       backend=StopAfter(2), on_failure="ignore", **OPTS)
    assert not part.complete and int(np.sum(part.blocks_done)) == 2
    full = distance_matrix_to_disk(metric, A, None, tmp_path / "aa", block_size=4, chunk_size=4, resume=True,
                                   on_failure="ignore", **OPTS)
    assert full.complete and full.stats["blocks"] == 3
    assert np.array_equal(np.asarray(open_distance_matrix(tmp_path / "aa")), sym.numpy())
    with pytest.raises(ValueError, match="different run"):
        distance_matrix_to_disk(metric, A, None, tmp_path / "aa", block_size=5, resume=True, **OPTS)


def test_interrupted_blocks_are_stopped_not_silently_filled():
    metric, A = _metric(), _codes(5, 13)
    ref = distance_matrix(metric, A, chunk_size=4, **OPTS)
    with pytest.warns(RuntimeWarning, match="STOPPED 6"):
        part = distance_matrix(metric, A, chunk_size=4, backend=StopAfter(1), **OPTS)
    iu = torch.triu_indices(5, 5, 1)
    s = part.status[iu[0], iu[1]]
    assert s[:4].tolist() == [0] * 4 and s[4:].tolist() == [int(GeodesicStatus.STOPPED)] * 6
    assert torch.equal(part.distances[iu[0][:4], iu[1][:4]], ref.distances[iu[0][:4], iu[1][:4]])
    res = solve_pair_blocks(metric, A, A.flip(0), block_size=2, backend=StopAfter(2), **OPTS)
    assert res.status.tolist() == [0, 0, 0, 0, 4] and res.length[4].isnan() and "KeyboardInterrupt" in res.messages[4]
    nc = nearest_centres(metric, A, A[:2], block_size=2, backend=StopAfter(1), on_failure="ignore", **OPTS)
    assert nc.status.tolist() == [0, 4, 4, 4, 4] and sorted(nc.reasons) == [1, 2, 3, 4]
    assert lg.backends.SerialBackend is SerialBackend


# -------------------------------------------------------------------- Dask, threads in this process
def test_dask_equals_serial_bit_for_bit(client):
    metric, A, B = _metric(), _codes(6, 4), _codes(5, 5)
    ref = distance_matrix(metric, A, B, chunk_size=7, solver=CHEAP, on_failure="ignore", budget=None)
    got = distance_matrix(metric, A, B, chunk_size=7, solver=CHEAP, on_failure="ignore", budget=None,
                          backend="dask", client=client)
    _same_matrix(ref, got)
    assert got.stats["backend"] == "dask" and got.stats["blocks"] == 5
    ref = distance_matrix(metric, A, chunk_size=4, **OPTS)
    _same_matrix(ref, distance_matrix(metric, A, chunk_size=4, backend="dask", client=client, **OPTS))
    s = solve_pair_blocks(metric, A, B[:1].expand(6, 2), block_size=4, **OPTS)
    d = solve_pair_blocks(metric, A, B[:1].expand(6, 2), block_size=4, backend="dask", client=client, **OPTS)
    for name in ("length", "status", "rel_residual", "initial_velocity"):
        assert torch.equal(getattr(s, name), getattr(d, name)), name
    assert s.messages == d.messages and d.stats["backend"] == "dask"


def test_float32_codes_follow_their_dtype(client):
    metric, A = _metric(), _codes(4, 6).float()
    ref = distance_matrix(metric, A, chunk_size=3, **OPTS)
    got = distance_matrix(metric, A, chunk_size=3, backend="dask", client=client, **OPTS)
    assert got.distances.dtype == torch.float32
    _same_matrix(ref, got)


def test_nearest_centres_equals_argmin_of_the_matrix(client):
    metric, X, C = _metric(), _codes(9, 7), _codes(3, 8)
    full = distance_matrix(metric, X, C, chunk_size=6, on_failure="ignore", **OPTS)
    nc = nearest_centres(metric, X, C, block_size=6, backend="dask", client=client, **OPTS)
    assert torch.equal(nc.labels, full.distances.argmin(1))
    assert torch.equal(nc.distances, full.distances.min(1).values)  # same blocks: bit for bit
    assert torch.equal(nc.status, full.status[torch.arange(9), nc.labels])
    assert torch.equal(nc.certain, full.converged.all(1)) and nc.stats["blocks"] == 5
    assert "9 points, 3 centres" in repr(nc)
    nc2 = nearest_centres(metric, X, C, block_size=4, **OPTS)  # other blocks: same answer to rounding
    assert torch.equal(nc2.labels, nc.labels) and torch.allclose(nc2.distances, nc.distances, rtol=1e-12)


def test_disk_matrix_on_dask(client, tmp_path):
    metric, A = _metric(), _codes(6, 9)
    ref = distance_matrix(metric, A, chunk_size=5, **OPTS)
    f = distance_matrix_to_disk(metric, A, None, tmp_path / "m", block_size=5, chunk_size=5, backend="dask",
                                client=client, **OPTS)
    assert f.complete and np.array_equal(np.asarray(f), ref.numpy())


def test_unpicklable_metric_is_refused_before_submission(client):
    lam = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: torch.tanh(z @ W.T)))
    A = _codes(3, 10)
    with pytest.raises(TypeError, match=r"metric\.decoder\.f is the function '<lambda>'.*importable module"):
        distance_matrix(lam, A, backend="dask", client=client, **OPTS)
    with pytest.raises(TypeError, match="metric cannot be sent to the workers"):
        nearest_centres(lam, A, A[:1], backend="dask", client=client, **OPTS)
    # by value (cloudpickle) the lambda travels, and the answer is unchanged
    from latentgeo.backends.dask import DaskBackend

    ref = distance_matrix(lam, A, **OPTS)
    got = distance_matrix(lam, A, backend=DaskBackend(client, pickle="value"), block_size=1024, **OPTS)
    _same_matrix(ref, got)
    # the serial path never pickles
    assert distance_matrix(lam, A, backend="serial", block_size=2, **OPTS).n_failed == 0
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(lam)


def test_missing_client_is_a_clear_error():
    distributed = pytest.importorskip("distributed")
    try:
        distributed.default_client()
        pytest.skip("a default client exists in this session")
    except ValueError:
        pass
    with pytest.raises(ValueError, match="needs a distributed.Client"):
        distance_matrix(_metric(), _codes(3, 0), backend="dask", **OPTS)
    from latentgeo.backends.dask import DaskBackend

    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        DaskBackend(client="tcp://nowhere:8786")


# -------------------------------------------------------------------- Dask, two worker processes
def test_two_worker_processes_and_a_killed_worker(tmp_path):
    distributed = pytest.importorskip("distributed")
    import dask

    metric, A, B = _metric(), _codes(8, 11), _codes(4, 12)
    marker = tmp_path / "kill-once"
    killer = lg.PullbackMetric(lg.DeterministicDecoder(KillOnce(marker)))
    ref = distance_matrix(metric, A, B, chunk_size=4, **OPTS)
    here = os.path.dirname(os.path.abspath(__file__))  # workers import this module to unpickle the decoder
    env = {"PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                          "distributed.nanny.environ": env}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            distributed.Client(cl, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        got = distance_matrix(metric, A, B, chunk_size=4, backend="dask", client=c, **OPTS)
        _same_matrix(ref, got)
        assert got.stats["workers"] == 2
        pids = set(c.run(os.getpid).values())
        marker.write_text("kill the first worker that evaluates the decoder")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # distributed logs the lost worker
            died = distance_matrix(killer, A, B, chunk_size=4, backend="dask", client=c, **OPTS)
        assert not marker.exists()  # a worker did die ...
        assert set(c.run(os.getpid).values()) != pids  # ... and was replaced by the nanny
        _same_matrix(ref, died)  # ... and its block was recomputed: complete and identical
        assert bool((died.status == GeodesicStatus.SUCCESS).all())


def test_geodesic_kmeans_on_dask_equals_serial_labels():
    distributed = pytest.importorskip("distributed")
    import latentgeo as lg

    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(8, 2, generator=g, dtype=torch.float64) * 0.2 + c for c in (-1.0, 1.0)])
    metric = _metric()
    serial = lg.GeodesicKMeans(metric, n_clusters=2, random_state=0, max_iter=3).fit(X)
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        km = lg.GeodesicKMeans(metric, n_clusters=2, random_state=0, max_iter=3, backend="dask", client=client,
                               block_size=5).fit(X)
    np.testing.assert_array_equal(km.labels_, serial.labels_)
    torch.testing.assert_close(km.distances_, serial.distances_, rtol=1e-3, atol=1e-6)  # warm starts differ


def test_frechet_mean_log_maps_on_dask_equal_serial():
    distributed = pytest.importorskip("distributed")

    g = torch.Generator().manual_seed(1)
    pts = torch.randn(7, 2, generator=g, dtype=torch.float64) * 0.3 + 0.2
    metric = _metric()
    serial = lg.frechet_mean(metric, pts, max_iter=5)
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        res = lg.frechet_mean(metric, pts, max_iter=5, backend="dask", client=client, block_size=3)
    # the blocks hold the same pairs as the serial path's single batch, solved from the same (line) starts
    torch.testing.assert_close(res.mean, serial.mean, rtol=1e-8, atol=1e-10)
    assert res.status == serial.status and res.n_iter == serial.n_iter
