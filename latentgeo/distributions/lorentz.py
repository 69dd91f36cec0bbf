"""Pure functions on the hyperboloid (Lorentz model) of curvature ``-c``.

The hyperboloid is ``H^n_c = {x ∈ R^{n+1} : <x, x>_L = -1/c, x_0 > 0}`` with the Minkowski
product ``<x, y>_L = -x_0 y_0 + Σ_i x_i y_i`` and origin ``o = (1/√c, 0, ..., 0)``. Tangent
vectors at the origin have time component zero; the functions ending in ``0`` take and return
their *spatial* coordinates ``v ∈ R^n`` (orthonormal coordinates of ``T_o H``).

Every function is pure and batched over leading dimensions, so ``torch.func.vmap`` / ``jacfwd``
apply; radial functions (``sinh r / r``, ``asinh s / s``) switch to their Taylor series near zero
with the double-``where`` trick, so neither values nor gradients are NaN at the origin.

Numerics (float64): ``exp0``/``log0`` involve no cancellation (``log0`` uses ``asinh`` of the
spatial norm, not ``acosh`` of the time component); :func:`transvect` (the isometry moving ``o``
to ``mu`` along the geodesic, equal to ``exp_mu ∘ PT_{o→mu} ∘ log0``) is a Lorentz boost whose
entries grow like ``cosh d(o, mu)``.

Example:
    >>> import torch
    >>> from latentgeo.distributions import lorentz as L
    >>> v = torch.tensor([[3.0, 4.0]], dtype=torch.float64)     # tangent coordinates at o, |v| = 5
    >>> x = L.exp0(v, 1.0)
    >>> float(L.lorentz_inner(x, x)), float(L.dist(L.origin(2, 1.0, dtype=x.dtype), x, 1.0))
    (-1.0..., 5.0...)
    >>> mu = L.exp0(torch.tensor([[1.0, -2.0]], dtype=torch.float64), 1.0)
    >>> y = L.transvect(mu, x, 1.0)                               # exp_mu(PT_{o→mu}(v))
    >>> bool(torch.allclose(L.log0(L.transvect_inv(mu, y, 1.0), 1.0), v))
    True
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "lorentz_inner",
    "safe_norm",
    "origin",
    "exp0",
    "log0",
    "expmap",
    "logmap",
    "transp",
    "transp0",
    "transp0back",
    "transvect",
    "transvect_inv",
    "dist",
    "log_sinhc",
    "sinhc",
    "ball_to_hyperboloid",
    "hyperboloid_to_ball",
]

_SMALL = 1e-3


def lorentz_inner(x: torch.Tensor, y: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Minkowski product ``-x_0 y_0 + Σ x_i y_i`` over the last dimension."""
    p = x * y
    out = p[..., 1:].sum(-1) - p[..., 0]
    return out.unsqueeze(-1) if keepdim else out


def origin(n: int, c, dtype=None, device=None) -> torch.Tensor:
    """The origin ``(1/√c, 0, ..., 0)`` of ``H^n_c`` (shape ``(n+1,)``)."""
    o = torch.zeros(n + 1, dtype=dtype, device=device)
    o[0] = 1.0 / math.sqrt(float(c))
    return o


def sinhc(s: torch.Tensor) -> torch.Tensor:
    """``sinh(s)/s`` (1 at 0), safe for autograd and forward mode at ``s = 0``."""
    small = s.abs() < _SMALL
    safe = torch.where(small, torch.ones_like(s), s)
    s2 = s * s
    return torch.where(small, 1.0 + s2 / 6.0 + s2 * s2 / 120.0, torch.sinh(safe) / safe)


def _asinhc(s: torch.Tensor) -> torch.Tensor:
    """``asinh(s)/s`` (1 at 0), safe at ``s = 0``."""
    small = s.abs() < _SMALL
    safe = torch.where(small, torch.ones_like(s), s)
    s2 = s * s
    return torch.where(small, 1.0 - s2 / 6.0 + 3.0 * s2 * s2 / 40.0, torch.asinh(safe) / safe)


def _acosh_over_sqrt(a: torch.Tensor) -> torch.Tensor:
    """``acosh(a)/sqrt(a²-1)`` for ``a ≥ 1`` (1 at ``a = 1``), safe near 1."""
    e = (a - 1.0).clamp_min(0.0)
    small = e < _SMALL
    safe = torch.where(small, torch.ones_like(e), e)
    # acosh(1+e)/sqrt(e(2+e)) = 1 - e/3 + 2e²/15 + O(e³)
    series = 1.0 - e / 3.0 + 2.0 * e * e / 15.0
    exact = torch.log1p(safe + torch.sqrt(safe * (2.0 + safe))) / torch.sqrt(safe * (2.0 + safe))
    return torch.where(small, series, exact)


def log_sinhc(s: torch.Tensor) -> torch.Tensor:
    """``log(sinh(s)/s)`` for ``s ≥ 0``, stable for large ``s`` (no overflow) and near 0.

    ``s + log(-expm1(-2s)) - log(2s)`` away from zero (exact to rounding at ``s = 10`` and far
    beyond), the series ``s²/6 - s⁴/180 + s⁶/2835`` below ``1e-2``.
    """
    s = s.abs()
    small = s < 1e-2
    safe = torch.where(small, torch.ones_like(s), s)
    s2 = s * s
    series = s2 / 6.0 - s2 * s2 / 180.0 + s2 * s2 * s2 / 2835.0
    exact = safe + torch.log(-torch.expm1(-2.0 * safe)) - torch.log(2.0 * safe)
    return torch.where(small, series, exact)


def safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim with a zero (not NaN) gradient at 0."""
    sq = (v * v).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def exp0(v: torch.Tensor, c) -> torch.Tensor:
    """Exponential map at the origin: spatial tangent coordinates ``v (..., n)`` → point ``(..., n+1)``."""
    sc = math.sqrt(float(c))
    r = safe_norm(v) * sc
    x0 = torch.cosh(r) / sc
    xs = sinhc(r).unsqueeze(-1) * v
    return torch.cat([x0.unsqueeze(-1), xs], -1)


def log0(x: torch.Tensor, c) -> torch.Tensor:
    """Logarithm at the origin: point ``(..., n+1)`` → spatial tangent coordinates ``(..., n)``.

    Uses ``asinh(√c |x_s|)/(√c |x_s|) · x_s`` (the time component is not used), exact at any distance.
    """
    sc = math.sqrt(float(c))
    xs = x[..., 1:]
    return _asinhc(safe_norm(xs) * sc).unsqueeze(-1) * xs


def expmap(x: torch.Tensor, u: torch.Tensor, c) -> torch.Tensor:
    """``exp_x(u)`` for a tangent vector ``u (..., n+1)`` at ``x``."""
    sc = math.sqrt(float(c))
    sq = lorentz_inner(u, u).clamp_min(0.0)
    pos = sq > 0
    nu = torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq)) * sc
    return torch.cosh(nu).unsqueeze(-1) * x + sinhc(nu).unsqueeze(-1) * u


def logmap(x: torch.Tensor, y: torch.Tensor, c) -> torch.Tensor:
    """``log_x(y)`` (tangent at ``x``): ``acosh(α)/sqrt(α²-1) · (y - α x)``, ``α = -c <x, y>_L``."""
    a = (-float(c) * lorentz_inner(x, y)).clamp_min(1.0)
    return _acosh_over_sqrt(a).unsqueeze(-1) * (y - a.unsqueeze(-1) * x)


def dist(x: torch.Tensor, y: torch.Tensor, c) -> torch.Tensor:
    """Geodesic distance ``acosh(-c <x, y>_L)/√c``."""
    a = (-float(c) * lorentz_inner(x, y)).clamp_min(1.0)
    return torch.acosh(a) / math.sqrt(float(c))


def transp(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, c) -> torch.Tensor:
    """Parallel transport of ``v ∈ T_x`` to ``T_y`` along the geodesic: ``v + c<y,v>/(1+α) (x + y)``."""
    c = float(c)
    a = -c * lorentz_inner(x, y)
    return v + (c * lorentz_inner(y, v) / (1.0 + a)).unsqueeze(-1) * (x + y)


def transp0(mu: torch.Tensor, v: torch.Tensor, c) -> torch.Tensor:
    """``PT_{o→mu}`` of spatial coordinates ``v (..., n)`` at the origin; returns ``(..., n+1)`` at ``mu``."""
    sc = math.sqrt(float(c))
    c = float(c)
    a = sc * mu[..., 0]
    coef = (c * (mu[..., 1:] * v).sum(-1) / (1.0 + a)).unsqueeze(-1)
    o = torch.zeros_like(mu)
    o[..., 0] = 1.0 / sc
    v_full = torch.cat([torch.zeros_like(v[..., :1]), v], -1)
    return v_full + coef * (o + mu)


def transp0back(mu: torch.Tensor, w: torch.Tensor, c) -> torch.Tensor:
    """``PT_{mu→o}`` of ``w ∈ T_mu (..., n+1)``; returns the spatial coordinates ``(..., n)`` at ``o``."""
    sc = math.sqrt(float(c))
    a = sc * mu[..., 0]
    return w[..., 1:] - (sc * w[..., 0] / (1.0 + a)).unsqueeze(-1) * mu[..., 1:]


def transvect(mu: torch.Tensor, y: torch.Tensor, c) -> torch.Tensor:
    """The isometry (Lorentz boost) moving ``o`` to ``mu`` along their geodesic, applied to ``y``.

    Equals ``exp_mu(PT_{o→mu}(log0 y))`` but is linear in ``y``:
    ``√c y_0 mu + (0, y_s) + c (mu_s·y_s)/(1 + √c mu_0) (o + mu)``.
    """
    sc = math.sqrt(float(c))
    c = float(c)
    a = sc * mu[..., 0]
    coef = (c * (mu[..., 1:] * y[..., 1:]).sum(-1) / (1.0 + a)).unsqueeze(-1)
    o = torch.zeros_like(mu)
    o[..., 0] = 1.0 / sc
    y_sp = torch.cat([torch.zeros_like(y[..., :1]), y[..., 1:]], -1)
    return (sc * y[..., :1]) * mu + y_sp + coef * (o + mu)


def transvect_inv(mu: torch.Tensor, x: torch.Tensor, c) -> torch.Tensor:
    """Inverse of :func:`transvect`: the boost moving ``mu`` to ``o`` (``transvect`` by ``(mu_0, -mu_s)``)."""
    mu_bar = torch.cat([mu[..., :1], -mu[..., 1:]], -1)
    return transvect(mu_bar, x, c)


def ball_to_hyperboloid(z: torch.Tensor, c) -> torch.Tensor:
    """Poincaré ball ``|z| < 1/√c`` → hyperboloid: ``((1 + c|z|²)/(√c(1 - c|z|²)), 2z/(1 - c|z|²))``."""
    c = float(c)
    sq = (z * z).sum(-1, keepdim=True)
    den = 1.0 - c * sq
    return torch.cat([(1.0 + c * sq) / (math.sqrt(c) * den), 2.0 * z / den], -1)


def hyperboloid_to_ball(x: torch.Tensor, c) -> torch.Tensor:
    """Hyperboloid → Poincaré ball: ``x_s / (1 + √c x_0)``."""
    return x[..., 1:] / (1.0 + math.sqrt(float(c)) * x[..., :1])
