"""Riemannian-manifold MALA (Girolami & Calderhead 2011) with the drift of Xifara et al. (2014).

Proposal from ``z`` (step ``h = ε²``)::

    z' ~ N(μ(z), h M(z)⁻¹),   μ(z) = z + h (½ M⁻¹ ∇log π + ½ ∇·M⁻¹),

the Euler–Maruyama step of the Langevin diffusion ``dz = (½ M⁻¹∇log π + ½ ∇·M⁻¹) dt + M^(−1/2) dW``
whose invariant density (w.r.t. Lebesgue measure in the coordinates) is ``π``
(Xifara, Sherlock, Livingstone, Byrne & Girolami, Stat. Probab. Lett. 91, 2014, eq. 6: the
Christoffel-type term of the original MMALA is replaced by the divergence of ``M⁻¹``), then
accepted with the Metropolis–Hastings probability
``min(1, π(z') q(z | z') / (π(z) q(z' | z)))``. With ``π ∝ √det M`` the diffusion is Brownian
motion on the metric and the walk samples the Riemannian volume.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .geometry import inverse_factor, inverse_metric_divergence

__all__ = ["MMALAState", "mmala_state", "mmala_log_q"]


class MMALAState(NamedTuple):
    log_p: torch.Tensor  # (N,)
    mean: torch.Tensor  # (N, d) μ(z)
    lfac: torch.Tensor  # (N, d, d) L, L Lᵀ = M⁻¹
    metric: torch.Tensor  # (N, d, d) M
    ok: torch.Tensor  # (N,) everything finite and M positive definite


def log_prob_and_grad(log_prob: Callable, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(z) (N,), ∇log π(z) (N, d))`` by reverse-mode autodiff (rows independent)."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        lp = log_prob(zz)
        if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (z.shape[0],):
            shape = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise ValueError(f"log_prob must map z of shape {tuple(z.shape)} to shape ({z.shape[0]},), got {shape}")
        (g,) = torch.autograd.grad(lp.sum(), zz, allow_unused=True)
    if g is None:
        g = torch.zeros_like(z)
    return lp.detach(), g.detach()


def mmala_state(log_prob: Callable, tensor_fn: Callable, z: torch.Tensor, h: float, derivs=None) -> MMALAState:
    """Everything the MH step needs at ``z``: log π, μ(z), L, M and a validity mask. ``derivs``: a
    :func:`~latentgeo.walks.geometry.metric_derivatives_fn` (``M`` and its derivatives from one
    Hessian-mode jet), else ``M`` from ``tensor_fn`` and its derivatives by forward mode."""
    lp, g = log_prob_and_grad(log_prob, z)
    with torch.no_grad():
        r = derivs(z) if derivs is not None else None
        m, dm = r if r is not None else (tensor_fn(z), None)
        lfac, ok = inverse_factor(m)
        mi_g = (lfac @ (lfac.transpose(1, 2) @ g.unsqueeze(-1))).squeeze(-1)  # M⁻¹ ∇log π
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        m_safe = torch.where(ok[:, None, None], m, eye)
        if dm is not None:
            dm = torch.where(ok[:, None, None, None], dm, torch.zeros_like(dm))
        div = inverse_metric_divergence(tensor_fn, z, m_safe, dm)
        mean = z + h * (0.5 * mi_g + 0.5 * div)
        ok = ok & torch.isfinite(lp) & torch.isfinite(mean).all(1)
    return MMALAState(lp, mean, lfac, m, ok)


def mmala_log_q(x: torch.Tensor, state: MMALAState, h: float) -> torch.Tensor:
    """``log q(x | z)`` up to a constant: ``−(x−μ)ᵀ M (x−μ)/(2h) + ½ log det M``, shape ``(N,)``."""
    r = x - state.mean
    quad = torch.einsum("ni,nij,nj->n", r, state.metric, r)
    half_logdet = -torch.log(torch.diagonal(state.lfac, dim1=1, dim2=2)).sum(1)  # ½ log det M = −Σ log L_ii
    return -0.5 * quad / h + half_logdet
