"""Pure batched geometry for the walks: the factor ``L`` (``L Lᵀ = M⁻¹``), the Brownian drift,
the divergence of ``M⁻¹``, and the one place the walks call the exponential map.

All functions take the metric's pure functions (``metric.tensor_fn()``,
``latentgeo.geodesics.acceleration_fn(metric)``) and do no input checks (hot path).
"""

from __future__ import annotations

from typing import Callable

import torch

from .._autodiff import unpack_hessian

__all__ = ["inverse_factor", "brownian_drift", "brownian_terms_fn", "metric_derivatives_fn", "inverse_metric_divergence",
           "exp_step"]


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


def brownian_terms_fn(metric) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A pure function ``z (N, d) -> (L (N, d, d), ok (N,), b (N, d))``: the diffusion factor
    (``L Lᵀ = M⁻¹``) and the Brownian drift of :func:`brownian_drift`, in the fewest passes.

    * general metrics: ``M`` from ``metric.tensor_fn()``, ``b`` from one batched acceleration
      call over ``N·d`` rows (autodiff Christoffel symbols);
    * embedded metrics (``M = JᵀJ + ridge·I``) with the decoder's Hessian-mode jet
      (:meth:`~latentgeo.metric.PullbackMetric.hessian_jet`: ``J`` and ``H_jk = ∂²g[e_j, e_k]``,
      ``j ≤ k``, in ``1 + d + d(d+1)/2`` rows a point): ``Σ_m ∂²g[l_m, l_m] = Σ_jk (M⁻¹)_jk H_jk``
      and ``b = −½ J⁺ Σ_m ∂²g[l_m, l_m]`` (the acceleration is linear in ``∂²g``);
    * other embedded metrics, ``d ≤ 2``: one Taylor-mode jet over the
      ``d(d+1)/2`` directions ``e_j`` and ``e_j + e_k``, which gives ``J`` (so ``M``) and, by
      polarisation, ``H_jk``, then the same sums;
    * other embedded metrics, ``d > 2``: one jet at ``z`` for ``J`` and ``M``, one over the ``N·d``
      rows ``(z, l_m)`` for ``∂²g[l_m, l_m]``, and one least-squares solve per point.
    """
    from ..geodesics import acceleration_fn, acceleration_from_jet

    if not metric.is_embedded:
        tfn = metric.tensor_fn()
        acc = acceleration_fn(metric)

        def general(z):
            lfac, ok = inverse_factor(tfn(z))
            return lfac, ok, brownian_drift(acc, z, lfac)

        return general
    ridge = float(metric.ridge)

    def gram(jac):
        m = jac.transpose(1, 2) @ jac
        if ridge > 0.0:
            m = m + ridge * torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        return m

    def polarised(z):
        n, d = z.shape
        eye = torch.eye(d, dtype=z.dtype, device=z.device)
        pairs = [(j, k) for j in range(d) for k in range(j + 1, d)]
        dirs = torch.cat([eye] + [(eye[j] + eye[k])[None] for j, k in pairs])  # (P, d)
        p = dirs.shape[0]
        _, jac, h = metric.jet(z.repeat(p, 1), dirs.repeat_interleave(n, dim=0))
        h = h.reshape(p, n, -1)
        jac = jac[:n]
        lfac, ok = inverse_factor(gram(jac))
        a = lfac @ lfac.transpose(1, 2)  # M⁻¹
        hsum = torch.einsum("nj,njk->nk", torch.diagonal(a, dim1=1, dim2=2), h[:d].transpose(0, 1))
        for i, (j, k) in enumerate(pairs):  # 2 A_jk H_jk, H_jk = (h(e_j + e_k) − H_jj − H_kk) / 2
            hsum = hsum + a[:, j, k, None] * (h[d + i] - h[j] - h[k])
        return lfac, ok, 0.5 * acceleration_from_jet(jac, hsum, ridge)

    def two_pass(z):
        n, d = z.shape
        _, jac, _ = metric.jet(z, torch.zeros_like(z))
        lfac, ok = inverse_factor(gram(jac))
        _, _, h = metric.jet(z.repeat_interleave(d, dim=0), lfac.transpose(1, 2).reshape(n * d, d))
        hsum = h.reshape(n, d, -1).sum(1)
        return lfac, ok, 0.5 * acceleration_from_jet(jac, hsum, ridge)

    def hessian(z):
        r = metric.hessian_jet(z)
        if r is None:
            return None
        _, jac, hp = r
        lfac, ok = inverse_factor(gram(jac))
        a = lfac @ lfac.transpose(1, 2)  # M⁻¹
        hsum = torch.einsum("nkab,nab->nk", unpack_hessian(hp), a)  # Σ_jk (M⁻¹)_jk H_jk
        return lfac, ok, 0.5 * acceleration_from_jet(jac, hsum, ridge)

    def embedded(z):
        r = hessian(z)
        if r is not None:
            return r
        return polarised(z) if z.shape[1] <= 2 else two_pass(z)

    return embedded


def metric_derivatives_fn(metric):
    """A pure function ``z (N, d) -> (M (N, d, d), dM (N, d, d, d))`` with ``dM[:, j] = ∂_j M``, from
    one Hessian-mode jet of an embedded metric (``M = JᵀJ + ridge·I``, so
    ``∂_j M = H_jᵀ J + Jᵀ H_j`` with ``(H_j)_{Ki} = ∂²g_K[e_i, e_j]``), or ``None`` when the metric
    is not embedded; the function returns ``None`` where the decoder has no such jet."""
    if not getattr(metric, "is_embedded", False) or not hasattr(metric, "hessian_jet"):
        return None
    ridge = float(getattr(metric, "ridge", 0.0))

    def fn(z):
        r = metric.hessian_jet(z)
        if r is None:
            return None
        _, jac, hp = r
        m = jac.transpose(1, 2) @ jac
        if ridge > 0.0:
            m = m + ridge * torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        t = torch.einsum("nkaj,nkb->njab", unpack_hessian(hp), jac)
        return m, t + t.transpose(-1, -2)

    return fn


def inverse_metric_divergence(tensor_fn: Callable, z: torch.Tensor, m: torch.Tensor, dm=None) -> torch.Tensor:
    """``(∇·M⁻¹)ᵢ = Σ_j ∂_j (M⁻¹)_{ij} = −Σ_j (M⁻¹ (∂_j M) M⁻¹)_{ij}``, shape ``(N, d)``.

    From ``dm (N, d, d, d)`` (``dm[:, j] = ∂_j M``, :func:`metric_derivatives_fn`) when given, else
    ``d`` forward-mode derivatives of ``tensor_fn`` (rows of the batch are independent).
    This is the term of the position-dependent Langevin drift that makes its invariant density
    the target (Xifara, Sherlock, Livingstone, Byrne & Girolami 2014, eq. 6; Girolami &
    Calderhead's MMALA drift written correctly).
    """
    n, d = z.shape
    minv = torch.linalg.inv(m)
    if dm is not None:
        return -torch.einsum("nia,njab,nbj->ni", minv, dm, minv)
    div = torch.zeros(n, d, dtype=z.dtype, device=z.device)
    for j in range(d):
        e = torch.zeros_like(z)
        e[:, j] = 1.0
        _, dmj = torch.func.jvp(tensor_fn, (z,), (e,))  # ∂_j M, (N, d, d)
        div = div - (minv @ dmj @ minv)[:, :, j]
    return div


def exp_step(metric, z: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Exp_z(v) (N, d), ok (N,))``: the walks' only call of the exponential map."""
    from ..geodesics import exp_map

    res = exp_map(metric, z, v, rtol=1e-6, atol=1e-9)
    end = res.z1
    ok = torch.as_tensor(res.converged, device=z.device).reshape(-1) & torch.isfinite(end).all(1)
    return end, ok
