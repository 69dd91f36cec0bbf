"""Piecewise Gauss collocation of connecting geodesics on meshes that adapt to the curve.

A global polynomial (:mod:`.spectral`) resolves an analytic geodesic with few nodes, but the
metrics of trained VAEs with an RBF variance change by two orders of magnitude across a thin
ring around the data. A curve that runs along or through that ring has features a few
hundredths of its duration wide, and a global polynomial needs hundreds of nodes *everywhere*
to follow them (on the {3,4,7} digits VAE about a quarter of the k-means pairs were not
resolved at 512 nodes). Here the nodes go where they are needed.

The curve on ``[0, 1]`` is split at ``0 = τ_0 < … < τ_S = 1``. On segment ``s`` (duration ``h``)
it is the polynomial

    γ(τ_s + u h) = γ_s + u h p_s + h² Σ_j φ_j(u) A_j,   u ∈ [0, 1],

with ``A_j`` its accelerations at the ``q`` Gauss nodes ``c_j`` of the segment (``φ_j'' = ℓ_j``,
the Lagrange polynomials of the nodes, ``φ_j(0) = φ_j'(0) = 0``): one step of the ``q``-stage
Gauss–Legendre Runge–Kutta–Nyström method, of order ``2q`` at the mesh points. The unknowns
are the states ``(γ_s, p_s)`` at the mesh points and the stage accelerations; the equations are
the collocation conditions ``A_j = a(γ(c_j), γ'(c_j))`` (``a`` the geodesic acceleration),
continuity of ``γ`` and ``γ'`` across the mesh points, ``γ_0 = z0`` and ``γ_S = z1``. Newton's
method on all of them together is multiple shooting with collocation steps. Its linear systems
are condensed: the stage corrections by one ``qd × qd`` solve per segment, the mesh states by a
forward recursion (Bock's condensing), down to a ``d × d`` system for the initial velocity.
Where the linearised flow grows fast (strong variance gradients, 10-D latents: fundamental
matrices of 1e17–1e24 over 16 segments were measured) that recursion loses every digit, and the
mesh states come from a stabilised march through the block-bidiagonal system instead.

Certificate (the quantities :func:`~latentgeo.geodesics.spectral.collocate` certifies, measured
*off* the collocation nodes): the defect ``r = γ'' − a(γ, γ')`` at the ``q + 1`` Gauss nodes of
a check rule in every segment; the ODE residual in integral form
``max_m ‖∫₀¹ G(τ_m, σ) r(σ) dσ‖_M / L`` over the mesh points (``G`` the Green's function of
``d²/dt²`` with Dirichlet conditions on ``[0, 1]``: the change of the curve if its acceleration
were replaced by the true one along it) and the speed drift ``max |‖γ'‖_M − L| / L`` at every
check point and mesh point must both be ``≤ tol``. A pair above that gets a new mesh that
equidistributes the defect, with more segments, and Newton again from its curve (residual
control as in bvp4c: Kierzenka & Shampine, ACM TOMS 27, 2001; mesh selection by
equidistribution: Ascher, Mattheij & Russell, *Numerical Solution of Boundary Value Problems for
ODEs*, SIAM 1995, §9.3; collocation as implicit Runge–Kutta: Hairer, Nørsett & Wanner, *Solving
ODEs I*, §II.7).

Example (the inverse stereographic decoder: geodesics are great circles, lengths their angles):
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics.piecewise import collocate_piecewise
    >>> from latentgeo.geodesics.spectral import _line_series
    >>> def stereo(z):
    ...     s = (z * z).sum(-1, keepdim=True)
    ...     return torch.cat([2 * z, s - 1], -1) / (1 + s)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    >>> z0 = torch.tensor([[0.5, 0.0]], dtype=torch.float64); z1 = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    >>> r = collocate_piecewise(metric, z0, z1, _line_series(z0, z1, 2), tol=1e-8)
    >>> angle = torch.arccos((stereo(z0) * stereo(z1)).sum(-1))
    >>> bool(r.converged[0]), bool(torch.allclose(r.length, angle, rtol=1e-8))
    (True, True)
"""

from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.fx
from numpy.polynomial import legendre as npleg

from .._autodiff import op_kink
from ..metric import Metric
from .ode import acceleration_fn
from .spectral import (
    _Norm, _blank_outcome, _expired, _jets_with_velocity_jacobian, _second_order, _trim,
    legendre_basis,
)

__all__ = ["collocate_piecewise", "PiecewiseResult"]


@functools.lru_cache(maxsize=None)
def _stage_np(q: int):
    """Gauss nodes ``c (q,)`` and weights ``b`` on [0, 1]; ``Lc (q, q)`` with
    ``ℓ_j(u) = Σ_k Lc[k, j] u^k``; the check rule (``q + 1`` Gauss nodes and weights)."""
    x, w = npleg.leggauss(q)
    c, b = (x + 1) / 2, w / 2
    Lc = np.linalg.inv(np.vander(c, q, increasing=True))
    xc, wc = npleg.leggauss(q + 1)
    cc = (xc + 1) / 2
    # Icc[k', j] = ∫₀^{cc_j} ℓᶜ_k'(u) du, ℓᶜ the Lagrange polynomials of the check nodes
    Lcc = np.linalg.inv(np.vander(cc, q + 1, increasing=True))
    k = np.arange(q + 1)
    Icc = (cc[None, :] ** (k[:, None] + 1) / (k[:, None] + 1)).T @ Lcc  # (j, k')
    return c, b, Lc, cc, wc / 2, Icc.T


def _consts(q, dtype, device):
    c, _, Lc, cc, wc, Icc = (torch.as_tensor(a, dtype=dtype, device=device) for a in _stage_np(q))
    _, a_, abar = _bases(c, Lc)  # a_[i, j] = ψ_j(c_i), abar[i, j] = φ_j(c_i)
    _, b1, bbar = _bases(torch.ones(1, dtype=dtype, device=device), Lc)
    return dict(c=c, Lc=Lc, a=a_, abar=abar, b=b1[0], bbar=bbar[0], cc=cc, wc=wc, Icc=Icc)


def _bases(u: torch.Tensor, Lc: torch.Tensor):
    """``ℓ_j``, ``ψ_j = ∫₀ᵘ ℓ_j`` and ``φ_j = ∫₀ᵘ ψ_j`` at ``u (...)``: three ``(..., q)`` tensors."""
    q = Lc.shape[0]
    k = torch.arange(q, dtype=u.dtype, device=u.device)
    P = u[..., None] ** k
    return P @ Lc, (P * u[..., None] / (k + 1)) @ Lc, (P * u[..., None] ** 2 / ((k + 1) * (k + 2))) @ Lc


def _evaluate(tau, g, p, A, t, Lc):
    """``γ, γ', γ''`` ``(n, M, d)`` of piecewise curves at per-pair times ``t (n, M)``."""
    S = tau.shape[1] - 1
    j = (torch.searchsorted(tau.contiguous(), t.contiguous(), right=True) - 1).clamp(0, S - 1)
    ta = tau.gather(1, j)
    h = tau.gather(1, j + 1) - ta
    u = ((t - ta) / h).clamp(0, 1)
    ell, psi, phi = _bases(u, Lc)
    r = torch.arange(tau.shape[0], device=tau.device)[:, None]
    gs, ps, As = g[r, j], p[r, j], A[r, j]
    y = gs + (u * h)[..., None] * ps + (h * h)[..., None] * torch.einsum("nmq,nmqd->nmd", phi, As)
    yp = ps + h[..., None] * torch.einsum("nmq,nmqd->nmd", psi, As)
    ypp = torch.einsum("nmq,nmqd->nmd", ell, As)
    return y, yp, ypp


@dataclass
class PiecewiseResult:
    """Outcome of :func:`collocate_piecewise` (batched over pairs).

    Attributes:
        knots: ``(t, z, v, a)``, each ``(n, P[, d])``: times, positions, velocities and
            accelerations along each curve (mesh points and check nodes; padded by repeating the
            last knot) for :func:`~latentgeo.geodesics.ivp.hermite5` dense output.
        length: ``(n,)`` the check rule's quadrature of ``‖γ'‖_M``.
        velocity0: ``(n, d)`` ``γ'(0)``.
        residual: ``(n,)`` the integral-form residual in the Euclidean norm.
        rel_residual: ``(n,)`` the same in the metric norm relative to the length.
        speed_drift: ``(n,)`` ``max |‖γ'‖_M − L| / L`` at the check nodes and mesh points.
        converged: ``(n,)`` certified (``rel_residual`` and ``speed_drift`` ``≤ tol``).
        iterations: ``(n,)`` Newton iterations over all meshes; ``segments``: the final mesh's.
        evaluations: ``(n,)`` points at which the geodesic acceleration was evaluated.
        budget: ``(n,)`` stopped because the ``deadline`` passed.
        reasons: why a pair was not certified (``""`` otherwise).
    """

    knots: tuple
    length: torch.Tensor
    velocity0: torch.Tensor
    residual: torch.Tensor
    rel_residual: torch.Tensor
    speed_drift: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    segments: torch.Tensor
    evaluations: torch.Tensor
    budget: torch.Tensor
    reasons: list


def _pregeodesic(a, v):
    """``f = a − (⟨v, a⟩ / ‖v‖²) v``: the geodesic acceleration less its Euclidean component along
    the velocity. A curve with ``γ'' = f(γ, γ')`` keeps its Euclidean speed and is a geodesic up
    to reparametrisation (``γ'' = a + μ γ'``)."""
    vv = (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return a - ((v * a).sum(-1, keepdim=True) / vv) * v


def _pregeodesic_velocity_jacobian(a, av, v):
    """``∂f/∂v`` of ``f = a − s v``, ``s = ⟨v, a⟩ / ‖v‖²``, from ``a (P, d)`` and its velocity
    Jacobian ``av (P, d, d)``: ``Av − v ⊗ ∇s − s I``, ``∇s = (a + Avᵀv − 2 s v) / ‖v‖²``."""
    vv = (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    sc = (v * a).sum(-1, keepdim=True) / vv
    grad = (a + (av.transpose(1, 2) @ v.unsqueeze(-1)).squeeze(-1) - 2.0 * sc * v) / vv
    eye = torch.eye(v.shape[1], dtype=v.dtype, device=v.device)
    return av - v.unsqueeze(-1) * grad.unsqueeze(-2) - sc.unsqueeze(-1) * eye


def _accelerations(metric, acc, mfn, y, yp, jac: bool):
    """The pregeodesic right-hand side ``f`` at ``y, yp (P, d)``, and with ``jac`` its Jacobians
    ``Jz, Jv (P, d, d)`` (``[.., i, j] = ∂f_i/∂y_j``, ``∂f_i/∂y'_j``): for embedded metrics ``Jv``
    exact from one mixed jet and ``Jz`` by forward differences (``d + 1`` jets a point); otherwise
    both by forward differences (``2d + 1``)."""
    P, d = y.shape
    if not jac:
        a, _ = _second_order(metric, acc, mfn, y, yp)
        return _pregeodesic(a, yp), None, None
    eps = float(torch.finfo(y.dtype).eps) ** 0.5
    hz = eps * (1.0 + y.abs().amax(-1, keepdim=True))
    E = torch.eye(d, dtype=y.dtype, device=y.device)[:, None, :]  # (d, 1, d)
    if metric.is_embedded:
        Vz = yp.repeat(d, 1)
        g, _, av = _jets_with_velocity_jacobian(metric, torch.cat([y, (y[None] + hz[None] * E).reshape(-1, d)], 0),
                                                torch.cat([yp, Vz], 0), P)
        a = _pregeodesic(g[:P], yp)
        Jz = ((_pregeodesic(g[P:], Vz).reshape(d, P, d) - a[None]) / hz[None]).permute(1, 2, 0)
        return a, Jz, _pregeodesic_velocity_jacobian(g[:P], av, yp)
    hv = eps * (1.0 + yp.abs().amax(-1, keepdim=True))
    Ys = torch.cat([y, (y[None] + hz[None] * E).reshape(-1, d), y[None].expand(d, -1, -1).reshape(-1, d)], 0)
    Vs = torch.cat([yp, yp[None].expand(d, -1, -1).reshape(-1, d), (yp[None] + hv[None] * E).reshape(-1, d)], 0)
    g, _ = _second_order(metric, acc, mfn, Ys, Vs)
    g = _pregeodesic(g, Vs)
    a = g[:P]
    gp = g[P:].reshape(2 * d, P, d)
    Jz = ((gp[:d] - a[None]) / hz[None]).permute(1, 2, 0)
    Jv = ((gp[d:] - a[None]) / hv[None]).permute(1, 2, 0)
    return a, Jz, Jv


class _Batch:
    """Pairs on meshes of the same number of segments ``S``: ``tau (n, S+1)``, mesh states
    ``g, p (n, S+1, d)``, stage accelerations ``A (n, S, q, d)``."""

    def __init__(self, tau, g, p, A):
        self.tau, self.g, self.p, self.A = tau, g, p, A

    def stage_points(self, K):
        h = self.tau[:, 1:] - self.tau[:, :-1]
        gst = (self.g[:, :-1, None] + (K["c"] * h[..., None])[..., None] * self.p[:, :-1, None]
               + (h * h)[..., None, None] * torch.einsum("ij,nsjd->nsid", K["abar"], self.A))
        pst = self.p[:, :-1, None] + h[..., None, None] * torch.einsum("ij,nsjd->nsid", K["a"], self.A)
        return h, gst, pst


def _system(metric, acc, mfn, st, z1, K, jac=True):
    """Residuals of the collocation system of the batch ``st`` (endpoints ``z1``), its merit (the
    largest scaled residual relative to the curve's Euclidean length; ``l2``: the 2-norm) and, with
    ``jac``, the Jacobian blocks of the accelerations at the stage points."""
    S1, d = st.g.shape[1:]
    S, q = S1 - 1, K["c"].shape[0]
    dt = st.g.dtype
    h, gst, pst = st.stage_points(K)
    k = gst.shape[0]
    a, Jz, Jv = _accelerations(metric, acc, mfn, gst.reshape(-1, d), pst.reshape(-1, d), jac)
    a = a.reshape(k, S, q, d)
    Fst = st.A - a
    gend = st.g[:, :-1] + h[..., None] * st.p[:, :-1] + (h * h)[..., None] * torch.einsum("j,nsjd->nsd", K["bbar"], st.A)
    pend = st.p[:, :-1] + h[..., None] * torch.einsum("j,nsjd->nsd", K["b"], st.A)
    Fc = torch.cat([st.g[:, 1:] - gend, st.p[:, 1:] - pend], -1)  # (k, S, 2d)
    scale = (st.g[:, 1:] - st.g[:, :-1]).norm(dim=-1).sum(1).clamp_min(torch.finfo(dt).tiny)
    res = torch.cat([((h * h)[..., None, None] * Fst).reshape(k, -1), Fc[..., :d].reshape(k, -1),
                     (h[..., None] * Fc[..., d:]).reshape(k, -1), st.g[:, -1] - z1], 1)
    merit = res.abs().amax(1) / scale
    merit = torch.where(torch.isfinite(merit), merit, torch.full_like(merit, float("inf")))
    l2 = res.norm(dim=1) / scale
    l2 = torch.where(torch.isfinite(l2), l2, torch.full_like(l2, float("inf")))
    out = dict(h=h, Fst=Fst, Fc=Fc, merit=merit, l2=l2)
    if jac:
        out.update(Jz=Jz.reshape(k, S, q, d, d), Jv=Jv.reshape(k, S, q, d, d))
    return out



def _step(st, ev, z1, K, mu=None):
    """The Newton correction ``(δg, δp, δA)`` (condensed; see the module docstring)."""
    S1, d = st.g.shape[1:]
    S, q = S1 - 1, K["c"].shape[0]
    dt, dev = st.g.dtype, st.g.device
    I = torch.eye(d, dtype=dt, device=dev)
    h, Jz, Jv = ev["h"], ev["Jz"], ev["Jv"]
    k = h.shape[0]
    hh = h[..., None, None, None, None]  # (k, S, 1, 1, 1, 1)
    # block (i, j) of the stage system: δ_ij I − h² φ_j(c_i) Jz_i − h ψ_j(c_i) Jv_i
    Km = (torch.eye(q * d, dtype=dt, device=dev)
          - (hh * hh * torch.einsum("ij,nsiab->nsiajb", K["abar"], Jz)).reshape(k, S, q * d, q * d)
          - (hh * torch.einsum("ij,nsiab->nsiajb", K["a"], Jv)).reshape(k, S, q * d, q * d))
    if mu is not None:  # (damped stage blocks, see _newton's damping)
        Km = Km + mu[:, None, None, None] * torch.eye(q * d, dtype=dt, device=dev)
    P = torch.cat([Jz, (K["c"][None, None, :, None, None] * h[..., None, None, None]) * Jz + Jv], -1)  # (k,S,q,d,2d)
    rhs = torch.cat([-ev["Fst"].reshape(k, S, q * d, 1), P.reshape(k, S, q * d, 2 * d)], -1)
    X = torch.linalg.solve(Km, rhs)
    alpha, Bm = X[..., 0], X[..., 1:]  # δA = α + B δY_s
    W = torch.cat([torch.einsum("j,ab->jab", K["bbar"], I)[None, None] * (h * h)[..., None, None, None],
                   torch.einsum("j,ab->jab", K["b"], I)[None, None] * h[..., None, None, None]], -2)  # (k,S,q,2d,d)
    W = W.permute(0, 1, 3, 2, 4).reshape(k, S, 2 * d, q * d)
    T = torch.eye(2 * d, dtype=dt, device=dev).repeat(k, S, 1, 1)
    T[..., :d, d:] = h[..., None, None] * I
    G = T + W @ Bm
    gv = (W @ alpha.unsqueeze(-1)).squeeze(-1) - ev["Fc"]
    Phi = torch.zeros(k, 2 * d, d, dtype=dt, device=dev)
    Phi[:, d:] = I
    phi = torch.zeros(k, 2 * d, dtype=dt, device=dev)
    Phis, phis = [Phi], [phi]
    for s in range(S):
        Phi = G[:, s] @ Phi
        phi = (G[:, s] @ phi.unsqueeze(-1)).squeeze(-1) + gv[:, s]
        Phis.append(Phi)
        phis.append(phi)
    Phis, phis = torch.stack(Phis, 1), torch.stack(phis, 1)  # (k, S+1, 2d, d), (k, S+1, 2d)
    rhs0 = z1 - st.g[:, -1] - phis[:, -1, :d]
    ok = torch.isfinite(Phis[:, -1, :d]).flatten(1).all(1) & torch.isfinite(rhs0).all(1)
    Mend = torch.where(ok[:, None, None], Phis[:, -1, :d], I.expand(k, d, d))
    dp0, info = torch.linalg.solve_ex(Mend, torch.where(ok[:, None], rhs0, torch.zeros_like(rhs0)))
    ok &= info == 0
    dY = (Phis @ dp0[:, None, :, None]).squeeze(-1) + phis  # (k, S+1, 2d)
    # the forward recursion is single shooting through the linearised flow: where that flow grows
    # fast (strong variance gradients; 10-D latents) its products lose every digit, and the step is
    # solved by a stabilised march through the block-bidiagonal system instead
    grow = Phis.abs().flatten(1).amax(1)
    redo = torch.nonzero(~ok | ~(grow <= _GROWTH)).reshape(-1)
    if redo.numel():
        dYr, okr = _bidiagonal_solve(G[redo], gv[redo], z1[redo] - st.g[redo, -1])
        dY[redo] = torch.where(okr[:, None, None], dYr, dY[redo])
        ok[redo] = okr
    dA = alpha + (Bm @ dY[:, :-1, :, None]).squeeze(-1)
    ok &= torch.isfinite(dY).flatten(1).all(1) & torch.isfinite(dA).flatten(1).all(1)
    return dY[..., :d], dY[..., d:], dA.reshape(k, S, q, d), ok



# The line search of the piecewise Newton iteration (see _newton). Measured on the piecewise calls
# of two digits k-means fits ({0,1,2} and {3,4,7}, float32, tol 1e-2; 709 pairs, replayed): halving
# from a full step every time and stopping below 1/64 certified 518 pairs with 1.79M evaluations;
# starting each Newton step at twice the last accepted length, 523 with 1.44M; with the parabolic
# shortening too, 509 with 1.00M at 1/64, 534 with 1.46M at 1/512 (528 / 1.27M at 1/200, 542 /
# 1.93M at 1/5000). In the fits themselves the certified final distances went 96.1 -> 96.5 % and
# stayed at 98.0 %, with 13 % / 17 % fewer geodesic evaluations (benchmarks/RESULTS.md, session 20)
_LAMBDA_MIN = 1.0 / 512

# the damped retries of a pair whose Newton line search stalled (see _newton's damping): first
# shifts of 0, then (for pairs still not solved) 1. On 20 10-D digits-VAE pairs with a 10 s budget,
# 19 were certified with the first retry alone and 20 with the second (with 1 alone, 20 too, but
# the ring pair of the tests from the straight line then stays at a residual of 0.04; session 21)
_MU0S, _MU_DOWN, _MU_UP, _MU_MIN, _MU_MAX = (0.0, 1.0), 0.3, 4.0, 1e-3, 1e8

_GROWTH = 1e6  # largest fundamental-matrix entry the condensed recursion is trusted with


def _bidiagonal_solve(G, gv, end):
    """Mesh-state corrections ``δY_s = (δg_s, δp_s)`` ``(k, S+1, 2d)`` from the condensed
    continuity conditions ``δY_{s+1} = G_s δY_s + gv_s`` (``G (k, S, 2d, 2d)``, ``gv (k, S, 2d)``),
    ``δg_0 = 0`` and ``δg_S = end``, by a stabilised march (Conte's orthonormalisation; Ascher,
    Mattheij & Russell, *Numerical Solution of Boundary Value Problems for ODEs*, §6.4): the
    solutions are kept as ``δY_s = U_s c_s + u_s`` with ``U_s`` orthonormal ``(2d, d)`` and ``u_s ⊥ U_s``,
    re-orthonormalised at every mesh point, so that no product of the ``G_s`` is formed; then
    ``c_S`` from the end condition and ``c_s = R_s⁻¹(c_{s+1} − w_s)`` backwards. Stable where the
    forward recursion ``Φ_{s+1} = G_s Φ_s`` is not (fast-growing linearised flows). Returns ``(δY, ok)``."""
    k, S, d2 = gv.shape
    d = d2 // 2
    dt, dev = G.dtype, G.device
    U = torch.zeros(k, d2, d, dtype=dt, device=dev)
    U[:, d:] = torch.eye(d, dtype=dt, device=dev)
    u = torch.zeros(k, d2, dtype=dt, device=dev)
    Us, us, Rs, ws = [U], [u], [], []
    for s_ in range(S):
        Q, R = torch.linalg.qr(G[:, s_] @ U)
        ut = (G[:, s_] @ u.unsqueeze(-1)).squeeze(-1) + gv[:, s_]
        w = (Q.transpose(1, 2) @ ut.unsqueeze(-1)).squeeze(-1)
        u = ut - (Q @ w.unsqueeze(-1)).squeeze(-1)
        U = Q
        Us.append(U), us.append(u), Rs.append(R), ws.append(w)
    M = U[:, :d]
    rhs = end - u[:, :d]
    ok = torch.isfinite(M).flatten(1).all(1) & torch.isfinite(rhs).all(1)
    c, info = torch.linalg.solve_ex(torch.where(ok[:, None, None], M, torch.eye(d, dtype=dt, device=dev).expand(k, d, d)),
                                    torch.where(ok[:, None], rhs, torch.zeros_like(rhs)))
    ok &= info == 0
    out = torch.zeros(k, S + 1, d2, dtype=dt, device=dev)
    out[:, S] = (Us[S] @ c.unsqueeze(-1)).squeeze(-1) + us[S]
    for s_ in range(S - 1, -1, -1):
        R = Rs[s_]
        diag = torch.diagonal(R, dim1=1, dim2=2).abs()
        ok &= (diag > 0).all(1)
        Rsafe = torch.where(ok[:, None, None], R, torch.eye(d, dtype=dt, device=dev).expand(k, d, d))
        c = torch.linalg.solve_triangular(Rsafe, (c - ws[s_]).unsqueeze(-1), upper=True).squeeze(-1)
        out[:, s_] = (Us[s_] @ c.unsqueeze(-1)).squeeze(-1) + us[s_]
    ok &= torch.isfinite(out).flatten(1).all(1)
    return out, ok


def _overruns(deadline, rate, points: int) -> bool:
    """Whether a Jacobian evaluation at ``points`` stage points, at ``rate`` seconds a point (the
    last one measured; ``None``: not yet), would end after the ``deadline``."""
    if deadline is None:
        return False
    return time.perf_counter() + (0.0 if rate.get("jac") is None else rate["jac"] * points) > deadline


def _newton(metric, acc, mfn, z0, z1, B, K, tol, max_iter, deadline, rate=None, jac0=None, damping=None):
    """Damped chord-Newton on the collocation system of the batch ``B`` (in place).

    The Jacobian (:func:`_accelerations`: ``d + 1`` jets per stage point for embedded metrics,
    ``2d + 1`` otherwise) is refreshed only
    after a rejected step or a step that cut the residual by less than 4; the other steps reuse it
    (chord steps, one evaluation per stage point; Kelley, *Solving Nonlinear Equations with
    Newton's Method*, SIAM 2003, §5.4). A step that does not lower the residual's 2-norm ``‖F‖`` is
    shortened to the minimiser of the parabola through ``‖F‖²`` at ``0`` (slope ``−2‖F‖²``, that of a
    Newton direction) and at the rejected length, kept within ``[0.1, 0.5]`` of it (Dennis &
    Schnabel, *Numerical Methods for Unconstrained Optimization and Nonlinear Equations*, SIAM
    1996, §6.3.2); a pair stops (stalled) once its step is below ``_LAMBDA_MIN``. A new Newton step
    starts at twice the length last accepted (at most 1): see ``_LAMBDA_MIN``.
    ``rate`` (a dict) keeps the measured seconds per stage point of a Jacobian evaluation: a
    refresh that would end after the ``deadline`` is not started (the pairs stop with ``budget``).
    ``jac0``: Jacobian blocks ``(Jz, Jv)`` ``(n, S, q, d, d)`` to start from instead of a fresh
    evaluation (a refined mesh's, from :func:`_interpolate_jacobians`): the first steps are then
    chord steps, and a fresh Jacobian follows as after any chord step that fails or is slow.
    ``damping``: ``None`` for the line search above; a number ``μ0`` for full steps with damped
    stage blocks instead (``δ_ij(1 + μ)I − …`` in :func:`_step`, ``μ`` from ``μ0``, ×4 after a
    rejected step and ×0.3 after an accepted one; a pair stalls once ``μ > 1e8``).
    Returns ``(converged, stalled, budget, iterations, evaluations, merit, (Jz, Jv))``, the last
    the Jacobian blocks the final steps used."""
    rate = {} if rate is None else rate
    n, S1, d = B.g.shape
    S, q = S1 - 1, K["c"].shape[0]
    dt, dev = z0.dtype, z0.device
    eps = float(torch.finfo(dt).eps)
    target = max(1e-3 * tol, 1e3 * eps)
    full, cheap = S * q * (d + 1 if metric.is_embedded else 2 * d + 1), S * q
    if jac0 is not None:
        ev = _system(metric, acc, mfn, B, z1, K, jac=False)
        ev["Jz"], ev["Jv"] = jac0
        evals = torch.full((n,), cheap, dtype=torch.long, device=dev)
        fresh0 = False
    else:
        t0 = time.perf_counter()
        ev = _system(metric, acc, mfn, B, z1, K, jac=True)
        rate["jac"] = (time.perf_counter() - t0) / (n * S * q)
        evals = torch.full((n,), full, dtype=torch.long, device=dev)
        fresh0 = True
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    merit, l2 = ev["merit"].clone(), ev["l2"].clone()
    # (on a refined mesh at least one step is taken: the mesh was refined because the curve fell
    # short of the certificate, and a residual already below the target (float32: 1e3·eps) does not
    # mean the refined system is solved to the certificate's accuracy)
    conv = (merit <= target) & fresh0
    dead = ~torch.isfinite(merit)
    budget = torch.zeros(n, dtype=torch.bool, device=dev)
    lam = torch.ones(n, dtype=dt, device=dev)
    lam_ok = torch.ones(n, dtype=dt, device=dev)  # the step length last accepted
    dg, dpp, dA = torch.zeros_like(B.g), torch.zeros_like(B.p), torch.zeros_like(B.A)
    need = torch.ones(n, dtype=torch.bool, device=dev)  # a new step from the current point
    fresh = torch.full((n,), fresh0, dtype=torch.bool, device=dev)  # the Jacobian is the current point's
    refresh = torch.zeros(n, dtype=torch.bool, device=dev)
    E = {k_: ev[k_].clone() for k_ in ("h", "Fst", "Fc", "Jz", "Jv")}
    mu = torch.full((n,), 0.0 if damping is None else float(damping), dtype=dt, device=dev)  # (the stage blocks' shift)
    for _ in range(int(max_iter)):
        act = torch.nonzero(~conv & ~dead).reshape(-1)
        if act.numel() == 0:
            break
        rf = act[refresh[act]]
        if _expired(deadline) or (rf.numel() and _overruns(deadline, rate, rf.numel() * S * q)):
            budget[act] = True
            break
        iters[act] += 1
        if rf.numel():
            t0 = time.perf_counter()
            e = _system(metric, acc, mfn, _Batch(B.tau[rf], B.g[rf], B.p[rf], B.A[rf]), z1[rf], K, jac=True)
            rate["jac"] = (time.perf_counter() - t0) / (rf.numel() * S * q)
            evals[rf] += full
            for k_ in E:
                E[k_][rf] = e[k_]
            fresh[rf], refresh[rf], need[rf] = True, False, True
        fr = act[need[act]]
        if fr.numel():
            sub = _Batch(B.tau[fr], B.g[fr], B.p[fr], B.A[fr])
            a1, a2, a3, ok = _step(sub, {k_: v[fr] for k_, v in E.items()}, z1[fr], K, mu=None if damping is None else mu[fr])
            dg[fr], dpp[fr], dA[fr] = a1, a2, a3
            dead[fr[~ok]] = True
            lam[fr] = (2.0 * lam_ok[fr]).clamp_max(1.0) if damping is None else 1.0
            need[fr] = False
        act = act[~dead[act]]
        if act.numel() == 0:
            break
        L = lam[act]
        trial = _Batch(B.tau[act], B.g[act] + L[:, None, None] * dg[act], B.p[act] + L[:, None, None] * dpp[act],
                       B.A[act] + L[:, None, None, None] * dA[act])
        et = _system(metric, acc, mfn, trial, z1[act], K, jac=False)
        evals[act] += cheap
        better = et["l2"] < (1 - 1e-4 * L) * l2[act]
        ar = act[better]
        if ar.numel():
            B.g[ar], B.p[ar], B.A[ar] = trial.g[better], trial.p[better], trial.A[better]
            for k_ in ("h", "Fst", "Fc"):
                E[k_][ar] = et[k_][better]
            slow = et["l2"][better] > 0.25 * l2[ar]
            merit[ar], l2[ar] = et["merit"][better], et["l2"][better]
            fresh[ar] = False
            refresh[ar] = slow
            lam_ok[ar] = L[better]
            need[ar] = True
        rj = act[~better]
        stale = rj[~fresh[rj]]
        refresh[stale] = True  # a chord step failed: a fresh Jacobian and a full step next
        rn = ~better & fresh[act]  # a Newton step (fresh Jacobian) failed
        if damping is not None:
            # a rejected step is recomputed with the stage blocks shifted further, an accepted one
            # lowers the shift (full steps throughout)
            mu[ar] = mu[ar] * _MU_DOWN
            mu[act[rn]] = mu[act[rn]].clamp_min(_MU_MIN) * _MU_UP
            need[act[rn]] = True
            conv |= merit <= target
            dead |= (mu > _MU_MAX) & ~conv
        else:
            # a failed Newton step is shortened (the parabola's minimiser, see _shorter_step)
            if bool(rn.any()):
                lam[act[rn]] = _shorter_step(l2[act][rn] ** 2, et["l2"][rn] ** 2, L[rn])
            conv |= merit <= target
            dead |= (lam < _LAMBDA_MIN) & ~conv
    stalled = dead & torch.isfinite(merit)
    return conv, stalled, budget, iters, evals, merit, (E["Jz"], E["Jv"])


def _shorter_step(f0, fl, L):
    """The next length of a rejected Newton step of length ``L``: the minimiser of the parabola
    through ``f(0) = f0`` with slope ``−2·f0`` (``f = ‖F‖²`` along a Newton direction) and
    ``f(L) = fl``, ``t* = f0·L² / (fl − f0 + 2·f0·L)``, kept within ``[0.1, 0.5]·L`` (``0.5·L`` where
    ``fl`` is not finite or the parabola has no minimum)."""
    den = fl - f0 + 2.0 * f0 * L
    ts = torch.where(torch.isfinite(fl) & (den > 0), f0 * L * L / den.clamp_min(torch.finfo(L.dtype).tiny), 0.5 * L)
    return torch.minimum(torch.maximum(ts, 0.1 * L), 0.5 * L)


def _check(metric, acc, mfn, z0, z1, B, K):
    """Certificate quantities of the batch ``B`` (pregeodesics at constant Euclidean speed) after
    reparametrisation by metric arclength ``τ``: length, residuals, drift, per-segment defect
    indicators ``(n, S)`` and the output knots (in ``τ``)."""
    n, S1, d = B.g.shape
    S = S1 - 1
    q1 = K["cc"].shape[0]
    dt, dev = z0.dtype, z0.device
    tiny = torch.finfo(dt).tiny
    h = B.tau[:, 1:] - B.tau[:, :-1]
    tc = B.tau[:, :-1, None] + h[..., None] * K["cc"]  # (n, S, q+1) check nodes
    t_all = torch.cat([tc.reshape(n, -1), B.tau], 1)  # check nodes, then the mesh points
    y, yp, ypp = _evaluate(B.tau, B.g, B.p, B.A, t_all, K["Lc"])
    nc = S * q1
    y[:, -1], y[:, nc] = z1, z0  # (the last mesh point is z1, the first z0, to rounding)
    a, norm = _second_order(metric, acc, mfn, y.reshape(-1, d), yp.reshape(-1, d))
    a = a.reshape(n, -1, d)
    # δ = γ'' − a; its metric-normal part is what reparametrisation cannot remove: at metric
    # speed σ = ‖γ'‖_M / L (dτ/dt) the curve's geodesic residual in τ is δ_n / σ²
    vf, df = yp.reshape(-1, d), (ypp - a).reshape(-1, d)
    sp2 = norm(vf) ** 2
    gvd = (norm(vf + df) ** 2 - norm(vf - df) ** 2) / 4
    dn = df - (gvd / sp2.clamp_min(tiny))[:, None] * vf
    sp = sp2.sqrt().reshape(n, -1)
    spc = sp[:, :nc].reshape(n, S, q1)
    seg_len = (h[..., None] * K["wc"] * spc).sum(2)  # check-rule quadrature per segment
    L = seg_len.sum(1)
    Lc = L.clamp_min(tiny)
    sigma = sp / Lc[:, None]
    R = dn.reshape(n, -1, d) / (sigma * sigma).clamp_min(tiny)[..., None]
    tau_m = torch.cat([torch.zeros(n, 1, dtype=dt, device=dev), seg_len.cumsum(1)], 1) / Lc[:, None]
    tau_m[:, -1] = 1.0
    tau_c = tau_m[:, :-1, None] + h[..., None] * torch.einsum("kj,nsk->nsj", K["Icc"], spc) / Lc[:, None, None]
    # integral-form residual in τ: δγ(τ) = −R1(τ) + τ R0(τ) + τ (C1 − C0) at the mesh points, with
    # R0 = ∫₀^τ R dτ', R1 = ∫₀^τ τ' R dτ' (dτ' = σ dt; segment by segment with the check rule)
    wr = (h[..., None] * K["wc"] * sigma[:, :nc].reshape(n, S, q1))[..., None] * R[:, :nc].reshape(n, S, q1, d)
    seg0 = wr.sum(2)
    seg1 = (tau_c[..., None] * wr).sum(2)
    R0 = torch.cat([torch.zeros(n, 1, d, dtype=dt, device=dev), seg0.cumsum(1)], 1)
    R1 = torch.cat([torch.zeros(n, 1, d, dtype=dt, device=dev), seg1.cumsum(1)], 1)
    tm = tau_m[..., None]
    dgam = -R1 + tm * R0 + tm * (R1[:, -1:] - R0[:, -1:])
    if norm.jac is not None:
        jm = norm.jac.reshape(n, -1, *norm.jac.shape[1:])[:, nc:]
        mn = _Norm(jac=jm.reshape(-1, *jm.shape[2:]), ridge=norm.ridge)
    else:
        mm = norm.m.reshape(n, -1, d, d)[:, nc:]
        mn = _Norm(m=mm.reshape(-1, d, d))
    rel = mn(dgam.reshape(-1, d)).reshape(n, S + 1).amax(1) / Lc
    resid = dgam.norm(dim=-1).amax(1)
    # the parametrisation's own conserved quantity, not enforced between the nodes: the
    # Euclidean speed (the analogue of the metric speed drift of :func:`.spectral.collocate`)
    spe = yp.norm(dim=-1)
    LE = (h[..., None] * K["wc"] * spe[:, :nc].reshape(n, S, q1)).sum((1, 2))
    drift = (spe - LE[:, None]).abs().amax(1) / LE.clamp_min(tiny)
    # per-segment indicator: the segment's share of ∫‖R‖_M dτ relative to L
    rn = norm(dn).reshape(n, -1)[:, :nc].reshape(n, S, q1) / sigma[:, :nc].reshape(n, S, q1).clamp_min(tiny)
    eta = h * rn.amax(2) / Lc[:, None]
    fin = torch.isfinite(L) & torch.isfinite(rel) & torch.isfinite(drift) & (L > 0)
    rel = torch.where(fin, rel, torch.full_like(rel, float("inf")))
    drift = torch.where(fin, drift, torch.full_like(drift, float("inf")))
    # knots in τ order: each mesh point, then its segment's check nodes; then z1. Velocities
    # γ'/σ, accelerations a(γ, γ'/σ) = a(γ, γ')/σ² (the geodesic's own, quadratic in γ')
    sg = sigma.clamp_min(tiny)[..., None]
    vt, at = yp / sg, a / (sg * sg)

    def order(x):
        return torch.cat([x[:, nc:-1, None], x[:, :nc].reshape(n, S, q1, d)], 2).reshape(n, -1, d)

    kt = torch.cat([torch.cat([tau_m[:, :-1, None], tau_c], 2).reshape(n, -1), tau_m[:, -1:]], 1)
    knots = (kt, torch.cat([order(y), y[:, -1:]], 1), torch.cat([order(vt), vt[:, -1:]], 1), torch.cat([order(at), at[:, -1:]], 1))
    return dict(L=L, rel=rel, drift=drift, resid=resid, eta=eta, v0=vt[:, nc].clone(), knots=knots, evals=S * q1 + S + 1)


def _remesh(B, eta, S_new, K):
    """New meshes of ``S_new`` segments equidistributing the defect density of ``eta (n, S)``,
    with the curves of ``B`` evaluated on them."""
    n, S1, d = B.g.shape
    q = K["c"].shape[0]
    dt, dev = B.g.dtype, B.g.device
    h = B.tau[:, 1:] - B.tau[:, :-1]
    rho = eta.clamp_min(0).nan_to_num(0.0) ** (1.0 / (q + 1)) / h
    mean = (rho * h).sum(1, keepdim=True)
    rho = torch.where(mean > 0, torch.maximum(rho, 0.1 * mean), torch.ones_like(rho))  # (never starve a segment)
    cdf = torch.cat([torch.zeros(n, 1, dtype=dt, device=dev), (rho * h).cumsum(1)], 1)
    cdf = cdf / cdf[:, -1:]
    levels = torch.linspace(0, 1, S_new + 1, dtype=dt, device=dev)[None].expand(n, -1).contiguous()
    j = (torch.searchsorted(cdf.contiguous(), levels, right=True) - 1).clamp(0, S1 - 2)
    c0, c1 = cdf.gather(1, j), cdf.gather(1, j + 1)
    t0, t1 = B.tau.gather(1, j), B.tau.gather(1, j + 1)
    tau = t0 + (levels - c0) / (c1 - c0).clamp_min(torch.finfo(dt).tiny) * (t1 - t0)
    tau[:, 0], tau[:, -1] = 0.0, 1.0
    tau = torch.cummax(tau, 1).values
    hn = tau[:, 1:] - tau[:, :-1]
    ts = (tau[:, :-1, None] + hn[..., None] * K["c"]).reshape(n, -1)
    y, yp, _ = _evaluate(B.tau, B.g, B.p, B.A, tau, K["Lc"])
    _, _, A = _evaluate(B.tau, B.g, B.p, B.A, ts, K["Lc"])
    y[:, 0], y[:, -1] = B.g[:, 0], B.g[:, -1]
    return _Batch(tau, y, yp, A.reshape(n, S_new, q, d))


# Kinks (latentgeo._autodiff._trace.op_kink): where a unit's input crosses a C¹ kink along the
# curve, the geodesic equation's right-hand side jumps, and a mesh point there keeps every segment
# smooth (see _with_kinks); at a C⁰ kink (ReLU) the metric itself jumps and the geodesic refracts,
# which is not modelled (connecting.py bounds such pairs).
def _level_points(k, c0: bool):
    """The kink points of an :func:`op_kink` entry of the wanted level (C⁰ with ``c0``, else C¹), or ``()``."""
    return k[1] if k is not None and k[1] is not None and (k[0] == "C0") == bool(c0) else ()


def _kink_points(mod, c0=False):
    """The inputs at which the module ``mod`` has a C¹ kink (with ``c0``: a C⁰ kink), or ``()``."""
    return _level_points(op_kink("call_module", None, (), {}, mod), c0)


def _node_kinks(gm, nd, c0=False):
    """The kink points of an fx node of ``gm`` (see :func:`_kink_points`), or ``()``."""
    mod = gm.get_submodule(nd.target) if nd.op == "call_module" else None
    return _level_points(op_kink(nd.op, nd.target, nd.args, nd.kwargs, mod), c0)


class _KinkRecorder(torch.fx.Interpreter):
    """Runs a traced decoder callable, recording the inputs of its kinked nodes minus their kink points."""

    def __init__(self, gm, kinks, out):
        super().__init__(gm)
        self.kinks, self.out = kinks, out

    def run_node(self, n):
        pts = self.kinks.get(n.name)
        if pts:
            args, _ = self.fetch_args_kwargs_from_env(n)
            x = args[0].detach().reshape(args[0].shape[0], -1)
            self.out.extend(x - c for c in pts)
        return super().run_node(n)


_KINK_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _kink_program(root, c0: bool):
    """``(fx graph module or None, kinks)`` of one decoder callable's kinked activations, or ``None``
    if it has none; cached per module and structure (an fx trace costs ~3 ms, and every geodesic
    call asks)."""
    mods = list(root.modules())
    key = (c0, tuple((type(m), m.training, _kink_points(m, c0)) for m in mods))
    per = _KINK_PROGRAMS.setdefault(root, {})
    if key not in per:
        gm = None
        # (torch.nn's own modules make no functional calls to kinked activations: their kinks are
        # their modules', hooked without a trace; a working copy of such a decoder is not retraced)
        if not all(type(m).__module__.startswith("torch.nn.") for m in mods):
            try:
                gm = torch.fx.symbolic_trace(root)
            except Exception:  # noqa: BLE001 - untraceable: its modules are hooked instead
                gm = None
        if gm is not None:
            kinks = {nd.name: pts for nd in gm.graph.nodes for pts in [_node_kinks(gm, nd, c0)] if pts}
            per[key] = (gm, kinks) if kinks else None
        else:
            hooked = [(m, pts) for m in mods for pts in [_kink_points(m, c0)] if pts]
            per[key] = (None, hooked) if hooked else None
    return per[key]


def _kink_fn(metric, c0=False):
    """``y (M, d) -> s (M, U)``: the inputs of the decoder's C¹-kinked activations (with ``c0``: its
    C⁰-kinked ones; modules and functional calls, from each callable's fx trace; by forward
    pre-hooks on the modules of a callable that cannot be traced) minus their kink points: a curve
    crosses a kink where a column changes sign. ``None`` if the decoder has none."""
    from .._autodiff import decoder_modules

    progs = []
    for root in decoder_modules(getattr(metric, "decoder", None)):
        prog = _kink_program(root, bool(c0))
        if prog is not None:
            progs.append((root, *prog))
    if not progs:
        return None

    def switching(y):
        vals = []

        def grab(mod, args, pts):
            x = args[0].detach().reshape(args[0].shape[0], -1)
            vals.extend(x - c for c in pts)

        for root, gm, kinks in progs:
            if gm is not None:
                _KinkRecorder(gm, kinks, vals).run(y)
                continue
            hooks = [m.register_forward_pre_hook(functools.partial(lambda mod, args, pts: grab(mod, args, pts), pts=pts))
                     for m, pts in kinks]
            try:
                root(y)
            finally:
                for hk in hooks:
                    hk.remove()
        return torch.cat(vals, 1) if vals else y.new_zeros(y.shape[0], 0)

    return switching


def crosses_kinks(kfn, curves: torch.Tensor) -> torch.Tensor:
    """``(n,)`` whether each curve sampled as ``(n, T, d)`` crosses a kink of ``kfn`` (a column changes sign)."""
    n, T, d = curves.shape
    s = kfn(curves.reshape(-1, d)).reshape(n, T, -1)
    return (s[:, :-1] * s[:, 1:] < 0).flatten(1).any(1)


_KINK_SAMPLES = 32  # sub-intervals per segment in which sign changes of the switching values are sought
_KINK_MERGE = 1e-7  # kinks closer than this (in τ) to a mesh point or to each other are not added
_KINK_RELOCATE_BELOW, _KINK_RELOCATIONS = 1e-2, 4  # Newton failures re-solved with realigned kinks
_KINK_OFFSET = 1.0  # a certified curve's kinks lie within _KINK_OFFSET·tol (in τ) of mesh points


def _locate_kinks(B, kfn, K):
    """The kinks along the curves of ``B``: ``(pair index, τ)`` of every sign change of a column of
    ``kfn``, located by linear interpolation between ``_KINK_SAMPLES`` samples per segment, then
    one regula falsi step."""
    n, S1, d = B.g.shape
    m = _KINK_SAMPLES
    dt, dev = B.g.dtype, B.g.device
    h = B.tau[:, 1:] - B.tau[:, :-1]
    u = torch.arange(m, dtype=dt, device=dev) / m
    t = torch.cat([(B.tau[:, :-1, None] + h[..., None] * u).reshape(n, -1), B.tau[:, -1:]], 1)  # (n, S·m + 1)
    M = t.shape[1]
    y, _, _ = _evaluate(B.tau, B.g, B.p, B.A, t, K["Lc"])
    sv = kfn(y.reshape(-1, d)).reshape(n, M, -1)
    i, jm, uu = torch.nonzero(sv[:, :-1] * sv[:, 1:] < 0, as_tuple=True)
    if i.numel() == 0:
        return i, t.new_zeros(0)
    ta, tb = t[i, jm], t[i, jm + 1]
    sa, sb = sv[i, jm, uu], sv[i, jm + 1, uu]
    tr = ta + (tb - ta) * sa / (sa - sb)
    # one regula falsi step: the switching value at the estimate, then the bracket that keeps the sign change
    yr, _, _ = _evaluate(B.tau[i], B.g[i], B.p[i], B.A[i], tr[:, None], K["Lc"])
    sr = kfn(yr.reshape(-1, d))[torch.arange(i.numel(), device=dev), uu]
    left = sa * sr < 0
    ta2, sa2 = torch.where(left, ta, tr), torch.where(left, sa, sr)
    tb2, sb2 = torch.where(left, tr, tb), torch.where(left, sr, sb)
    den = sa2 - sb2
    tr = torch.where(den != 0, ta2 + (tb2 - ta2) * sa2 / torch.where(den != 0, den, torch.ones_like(den)), tr)
    return i, tr


def _kink_offsets(B, kfn, K):
    """``(n,)`` the largest distance (in ``τ``) from a kink along each curve of ``B`` to its nearest
    mesh point (0 where there are none): a kink inside a segment is a jump of the equations there
    that the certificate's check nodes may straddle unseen."""
    n = B.g.shape[0]
    out = B.g.new_zeros(n)
    i, tr = _locate_kinks(B, kfn, K)
    if i.numel():
        tau = B.tau[i]
        j = (torch.searchsorted(tau.contiguous(), tr[:, None].contiguous()) - 1).clamp(0, tau.shape[1] - 2)
        dist = torch.minimum((tr - tau.gather(1, j)[:, 0]).abs(), (tau.gather(1, j + 1)[:, 0] - tr).abs())
        out.scatter_reduce_(0, i, dist, reduce="amax")
    return out


def _with_kinks(B, kfn, K):
    """The curves of ``B`` on meshes that also have a point at every kink along them
    (:func:`_locate_kinks`). Pairs with fewer kinks get their longest segments halved, so that the
    batch keeps one segment count. Returns ``(batch, kinks found)``."""
    n, S1, d = B.g.shape
    S, q = S1 - 1, K["c"].shape[0]
    i, tr = _locate_kinks(B, kfn, K)
    if i.numel() == 0:
        return B, 0
    taus = []
    for k in range(n):
        pts = torch.cat([B.tau[k], tr[i == k]]).sort().values
        keep = torch.ones_like(pts, dtype=torch.bool)
        keep[1:] = (pts[1:] - pts[:-1]) > _KINK_MERGE
        keep[-1] = True
        pts = pts[keep]
        pts[-1] = 1.0
        taus.append(pts)
    found = sum(x.numel() for x in taus) - n * S1
    Sk = max(x.numel() for x in taus) - 1
    for k in range(n):  # halve the longest segments until every pair has Sk
        pts = taus[k]
        while pts.numel() - 1 < Sk:
            hk = pts[1:] - pts[:-1]
            extra = min(Sk - (pts.numel() - 1), hk.numel())
            top = hk.topk(extra).indices
            pts = torch.cat([pts, pts[top] + 0.5 * hk[top]]).sort().values
        taus[k] = pts
    tau = torch.stack(taus)
    hn = tau[:, 1:] - tau[:, :-1]
    ts = (tau[:, :-1, None] + hn[..., None] * K["c"]).reshape(n, -1)
    yn, ypn, _ = _evaluate(B.tau, B.g, B.p, B.A, tau, K["Lc"])
    _, _, An = _evaluate(B.tau, B.g, B.p, B.A, ts, K["Lc"])
    yn[:, 0], yn[:, -1] = B.g[:, 0], B.g[:, -1]
    return _Batch(tau, yn, ypn, An.reshape(n, Sk, q, d)), found


def _interpolate_jacobians(old, J, new, K):
    """The Jacobian blocks ``J = (Jz, Jv)`` ``(n, S, q, d, d)`` at the stage points of the batch
    ``old``, interpolated along the curve (in ``τ``, by each old segment's Lagrange polynomials of its
    Gauss nodes) to the stage points of the batch ``new`` (the same curves on another mesh)."""
    n, S1 = old.tau.shape
    h = new.tau[:, 1:] - new.tau[:, :-1]
    ts = (new.tau[:, :-1, None] + h[..., None] * K["c"]).reshape(n, -1)
    j = (torch.searchsorted(old.tau.contiguous(), ts.contiguous(), right=True) - 1).clamp(0, S1 - 2)
    ta = old.tau.gather(1, j)
    ho = old.tau.gather(1, j + 1) - ta
    u = (ts - ta) / ho.clamp_min(torch.finfo(ts.dtype).tiny)
    ell = _bases(u, K["Lc"])[0]  # (n, M, q)
    r = torch.arange(n, device=ts.device)[:, None]
    q = K["c"].shape[0]
    return tuple(torch.einsum("nmk,nmkab->nmab", ell, x[r, j]).reshape(n, -1, q, *x.shape[-2:]) for x in J)


def _from_series(z0, z1, series, S, K):
    """The batch of the Legendre-series curves ``series (n, K, d)``, reparametrised to constant
    Euclidean speed, on uniform ``S``-segment meshes."""
    series = _trim(series)
    n, _, d = series.shape
    q = K["c"].shape[0]
    dt, dev = z0.dtype, z0.device
    tiny = torch.finfo(dt).tiny
    tau1 = torch.linspace(0, 1, S + 1, dtype=dt, device=dev)
    us = torch.cat([tau1[None, :], (tau1[:-1, None] + (1.0 / S) * K["c"]).reshape(1, -1)], 1)  # mesh, then stages
    # t(u): the inverse of the cumulative chord length of a dense sampling (linear in between)
    T = 2049
    td = torch.linspace(0, 1, T, dtype=dt, device=dev)
    pts = torch.einsum("mk,nkd->nmd", legendre_basis(td, series.shape[1]), series)
    cum = torch.cat([torch.zeros(n, 1, dtype=dt, device=dev), (pts[:, 1:] - pts[:, :-1]).norm(dim=-1).cumsum(1)], 1)
    LE = cum[:, -1:].clamp_min(tiny)
    cum = cum / LE
    u = us.expand(n, -1).contiguous()
    j = (torch.searchsorted(cum.contiguous(), u, right=True) - 1).clamp(0, T - 2)
    c0, c1 = cum.gather(1, j), cum.gather(1, j + 1)
    t = (td[j] + (u - c0) / (c1 - c0).clamp_min(tiny) * (1.0 / (T - 1))).clamp(0, 1)
    t[:, 0], t[:, S] = 0.0, 1.0
    y, y1, y2 = (_eval_rows(series, t, k) for k in (0, 1, 2))
    sp = y1.norm(dim=-1, keepdim=True).clamp_min(tiny)
    p = y1 * (LE[..., None] / sp)
    A = (y2 - ((y1 * y2).sum(-1, keepdim=True) / (sp * sp)) * y1) * (LE[..., None] / sp) ** 2
    g, p, A = y[:, : S + 1].clone(), p[:, : S + 1], A[:, S + 1 :]
    g[:, 0], g[:, -1] = z0, z1
    return _Batch(tau1[None].expand(n, -1).contiguous(), g, p.contiguous(), A.reshape(n, S, q, d))


def path_series(curves: torch.Tensor, K: int = 33) -> torch.Tensor:
    """A Legendre series ``(n, K, d)`` (in ``x = 2u − 1``) of the paths sampled densely by
    ``curves (n, T, d)``, parametrised by the fraction ``u`` of their Euclidean length: the
    samples are interpolated linearly at ``2K − 1`` Chebyshev–Lobatto values of ``u`` and fitted
    by least squares. For a warm start from a certified piecewise solution (whose own time,
    metric arclength, crosses the sharp features of RBF variances at very uneven Euclidean
    speeds): :func:`collocate_piecewise` reparametrises its start to constant Euclidean speed
    anyway, and the path in that parametrisation is smooth. The end points are kept exactly.

    Example:
        >>> import torch
        >>> t = torch.linspace(0, 1, 257, dtype=torch.float64)
        >>> arc = torch.stack([torch.cos(t ** 3 * torch.pi / 2), torch.sin(t ** 3 * torch.pi / 2)], -1)[None]
        >>> from latentgeo.geodesics.spectral import _eval_series
        >>> mid = _eval_series(path_series(arc), torch.tensor([0.5], dtype=torch.float64))[0, 0]
        >>> bool(torch.allclose(mid, torch.tensor([2 ** -0.5, 2 ** -0.5], dtype=torch.float64), atol=1e-4))
        True
    """
    n, T, d = curves.shape
    dt, dev = curves.dtype, curves.device
    tiny = torch.finfo(dt).tiny
    M = 2 * K - 1
    u = (0.5 - 0.5 * torch.cos(torch.pi * torch.arange(M, dtype=dt, device=dev) / (M - 1))).contiguous()
    seg = (curves[:, 1:] - curves[:, :-1]).norm(dim=-1)
    cum = torch.cat([curves.new_zeros(n, 1), seg.cumsum(1)], 1)
    cum = (cum / cum[:, -1:].clamp_min(tiny)).contiguous()
    cum[:, -1] = 1.0
    uq = u.expand(n, -1).contiguous()
    j = (torch.searchsorted(cum, uq, right=True) - 1).clamp(0, T - 2)
    c0, c1 = cum.gather(1, j), cum.gather(1, j + 1)
    w = ((uq - c0) / (c1 - c0).clamp_min(tiny)).clamp(0, 1)[..., None]
    jd = j[..., None].expand(-1, -1, d)
    pts = curves.gather(1, jd) * (1 - w) + curves.gather(1, jd + 1) * w
    pts[:, 0], pts[:, -1] = curves[:, 0], curves[:, -1]
    B = legendre_basis(u, K)  # (M, K)
    coef = torch.linalg.pinv(B) @ pts  # (n, K, d)
    # the end points exactly: spread the end mismatch as the line (P0 ± P1)/2 adds it
    e0 = curves[:, 0] - (B[0] @ coef)
    e1 = curves[:, -1] - (B[-1] @ coef)
    coef[:, 0] += 0.5 * (e0 + e1)
    coef[:, 1] += 0.5 * (e1 - e0)
    return coef


def _eval_rows(series, t, derivative):
    """Legendre series ``(n, K, d)`` at per-pair times ``t (n, M)``."""
    n, M = t.shape
    B = legendre_basis(t.reshape(-1), series.shape[1], derivative).reshape(n, M, -1)
    return torch.einsum("nmk,nkd->nmd", B, series)


def collocate_piecewise(
    metric: Metric,
    z0: torch.Tensor,
    z1: torch.Tensor,
    series: torch.Tensor,
    *,
    tol: float = 1e-6,
    stages: int = 4,
    segments: int = 16,
    max_segments: int = 256,
    max_iter: int = 30,
    deadline: Optional[float] = None,
    stall_retry: bool = True,
) -> PiecewiseResult:
    """Certify connecting geodesics by piecewise Gauss collocation on adaptive meshes.

    Args:
        metric: a latentgeo metric.
        z0, z1: ``(n, d)`` endpoints.
        series: ``(n, K, d)`` Legendre coefficients (in ``x = 2t − 1``) of starting curves from
            ``z0`` to ``z1`` (the best curves of :func:`~latentgeo.geodesics.spectral.collocate`).
        tol: certification tolerance (relative, as in :mod:`.spectral`).
        stages: Gauss nodes per segment ``q`` (order ``2q`` at the mesh points).
        segments: segments of the first (uniform) mesh.
        max_segments: the finest mesh tried; a pair not certified there is reported as not
            resolved. A pair whose Newton iteration did not converge on two meshes in a row (nor
            stalled, which ends it at once) is not refined further.
        max_iter: (chord-)Newton iterations per mesh. On a refined mesh Newton starts from the
            previous mesh's Jacobian blocks interpolated along the curve, not from a fresh
            Jacobian (``d + 1`` jets a stage point: on a 10-D pair's final 248-segment mesh the
            fresh Jacobian was 0.45 s of the mesh's 0.6 s; benchmarks/RESULTS.md, session 21).
        deadline: ``time.perf_counter()`` time after which unsolved pairs stop (``budget``).
        stall_retry: a pair whose Newton line search stalls on a mesh is solved once more from the
            mesh's start by Newton steps with damped stage blocks (``δ_ij(1 + μ)I − …``: ``μ``
            raised 4x after a rejected step, lowered 0.3x after an accepted one; full steps), and a
            pair still not solved once more with a larger first shift (``_MU0S``). On a 10-D
            digits VAE the line search stalled on 4 of 20 pairs (the system is so nonlinear that a
            step of 1e-4 along the Newton direction already leaves its linear range); the retries
            certified all 4 with a 10 s budget (benchmarks/RESULTS.md, session 21).

    Returns:
        :class:`PiecewiseResult`.
    """
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    q = int(stages)
    K = _consts(q, dt, dev)
    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    eps = float(torch.finfo(dt).eps)
    drift_tol = max(tol, 100 * eps)
    out = _blank_outcome(n, d, dt, dev, "segments")
    reasons = [""] * n
    if n == 0:
        e = z0.new_zeros(0, 1)
        return PiecewiseResult(knots=(e, e[..., None].expand(0, 1, d), e[..., None].expand(0, 1, d), e[..., None].expand(0, 1, d)),
                               reasons=reasons, **out)
    knots = [None] * n
    unconv = torch.zeros(n, dtype=torch.bool)  # Newton did not converge on the pair's last mesh
    base = torch.full((n,), int(segments), dtype=torch.long)  # segments of the pair's mesh before its kink points
    reloc = torch.zeros(n, dtype=torch.long)  # re-solves on a mesh with realigned kinks
    rate = {}  # seconds per stage point of a Jacobian evaluation, as last measured
    kfn = _kink_fn(metric)  # (C¹ kinks of the decoder: each mesh also gets a point at every kink)
    B0 = _from_series(z0, z1, series, int(segments), K)
    if kfn is not None:
        B0, _ = _with_kinks(B0, kfn, K)
    pending = {B0.tau.shape[1] - 1: (torch.arange(n, device=dev), B0, None)}
    with torch.no_grad():
        while pending:
            S = min(pending)
            idx, B, J0 = pending.pop(S)
            # (with interpolated Jacobians the first evaluation is a plain one, ~1/(d+1) of a Jacobian)
            if _overruns(deadline, rate, idx.numel() * S * q // (1 if J0 is None else d + 1)):
                # (its first Jacobian alone would end after the deadline: not started)
                out["budget"][idx] = True
                for i in idx.tolist():
                    reasons[i] = f"time budget exhausted before piecewise collocation on {S} segments"
                continue
            # (the mesh's start, kept for the damped retries: _newton works in place)
            B_in = _Batch(B.tau, B.g.clone(), B.p.clone(), B.A.clone()) if stall_retry else None
            conv, stalled, budget, it, ev, merit, Jl = _newton(metric, acc, mfn, z0[idx], z1[idx], B, K, tol, max_iter,
                                                               deadline, rate, jac0=J0)
            st_ = torch.nonzero(stalled & ~budget).reshape(-1) if stall_retry else idx[:0]
            for mu0 in _MU0S:
                if st_.numel() == 0 or _expired(deadline):
                    break
                # the line search stalled: again from the mesh's start, with damped stage blocks
                # instead of shorter steps (see _MU0S)
                Bs = _Batch(B_in.tau[st_], B_in.g[st_], B_in.p[st_], B_in.A[st_])
                c2, s2, b2, it2, ev2, m2, J2 = _newton(metric, acc, mfn, z0[idx[st_]], z1[idx[st_]], Bs, K, tol, max_iter,
                                                       deadline, rate, damping=mu0)
                B.g[st_], B.p[st_], B.A[st_] = Bs.g, Bs.p, Bs.A
                conv[st_], stalled[st_], budget[st_], merit[st_] = c2, s2, b2, m2
                it[st_] += it2
                ev[st_] += ev2
                Jl[0][st_], Jl[1][st_] = J2[0], J2[1]
                st_ = st_[~c2 & ~b2]
            ck = _check(metric, acc, mfn, z0[idx], z1[idx], B, K)
            out["iterations"][idx] += it
            out["evaluations"][idx] += ev + ck["evals"]
            out["segments"][idx] = S
            out["budget"][idx] |= budget
            ok = conv & (ck["rel"] <= tol) & (ck["drift"] <= drift_tol)
            off = _kink_offsets(B, kfn, K) if kfn is not None and bool(ok.any()) else None
            if off is not None:  # (a kink off its mesh point: a jump inside a segment, see _kink_offsets)
                ok &= off <= _KINK_OFFSET * tol
            for key, src in (("length", "L"), ("velocity0", "v0"), ("residual", "resid"), ("rel_residual", "rel"),
                             ("speed_drift", "drift")):
                out[key][idx] = ck[src]
            out["converged"][idx] = ok
            for j, i in enumerate(idx.tolist()):
                knots[i] = tuple(x[j] for x in ck["knots"])
            err = torch.maximum(ck["rel"], ck["drift"]) / tol
            # the next mesh: the error of an order-q defect falls like S^-q at a fixed distribution
            grow = (err.clamp_min(1.0) * 4.0) ** (1.0 / q)
            want = torch.ceil(base[idx].to(grow.dtype) * grow.clamp(1.5, 4.0) / 8).long() * 8
            nxt = {}
            for j, i in enumerate(idx.tolist()):
                if bool(conv[j]):
                    unconv[i] = False
                if bool(ok[j]):
                    reasons[i] = ""
                    continue
                if bool(budget[j]):
                    reasons[i] = f"time budget exhausted during piecewise collocation on {S} segments"
                    continue
                if not bool(conv[j]):
                    reasons[i] = (f"piecewise collocation Newton " + ("stalled" if bool(stalled[j]) else "did not converge")
                                  + f" on {S} segments (residual {float(merit[j]):.2e})")
                    if (kfn is not None and bool(torch.isfinite(merit[j])) and float(merit[j]) < _KINK_RELOCATE_BELOW
                            and int(reloc[i]) < _KINK_RELOCATIONS):
                        # kinks that moved off their mesh points while Newton moved the curve put stage
                        # points on both sides of a jump of the equations: the same resolution again,
                        # with the kinks of the current iterate
                        reloc[i] += 1
                        nxt.setdefault(int(base[i]), []).append(j)
                        continue
                    if bool(stalled[j]) or not torch.isfinite(merit[j]):
                        continue  # (a finer mesh from a curve Newton could not move is not tried)
                    if bool(unconv[i]):
                        # (refining from a mesh state Newton did not reach, twice in a row, rarely
                        # certifies: on the final batches of the digits k-means fits it certified 1
                        # of about 20 such pairs, and those refinements were 16-25 % of the batches'
                        # evaluations)
                        reasons[i] += "; not refined further (Newton did not converge on the previous mesh either)"
                        continue
                    unconv[i] = True
                else:
                    reasons[i] = (f"piecewise collocation not resolved on {S} segments (residual "
                                  f"{float(ck['rel'][j]):.2e}, speed drift {float(ck['drift'][j]):.2e}; tol {tol:g})")
                    if off is not None and float(off[j]) > _KINK_OFFSET * tol:
                        reasons[i] += f"; a kink {float(off[j]):.1e} off its mesh point"
                        if int(reloc[i]) < _KINK_RELOCATIONS:  # (the same resolution, the kinks realigned)
                            reloc[i] += 1
                            nxt.setdefault(int(base[i]), []).append(j)
                            continue
                if int(base[i]) >= max_segments:
                    continue
                Sn = int(min(max(int(want[j]), int(base[i]) + 8), max_segments))
                nxt.setdefault(Sn, []).append(j)
            for Sn, js in nxt.items():
                jj = torch.tensor(js, dtype=torch.long, device=dev)
                sub = _Batch(B.tau[jj], B.g[jj], B.p[jj], B.A[jj])
                nb = _remesh(sub, ck["eta"][jj], Sn, K)
                base[idx[jj]] = Sn
                if kfn is not None:
                    nb, _ = _with_kinks(nb, kfn, K)
                    Sn = nb.tau.shape[1] - 1
                nj = _interpolate_jacobians(sub, (Jl[0][jj], Jl[1][jj]), nb, K)
                if Sn in pending:
                    i0, b0, j0 = pending[Sn]
                    nb = _Batch(*(torch.cat([x, y], 0) for x, y in zip((b0.tau, b0.g, b0.p, b0.A), (nb.tau, nb.g, nb.p, nb.A))))
                    nj = None if j0 is None else tuple(torch.cat([x, y], 0) for x, y in zip(j0, nj))
                    pending[Sn] = (torch.cat([i0, idx[jj]]), nb, nj)
                else:
                    pending[Sn] = (idx[jj], nb, nj)
    for i, k in enumerate(knots):
        if k is None:  # stopped before any mesh was solved: the straight line's knots (never reported)
            t = z0.new_tensor([0.0, 1.0])
            knots[i] = (t, torch.stack([z0[i], z1[i]]), (z1[i] - z0[i]).expand(2, d), z0.new_zeros(2, d))
    P = max(k[0].shape[0] for k in knots)
    kt = []
    for part in range(4):
        rows = []
        for k in knots:
            x = k[part]
            if x.shape[0] < P:
                x = torch.cat([x, x[-1:].expand(P - x.shape[0], *x.shape[1:])], 0)
            rows.append(x)
        kt.append(torch.stack(rows, 0))
    return PiecewiseResult(knots=tuple(kt), reasons=reasons, **out)
