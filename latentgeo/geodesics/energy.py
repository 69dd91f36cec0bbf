"""Stage 1 of connecting geodesics: batched discrete-curve energy minimisation.

A curve is ``T`` points ``c_0 … c_{T−1}`` with fixed ends; its discrete energy is
``E = (T−1)·Σ_i dist(c_i, c_{i+1})²`` (see :mod:`latentgeo.metric`). Its minimisers are
discrete geodesics (evenly spaced, converging to the geodesic at ``O(1/T²)``).

Embedded metrics: ``dist`` is the chord ``‖g(c_{i+1}) − g(c_i)‖`` — the energy is a
nonlinear least-squares problem in the residuals ``r_i = g(c_{i+1}) − g(c_i)``, solved by
Levenberg–Marquardt (Gauss–Newton with trust-region damping). The Gauss–Newton matrix is
block-tridiagonal with blocks ``2J_iᵀJ_i`` and ``−J_iᵀJ_{i+1}``; only forward passes and
Jacobians (``d`` jvps per point) are needed. Other metrics: exact gradient by autograd and
the "frozen-metric" block-tridiagonal matrix (blocks ``M_{i−1} + M_i`` and ``−M_i`` with
``M_i`` at the segment midpoints), which is the Gauss–Newton matrix when the metric's own
derivatives are neglected.

Every pair stops on its own criterion (relative energy decrease of an accepted step below
``rtol``, or a vanishing step) and leaves the active set.

References: Levenberg (1944), Marquardt (1963); Nielsen's damping update (1999). Discrete
geodesics as energy minimisers: Arvanitidis et al., ICLR 2018, §3; Shao et al. (2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..metric import Metric
from ._lm import damped_step, update_damping
from .._autodiff import value_and_columns

__all__ = ["minimize_discrete_energy", "EnergyResult"]


@dataclass
class EnergyResult:
    """Outcome of :func:`minimize_discrete_energy` (all tensors batched over pairs).

    Attributes:
        curve: ``(N, T, d)`` optimised discrete curves (endpoints unchanged).
        energy: ``(N,)`` discrete energies.
        converged: ``(N,)`` bool — the pair's own stopping criterion was met.
        iterations: ``(N,)`` LM iterations (accepted + rejected steps).
    """

    curve: torch.Tensor
    energy: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor


def _embedded_terms(g, c):
    """Energy, gradient/2(T−1), GN blocks/2(T−1) for embedded metrics."""
    n, T, d = c.shape
    x = c[:, 1:-1].reshape(-1, d)
    eta_i, jac = value_and_columns(g, x)
    k = eta_i.shape[1]
    eta_i = eta_i.reshape(n, T - 2, k)
    jac = jac.reshape(n, T - 2, k, d)
    eta_e = g(torch.stack([c[:, 0], c[:, -1]], 1).reshape(-1, d)).reshape(n, 2, k)
    eta = torch.cat([eta_e[:, :1], eta_i, eta_e[:, 1:]], 1)
    r = eta[:, 1:] - eta[:, :-1]  # (n, T−1, K)
    energy = (T - 1) * r.pow(2).sum((1, 2))
    jt = jac.transpose(-1, -2)  # (n, T−2, d, K)
    grad = (jt @ (r[:, :-1] - r[:, 1:]).unsqueeze(-1)).squeeze(-1)  # (n, T−2, d)
    diag = 2.0 * (jt @ jac)
    off = -(jt[:, :-1] @ jac[:, 1:])  # block (i, i+1)
    return energy, grad, diag, off


def _general_terms(metric, c):
    n, T, d = c.shape
    with torch.enable_grad():
        x = c[:, 1:-1].detach().requires_grad_(True)
        cc = torch.cat([c[:, :1], x, c[:, -1:]], 1)
        seg = metric.segment_sq_lengths(cc)
        energy = (T - 1) * seg.sum(1)
        (gx,) = torch.autograd.grad(energy.sum(), x)
    mid = 0.5 * (c[:, 1:] + c[:, :-1])
    m = metric._raw_tensor(mid.reshape(-1, d)).reshape(n, T - 1, d, d)
    if metric.ridge > 0:
        m = m + metric.ridge * torch.eye(d, dtype=c.dtype, device=c.device)
    grad = gx / (2.0 * (T - 1))
    diag = m[:, :-1] + m[:, 1:]
    off = -m[:, 1:-1]
    return energy.detach(), grad, diag, off


def _assemble(diag, off):
    n, P, d, _ = diag.shape
    H = torch.zeros(n, P, d, P, d, dtype=diag.dtype, device=diag.device)
    i = torch.arange(P, device=diag.device)
    H[:, i, :, i, :] = diag.transpose(0, 1)
    if P > 1:
        j = torch.arange(P - 1, device=diag.device)
        H[:, j, :, j + 1, :] = off.transpose(0, 1)
        H[:, j + 1, :, j, :] = off.transpose(0, 1).transpose(-1, -2)
    return H.reshape(n, P * d, P * d)


def minimize_discrete_energy(
    metric: Metric,
    curve: torch.Tensor,
    *,
    max_iter: int = 100,
    rtol: float = 1e-10,
) -> EnergyResult:
    """Minimise the discrete energy of a batch of curves with fixed endpoints.

    Args:
        metric: a latentgeo metric.
        curve: ``(N, T, d)`` initial curves, ``T ≥ 3`` (endpoints are kept fixed).
        max_iter: LM iterations per pair.
        rtol: a pair stops when an accepted step lowers its energy by less than ``rtol·E``.

    Returns:
        :class:`EnergyResult`.
    """
    n, T, d = curve.shape
    if T < 3:
        raise ValueError(f"discrete curves need at least 3 points, got {T}")
    c = curve.detach().clone()
    embedded = metric.is_embedded
    g = metric.embedding if embedded else None

    def terms(cs):
        return _embedded_terms(g, cs) if embedded else _general_terms(metric, cs)

    with torch.no_grad():
        E, G, Dg, Of = terms(c)
        lam = torch.full((n,), 1e-3, dtype=c.dtype, device=c.device)
        conv = torch.zeros(n, dtype=torch.bool, device=c.device)
        iters = torch.zeros(n, dtype=torch.long, device=c.device)
        scale = (c[:, -1] - c[:, 0]).norm(dim=1).clamp_min(1.0)
        conv |= E <= 0  # identical endpoints: nothing to do
        for _ in range(int(max_iter)):
            act = torch.nonzero(~conv).reshape(-1)
            if act.numel() == 0:
                break
            iters[act] += 1
            H = _assemble(Dg[act], Of[act])
            P = H.shape[-1]
            step, q, ok = damped_step(H, G[act].reshape(-1, P), lam[act])
            pred = -(2.0 * (T - 1)) * q
            ct = c[act].clone()
            ct[:, 1:-1] = ct[:, 1:-1] + step.reshape(-1, T - 2, d)
            Et, Gt, Dt, Ot = terms(ct)
            actual = E[act] - Et
            rho = actual / pred.clamp_min(1e-300)
            accept = ok & torch.isfinite(Et) & (actual > 0)
            tiny_step = step.abs().amax(-1) <= 1e-14 * scale[act]
            newconv = (accept & (actual <= rtol * E[act])) | (ok & tiny_step) | (ok & (pred <= 0.1 * rtol * E[act]))
            # update accepted
            ia = act[accept]
            c[ia] = ct[accept]
            E[ia], G[ia], Dg[ia], Of[ia] = Et[accept], Gt[accept], Dt[accept], Ot[accept]
            lam[act] = update_damping(lam[act], accept, rho, down=3.0, up=2.0, reject=4.0, lo=1e-12, hi=1e12)
            conv[act] = newconv
    return EnergyResult(curve=c, energy=E, converged=conv, iterations=iters)
