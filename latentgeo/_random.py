"""One convention for randomness: every public callable that draws random numbers takes
``random_state``.

``random_state`` may be ``None`` (fresh entropy: not reproducible), an ``int`` seed, a
:class:`torch.Generator` (used as is, so successive calls continue its stream), or a
:class:`numpy.random.Generator`/:class:`numpy.random.RandomState` (a seed is drawn from it).
Estimators with scikit-learn conventions keep the value they were given and resolve it at
``fit`` time, as scikit-learn's ``check_random_state`` does.

Example:
    >>> import torch
    >>> from latentgeo._random import as_generator
    >>> a = torch.randn(3, generator=as_generator(0))
    >>> b = torch.randn(3, generator=as_generator(0))
    >>> bool((a == b).all())
    True
"""

from __future__ import annotations

import numbers
import os
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["as_generator", "as_seed", "rng_devices", "RandomState"]

RandomState = Union[None, int, torch.Generator, np.random.Generator, np.random.RandomState]


def as_seed(random_state: RandomState, name: str = "random_state") -> int:
    """An ``int`` seed in ``[0, 2**63)`` from any accepted ``random_state`` (see module docstring)."""
    if random_state is None:
        return int.from_bytes(os.urandom(8), "little") >> 2
    if isinstance(random_state, bool):
        raise TypeError(f"{name} must be None, an int, a torch.Generator or a numpy random generator, got bool")
    if isinstance(random_state, numbers.Integral):
        if random_state < 0:
            raise ValueError(f"{name} must be a non-negative int seed, got {random_state}")
        return int(random_state)
    if isinstance(random_state, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=random_state).item())
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**62))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise TypeError(
        f"{name} must be None, an int, a torch.Generator or a numpy random generator, got {type(random_state).__name__}"
    )


def as_generator(random_state: RandomState, device: Optional[Union[str, torch.device]] = None, name: str = "random_state") -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` for ``random_state`` (see module docstring).

    A ``torch.Generator`` on the right device is returned unchanged (its stream continues).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(random_state, torch.Generator) and random_state.device.type == dev.type:
        return random_state
    g = torch.Generator(device=dev)
    g.manual_seed(as_seed(random_state, name))
    return g


def rng_devices(device: Optional[Union[str, torch.device]]) -> list:
    """The CUDA device indices that ``torch.random.fork_rng(devices=...)`` must fork around work on
    ``device`` (none for the CPU): ``torch.manual_seed`` inside the block seeds the CUDA generators
    too, and without them in the fork the caller's CUDA random state would be left reseeded."""
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]
