"""Input checks shared by the whole package.

Every public entry point validates what it is given and raises a ``ValueError`` that names
the problem (which argument, which shape, which points) instead of returning NaN or failing
deep inside torch.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["as_latent_batch", "check_finite", "describe_bad_rows", "check_int", "check_real", "check_choice", "check_on_failure", "ON_FAILURE"]


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


# ---------------------------------------------------------------------------------------
# scalar options: one message shape ("NAME must be EXPECTED, got GIVEN") for every entry point
# ---------------------------------------------------------------------------------------
def check_int(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an ``int`` (bools and non-integral floats refused) within ``[minimum, maximum]``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(
    value,
    name: str,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    *,
    strict_min: bool = False,
    strict_max: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the given bounds (``strict_*``: open bound)."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
            value = float(value)
        else:
            raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict_min else '>='} {minimum}, got {value}")
    if maximum is not None and (value >= maximum if strict_max else value > maximum):
        raise ValueError(f"{name} must be {'<' if strict_max else '<='} {maximum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}; expected one of {opts}")
    return value


ON_FAILURE = ("raise", "warn", "ignore")


def check_on_failure(value, name: str = "on_failure", choices=ON_FAILURE) -> str:
    """The package's one failure vocabulary: ``"raise"`` (an exception naming the failed items),
    ``"warn"`` (a ``RuntimeWarning`` with the count; the result flags them) or ``"ignore"``
    (the result flags them, silently). Entry points may accept a subset."""
    return check_choice(value, name, choices)
