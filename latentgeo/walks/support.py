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

__all__ = ["support_threshold", "support_fraction", "nearest_code_distance", "matched_step_sizes", "mixture_log_prob"]


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


def matched_step_sizes(metric, codes, relative_step: float = 0.02) -> tuple[float, float]:
    """``(h_euclidean, h_metric)``: step sizes that make the walks comparable on ``codes``.

    The Euclidean walk's RMS step ``√(h d)`` is ``relative_step`` times the codes' spread (mean
    per-coordinate standard deviation); a metric walk's RMS step ``√(h tr M⁻¹)`` equals it at
    the median code.
    """
    codes, _ = as_latent_batch(codes, metric.latent_dim, name="codes", allow_single=False)
    relative_step = check_real(relative_step, "relative_step", minimum=0.0, strict_min=True)
    d = codes.shape[1]
    spread = float(codes.std(0).mean())
    h_e = (relative_step * spread) ** 2
    with torch.no_grad():
        tr_inv = torch.diagonal(torch.linalg.inv(metric.tensor(codes)), dim1=1, dim2=2).sum(1)
    return h_e, h_e * d / float(tr_inv.median())


def mixture_log_prob(means: torch.Tensor, stds: torch.Tensor):
    """``log q(z)`` of the equal-weight diagonal-Gaussian mixture ``mean_i N(z; μ_i, σ_i²)``.

    With the encoder's posterior means and standard deviations of the training items this is
    the aggregate posterior, an estimate of where the data live in the latent space (a target
    for ``random_walk(..., method="mmala", log_prob=...)``). Returns a callable ``(N, d) -> (N,)``.

    Example:
        >>> import torch
        >>> from latentgeo.walks import mixture_log_prob
        >>> lp = mixture_log_prob(torch.zeros(1, 2), torch.ones(1, 2))
        >>> round(float(lp(torch.zeros(1, 2))), 4)  # log N(0; 0, I) in 2-D = −log 2π
        -1.8379
    """
    import math

    means = torch.as_tensor(means).detach()
    stds = torch.as_tensor(stds, dtype=means.dtype).detach()
    if means.dim() != 2 or stds.shape != means.shape:
        raise ValueError(f"means and stds must both have shape (C, d), got {tuple(means.shape)} and {tuple(stds.shape)}")
    if not bool((stds > 0).all()):
        raise ValueError("stds must be positive")
    log_norm = -torch.log(stds).sum(1) - 0.5 * means.shape[1] * math.log(2 * math.pi)  # (C,)
    inv = 1.0 / stds

    def log_prob(z):
        r = (z[:, None, :] - means[None]) * inv[None]  # (N, C, d)
        comp = log_norm[None] - 0.5 * (r * r).sum(-1)
        return torch.logsumexp(comp, 1) - math.log(means.shape[0])

    return log_prob
