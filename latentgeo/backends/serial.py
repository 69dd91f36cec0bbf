"""In-process execution of blocks, one after the other, in submission order.

Example:
    >>> from latentgeo.backends import SerialBackend
    >>> [r for _, r in SerialBackend().map_blocks(sum, [[1, 2], [3, 4]])]
    [3, 7]
"""

from __future__ import annotations

from .base import Backend

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """Runs every block in the calling process and thread (torch's thread setting is left alone)."""

    name = "serial"

    def map_blocks(self, fn, blocks, *, common=()):
        for k, block in enumerate(blocks):
            yield k, fn(*common, block)
