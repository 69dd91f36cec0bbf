"""Pure batched geometry for the walks: the factor ``L`` (``L Lᵀ = M⁻¹``), the Brownian drift,
the divergence of ``M⁻¹``, and the one place the walks call the exponential map.

All functions take the metric's pure functions (``metric.tensor_fn()``,
``latentgeo.geodesics.acceleration_fn(metric)``) and do no input checks (hot path).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["inverse_factor", "brownian_drift", "inverse_metric_divergence", "exp_step"]


def inverse_factor(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L (N, d, d), ok (N,))`` with ``L Lᵀ = M⁻¹`` for ``M (N, d, d)``.

    With the Cholesky factor ``M = C Cᵀ``, ``L = C⁻ᵀ`` (upper triangular). Rows where ``M`` is not
    positive definite (or not finite) have ``ok = False`` and an identity ``L`` (never used).
    """
    n, d, _ = m.shape
    eye = torch.eye(d, dtype=m.dtype, device=m.device).expand(n, d, d)
    finite = torch.isfinite(m).reshape(n, -1).all(1)
    m_safe = torch.where(finite[:, None, None], m, eye)
    c, info = torch.linalg.cholesky_ex(m_safe)
    ok = finite & (info == 0)
    c = torch.where(ok[:, None, None], c, eye)
    cinv = torch.linalg.solve_triangular(c, eye, upper=False)
    return cinv.transpose(1, 2), ok


def brownian_drift(acc: Callable, z: torch.Tensor, lfac: torch.Tensor) -> torch.Tensor:
    """Drift of Riemannian Brownian motion (generator ``Δ/2``), ``(N, d)``.

    ``bⁱ = −½ g^{jk} Γⁱ_{jk} = ½ Σ_m a(z, l_m)`` where ``a(z, v) = −Γ(z)[v, v]`` is the geodesic
    acceleration and ``l_m`` are the columns of ``L`` (``L Lᵀ = M⁻¹``): one batched
    acceleration call over ``N·d`` (point, direction) rows. For embedded metrics ``a`` is
    ``−J⁺ ∂²g[v, v]``, so this is ``−½ M⁻¹ Jᵀ Σ_m ∂²g[l_m, l_m]`` without a Christoffel tensor
    (Hsu, *Stochastic Analysis on Manifolds*, 2002, §3.3; the coordinate form of ``Δ_g``).
    """
    n, d = z.shape
    zz = z.repeat_interleave(d, dim=0)  # row n*d + m is (z_n, l_m(z_n))
    vv = lfac.transpose(1, 2).reshape(n * d, d)
    a = acc(zz, vv).reshape(n, d, d)
    return 0.5 * a.sum(1)


def inverse_metric_divergence(tensor_fn: Callable, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``(∇·M⁻¹)ᵢ = Σ_j ∂_j (M⁻¹)_{ij} = −Σ_j (M⁻¹ (∂_j M) M⁻¹)_{ij}``, shape ``(N, d)``.

    ``d`` forward-mode derivatives of ``tensor_fn`` (rows of the batch are independent).
    This is the term of the position-dependent Langevin drift that makes its invariant density
    the target (Xifara, Sherlock, Livingstone, Byrne & Girolami 2014, eq. 6; Girolami &
    Calderhead's MMALA drift written correctly).
    """
    n, d = z.shape
    minv = torch.linalg.inv(m)
    div = torch.zeros(n, d, dtype=z.dtype, device=z.device)
    for j in range(d):
        e = torch.zeros_like(z)
        e[:, j] = 1.0
        _, dm = torch.func.jvp(tensor_fn, (z,), (e,))  # ∂_j M, (N, d, d)
        div = div - (minv @ dm @ minv)[:, :, j]
    return div


def exp_step(metric, z: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Exp_z(v) (N, d), ok (N,))``: the walks' only call of the exponential map."""
    from ..geodesics import exp_map

    res = exp_map(metric, z, v, rtol=1e-6, atol=1e-9)
    end = res.endpoint
    ok = torch.as_tensor(res.success, device=z.device).reshape(-1) & torch.isfinite(end).all(1)
    return end, ok
