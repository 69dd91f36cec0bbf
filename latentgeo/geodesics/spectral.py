"""Spectral stages of connecting geodesics: pseudospectral energy minimisation and collocation.

Geodesics of smooth decoders are analytic curves, so polynomials of modest degree represent
them to rounding error; spectral methods then need far fewer evaluations of the decoder than
finite differences or step-by-step integration. Two stages, both batched over pairs with
per-pair stopping:

1. :func:`minimize_spectral_energy` — the curve is the degree-``N`` polynomial through its
   values ``z_j`` at the ``N + 1`` Legendre–Gauss–Lobatto (LGL) nodes ``t_j`` of ``[0, 1]``
   (endpoints fixed). For an embedded metric (``M = JᵀJ`` of ``g``) the energy is

       E = Σ_j w_j ‖(D Y)_j‖²,   Y_j = g(z_j),

   the energy ``∫‖Ẏ‖² dt`` of the polynomial interpolant of the image points (``D`` the LGL
   differentiation matrix, ``w_j`` the LGL weights, exact for that interpolant). It is a
   nonlinear least-squares problem whose Gauss–Newton matrix has the blocks
   ``(DᵀWD)_{kl} J_kᵀJ_l`` — forward passes and Jacobians only, no second derivatives. Other
   metrics use ``E = Σ_j w_j (Dz)_jᵀ M(z_j) (Dz)_j`` with its exact gradient (autograd) and the
   frozen-metric matrix ``Σ_j w_j D_jk D_jl M_j``. Levenberg–Marquardt damping makes either
   globally convergent to a (local) minimiser of the energy — a shortest path, not just any
   critical point.

2. :func:`collocate` — Gauss–Legendre collocation of the boundary-value problem
   ``γ'' = a(γ, γ')``, ``γ(0) = z0``, ``γ(1) = z1``, in its integral form

       γ(t) = z0 + t (z1 − z0) + ∫₀¹ G(t, s) a(γ(s), γ'(s)) ds,

   with ``G`` the Green's function of ``d²/dt²`` with Dirichlet conditions and ``a``
   replaced by its polynomial interpolant at ``Q`` Gauss nodes. The collocation equations
   are solved by fixed-point (Picard) iteration started from the stage-1 curve; its change
   per iteration *is* the residual of the geodesic ODE in integral form, measured in the
   metric norm relative to the length. A pair is certified when that residual is
   ``≤ tol``, the speed ``‖γ'‖_M`` is constant to ``tol`` at every node (a conserved quantity
   the collocation does not enforce — it checks the solution independently), and the last
   Legendre coefficients of the curve are ``≤ tol`` (resolution); unresolved pairs are
   re-solved with the number of nodes the decay of their coefficients predicts. The result is a polynomial curve (``C^∞``) with exact
   endpoints, evaluated anywhere through its Legendre series.

The length is the Gauss quadrature of ``‖γ'(t)‖_M`` — spectrally accurate, and (since the
energy is stationary at a geodesic) second-order in the curve's error.

References: Trefethen, *Spectral Methods in MATLAB* (SIAM 2000), ch. 6 and 12 (LGL
differentiation, quadrature); Boyd, *Chebyshev and Fourier Spectral Methods* (2001), §2.12
(truncation estimates from trailing coefficients); Hairer, Nørsett, Wanner, *Solving ODEs I*,
§II.7 (collocation, Gauss methods); Ross & Karpenko (2012) on pseudospectral optimal control.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics.spectral import minimize_spectral_energy, lgl_nodes
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> t = lgl_nodes(8, torch.float64)
    >>> wiggly = t[None, :, None] * torch.ones(1, 1, 2, dtype=torch.float64) + 0.1 * torch.sin(torch.pi * t)[None, :, None]
    >>> res = minimize_spectral_energy(metric, wiggly)
    >>> bool(res.converged.all()), bool(torch.allclose(res.nodes, t[None, :, None].expand(1, 9, 2), atol=1e-10))
    (True, True)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from numpy.polynomial import legendre as npleg

from ..metric import Metric
from ._lm import damped_step, update_damping
from .._autodiff import unpack_hessian, value_and_columns
from .ode import acceleration_and_velocity_jacobian, acceleration_fn, acceleration_from_jet, matvec

__all__ = [
    "lgl_nodes",
    "legendre_basis",
    "minimize_spectral_energy",
    "SpectralEnergyResult",
    "collocate",
    "CollocationResult",
]


# ----------------------------------------------------------------------------- node sets (float64)
@functools.lru_cache(maxsize=None)
def _lgl_np(N: int):
    """LGL nodes ``t (N+1,)`` on [0, 1], weights, differentiation matrix, values→Legendre map."""
    PN = npleg.Legendre.basis(N)
    x = np.concatenate([[-1.0], np.sort(PN.deriv().roots().real), [1.0]])
    w = 2.0 / (N * (N + 1) * PN(x) ** 2)
    V = npleg.legvander(x, N)  # V[j, k] = P_k(x_j)
    Vinv = np.linalg.inv(V)
    dV = npleg.legval(x, npleg.legder(np.eye(N + 1), axis=0)).T  # dV[j, k] = P_k'(x_j)
    D = 2.0 * dV @ Vinv  # d/dt = 2 d/dx
    return (x + 1) / 2, w / 2, D, Vinv


@functools.lru_cache(maxsize=None)
def _gauss_np(Q: int):
    """Gauss nodes ``τ (Q,)`` on [0, 1], weights, and the collocation maps.

    ``C (Q+2, Q)`` maps values of ``a`` at ``τ`` to the Legendre coefficients (in ``x = 2t − 1``)
    of the correction ``u`` with ``u'' = a`` (interpolated), ``u(0) = u(1) = 0``.
    """
    x, w = npleg.leggauss(Q)
    # exact: values at Gauss nodes -> Legendre coefficients of the degree Q-1 interpolant
    Tr = (np.arange(Q)[:, None] + 0.5) * npleg.legvander(x, Q - 1).T * w[None, :]
    C = npleg.legint(Tr, m=2, lbnd=-1, scl=0.5, axis=0)  # ∫∫ w.r.t. t, from t = 0 (one column per q)
    end = C.sum(0)  # u0(1): P_k(1) = 1
    C[0] -= 0.5 * end  # subtract t·u0(1) = u0(1)·(P0 + P1)/2
    C[1] -= 0.5 * end
    return (x + 1) / 2, w / 2, C


_CACHE: dict = {}


def _to(key, arrays, dtype, device):
    k = (key, dtype, str(device))
    if k not in _CACHE:
        _CACHE[k] = tuple(torch.as_tensor(a, dtype=dtype, device=device) for a in arrays)
    return _CACHE[k]


def lgl_nodes(N: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """The ``N + 1`` Legendre–Gauss–Lobatto nodes of ``[0, 1]`` (``0`` and ``1`` included)."""
    if int(N) != N or N < 2:
        raise ValueError(f"N must be an integer >= 2, got {N!r}")
    return _to(("lgl", int(N)), _lgl_np(int(N)), dtype, device)[0]


def legendre_basis(t: torch.Tensor, K: int, derivative: int = 0) -> torch.Tensor:
    """``P_k(2t − 1)`` for ``k < K`` at times ``t (M,)``: shape ``(M, K)``; with ``derivative`` 1 or 2
    (``True`` = 1), that derivative with respect to ``t`` instead (three-term recurrences, stable
    on [0, 1]: ``P'_{k+1} = P'_{k−1} + (2k+1) P_k``, and the same one level up for ``P''``)."""
    order = int(derivative)
    if order not in (0, 1, 2):
        raise ValueError(f"derivative must be 0, 1 or 2, got {derivative!r}")
    x = 2.0 * t - 1.0
    P = [torch.ones_like(x), x]
    for k in range(1, K - 1):
        P.append(((2 * k + 1) * x * P[k] - k * P[k - 1]) / (k + 1))
    P = P[:K]
    for level in range(order):
        # d/dx of the first two entries: P_0' = 0, P_1' = 1 (then 0 for the constant 2·P_1')
        dP = [torch.zeros_like(x), torch.ones_like(x) if level == 0 else torch.zeros_like(x)]
        for k in range(1, K - 1):
            dP.append(dP[k - 1] + (2 * k + 1) * P[k])
        P = [2.0 * p for p in dP[:K]]  # d/dt = 2 d/dx
    return torch.stack(P, 1)


def _gauss_basis(Q: int, K: int, order: int, dtype, device) -> torch.Tensor:
    """Cached ``legendre_basis(τ, K, order)`` at the ``Q`` Gauss nodes (the recurrences cost more
    than a small solve otherwise)."""
    key = ("gbasis", Q, K, order, dtype, str(device))
    if key not in _CACHE:
        tau = _to(("gauss", Q), _gauss_np(Q), dtype, device)[0]
        _CACHE[key] = legendre_basis(tau, K, order)
    return _CACHE[key]


def _trim(coef: torch.Tensor) -> torch.Tensor:
    """``coef (n, K, d)`` without the trailing coefficients that are zero in every row (series are
    padded to the finest resolution; the recurrences cost ``O(K)`` tensor operations). NaN counts
    as nonzero."""
    n, K, d = coef.shape
    if n == 0 or K <= 2:
        return coef
    nz = torch.nonzero(coef.detach().ne(0).any(2).any(0)).reshape(-1)
    k = int(nz[-1]) + 1 if nz.numel() else 1
    return coef[:, : max(k, 2)] if k < K else coef


_BASES: dict = {}


def _basis_at(t: torch.Tensor, K: int, derivative: int) -> torch.Tensor:
    """``legendre_basis(t, K, derivative)``, cached for small CPU time grids (the dense-length and
    finishing grids repeat on every call; the recurrence is ``O(K)`` tensor operations: 1.4 ms a
    demo-VAE pair alone). The cached tensor is shared: callers do not modify it."""
    if t.device.type != "cpu" or t.numel() > 2048 or t.requires_grad:
        return legendre_basis(t, K, derivative)
    key = (K, int(derivative), t.dtype, t.detach().contiguous().numpy().tobytes())
    B = _BASES.get(key)
    if B is None:
        if len(_BASES) >= 256:
            _BASES.clear()
        B = _BASES[key] = legendre_basis(t, K, derivative)
    return B


def _eval_series(coef: torch.Tensor, t: torch.Tensor, derivative: int = 0) -> torch.Tensor:
    """Legendre series ``coef (n, K, d)`` at ``t (M,)`` → ``(n, M, d)``."""
    coef = _trim(coef)
    B = _basis_at(t, coef.shape[1], derivative)
    return torch.einsum("mk,nkd->nmd", B, coef)


def nodes_to_series(nodes: torch.Tensor) -> torch.Tensor:
    """Legendre coefficients ``(n, N+1, d)`` of the polynomial through values at the LGL nodes."""
    N = nodes.shape[1] - 1
    Vinv = _to(("lgl", N), _lgl_np(N), nodes.dtype, nodes.device)[3]
    return torch.einsum("kj,njd->nkd", Vinv, nodes)


# ----------------------------------------------------------------------------- metric helpers
def _embedding_jacobian(metric: Metric, z: torch.Tensor):
    """``(g(z) (n, K), J (n, K, d))`` for an embedded metric (fx fast path where available)."""
    if z.shape[0] > _ROWS:
        parts = [_embedding_jacobian(metric, z[s : s + _ROWS]) for s in range(0, z.shape[0], _ROWS)]
        return torch.cat([p[0] for p in parts], 0), torch.cat([p[1] for p in parts], 0)
    r = metric.traced_columns(z) if hasattr(metric, "traced_columns") else None
    return r if r is not None else value_and_columns(metric.embedding, z)


class _Norm:
    """Metric norms at a batch of points: ``‖x‖² = ‖Jx‖² + ridge‖x‖²`` or ``xᵀMx``."""

    def __init__(self, jac=None, m=None, ridge=0.0):
        self.jac, self.m, self.ridge = jac, m, ridge

    def __call__(self, x):  # x (P, d) -> (P,)
        if self.jac is not None:
            y = matvec(self.jac, x)
            s = (y * y).sum(-1)
            if self.ridge > 0:
                s = s + self.ridge * x.pow(2).sum(-1)
        else:
            s = torch.einsum("pi,pij,pj->p", x, self.m, x)
        return s.clamp_min(0).sqrt()


def _expired(deadline) -> bool:
    """Whether the wall-clock ``deadline`` (``time.perf_counter()`` seconds, or ``None``) has passed."""
    return deadline is not None and time.perf_counter() > deadline


_ROWS = 2048  # points per decoder evaluation: larger batches fall out of cache (measured ~1.5x slower)


def _second_order(metric, acc, mfn, y, yp):
    """Geodesic acceleration at ``(y, y')`` and the metric norm there (the metric's jet for
    embedded metrics: ``J`` and ``∂²g`` at once; ``acceleration_fn`` + ``M(y)`` otherwise)."""
    if y.shape[0] > _ROWS:
        parts = [_second_order(metric, acc, mfn, y[s : s + _ROWS], yp[s : s + _ROWS]) for s in range(0, y.shape[0], _ROWS)]
        a = torch.cat([p[0] for p in parts], 0)
        if parts[0][1].jac is not None:
            return a, _Norm(jac=torch.cat([p[1].jac for p in parts], 0), ridge=parts[0][1].ridge)
        return a, _Norm(m=torch.cat([p[1].m for p in parts], 0))
    ridge = float(getattr(metric, "ridge", 0.0))
    if metric.is_embedded:
        _, jac, h = metric.jet(y, yp)
        return acceleration_from_jet(jac, h, ridge), _Norm(jac=jac, ridge=ridge)
    return acc(y, yp), _Norm(m=mfn(y))


def _mixed_second_order(metric, y, yp):
    """Acceleration at ``(y, y')`` ``(P, d)``, the Jacobian ``J (P, K, d)`` of the embedding there
    and the exact velocity Jacobian ``Av (P, d, d)`` of the acceleration, from one mixed jet
    (embedded metrics only)."""
    d = y.shape[1]
    rows = max(1, _ROWS * (d + 3) // (2 * d + 2))  # a mixed jet carries 2d + 2 rows per point, Taylor's d + 3
    if y.shape[0] > rows:
        parts = [_mixed_second_order(metric, y[s : s + rows], yp[s : s + rows]) for s in range(0, y.shape[0], rows)]
        return tuple(torch.cat([p[i] for p in parts], 0) for i in range(3))
    _, jac, hv = metric.jet(y, yp, mixed=True)
    a, av = acceleration_and_velocity_jacobian(jac, hv, yp, float(getattr(metric, "ridge", 0.0)))
    return a, jac, av


def _hessian_jet(metric, z):
    """``(g, J, H (P, K, m))`` of the metric's Hessian-mode jet at ``z (P, d)`` in row chunks of the
    size a Taylor jet would use, or ``None`` (no fast path)."""
    d = z.shape[1]
    rows = max(1, _ROWS * (d + 3) // (1 + d + d * (d + 1) // 2))
    if z.shape[0] > rows:
        parts = [_hessian_jet(metric, z[s : s + rows]) for s in range(0, z.shape[0], rows)]
        if any(p is None for p in parts):
            return None
        return tuple(torch.cat([p[i] for p in parts], 0) for i in range(3))
    return metric.hessian_jet(z)


#: a separate Taylor-mode pass for the rows that need no velocity Jacobian pays off when it saves
#: more than about this many row-units (``d (d − 1)`` per mixed point): below it, one mixed pass
#: over all rows is faster (the interpreter's per-call cost; 2-D digits VAE, float32: break-even
#: near 500 mixed points)
_SPLIT_ROWS = 1024
# Newton steps in the energy stage (embedded metrics), once the active curves' interior nodes times
# the latent dimension (the mixed jets of one curvature evaluation) are at most _NEWTON_ENERGY_JETS.
# The curvature term costs one Hessian-mode jet a node (1 + d + d(d+1)/2 rows, against 1 + d for
# a Gauss–Newton iteration: 2x in 2-D, 6x in 10-D; d mixed jets, d(2d + 2) rows, for decoders
# without that jet: 4x in 2-D), and cuts the iterations 3-5x (demo VAE: a median of 40 a start to ~10). Small calls are bound
# by per-iteration overhead, so there fewer iterations win (a pair alone: 3 curves x 23 nodes);
# large batches are bound by arithmetic and keep Gauss–Newton steps until few curves remain
# (session 16, benchmarks/RESULTS.md: the VP MLP batched 4.0 ms/pair with Gauss–Newton, 6.6 with
# Newton throughout, 4.4 with this rule, then 256 nodes in 2-D). In d dimensions a curvature
# evaluation costs ~2d Gauss–Newton iterations, so it is refreshed every ceil(d/2) iterations and
# held in between (2-D: every iteration). On a 10-D digits VAE, Gauss–Newton steps needed 770-970
# iterations on some pairs' chosen starts (energy_max_iter=1000), these Newton steps ~100 (session
# 21); the 3 starts together (69 nodes x 10) stay with Gauss–Newton until one is chosen.
_NEWTON_ENERGY_JETS = 512


def _jets_with_velocity_jacobian(metric, y, yp, m: int):
    """Accelerations ``(P, d)`` and embedding Jacobians ``(P, K, d)`` at ``(y, y')`` ``(P, d)``, and
    for the first ``m`` rows the exact velocity Jacobians ``(m, d, d)`` (embedded metrics): one
    mixed pass over all rows, or a mixed pass over the first ``m`` and a Taylor pass over the
    rest (``_SPLIT_ROWS``)."""
    d = y.shape[1]
    if m < y.shape[0] and d * (d - 1) * m >= _SPLIT_ROWS:
        a, jac, av = _mixed_second_order(metric, y[:m], yp[:m])
        ar, nr = _second_order(metric, None, None, y[m:], yp[m:])
        return torch.cat([a, ar], 0), torch.cat([jac, nr.jac], 0), av
    a, jac, av = _mixed_second_order(metric, y, yp)
    return a, jac, av[:m]


def _newton_jets(metric, y, yp, fresh, hz):
    """The accelerations at the nodes ``(y, y')`` ``(k, Q, d)`` of a chord-Newton iteration, the
    metric norms there, and for the pairs ``fresh`` their Jacobians ``Az, Av`` ``(d, kf, Q, d)``
    (``[j, n, q, i] = ∂a_i/∂γ_j``, ``∂a_i/∂γ'_j``) for embedded metrics: ``Av`` exact from a mixed
    jet, ``Az`` by forward differences with steps ``hz`` ``(kf, Q, 1)`` (``d`` more jets a
    node): ``d + 1`` jets a fresh node instead of ``2d + 1``."""
    k, Q, d = y.shape
    yf, ypf = y[fresh], yp[fresh]
    kf = yf.shape[0]
    if kf == 0:
        g, norm = _second_order(metric, None, None, y.reshape(-1, d), yp.reshape(-1, d))
        return g, norm, None, None
    mf, no = kf * Q, (k - kf) * Q
    E = torch.eye(d, dtype=y.dtype, device=y.device)[:, None, None, :]  # (d, 1, 1, d)
    Ys = torch.cat([yf.reshape(-1, d), y[~fresh].reshape(-1, d), (yf[None] + hz[None] * E).reshape(-1, d)], 0)
    Vs = torch.cat([ypf.reshape(-1, d), yp[~fresh].reshape(-1, d), ypf[None].expand(d, -1, -1, -1).reshape(-1, d)], 0)
    a, jall, avf = _jets_with_velocity_jacobian(metric, Ys, Vs, mf)
    K = jall.shape[1]
    g = y.new_empty(k, Q, d)
    jac = jall.new_empty(k, Q, K, d)
    g[fresh], jac[fresh] = a[:mf].reshape(kf, Q, d), jall[:mf].reshape(kf, Q, K, d)
    g[~fresh], jac[~fresh] = a[mf : mf + no].reshape(-1, Q, d), jall[mf : mf + no].reshape(-1, Q, K, d)
    Az = (a[mf + no :].reshape(d, kf, Q, d) - a[:mf].reshape(kf, Q, d)[None]) / hz[None]
    Av = avf.reshape(kf, Q, d, d).permute(3, 0, 1, 2)
    return g.reshape(-1, d), _Norm(jac=jac.reshape(-1, K, d), ridge=float(getattr(metric, "ridge", 0.0))), Az, Av


# ----------------------------------------------------------------------------- stage 1
@dataclass
class SpectralEnergyResult:
    """Outcome of :func:`minimize_spectral_energy` (batched over pairs).

    Attributes:
        nodes: ``(n, N+1, d)`` curve values at the LGL nodes (endpoints unchanged).
        energy: ``(n,)`` pseudospectral energies.
        converged: ``(n,)`` the pair's stopping criterion was met.
        iterations: ``(n,)`` Levenberg–Marquardt iterations (accepted + rejected).
        reasons: per pair, why it stopped without converging (``""`` otherwise).
        evaluations: ``(n,)`` decoder jets at nodes (``N+1`` an iteration; for a Newton
            iteration ``N+1`` Hessian-mode jets, or ``(N+1)·d`` mixed ones), or ``None``.
    """

    nodes: torch.Tensor
    energy: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    reasons: list
    evaluations: Optional[torch.Tensor] = None


def _energy_terms(metric, mfn, D, w, A, c, ends=None, curvature=False):
    """Energy, half-gradient (n, P·d) and (half) Gauss–Newton matrix (n, P·d, P·d); with
    ``curvature`` (embedded metrics) also the rest of the half Hessian, block-diagonal over the
    interior nodes: ``(n, P, d, d)``, ``Σ_K cc_kK ∇²g_K(c_k)``."""
    n, T, d = c.shape
    P = T - 2
    ridge = float(getattr(metric, "ridge", 0.0))
    Ai = A[1:-1, 1:-1]
    exact = bool(curvature) and metric.is_embedded
    B = Hm = None
    if metric.is_embedded:
        if exact:
            # the Hessian's curvature term needs ∇²g at the nodes: one Hessian-mode jet (its upper
            # triangle, Hp (m, K, d(d+1)/2)), else one mixed jet per e_j
            zi = c[:, 1:-1].reshape(-1, d)
            m = zi.shape[0]
            r = _hessian_jet(metric, zi)
            if r is not None:
                g, jac, Hp = r
                Hm = None
            else:
                eye = torch.eye(d, dtype=c.dtype, device=c.device)
                g, jac, Hm = metric.jet(zi.repeat(d, 1), eye.repeat_interleave(m, 0), mixed=True)
                g, jac = g[:m], jac[:m]
        else:
            g, jac = _embedding_jacobian(metric, c[:, 1:-1].reshape(-1, d))
        K = g.shape[1]
        if ends is None:
            ends = metric.embedding(torch.stack([c[:, 0], c[:, -1]], 1).reshape(-1, d)).reshape(n, 2, K)
        Y = torch.cat([ends[:, :1], g.reshape(n, P, K), ends[:, 1:]], 1)
        jac = jac.reshape(n, P, K, d)
        V = torch.einsum("jk,nkK->njK", D, Y)
        E = (w[None, :, None] * V * V).sum((1, 2))
        cc = torch.einsum("jk,j,njK->nkK", D, w, V)[:, 1:-1]
        grad = (cc.unsqueeze(-2) @ jac).squeeze(-2)  # (n, P, d)
        jf = jac.permute(0, 2, 1, 3).reshape(n, K, P * d)
        H = (jf.transpose(1, 2) @ jf).reshape(n, P, d, P, d) * Ai[None, :, None, :, None]
        if exact:
            # the exact (half) Hessian adds, at each interior node k, Σ_K cc_kK ∇²g_K(c_k)
            if Hm is None:
                Bp = (cc.reshape(-1, 1, K) @ Hp).reshape(-1, Hp.shape[2])  # (n·P, m) upper triangles
                B = unpack_hessian(Bp).reshape(n, P, d, d)
            else:
                B = torch.einsum("mK,jmKi->mij", cc.reshape(-1, K), Hm.reshape(d, -1, K, d)).reshape(n, P, d, d)
                B = 0.5 * (B + B.transpose(-1, -2))
        if ridge > 0:
            Vz = torch.einsum("jk,nkd->njd", D, c)
            E = E + ridge * (w[None, :, None] * Vz * Vz).sum((1, 2))
            grad = grad + ridge * torch.einsum("jk,j,njd->nkd", D, w, Vz)[:, 1:-1]
            eye = torch.eye(d, dtype=c.dtype, device=c.device)
            H = H + ridge * Ai[None, :, None, :, None] * eye[None, None, :, None, :]
    else:
        with torch.enable_grad():
            x = c[:, 1:-1].detach().requires_grad_(True)
            cc = torch.cat([c[:, :1], x, c[:, -1:]], 1)
            m = mfn(cc.reshape(-1, d)).reshape(n, T, d, d)
            Vz = torch.einsum("jk,nkd->njd", D, cc)
            E = torch.einsum("j,nja,njab,njb->n", w, Vz, m, Vz)
            (gx,) = torch.autograd.grad(E.sum(), x)
        E, m = E.detach(), m.detach()
        grad = 0.5 * gx
        Dw = D[:, 1:-1]
        H = torch.einsum("j,jp,jq,njab->npaqb", w, Dw, Dw, m)
    if curvature:
        # jets a node: one Hessian-mode jet, or d mixed ones (also without the curvature term)
        return E, grad.reshape(n, P * d), H.reshape(n, P * d, P * d), ends, B, 1 if Hm is None and exact else d
    return E, grad.reshape(n, P * d), H.reshape(n, P * d, P * d), ends


def _with_curvature(H, B):
    """``H (n, P·d, P·d)`` plus the block-diagonal ``B (n, P, d, d)``."""
    n, P, d, _ = B.shape
    H = H.reshape(n, P, d, P, d).clone()
    idx = torch.arange(P, device=H.device)
    H[:, idx, :, idx, :] += B.permute(1, 0, 2, 3)
    return H.reshape(n, P * d, P * d)


def minimize_spectral_energy(
    metric: Metric,
    nodes: torch.Tensor,
    *,
    max_iter: int = 50,
    rtol: Optional[float] = None,
    deadline: Optional[float] = None,
) -> SpectralEnergyResult:
    """Minimise the pseudospectral energy of curves given by their values at LGL nodes.

    Args:
        metric: a latentgeo metric.
        nodes: ``(n, N+1, d)`` initial curve values at :func:`lgl_nodes` ``(N)``; the first and last
            are the fixed endpoints.
        max_iter: Levenberg–Marquardt iterations per pair.
        rtol: a pair stops when an accepted step lowers its energy by ``≤ rtol·E`` or the
            Gauss–Newton model predicts less (default ``100·eps`` of the dtype: the energy's
            rounding level — the curve is then as accurate as ``N`` nodes allow).
        deadline: ``time.perf_counter()`` value after which no further iteration starts.

    Steps are Gauss–Newton steps, except for embedded metrics once few curves are left active
    (see ``_NEWTON_ENERGY_JETS``): Newton steps on the exact Hessian (the Gauss–Newton matrix plus
    ``Σ_K cc_kK ∇²g_K`` at each node, from mixed jets; in ``d > 2`` dimensions that curvature term
    is re-evaluated every ``⌈d/2⌉`` iterations) wherever its damped matrix is positive definite.

    Returns:
        :class:`SpectralEnergyResult`.
    """
    n, T, d = nodes.shape
    if T < 3:
        raise ValueError(f"spectral curves need at least 3 nodes, got {T}")
    N = T - 1
    dt, dev = nodes.dtype, nodes.device
    _, w, D, _ = _to(("lgl", N), _lgl_np(N), dt, dev)
    A = D.T @ (w[:, None] * D)
    rtol = 100 * float(torch.finfo(dt).eps) if rtol is None else float(rtol)
    mfn = None if metric.is_embedded else metric.tensor_fn()
    c = nodes.detach().clone()
    reasons = [""] * n
    with torch.no_grad():
        # Newton steps (the exact Hessian) for embedded metrics once few nodes are active; see
        # _NEWTON_ENERGY_JETS
        newton = metric.is_embedded and _NEWTON_ENERGY_JETS > 0
        lag = (d + 1) // 2  # iterations between curvature evaluations (see _NEWTON_ENERGY_JETS)
        since = lag  # iterations since the last one
        E, G, H, ends = _energy_terms(metric, mfn, D, w, A, c)
        B = H.new_zeros(n, T - 2, d, d) if newton else None
        hasB = torch.zeros(n, dtype=torch.bool, device=dev)  # B is the pair's current curve's (d > 2: or a recent one's)
        lam = torch.full((n,), 1e-6, dtype=dt, device=dev)
        conv = E <= 0  # identical endpoints: nothing to do
        iters = torch.zeros(n, dtype=torch.long, device=dev)
        evals = torch.zeros(n, dtype=torch.long, device=dev)
        dead = ~torch.isfinite(E)
        for i in torch.nonzero(dead).reshape(-1).tolist():
            reasons[i] = "the energy of the initial curve is not finite"
        scale = (c[:, -1] - c[:, 0]).abs().amax(1).clamp_min(1.0)
        for _ in range(int(max_iter)):
            act = torch.nonzero(~(conv | dead)).reshape(-1)
            if act.numel() == 0 or _expired(deadline):
                break
            iters[act] += 1
            use = hasB[act]
            if newton and bool(use.any()):
                # Newton steps where the damped exact Hessian is positive definite, Gauss–Newton
                # steps elsewhere
                s, q, ok = damped_step(torch.where(use[:, None, None], _with_curvature(H[act], B[act]), H[act]),
                                       G[act], lam[act])
                if not bool(ok.all()):
                    s2, q2, ok2 = damped_step(H[act], G[act], lam[act])
                    s, q, ok = torch.where(ok[:, None], s, s2), torch.where(ok, q, q2), ok | ok2
            else:
                s, q, ok = damped_step(H[act], G[act], lam[act])
            pred = -2.0 * q  # E(c + s) ≈ E + 2 gᵀs + sᵀHs with the half-gradient and half-matrix
            ct = c[act].clone()
            ct[:, 1:-1] += s.reshape(-1, T - 2, d)
            # Newton steps once few curves are active (see _NEWTON_ENERGY_JETS); the next step of a
            # pair whose trial is accepted uses the curvature evaluated there (in more than 2
            # dimensions, also the next steps until the next evaluation)
            curv = (newton and act.numel() * (T - 2) * d <= _NEWTON_ENERGY_JETS
                    and (since >= lag or not bool(hasB[act].all())))
            since = 1 if curv else since + 1
            if curv:
                Et, Gt, Ht, _, Bt, per = _energy_terms(metric, mfn, D, w, A, ct, None if ends is None else ends[act],
                                                       curvature=True)
                evals[act] += T * per
            else:
                Et, Gt, Ht, _ = _energy_terms(metric, mfn, D, w, A, ct, None if ends is None else ends[act])
                evals[act] += T
            Ea = E[act]
            gain = Ea - Et
            accept = ok & torch.isfinite(Et) & (gain > 0)
            rho = gain / pred.clamp_min(torch.finfo(dt).tiny)
            small = s.abs().amax(-1) <= 4 * float(torch.finfo(dt).eps) * scale[act]
            # (pred ≥ 0 whenever ok, Newton steps included: q = −½ sᵀ(H + λ·diag)s − ½ λ sᵀ diag s)
            done = (accept & (gain <= rtol * Ea)) | (ok & (pred <= rtol * Ea)) | (ok & small)
            ia = act[accept]
            c[ia], E[ia], G[ia], H[ia] = ct[accept], Et[accept], Gt[accept], Ht[accept]
            if curv:
                B[ia], hasB[ia] = Bt[accept], True
            elif newton and lag == 1:
                hasB[ia] = False
            la = update_damping(lam[act], accept, rho, down=5.0, up=3.0, reject=10.0, lo=1e-15, hi=1e15)
            lam[act] = la
            conv[act] = done
            stuck = ~done & (la >= 1e15)
            for j in torch.nonzero(stuck).reshape(-1).tolist():
                reasons[int(act[j])] = "Levenberg–Marquardt damping exhausted (no decrease of the energy)"
                dead[int(act[j])] = True
        for i in torch.nonzero(~conv & ~dead).reshape(-1).tolist():
            reasons[i] = f"spectral energy minimisation: no convergence in {int(max_iter)} iterations"
    return SpectralEnergyResult(nodes=c, energy=E, converged=conv, iterations=iters, reasons=reasons, evaluations=evals)


# ----------------------------------------------------------------------------- stage 2
@dataclass
class CollocationResult:
    """Outcome of :func:`collocate` (batched over pairs).

    Attributes:
        series: ``(n, K, d)`` Legendre coefficients (in ``x = 2t − 1``) of the whole curve.
        length: ``(n,)`` Gauss quadrature of ``‖γ'‖_M``.
        velocity0: ``(n, d)`` ``γ'(0)``.
        residual: ``(n,)`` Euclidean size of the last fixed-point change (integral-form ODE residual).
        rel_residual: ``(n,)`` the same in the metric norm relative to the length, or the
            truncation estimate (trailing Legendre coefficients) if larger.
        speed_drift: ``(n,)`` ``max |‖γ'(τ_q)‖_M − L| / L`` over the collocation nodes.
        converged: ``(n,)`` certified (residual, drift and truncation ``≤ tol``).
        iterations: ``(n,)`` fixed-point iterations over all resolutions; ``nodes``: final ``Q``.
        evaluations: ``(n,)`` points at which the geodesic acceleration was evaluated.
        budget: ``(n,)`` the pair stopped because the ``deadline`` passed.
        reasons: why a pair was not certified (``""`` otherwise).
        direct: ``(n,)`` certified straight from a warm collocation curve (set by
            :func:`~latentgeo.geodesics.connecting_geodesic` for ``init=`` a result; ``None`` otherwise).
        jacobian: with ``keep_jacobian``, ``(n, max_nodes, d, d, 2)`` each pair's last Newton node
            blocks at its final ``nodes`` (NaN where it had none; see :func:`_picard`).
    """

    series: torch.Tensor
    length: torch.Tensor
    velocity0: torch.Tensor
    residual: torch.Tensor
    rel_residual: torch.Tensor
    speed_drift: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    nodes: torch.Tensor
    reasons: list
    evaluations: Optional[torch.Tensor] = None
    budget: Optional[torch.Tensor] = None
    direct: Optional[torch.Tensor] = None
    jacobian: Optional[torch.Tensor] = None


def _pad_nodes(jac: torch.Tensor, Q: int) -> torch.Tensor:
    """Newton node blocks ``(n, Q', d, d, 2)`` cut or NaN-padded (NaN: no blocks) to ``Q`` nodes."""
    if jac.shape[1] >= Q:
        return jac[:, :Q]
    return torch.cat([jac, jac.new_full((jac.shape[0], Q - jac.shape[1]) + jac.shape[2:], float("nan"))], 1)


def _line_series(z0, z1, K):
    """Legendre coefficients of ``z0 + t (z1 − z0)`` padded to ``K`` terms."""
    n, d = z0.shape
    s = torch.zeros(n, K, d, dtype=z0.dtype, device=z0.device)
    s[:, 0] = 0.5 * (z0 + z1)
    s[:, 1] = 0.5 * (z1 - z0)
    return s


def _pad(series, K):
    if series.shape[1] >= K:
        return series
    return torch.cat([series, series.new_zeros(series.shape[0], K - series.shape[1], series.shape[2])], 1)


def _sane_systems(A, b):
    """``(A, b, bad)`` with non-finite systems replaced by ``I x = 0`` (what LAPACK makes of NaN input is
    unspecified); ``bad`` marks them, so they are reported as failed solves."""
    bad = ~(torch.isfinite(A).flatten(1).all(1) & torch.isfinite(b).flatten(1).all(1))
    if bool(bad.any()):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        A = torch.where(bad[:, None, None], eye, A)
        b = torch.where(bad.reshape(-1, *([1] * (b.dim() - 1))), torch.zeros_like(b), b)
    return A, b, bad


def _one_thread(fn):
    """Run a batched LAPACK call on one thread: MKL's multithreaded batched LU (torch 2.13 CPU wheel)
    returned zero pivots on some well-conditioned 320×320 collocation systems with 2 threads (and
    printed "Parameter 6 was incorrect on entry to DLASWP"); single-threaded it is right."""

    def run(*args):
        threads = torch.get_num_threads()
        try:
            if threads > 1 and args[0].device.type == "cpu" and args[0].shape[0] > 1:
                torch.set_num_threads(1)
            return fn(*args)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    return run


@_one_thread
def _solve_batch(A, b):
    """``torch.linalg.solve_ex`` for a batch, pair by pair where the batched LAPACK call raises
    (MKL's batched LU can fail on badly scaled matrices); failed or non-finite systems get ``info = 1``."""
    A, b, bad = _sane_systems(A, b)
    try:
        x, info = torch.linalg.solve_ex(A, b)
        return x, torch.where(bad, torch.ones_like(info), info)
    except RuntimeError:
        x = torch.zeros_like(b)
        info = torch.ones(A.shape[0], dtype=torch.int32, device=A.device)
        for k in range(A.shape[0]):
            try:
                xk, ik = torch.linalg.solve_ex(A[k], b[k])
            except RuntimeError:
                continue
            x[k], info[k] = xk, ik
        info[bad] = 1
        return x, info


@_one_thread
def _lu_batch(A):
    """Batched LU factors ``(LU, pivots, info)``; non-finite or failed factorisations get ``info = 1``."""
    A, _, bad = _sane_systems(A, A.new_zeros(A.shape[0], A.shape[1], 1))
    try:
        lu, piv, info = torch.linalg.lu_factor_ex(A)
    except RuntimeError:
        lu, piv = torch.zeros_like(A), torch.ones(A.shape[:2], dtype=torch.int32, device=A.device)
        info = torch.ones(A.shape[0], dtype=torch.int32, device=A.device)
        for k in range(A.shape[0]):
            try:
                lu[k], piv[k], info[k] = torch.linalg.lu_factor_ex(A[k])
            except RuntimeError:
                continue
    return lu, piv, torch.where(bad, torch.ones_like(info), info)


@_one_thread
def _lu_solve_batch(lu, piv, b):
    return torch.linalg.lu_solve(lu, piv, b)


_KRYLOV_SIZE = 600  # Newton systems larger than this are solved by GMRES (dense LU costs (Q·d)³/3)


def _gmres(op, b: torch.Tensor, max_iter: int, rtol: float) -> torch.Tensor:
    """Batched GMRES from ``x = 0`` for ``op(x) = b`` (``b (k, N)``), at most ``max_iter`` iterations
    (no restarts).

    Arnoldi with classical Gram–Schmidt applied twice (as stable as modified Gram–Schmidt, and
    batched); the small least-squares problems are solved every few iterations to stop when every
    system's residual is ``≤ rtol·‖b‖`` (Saad & Schultz, SIAM J. Sci. Stat. Comput. 7, 1986).
    ``I − ∂Φ/∂x`` is the identity minus an integral operator, whose eigenvalues cluster at 1:
    GMRES converges in a number of iterations independent of ``Q``."""
    k, N = b.shape
    m = max(1, min(int(max_iter), N))
    beta = b.norm(dim=1)
    tiny = torch.finfo(b.dtype).tiny
    V = b.new_zeros(k, m + 1, N)
    H = b.new_zeros(k, m + 1, m)
    V[:, 0] = b / beta.clamp_min(tiny)[:, None]
    e1 = b.new_zeros(k, m + 1)
    e1[:, 0] = beta
    y = None
    used = 0
    for j in range(m):
        w = op(V[:, j])
        h = torch.einsum("kin,kn->ki", V[:, : j + 1], w)
        w = w - torch.einsum("kin,ki->kn", V[:, : j + 1], h)
        h2 = torch.einsum("kin,kn->ki", V[:, : j + 1], w)
        w = w - torch.einsum("kin,ki->kn", V[:, : j + 1], h2)
        H[:, : j + 1, j] = h + h2
        hn = w.norm(dim=1)
        H[:, j + 1, j] = hn
        V[:, j + 1] = w / hn.clamp_min(tiny)[:, None]
        used = j + 1
        if used % 4 == 0 or used == m or bool((hn <= 1e-14 * beta).all()):
            Hs = H[:, : used + 1, :used]
            y = torch.linalg.lstsq(Hs, e1[:, : used + 1].unsqueeze(-1)).solution.squeeze(-1)
            res = (e1[:, : used + 1] - (Hs @ y.unsqueeze(-1)).squeeze(-1)).norm(dim=1)
            if bool((res <= rtol * beta.clamp_min(tiny)).all()):
                break
    if y is None or y.shape[1] != used:
        Hs = H[:, : used + 1, :used]
        y = torch.linalg.lstsq(Hs, e1[:, : used + 1].unsqueeze(-1)).solution.squeeze(-1)
    return torch.einsum("kin,ki->kn", V[:, :used], y)


_NEWTON_STALL = 6  # Newton iterations after which a residual still above 1/2 stops the pair


def _picard(metric, acc, mfn, z0, z1, series, Q, tol, max_iter, memory=6, newton=False, deadline=None, jac=None,
            keep_jac=False):
    """Anderson-accelerated fixed-point iteration of the Gauss collocation equations at ``Q`` nodes.

    The unknowns are the accelerations ``x`` at the nodes; ``Φ(x) = a(γ_x, γ_x')`` with ``γ_x`` the
    curve they define. Plain Picard (``x ← Φ(x)``) contracts only while ``‖∂Φ‖ < 1``, which fails
    for long geodesics on curved metrics; Anderson mixing of the last ``memory`` residuals
    (Walker & Ni, SIAM J. Numer. Anal. 49, 2011 — type II, i.e. a multisecant quasi-Newton step)
    converges there too and needs fewer iterations everywhere.

    With ``newton=True`` the equations ``Φ(x) − x = 0`` are solved by damped Newton instead:
    ``∂a/∂γ`` and ``∂a/∂γ'`` at every node (for embedded metrics ``∂a/∂γ'`` exact from a mixed jet
    and ``∂a/∂γ`` by forward differences, ``d`` extra accelerations per node, in the same batch;
    otherwise both by forward differences, ``2d``), ``∂Φ/∂x`` assembled from them and the
    collocation maps; a step that does not lower the residual is halved. About ``d + 1`` (``2d +
    1``) times dearer per iteration, for pairs on
    which the fixed-point iteration diverges. Between Jacobians the iteration takes chord steps
    with the stored LU factors (one evaluation per node; Kelley, *Solving Nonlinear Equations with
    Newton's Method*, SIAM 2003, §5.4), and refreshes them after a rejected step or a chord step
    that cut the residual by less than 4.

    ``jac``: ``(n, Q, d, d, 2)`` node blocks ``∂a_i/∂γ_j`` (``[..., 0]``) and ``∂a_i/∂γ'_j``
    (``[..., 1]``) to start Newton with (for instance those of a nearby solved pair); a pair whose
    blocks are not finite computes its own. With ``keep_jac`` the result's ``jac`` holds each
    pair's last blocks (NaN where it never had any).
    """
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    tau, wq, C = _to(("gauss", Q), _gauss_np(Q), dt, dev)
    K = Q + 2
    eps = float(torch.finfo(dt).eps)
    tiny = torch.finfo(dt).tiny
    B0 = _gauss_basis(Q, K, 0, dt, dev)
    B1 = _gauss_basis(Q, K, 1, dt, dev)
    key = ("colloc", Q, dt, str(dev))
    if key not in _CACHE:
        _CACHE[key] = (B0 @ C, B1 @ C, legendre_basis(torch.zeros(1, dtype=dt, device=dev), K, derivative=1)[0])
    GY, GYp, e0 = _CACHE[key]  # node values / derivatives of the correction per node acceleration; γ'(0) row
    line = _line_series(z0, z1, K)
    Ly = torch.einsum("qk,nkd->nqd", B0, line)
    Lyp = torch.einsum("qk,nkd->nqd", B1, line)
    # the starting curve's own accelerations: they reproduce it exactly when its degree is ≤ Q + 1
    x = torch.einsum("qk,nkd->nqd", _gauss_basis(Q, series.shape[1], 2, dt, dev), series)
    m = int(memory)
    hF = torch.zeros(n, m, Q * d, dtype=dt, device=dev)
    hG = torch.zeros(n, m, Q * d, dtype=dt, device=dev)
    f_prev = torch.zeros(n, Q * d, dtype=dt, device=dev)
    g_prev = torch.zeros(n, Q * d, dtype=dt, device=dev)
    nh = torch.zeros(n, dtype=torch.long, device=dev)
    sqrt_eps = eps**0.5
    x_acc = torch.zeros(n, Q * d, dtype=dt, device=dev)
    d_acc = torch.zeros(n, Q * d, dtype=dt, device=dev)
    alpha = torch.ones(n, dtype=dt, device=dev)
    target = max(0.05 * tol, 30 * eps)
    out_series = line.clone()
    length = torch.full((n,), float("nan"), dtype=dt, device=dev)
    change = torch.full((n,), float("inf"), dtype=dt, device=dev)
    change_e = torch.full((n,), float("inf"), dtype=dt, device=dev)
    drift = torch.full((n,), float("nan"), dtype=dt, device=dev)
    tail = torch.full((n,), float("nan"), dtype=dt, device=dev)
    best = torch.full((n,), float("inf"), dtype=dt, device=dev)
    first_rel = torch.full((n,), float("inf"), dtype=dt, device=dev)  # the starting curve's residual
    conv = torch.zeros(n, dtype=torch.bool, device=dev)
    dead = torch.zeros(n, dtype=torch.bool, device=dev)
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    grow = torch.zeros(n, dtype=torch.long, device=dev)
    evals = torch.zeros(n, dtype=torch.long, device=dev)
    budget = torch.zeros(n, dtype=torch.bool, device=dev)
    reasons = [""] * n
    # large systems (Q·d > _KRYLOV_SIZE): GMRES on the structured Jacobian instead of dense LU
    krylov = newton and Q * d > _KRYLOV_SIZE
    if newton:  # chord-Newton state: stored LU factors of I − ∂Φ/∂x (or its node blocks) per pair
        fresh = torch.ones(n, dtype=torch.bool, device=dev)
        last = torch.full((n,), float("inf"), dtype=dt, device=dev)
        LINFO = torch.ones(n, dtype=torch.int32, device=dev)
        if krylov:
            MZ = torch.zeros(n, Q, d, d, dtype=dt, device=dev)
            MV = torch.zeros(n, Q, d, d, dtype=dt, device=dev)
        else:
            LU = torch.zeros(n, Q * d, Q * d, dtype=dt, device=dev)
            PIV = torch.ones(n, Q * d, dtype=torch.int32, device=dev)
        if keep_jac:
            JAC = torch.full((n, Q, d, d, 2), float("nan"), dtype=dt, device=dev)

        def factor(rows, mz, mv):
            """Store the node blocks ``mz``, ``mv`` ``(k, Q, d, d)`` of the pairs ``rows``: for GMRES,
            or as the LU factors of ``I − ∂Φ/∂x``; non-finite blocks leave the pair without
            (``LINFO = 1``: it takes no step and computes fresh ones)."""
            huge = 1e100
            finj = (mz.abs() < huge).flatten(1).all(1) & (mv.abs() < huge).flatten(1).all(1)  # (also False for NaN)
            mz = torch.where(finj[:, None, None, None], mz, torch.zeros_like(mz))  # (LAPACK must not see NaN/inf)
            mv = torch.where(finj[:, None, None, None], mv, torch.zeros_like(mv))
            if keep_jac:
                JAC[rows] = torch.where(finj[:, None, None, None, None], torch.stack([mz, mv], -1), JAC[rows])
            if krylov:
                MZ[rows], MV[rows] = mz, mv
                LINFO[rows] = torch.where(finj, 0, 1).to(LINFO.dtype)
            else:
                # ∂Φ/∂x: block (q, p) = ∂a/∂γ(q)·GY[q, p] + ∂a/∂γ'(q)·GYp[q, p]
                JP = torch.einsum("nqij,qp->nqipj", mz, GY) + torch.einsum("nqij,qp->nqipj", mv, GYp)
                lu, piv, linfo = _lu_batch(torch.eye(Q * d, dtype=dt, device=dev) - JP.reshape(-1, Q * d, Q * d))
                LU[rows], PIV[rows], LINFO[rows] = lu, piv, torch.where(finj, linfo, torch.ones_like(linfo))

        if jac is not None:  # given blocks: the first iteration takes a chord step with them
            jac = jac.to(dt)
            have = torch.isfinite(jac).flatten(1).all(1)
            rows = torch.nonzero(have).reshape(-1)
            if rows.numel():
                factor(rows, jac[rows, ..., 0], jac[rows, ..., 1])
                fresh[rows] = LINFO[rows] != 0
    for _ in range(int(max_iter)):
        act = torch.nonzero(~(conv | dead)).reshape(-1)
        if act.numel() == 0:
            break
        if _expired(deadline):
            budget[act] = True
            dead[act] = True
            for i in act.tolist():
                reasons[i] = f"time budget exhausted during collocation at {Q} nodes (residual {float(change[i]):.2e})"
            break
        iters[act] += 1
        k = act.numel()
        ya = Ly[act] + torch.einsum("qp,npd->nqd", GY, x[act])
        ypa = Lyp[act] + torch.einsum("qp,npd->nqd", GYp, x[act])
        if newton:
            # Jacobians only for the pairs that need a fresh one (first iteration, a rejected step, or
            # slow progress); the others take a chord step with their stored factorisation
            fr = fresh[act]
            kf = int(fr.sum())
            evals[act] += Q * torch.where(fr, d + 1 if metric.is_embedded else 2 * d + 1, 1)
            yf, ypf = ya[fr], ypa[fr]
            hz = sqrt_eps * (1.0 + yf.abs().amax(-1, keepdim=True))  # (kf, Q, 1)
            if metric.is_embedded:
                g, norm, Az, Av = _newton_jets(metric, ya, ypa, fr, hz)
            else:
                hv = sqrt_eps * (1.0 + ypf.abs().amax(-1, keepdim=True))
                E = torch.eye(d, dtype=dt, device=dev)[:, None, None, :]  # (d, 1, 1, d)
                Ys = torch.cat([ya.reshape(-1, d), (yf[None] + hz[None] * E).reshape(-1, d),
                                yf[None].expand(d, -1, -1, -1).reshape(-1, d)], 0)
                Vs = torch.cat([ypa.reshape(-1, d), ypf[None].expand(d, -1, -1, -1).reshape(-1, d),
                                (ypf[None] + hv[None] * E).reshape(-1, d)], 0)
                gall, nall = _second_order(metric, acc, mfn, Ys, Vs)
                g = gall[: k * Q]
                if kf:
                    gp = gall[k * Q :].reshape(2 * d, kf, Q, d)
                    gf0 = g.reshape(k, Q, d)[fr]
                    Az = (gp[:d] - gf0[None]) / hz[None]  # Az[j, n, q, i] = ∂a_i/∂γ_j at node q
                    Av = (gp[d:] - gf0[None]) / hv[None]
                norm = _Norm(jac=nall.jac[: k * Q], ridge=nall.ridge) if nall.jac is not None else _Norm(m=nall.m[: k * Q])
        else:
            evals[act] += Q
            g, norm = _second_order(metric, acc, mfn, ya.reshape(-1, d), ypa.reshape(-1, d))
        g = g.reshape(k, Q, d)
        sp = norm(ypa.reshape(-1, d)).reshape(k, Q)
        L = (sp * wq).sum(1)
        coef = line[act] + torch.einsum("kq,nqd->nkd", C, g)  # one Picard step from the evaluated curve
        ynew = torch.einsum("qk,nkd->nqd", B0, coef)
        ypnew = torch.einsum("qk,nkd->nqd", B1, coef)
        dy = ynew - ya
        rel = norm(dy.reshape(-1, d)).reshape(k, Q).amax(1) / L.clamp_min(tiny)  # ODE residual (integral form)
        finite = torch.isfinite(rel) & torch.isfinite(coef).all((1, 2)) & (L > 0)
        out_series[act] = coef
        length[act] = L
        change[act] = torch.where(finite, rel, torch.full_like(rel, float("inf")))
        change_e[act] = dy.norm(dim=-1).amax(1)
        # speed conservation of the new curve (velocities in the metric just evaluated: first-order
        # accurate in the change, which is ≤ the target when the pair stops)
        spn = norm(ypnew.reshape(-1, d)).reshape(k, Q)
        Ln = (spn * wq).sum(1)
        drift[act] = (spn - Ln[:, None]).abs().amax(1) / Ln.clamp_min(tiny)
        mid = Q // 2
        # truncation estimate: the last two Legendre coefficients, in the metric at the middle node
        tnorm = _Norm(jac=norm.jac[mid::Q], ridge=norm.ridge) if norm.jac is not None else _Norm(m=norm.m[mid::Q])
        tail[act] = torch.maximum(tnorm(coef[:, -2]), tnorm(coef[:, -1])) / L.clamp_min(tiny)
        first_rel[act] = torch.where(iters[act] == 1, change[act], first_rel[act])
        worse = rel > best[act]
        grow[act] = torch.where(worse, grow[act] + 1, torch.zeros_like(grow[act]))
        best[act] = torch.minimum(best[act], rel)
        done = finite & (rel <= target)
        conv[act] = done
        # diverging: many iterations without a new best, or a residual far above both the best one
        # and the level at which the iteration is clearly near its fixed point
        bad = ~finite | (grow[act] >= (12 if newton else 8))
        if not newton:  # (Newton has its own line search)
            bad |= rel > 1e3 * best[act].clamp_min(1e-4)
            stalled = torch.zeros_like(bad)
        else:
            # Newton that has not brought the residual below 1/2 in _NEWTON_STALL iterations is
            # outside its basin at this resolution. Measured on the k-means batches of a {0,1,2}
            # digits VAE: of the pairs still above 1/2 after 6 iterations, none of 96 converged
            # later; the rule stops 284 of the 732 failing pairs early (fit 92 s -> 77 s, same labels)
            stalled = (iters[act] >= _NEWTON_STALL) & (best[act] > 0.5)
            bad |= stalled
        for j in torch.nonzero(bad & ~done).reshape(-1).tolist():
            i = int(act[j])
            dead[i] = True
            reasons[i] = (
                "collocation: non-finite values (decoder or acceleration)"
                if not bool(finite[j])
                else f"collocation Newton stalled (residual {float(best[i]):.2e} after {int(iters[i])} iterations)"
                if bool(stalled[j])
                else f"collocation fixed-point iteration diverges (residual {float(rel[j]):.2e}, best {float(best[i]):.2e})"
            )
        # next iterate: Anderson mixing of the residuals f = Φ(x) − x
        gf = g.reshape(k, -1)
        if newton:
            f = gf - x[act].reshape(k, -1)
            huge = 1e100
            if kf:
                # node blocks [n, q, i, j] = ∂a_i/∂γ_j at node q (mz), the same for γ' (mv)
                factor(act[fr], Az.permute(1, 2, 3, 0), Av.permute(1, 2, 3, 0))
            fin = (f.abs() < huge).all(1) & (LINFO[act] == 0)
            rhs = torch.where(fin[:, None], f, torch.zeros_like(f))
            if krylov:
                mz, mv = MZ[act], MV[act]

                def op(v):  # (I − ∂Φ/∂x) v without forming the matrix: O(Q²d) per product
                    v3 = v.reshape(k, Q, d)
                    u = torch.einsum("qp,npd->nqd", GY, v3)
                    up = torch.einsum("qp,npd->nqd", GYp, v3)
                    jv = (mz @ u.unsqueeze(-1)).squeeze(-1) + (mv @ up.unsqueeze(-1)).squeeze(-1)
                    return v - jv.reshape(k, -1)

                delta = _gmres(op, rhs, max_iter=80, rtol=1e-11)
            else:
                delta = _lu_solve_batch(LU[act], PIV[act], rhs.unsqueeze(-1)).squeeze(-1)
            good = fin & torch.isfinite(delta).all(1) & ~worse
            # the next iteration takes a chord step (the stored factorisation, one evaluation per node)
            # unless this step was rejected or a chord step cut the residual by less than 4: a wasted
            # chord step costs 1/(d+1) of a Newton step
            fresh[act] = ~good | (~fr & (rel > 0.25 * last[act]))
            last[act] = torch.where(good, rel, last[act])
            # accepted point: a full Newton step from it; rejected: halve the previous step
            alpha[act] = torch.where(good, torch.ones_like(alpha[act]), 0.5 * alpha[act])
            base_x = torch.where(good[:, None], x[act].reshape(k, -1), x_acc[act])
            base_d = torch.where(good[:, None], delta, d_acc[act])
            x_acc[act], d_acc[act] = base_x, base_d
            xn = base_x + alpha[act, None] * base_d
            for j in torch.nonzero(alpha[act] < 1e-3).reshape(-1).tolist():
                i = int(act[j])
                if not bool(conv[i]) and not bool(dead[i]):
                    dead[i] = True
                    reasons[i] = f"collocation Newton line search stalled (residual {float(best[i]):.2e})"
        else:
            f = gf - x[act].reshape(k, -1)
            hn = nh[act]
            use = hn > 0
            slot = (hn - 1) % m
            if bool(use.any()):
                rows = act[use]
                hF[rows, slot[use]] = f[use] - f_prev[rows]
                hG[rows, slot[use]] = gf[use] - g_prev[rows]
            dF, dG = hF[act], hG[act]  # (k, m, Qd); unused slots are zero
            A = dF @ dF.transpose(1, 2)
            reg = 1e-12 * torch.diagonal(A, dim1=1, dim2=2).amax(1).clamp_min(tiny)
            A = A + reg[:, None, None] * torch.eye(m, dtype=dt, device=dev)
            gam, info = _solve_batch(A, (dF @ f.unsqueeze(-1)))
            step = (dG.transpose(1, 2) @ gam).squeeze(-1)
            xn = gf - step
            ok = (info == 0) & torch.isfinite(xn).all(1) & (step.norm(dim=1) <= 1e2 * (f.norm(dim=1) + gf.norm(dim=1)))
            xn = torch.where(ok[:, None], xn, gf)
            f_prev[act], g_prev[act] = f, gf
            nh[act] = hn + 1
        x[act] = xn.reshape(k, Q, d)
    v0 = torch.einsum("k,nkd->nd", e0, out_series)
    for i in torch.nonzero(~conv & ~dead).reshape(-1).tolist():
        reasons[i] = (
            f"collocation: no convergence in {int(max_iter)} {'Newton' if newton else 'fixed-point'} iterations at {Q} nodes "
            f"(relative residual {float(change[i]):.2e})"
        )
    return dict(series=out_series, length=length, v0=v0, residual=change_e, rel=change, rel0=first_rel, drift=drift,
                tail=tail, conv=conv, dead=dead, iters=iters, reasons=reasons, evals=evals, budget=budget,
                jac=JAC if newton and keep_jac else None)


def _resolution_grid(nodes: int, max_nodes: int) -> list:
    """Collocation resolutions tried: ``nodes·2^(k/2)`` rounded to multiples of 4, up to ``max_nodes``."""
    grid, k = [], 0
    while True:
        q = int(4 * round(nodes * 2 ** (k / 2) / 4))
        if q >= max_nodes:
            break
        if not grid or q > grid[-1]:
            grid.append(q)
        k += 1
    return grid + [int(max_nodes)]


def _predict_nodes(series: torch.Tensor, err: torch.Tensor, tol: float, Q: int) -> torch.Tensor:
    """Collocation nodes at which the error measure ``err`` (relative; the larger of the trailing
    coefficients and the speed drift) should fall below ``tol/4``.

    The coefficients of an analytic curve decay geometrically, ``‖c_k‖ ~ ρ^{-k}``, with ``ρ`` set by
    the nearest complex singularity of the metric (Trefethen, *Approximation Theory and
    Approximation Practice*, ch. 8). The rate is fitted (least squares on the logarithms of the
    running maxima, which tame the alternation of even and odd terms) over the upper half of the
    series, and the current ``err`` extrapolated to ``tol/4``, with a 10 % margin. Pairs with no
    clear decay get ``2.2Q``; the prediction is capped at ``8Q``."""
    n, K, d = series.shape
    lo = K // 2
    e = series[:, lo:].norm(dim=-1).clamp_min(1e-300)
    env = torch.flip(torch.cummax(torch.flip(e, [1]), 1).values, [1]).log()  # max over k' ≥ k
    k = torch.arange(lo, K, dtype=series.dtype, device=series.device)
    kc = k - k.mean()
    slope = ((env - env.mean(1, keepdim=True)) * kc).sum(1) / (kc * kc).sum()
    ok = (slope < -1e-3) & torch.isfinite(slope) & torch.isfinite(err) & (err > 0)
    need = torch.log(torch.as_tensor(0.25 * tol, dtype=series.dtype) / err.clamp_min(1e-300)) / slope.clamp_max(-1e-3)
    extra = torch.where(ok, need.clamp_min(0.0), torch.full_like(need, float(Q)))
    return torch.clamp(torch.ceil((Q + extra) * 1.1), max=8 * Q).long()


def _blank_outcome(n, d, dt, dev, resolution):
    """The per-pair fields of a collocation result before any attempt (lengths NaN, residuals
    infinite, nothing certified; ``resolution``: the name of the nodes/segments counter)."""
    return dict(
        length=torch.full((n,), float("nan"), dtype=dt, device=dev),
        velocity0=torch.zeros(n, d, dtype=dt, device=dev),
        residual=torch.full((n,), float("inf"), dtype=dt, device=dev),
        rel_residual=torch.full((n,), float("inf"), dtype=dt, device=dev),
        speed_drift=torch.full((n,), float("nan"), dtype=dt, device=dev),
        converged=torch.zeros(n, dtype=torch.bool, device=dev),
        iterations=torch.zeros(n, dtype=torch.long, device=dev),
        **{resolution: torch.zeros(n, dtype=torch.long, device=dev)},
        evaluations=torch.zeros(n, dtype=torch.long, device=dev),
        budget=torch.zeros(n, dtype=torch.bool, device=dev),
    )


def collocate(
    metric: Metric,
    z0: torch.Tensor,
    z1: torch.Tensor,
    series: torch.Tensor,
    *,
    tol: float = 1e-6,
    nodes: int = 16,
    max_nodes: int = 64,
    max_iter: int = 30,
    deadline: Optional[float] = None,
    start_nodes: Optional[torch.Tensor] = None,
    newton: bool = False,
    start_jacobian: Optional[torch.Tensor] = None,
    keep_jacobian: bool = False,
    refine_failed: bool = True,
    fixed_point_iter: int = 10,
) -> CollocationResult:
    """Certify (and refine) connecting geodesics by Gauss–Legendre collocation.

    Args:
        metric: a latentgeo metric.
        z0, z1: ``(n, d)`` endpoints.
        series: ``(n, K, d)`` Legendre coefficients of initial curves from ``z0`` to ``z1`` (for
            instance :func:`nodes_to_series` of a :func:`minimize_spectral_energy` result).
        tol: certification tolerance (relative, see the module docstring).
        nodes: collocation nodes ``Q`` of the first attempt; unresolved pairs are retried at the
            resolution :func:`_predict_nodes` gives them (at least the next step of a grid
            ``nodes·2^(k/2)``; ``2Q`` after a failed Newton solve), up to ``max_nodes``.
        max_iter: Newton iterations per resolution.
        fixed_point_iter: fixed-point iterations of a pair's first attempt at a resolution (at most
            ``max_iter``); a pair they do not settle is solved by Newton at the same resolution.
            From a poor start (the straight line of a 2.8-rad arc on the sphere) Anderson mixing
            converges where damped Newton's line search stalls, hence 10 here;
            :func:`~latentgeo.geodesics.connecting_geodesic`, which collocates energy-minimised
            curves, passes its solver's ``fixed_point_iter`` (1 by default).
        deadline: ``time.perf_counter()`` time after which the pairs still unsolved stop
            (``budget`` marks them).
        start_nodes: ``(n,)`` per-pair nodes of the first attempt (overrides ``nodes`` there; a warm
            start from solved curves begins at the resolution they were certified at).
        newton: start with Newton instead of the fixed-point iteration (warm starts: at the fine
            resolutions they need, the fixed-point iteration rarely contracts).
        start_jacobian: ``(n, Q', d, d, 2)`` Newton node blocks for the first Newton attempt of
            each pair at its ``start_nodes`` (NaN: none), e.g. the ``jacobian`` of a result for
            nearby pairs: Newton starts with chord steps instead of a fresh Jacobian.
        keep_jacobian: return each pair's last node blocks in ``jacobian``.
        refine_failed: retry a pair whose Newton solve failed at twice the nodes (``False``: it
            stops there, for a caller with a better route for such pairs, such as the piecewise
            stage of :func:`~latentgeo.geodesics.connecting_geodesic`).

    Returns:
        :class:`CollocationResult`.
    """
    n, d = z0.shape
    dt, dev = z0.dtype, z0.device
    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    eps = float(torch.finfo(dt).eps)
    Kmax = max_nodes + 2
    out = dict(series=torch.zeros(n, Kmax, d, dtype=dt, device=dev), **_blank_outcome(n, d, dt, dev, "nodes"))
    reasons = [""] * n
    out["series"][:, : min(series.shape[1], Kmax)] = series[:, :Kmax]
    drift_tol = max(tol, 100 * eps)
    newt = torch.zeros(n, dtype=torch.bool, device=dev)
    if keep_jacobian:
        out["jacobian"] = torch.full((n, int(max_nodes), d, d, 2), float("nan"), dtype=dt, device=dev)
    first = torch.ones(n, dtype=torch.bool, device=dev)  # (start_jacobian applies to a pair's first attempt)

    grid = _resolution_grid(int(nodes), int(max_nodes))

    def attempt(sel, Q, mode):
        """One collocation attempt. Marks in ``newt`` the pairs to retry with Newton at the same Q;
        returns ``(pair, Q')`` for those to retry at a finer resolution (predicted from the decay of
        the Legendre coefficients)."""
        start = out["series"][sel].clone()
        jac = None
        if mode and start_jacobian is not None and start_nodes is not None:
            use = first[sel] & (torch.as_tensor(start_nodes, device=dev)[sel] == Q)
            if bool(use.any()) and start_jacobian.shape[1] >= Q:
                jac = torch.where(use[:, None, None, None, None], start_jacobian[sel, :Q].to(dt), float("nan"))
        if mode:
            first[sel] = False
        # the fixed-point iteration gets a few iterations (fixed_point_iter): where it contracts
        # well it needs 1-2; pairs it does not settle go to Newton at the same resolution
        r = _picard(metric, acc, mfn, z0[sel], z1[sel], start, Q, tol, max_iter if mode else min(max_iter, fixed_point_iter), newton=mode,
                    deadline=deadline, jac=jac, keep_jac=keep_jacobian)
        if keep_jacobian:  # (the blocks belong to this attempt's resolution, which out["nodes"] records)
            out["jacobian"][sel] = float("nan") if r["jac"] is None else _pad_nodes(r["jac"], int(max_nodes))
        ok = r["conv"] & (r["tail"] <= tol) & (r["drift"] <= drift_tol)
        # a diverged attempt keeps its starting curve (the diverged iterate is worthless), and so
        # does a fixed-point attempt whose last residual rose above its start's: Newton, next,
        # starts from the start there, else from the last iterate (measured: from a diverging
        # iterate it can fail where it converges from the start)
        keep = (~r["dead"] & (mode | (r["rel"] <= r["rel0"]))) | ok
        out["series"][sel] = torch.where(keep[:, None, None], _pad(r["series"], Kmax), start)
        out["length"][sel] = r["length"]
        out["velocity0"][sel] = r["v0"]
        out["residual"][sel] = r["residual"]
        out["rel_residual"][sel] = torch.maximum(r["rel"], r["tail"].nan_to_num(float("inf")))
        out["speed_drift"][sel] = r["drift"]
        out["iterations"][sel] += r["iters"]
        out["evaluations"][sel] += r["evals"]
        out["budget"][sel] |= r["budget"]
        out["nodes"][sel] = Q
        out["converged"][sel[ok]] = True
        # (the speed drift, a derivative, sits ~100x above the trailing coefficients and decays at
        # their rate: it is what sets the resolution)
        want = _predict_nodes(r["series"], torch.maximum(r["tail"], r["drift"] * (tol / drift_tol)), tol, Q)
        nxt = []
        for j, i in enumerate(sel.tolist()):
            if bool(ok[j]):
                reasons[i] = ""
                continue
            reasons[i] = r["reasons"][j] or (
                f"collocation not resolved with {Q} nodes (speed drift {float(r['drift'][j]):.2e}, "
                f"trailing coefficients {float(r['tail'][j]):.2e}; tol {tol:g})"
            )
            if bool(r["budget"][j]):
                continue
            if not mode and not bool(r["conv"][j]):
                newt[i] = True  # the fixed-point iteration diverged or is slow: Newton, same resolution
                continue
            # converged but unresolved: the resolution its coefficients' decay asks for (at least
            # the next step of the grid); Newton failed at this resolution (a curve with sharp
            # features the Q-node polynomial cannot follow): twice the nodes, from the kept curve
            if not refine_failed and not bool(r["conv"][j]):
                continue
            floor_q = 2 * Q if not bool(r["conv"][j]) else Q + 1
            q = max(floor_q, int(want[j]) if bool(r["conv"][j]) else 0)
            nq = next((g for g in grid if g >= q), None)
            if nq is not None:
                nxt.append((i, nq))
        return nxt

    pending = {}  # resolution -> pairs to solve at it
    if start_nodes is None:
        pending[int(nodes)] = list(range(n))
    else:
        for i, q in enumerate(torch.as_tensor(start_nodes).reshape(-1).tolist()):
            pending.setdefault(int(min(max(int(q), 4), max_nodes)), []).append(i)
    if newton or fixed_point_iter <= 0:
        newt[:] = True
    with torch.no_grad():
        while pending:
            Q = min(pending)
            todo = torch.tensor(sorted(set(pending.pop(Q))), dtype=torch.long, device=dev)
            nxt = []
            plain = todo[~newt[todo]]
            if plain.numel():
                nxt = attempt(plain, Q, False)
            nsel = todo[newt[todo]]  # (including those the plain attempt just sent to Newton)
            if nsel.numel():
                nxt += attempt(nsel, Q, True)
            for i, q in nxt:
                pending.setdefault(q, []).append(i)
    return CollocationResult(reasons=reasons, **out)
