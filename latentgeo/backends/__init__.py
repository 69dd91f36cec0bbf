"""Where blocks of geodesic pairs are solved: in this process, or as tasks on a Dask cluster.

:func:`solve_pair_blocks` splits pairs into fixed blocks and solves each with
:func:`~latentgeo.geodesics.connecting_geodesic`; :func:`~latentgeo.geodesics.distance_matrix`
(``backend=``), :func:`distance_matrix_to_disk` and :func:`nearest_centres` are built on it.
The blocks are the same whichever backend runs them, so the results are bit-identical.

Backends: :class:`SerialBackend` (in-process) and :class:`DaskBackend` (``dask.distributed``;
the optional ``latentgeo[dask]`` extra, imported only when used). :class:`Backend` is the small
interface another engine's adapter implements.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.backends import get_backend, solve_pair_blocks
    >>> get_backend("serial")
    SerialBackend()
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(torch.tanh))
    >>> z0 = torch.tensor([[0.0, 0.0], [0.1, 0.2], [0.3, -0.2]], dtype=torch.float64)
    >>> res = solve_pair_blocks(metric, z0, -z0.flip(0), block_size=2, backend="serial", budget=None)
    >>> res
    PairBlockResult(3 pairs in 2 blocks on serial: 3 certified)
"""

from __future__ import annotations

from .base import Backend
from .blocks import (
    DistanceMatrixFiles,
    NearestCentres,
    PairBlockResult,
    distance_matrix_to_disk,
    map_pair_blocks,
    nearest_centres,
    open_distance_matrix,
    pair_indices,
    solve_pair_blocks,
)
from .serial import SerialBackend

__all__ = [
    "Backend",
    "SerialBackend",
    "DaskBackend",
    "get_backend",
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

BACKENDS = ("serial", "dask")


def get_backend(backend="serial", client=None) -> Backend:
    """A :class:`Backend` from ``"serial"``, ``"dask"`` or a :class:`Backend` instance.

    Args:
        backend: ``"serial"``, ``"dask"`` (a :class:`DaskBackend` on ``client``) or a backend object.
        client: a ``distributed.Client`` for ``"dask"`` (``None``: the current client).

    Raises:
        ValueError: unknown name, or ``client=`` given for a backend that does not use one.
        TypeError: ``backend`` of another type.
    """
    if isinstance(backend, Backend):
        if client is not None:
            raise ValueError("client= is only used with backend='dask'; the backend object given already has its own")
        return backend
    if isinstance(backend, str):
        if backend == "serial":
            if client is not None:
                raise ValueError("client= was given but backend='serial'; pass backend='dask' to use the client")
            return SerialBackend()
        if backend == "dask":
            from .dask import DaskBackend

            return DaskBackend(client)
        raise ValueError(f"backend must be one of {BACKENDS} or a latentgeo.backends.Backend, got {backend!r}")
    raise TypeError(f"backend must be one of {BACKENDS} or a latentgeo.backends.Backend, got {type(backend).__name__}")


def __getattr__(name):
    if name == "DaskBackend":  # importing it does not import dask (that happens when one is made)
        from .dask import DaskBackend

        return DaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
