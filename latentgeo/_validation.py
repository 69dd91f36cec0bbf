"""Input checks shared by the whole package.

Every public entry point validates what it is given and raises a ``ValueError`` that names
the problem (which argument, which shape, which points) instead of returning NaN or failing
deep inside torch.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["as_latent_batch", "check_finite", "describe_bad_rows"]


def describe_bad_rows(mask: torch.Tensor, max_show: int = 5) -> str:
    """Human-readable list of the batch indices where ``mask`` (N,) is True."""
    idx = torch.nonzero(mask.reshape(-1), as_tuple=False).reshape(-1).tolist()
    shown = ", ".join(str(i) for i in idx[:max_show])
    more = f" and {len(idx) - max_show} more" if len(idx) > max_show else ""
    return f"{len(idx)} point(s) (indices {shown}{more})"


def as_latent_batch(
    z, latent_dim: Optional[int] = None, name: str = "z", allow_single: bool = True
) -> tuple[torch.Tensor, bool]:
    """Check a batch of latent codes and return it as a floating ``(N, d)`` tensor.

    Returns ``(z, was_single)``; a single code of shape ``(d,)`` is promoted to ``(1, d)``
    when ``allow_single`` is true, and ``was_single`` tells the caller to squeeze results.
    Raises ``ValueError`` for a non-tensor, a wrong rank, a wrong latent dimension, an empty
    batch, an integer dtype, or NaN/inf entries.
    """
    if not isinstance(z, torch.Tensor):
        try:
            z = torch.as_tensor(z)
        except Exception as exc:  # pragma: no cover - message path
            raise ValueError(f"{name} must be a tensor of latent codes, got {type(z).__name__}") from exc
    if not torch.is_floating_point(z):
        if z.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool):
            z = z.to(torch.get_default_dtype())
        else:
            raise ValueError(f"{name} must have a real floating dtype, got {z.dtype}")
    if z.is_inference() and not torch.is_inference_mode_enabled():
        # codes made under torch.inference_mode() (e.g. by an encoder) cannot enter autodiff;
        # a normal copy can
        z = z.clone()
    single = False
    if z.dim() == 1 and allow_single:
        z = z.unsqueeze(0)
        single = True
    if z.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d) (or (d,) for a single code), got shape {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(z.shape)})")
    if latent_dim is not None and z.shape[1] != latent_dim:
        raise ValueError(
            f"{name} has latent dimension {z.shape[1]} but the decoder/metric expects {latent_dim} "
            f"(shape {tuple(z.shape)})"
        )
    check_finite(z, name)
    return z, single


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the offending batch rows if ``x`` has NaN/inf."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite.reshape(x.shape[0], -1).all(dim=1) if x.dim() > 0 else ~finite
        kinds = []
        if bool(torch.isnan(x).any()):
            kinds.append("NaN")
        if bool(torch.isinf(x).any()):
            kinds.append("inf")
        raise ValueError(f"{name} contains {'/'.join(kinds)} at {describe_bad_rows(bad)}")
