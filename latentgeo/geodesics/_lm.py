"""Batched Levenberg–Marquardt pieces shared by the curve-energy minimisers.

:func:`damped_step` solves ``(H + λ·diag(H)) s = −g`` for a batch of small dense systems (Marquardt's
diagonal scaling, Cholesky), and :func:`update_damping` adapts ``λ`` per problem from the ratio of
actual to predicted decrease. Used by :mod:`.energy` (discrete chord energy) and :mod:`.spectral`
(pseudospectral energy), which differ in how they build ``g`` and ``H``.

References: Levenberg (1944), Marquardt (1963); Nocedal & Wright, *Numerical Optimization*, §10.3.
"""

from __future__ import annotations

import torch

__all__ = ["damped_step", "update_damping"]


def damped_step(H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor):
    """Damped Gauss–Newton steps for a batch.

    Args:
        H: ``(n, P, P)`` symmetric positive semi-definite model matrices.
        g: ``(n, P)`` gradients (of the same model ``m(s) = gᵀs + ½ sᵀHs``).
        lam: ``(n,)`` damping factors.

    Returns:
        ``(s, q, ok)``: steps ``(n, P)`` (zero where the factorisation failed), the model change
        ``q = gᵀs + ½ sᵀHs`` (negative for a descent step) and ``ok (n,)``.
    """
    dt = H.dtype
    fin = torch.isfinite(H).flatten(1).all(1) & torch.isfinite(g).all(-1)
    if not bool(fin.all()):  # LAPACK prints errors on NaN input: factorise I instead, report failure
        H = torch.where(fin[:, None, None], H, torch.eye(H.shape[-1], dtype=dt, device=H.device))
        g = torch.where(fin[:, None], g, torch.zeros_like(g))
    dH = torch.diagonal(H, dim1=-2, dim2=-1)
    damp = lam[:, None] * dH.clamp_min(1e-12 * dH.amax(-1, keepdim=True).clamp_min(torch.finfo(dt).tiny))
    L, info = torch.linalg.cholesky_ex(H + torch.diag_embed(damp))
    ok = (info == 0) & fin
    L = torch.where(ok[:, None, None], L, torch.eye(H.shape[-1], dtype=dt, device=H.device))
    s = torch.cholesky_solve(-g.unsqueeze(-1), L).squeeze(-1)
    s = torch.where(ok[:, None], s, torch.zeros_like(s))
    q = (g * s).sum(-1) + 0.5 * (s.unsqueeze(1) @ H @ s.unsqueeze(-1)).reshape(-1)
    return s, q, ok


def update_damping(lam, accept, rho, *, down: float, up: float, reject: float, lo: float, hi: float):
    """``λ / down`` after a very successful step (``ρ > 0.75``), ``λ·up`` after a poor one
    (``ρ < 0.25``), ``λ·reject`` after a rejected one; clamped to ``[lo, hi]``."""
    lam = torch.where(accept & (rho > 0.75), lam / down, lam)
    lam = torch.where(accept & (rho < 0.25), lam * up, lam)
    return torch.where(~accept, lam * reject, lam).clamp(lo, hi)
