"""Small building blocks: multilayer perceptrons with configurable widths and activation.

Example:
    >>> import torch
    >>> from latentgeo.models.nets import MLP
    >>> net = MLP(2, 5, hidden=(16, 16), activation="tanh")
    >>> net(torch.zeros(3, 2)).shape
    torch.Size([3, 5])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ACTIVATIONS", "check_hidden"]

#: activation names accepted by :class:`MLP` (smooth ones give smooth pullback metrics)
ACTIVATIONS = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
}


def check_hidden(hidden) -> tuple[int, ...]:
    """Validate a tuple of hidden widths (each a positive int); ``()`` means a linear map."""
    if isinstance(hidden, (int,)) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ValueError(f"hidden must be a sequence of positive layer widths, got {hidden!r}") from None
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"hidden must be a sequence of positive integer widths, got {hidden!r}")
    return widths


class MLP(nn.Module):
    """``Linear → act → … → Linear`` from ``in_dim`` to ``out_dim`` (no output activation).

    Args:
        in_dim, out_dim: input/output widths.
        hidden: widths of the hidden layers, e.g. ``(64, 64)``; ``()`` gives one linear layer.
        activation: one of :data:`ACTIVATIONS`.

    Shapes: ``(..., in_dim) -> (..., out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        widths = (in_dim, *check_hidden(hidden), out_dim)
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    @property
    def last(self) -> nn.Linear:
        """The output layer (used to initialise heads)."""
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
