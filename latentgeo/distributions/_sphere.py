"""Shared pieces of the distributions on the sphere: argument checks, the stable Householder
map ``e₁ ↦ μ``, uniform tangent directions, the sphere's surface area, seeded sampling."""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["check_loc", "check_concentration", "householder_from_e1", "log_sphere_area",
           "seeded", "unit_tolerance"]


def unit_tolerance(dtype: torch.dtype) -> float:
    """How far ``‖loc‖`` may be from 1 before it is refused: ``1e-4`` (float32), ``1e-8`` (float64)."""
    return 1e-8 if dtype == torch.float64 else 1e-4


def check_loc(loc, name: str = "loc") -> torch.Tensor:
    """``loc (..., m)``, ``m ≥ 2``, finite, unit norm (within :func:`unit_tolerance`); returned renormalised."""
    if not isinstance(loc, torch.Tensor):
        try:
            loc = torch.as_tensor(loc, dtype=torch.get_default_dtype())
        except Exception as exc:
            raise TypeError(f"{name} must be a tensor of unit vectors (..., m), got {type(loc).__name__} ({exc})") from None
    if not torch.is_floating_point(loc):
        raise TypeError(f"{name} must have a floating dtype, got {loc.dtype}")
    if loc.dim() < 1 or loc.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (..., m) with m >= 2, got shape {tuple(loc.shape)}")
    if not bool(torch.isfinite(loc).all()):
        raise ValueError(f"{name} has NaN or infinite entries")
    norm = loc.detach().norm(dim=-1)
    tol = unit_tolerance(loc.dtype)
    if bool(((norm - 1).abs() > tol).any()):
        worst = float((norm - 1).abs().max())
        raise ValueError(
            f"{name} must be unit vectors (| ||{name}|| - 1 | <= {tol:g} for {loc.dtype}); the worst is off by "
            f"{worst:.3g}. Normalise it first (loc / loc.norm(dim=-1, keepdim=True))"
        )
    return loc / loc.norm(dim=-1, keepdim=True)


def check_concentration(kappa, loc: torch.Tensor, name: str = "concentration") -> torch.Tensor:
    """``kappa`` positive, finite, broadcastable to ``loc.shape[:-1]`` (a trailing ``1`` as in ``(N, 1)``
    is accepted and squeezed); returned expanded to ``loc.shape[:-1]`` in ``loc``'s dtype."""
    if not isinstance(kappa, torch.Tensor):
        if isinstance(kappa, bool):
            raise TypeError(f"{name} must be a positive number or tensor, got bool")
        try:
            kappa = torch.as_tensor(kappa, dtype=loc.dtype, device=loc.device)
        except Exception as exc:
            raise TypeError(f"{name} must be a positive number or tensor, got {type(kappa).__name__} ({exc})") from None
    if not torch.is_floating_point(kappa):
        kappa = kappa.to(loc.dtype)
    if kappa.dtype != loc.dtype:
        raise ValueError(f"{name} has dtype {kappa.dtype} but loc has {loc.dtype}; give both in one dtype")
    batch = loc.shape[:-1]
    if kappa.dim() == loc.dim() and kappa.shape[-1] == 1 and loc.shape[-1] != 1:
        kappa = kappa.squeeze(-1)
    try:
        out_shape = torch.broadcast_shapes(kappa.shape, batch)
    except RuntimeError:
        out_shape = None
    if out_shape != batch:
        raise ValueError(
            f"{name} of shape {tuple(kappa.shape)} does not broadcast to loc's batch shape {tuple(batch)} "
            f"(loc has shape {tuple(loc.shape)})"
        )
    if bool(torch.isnan(kappa).any()) or bool(torch.isinf(kappa).any()):
        raise ValueError(f"{name} has NaN or infinite entries")
    if bool((kappa <= 0).any()):
        raise ValueError(f"{name} must be > 0, got min {float(kappa.min()):.3g}")
    return kappa.expand(batch)


def householder_from_e1(z0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Apply an orthogonal map ``Q`` with ``Q e₁ = loc`` to ``z0 (..., m)``.

    ``Q = −(I − 2uuᵀ/‖u‖²)`` with ``u = e₁ + μ`` when ``μ₁ ≥ 0`` and ``Q = I − 2uuᵀ/‖u‖²`` with
    ``u = e₁ − μ`` otherwise, so ``‖u‖² = 2(1 + |μ₁|) ≥ 2``: exact when ``μ ≈ ±e₁`` (the textbook
    ``u = e₁ − μ`` divides 0 by 0 at ``μ = e₁``). Any ``Q`` fixing the law of ``z0`` works, since
    the samplers' ``z0`` are invariant under rotations about ``e₁``.
    """
    if loc.dim() == 1:  # one location for every sample: build Q once, one matmul
        m = loc.shape[0]
        q = householder_from_e1(torch.eye(m, dtype=loc.dtype, device=loc.device), loc[None, :])
        return z0 @ q  # q = Qᵀ (row i is Q e_i), so each row of z0 @ q is (Q z0_row)ᵀ
    mu1 = loc[..., :1]
    sign = torch.where(mu1 >= 0, torch.ones_like(mu1), -torch.ones_like(mu1))
    e1 = torch.zeros_like(loc)
    e1[..., 0] = 1.0
    u = e1 + sign * loc
    nu2 = 2.0 * (1.0 + mu1.abs())
    refl = z0 - 2.0 * u * (u * z0).sum(-1, keepdim=True) / nu2
    return -sign * refl


def uniform_directions(shape, m: int, dtype, device) -> torch.Tensor:
    """Uniform unit vectors in ``R^m``, shape ``(*shape, m)`` (global torch RNG)."""
    v = torch.randn(*shape, m, dtype=dtype, device=device)
    # a zero draw has probability 0 (and would give NaN, caught downstream by the norm checks)
    return v / v.norm(dim=-1, keepdim=True)


def log_sphere_area(m: int) -> float:
    """``log |S^{m−1}| = log(2 π^{m/2} / Γ(m/2))``."""
    return math.log(2.0) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)


@contextlib.contextmanager
def seeded(random_state, device=None):
    """Run the block on torch's global RNG, seeded from ``random_state`` unless it is ``None``.

    ``None`` draws from (and advances) the global generator, as :mod:`torch.distributions` does;
    an ``int``/generator seeds a forked RNG so the caller's global state is untouched.
    """
    if random_state is None:
        yield
        return
    from .._random import as_seed, rng_devices

    seed = as_seed(random_state)
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(seed)
        yield
