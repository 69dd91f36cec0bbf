"""The backend interface: run one function over blocks of work, wherever the blocks go.

A backend knows nothing of geodesics. It is given a function ``fn``, arguments ``common``
shared by every block (the metric and the solver options: shipped to the workers once) and an
iterable of blocks, and yields ``(block_id, result)`` pairs, ``block_id`` being the block's
position in ``blocks``. :class:`~latentgeo.backends.SerialBackend` yields them in submission
order; :class:`~latentgeo.backends.DaskBackend` in completion order. An adapter for another
engine (Ray, a process pool, ...) implements :meth:`Backend.map_blocks` and, where objects
cross process boundaries, :meth:`Backend.check_transferable`; the solvers are not touched.

Example:
    >>> from latentgeo.backends import SerialBackend
    >>> def add(offset, block):
    ...     return [offset + x for x in block]
    >>> list(SerialBackend().map_blocks(add, [[1, 2], [3]], common=(10,)))
    [(0, [11, 12]), (1, [13])]
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, Iterator, Tuple

__all__ = ["Backend"]


class Backend(abc.ABC):
    """Executes ``fn(*common, block)`` for every block and yields ``(block_id, result)``."""

    #: short name, as accepted by :func:`~latentgeo.backends.get_backend`
    name: str = "backend"

    @abc.abstractmethod
    def map_blocks(self, fn: Callable, blocks: Iterable, *, common: tuple = ()) -> Iterator[Tuple[int, Any]]:
        """Apply ``fn(*common, block)`` to each block; yield ``(block_id, result)`` as results arrive.

        ``blocks`` may be a lazy iterable: a backend consumes it as it submits, so the caller
        never holds more blocks than the backend keeps in flight. Closing the iterator early
        (``break``, an exception, Ctrl-C) cancels the work still pending.
        """

    def check_transferable(self, obj, name: str) -> None:
        """Raise ``TypeError`` if ``obj`` cannot reach this backend's workers (no-op in-process)."""

    def __repr__(self):
        return f"{type(self).__name__}()"
