"""Blocks as tasks on a ``dask.distributed`` cluster (the optional ``latentgeo[dask]`` extra).

``distributed`` is imported when a :class:`DaskBackend` is made, never by ``import latentgeo``.

**Client.** Pass ``client=`` (a ``distributed.Client``) or create one first: ``client=None``
takes the current/default client (``distributed.default_client()``, or the worker's own client
inside a task) and raises ``ValueError`` when there is none. Anything Dask connects to works:
``LocalCluster``, ``dask-jobqueue``'s ``SLURMCluster``, a Kubernetes or cloud cluster.

**What travels.** The metric and the solver options are submitted once (as a task of their
own, so a worker that dies with them is simply re-run) and then shared by every block; each
block carries its own codes. They are checked before anything is submitted, see
:mod:`latentgeo.backends.pickling`: by default with plain pickle, so decoders must be
``nn.Module`` objects or functions defined at the top level of modules importable on the
workers (``pickle="value"`` also accepts lambdas and ``__main__``/notebook functions by value).

**Threads.** Every task sets ``torch.set_num_threads(threads_per_task)`` (default ``1``): Dask
runs one task per worker thread, and torch's own thread pool on top of that oversubscribes
the cores. Start workers with as many threads as cores you want busy
(``LocalCluster(n_workers=..., threads_per_worker=1)`` is the usual choice for this CPU-bound
work). With ``processes=False`` the workers are threads of your own process, so this also
sets the calling process's torch threads; ``threads_per_task=None`` leaves them alone.

**Worker memory trimming.** The nanny starts worker processes with
``MALLOC_TRIM_THRESHOLD_=65536``, which was measured to make small torch tasks about 3× slower
(61 ms vs 22 ms). Unset it *before* the cluster starts::

    import dask
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    cluster = LocalCluster(n_workers=8, threads_per_worker=1)

(on a remote cluster, put the same key in the workers' Dask configuration).

**Failures.** A worker that dies mid-block loses only that block: the scheduler re-runs it on
another worker (up to ``distributed.scheduler.allowed-failures`` deaths per task, default 3,
then ``KilledWorker`` is raised). A task that *raises* is re-run up to ``retries`` times
before its exception reaches the caller. Pairs that are merely not certified are not failures:
they come back with their status, as on the serial path.

Example (skipped where ``distributed`` is not installed):
    >>> import latentgeo.backends as lb
    >>> from distributed import Client, LocalCluster          # doctest: +SKIP
    >>> with Client(LocalCluster(processes=False, n_workers=1)) as client:   # doctest: +SKIP
    ...     sorted(r for _, r in lb.DaskBackend(client).map_blocks(sum, [[1, 2], [3, 4]]))
    [3, 7]
"""

from __future__ import annotations

import itertools
import uuid
from typing import Optional

from .base import Backend
from .pickling import POLICIES, check_picklable

__all__ = ["DaskBackend"]


def _import_distributed():
    try:
        import distributed
    except ImportError as err:
        raise ImportError("backend='dask' needs dask.distributed: pip install 'latentgeo[dask]' "
                          "(or pip install 'dask[distributed]')") from err
    return distributed


def _current_client(distributed):
    try:
        return distributed.get_client()
    except ValueError:
        pass
    try:
        return distributed.default_client()
    except ValueError:
        raise ValueError("backend='dask' needs a distributed.Client: pass client=Client(...) or create one "
                         "first (e.g. Client(LocalCluster()) or Client('scheduler-address:8786')) so that it is "
                         "the default client; none was found") from None


def _identity(x):
    return x


def _run_task(fn, threads, *args):
    """Worker side: fix torch's thread count, then run the block."""
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return fn(*args)


class DaskBackend(Backend):
    """Runs blocks as tasks on a ``dask.distributed`` cluster; yields results in completion order.

    Args:
        client: a ``distributed.Client``; ``None`` takes the current one (``ValueError`` if none).
        retries: times a task that raises is re-submitted before its error is raised here.
        threads_per_task: ``torch.set_num_threads`` value in each task (``None``: leave it).
        max_pending: blocks in flight at once (default: 4 per worker thread, at least 8); the
            iterable of blocks is consumed as results come back, so memory on both sides stays
            bounded whatever the number of blocks.
        pickle: ``"reference"`` (plain pickle; default) or ``"value"`` (cloudpickle), the check
            made on the metric before anything is submitted (:mod:`latentgeo.backends.pickling`).
    """

    name = "dask"

    def __init__(self, client=None, *, retries: int = 2, threads_per_task: Optional[int] = 1,
                 max_pending: Optional[int] = None, pickle: str = "reference"):
        from .._validation import check_int

        distributed = _import_distributed()
        if client is None:
            client = _current_client(distributed)
        elif not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client or None, got {type(client).__name__}")
        self.client = client
        self.retries = check_int(retries, "retries", minimum=0)
        self.threads_per_task = None if threads_per_task is None else check_int(threads_per_task, "threads_per_task",
                                                                                minimum=1)
        self.max_pending = None if max_pending is None else check_int(max_pending, "max_pending", minimum=1)
        if pickle not in POLICIES:
            raise ValueError(f"pickle must be one of {POLICIES}, got {pickle!r}")
        self.pickle = pickle

    def __repr__(self):
        return f"DaskBackend(client={self.client!r}, retries={self.retries})"

    def check_transferable(self, obj, name):
        check_picklable(obj, name, self.pickle)

    def _limit(self):
        if self.max_pending is not None:
            return self.max_pending
        try:
            threads = sum(self.client.nthreads().values())
        except Exception:  # noqa: BLE001 - scheduler unreachable: fall back to a fixed window
            threads = 2
        return max(8, 4 * threads)

    def map_blocks(self, fn, blocks, *, common=()):
        distributed = _import_distributed()
        client = self.client
        tag = uuid.uuid4().hex[:10]
        shared = [client.submit(_identity, c, key=f"latentgeo-common-{tag}-{i}", pure=False)
                  for i, c in enumerate(common)]
        todo = enumerate(blocks)
        ac = distributed.as_completed(loop=client.loop)
        pending = {}

        def submit(n):
            for k, block in itertools.islice(todo, n):
                fut = client.submit(_run_task, fn, self.threads_per_task, *shared, block,
                                    key=f"latentgeo-block-{tag}-{k}", retries=self.retries, pure=False)
                pending[fut.key] = (k, fut)
                ac.add(fut)

        try:
            submit(self._limit())
            for fut in ac:
                k, _ = pending.pop(fut.key)
                result = fut.result()
                fut.release()
                yield k, result
                submit(1)
        finally:
            if pending:
                client.cancel([f for _, f in pending.values()])
            if shared:
                client.cancel(shared)
