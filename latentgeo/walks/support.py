"""Does a walk stay on the data? Distance to the nearest training code against a threshold
set from the codes themselves.

Example:
    >>> import torch
    >>> from latentgeo.walks import support_fraction, support_threshold
    >>> codes = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    >>> tau = support_threshold(codes)
    >>> inside = torch.zeros(1, 3, 2); outside = torch.full((1, 3, 2), 10.0)
    >>> support_fraction(torch.cat([inside, outside]), codes, tau).tolist()
    [1.0, 0.0]
"""

from __future__ import annotations

from typing import Optional

import torch

from .._validation import as_latent_batch, check_int, check_real

__all__ = ["support_threshold", "support_fraction", "nearest_code_distance"]


def nearest_code_distance(points: torch.Tensor, codes: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """Euclidean distance of each of ``points (N, d)`` to its nearest row of ``codes (C, d)``, ``(N,)``."""
    out = [torch.cdist(points[i:i + chunk_size], codes).amin(1) for i in range(0, points.shape[0], chunk_size)]
    return torch.cat(out)


def support_threshold(codes, k: int = 5, quantile: float = 0.99) -> float:
    """The ``quantile`` of the codes' distances to their ``k``-th nearest other code.

    A position whose nearest code is closer than this is as close to the data as
    ``quantile`` of the codes are to their ``k``-th neighbour (``k = 5``, ``0.99``: a
    generous, scale-free notion of "within the data support").
    """
    codes, _ = as_latent_batch(codes, name="codes", allow_single=False)
    k = check_int(k, "k", minimum=1, maximum=codes.shape[0] - 1)
    quantile = check_real(quantile, "quantile", 0.0, 1.0)
    dk = []
    for i in range(0, codes.shape[0], 2048):
        dist = torch.cdist(codes[i:i + 2048], codes)
        dk.append(dist.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the code itself
    return float(torch.quantile(torch.cat(dk).double(), quantile))


def support_fraction(walk, codes, threshold: Optional[float] = None) -> torch.Tensor:
    """Per-walker fraction of positions within ``threshold`` of the nearest code, ``(W,)``.

    Args:
        walk: a :class:`~latentgeo.walks.WalkResult` (positions after a walker stopped are not
            counted) or trajectories ``(W, T, d)`` (the start points included).
        codes: ``(C, d)`` training codes.
        threshold: distance; default :func:`support_threshold` of ``codes``.
    """
    codes, _ = as_latent_batch(codes, name="codes", allow_single=False)
    if threshold is None:
        threshold = support_threshold(codes)
    threshold = check_real(threshold, "threshold", minimum=0.0)
    if hasattr(walk, "trajectories"):
        traj, mask = walk.trajectories, walk.mask
    else:
        traj = torch.as_tensor(walk)
        if traj.dim() != 3:
            raise ValueError(f"walk must be a WalkResult or trajectories of shape (W, T, d), got {tuple(traj.shape)}")
        mask = torch.ones(traj.shape[:2], dtype=torch.bool, device=traj.device)
    w, t, d = traj.shape
    if d != codes.shape[1]:
        raise ValueError(f"trajectories have dimension {d} but codes have {codes.shape[1]}")
    dist = nearest_code_distance(traj.reshape(w * t, d).to(codes.dtype), codes).reshape(w, t)
    inside = (dist <= threshold) & mask
    return inside.sum(1).double() / mask.sum(1).double()
