"""Right-hand side of the geodesic equation, batched.

A geodesic ``γ`` of a metric ``M`` solves ``γ'' = a(γ, γ')`` with
``aⁱ(z, v) = −Γⁱ_{jk}(z) vʲ vᵏ``.

* Embedded metrics (``M = JᵀJ`` of an embedding ``g: Rᵈ → Rᴷ``; expected/deterministic
  pullbacks, Bernoulli/categorical Fisher–Rao): the curve ``g(γ)`` has acceleration
  ``J γ'' + ∂²g[γ', γ']``, and a geodesic is a curve whose embedded acceleration is normal
  to the image, ``Jᵀ(J γ'' + ∂²g[γ', γ']) = 0``, so

      γ'' = −(JᵀJ)⁻¹ Jᵀ ∂²g[γ', γ'] = −J⁺ ∂²g[γ', γ'],

  a linear least-squares problem solved through a thin QR of ``J`` (conditioning ``κ(J)``,
  not ``κ(J)²``). ``∂²g[v, v]`` is one nested :func:`torch.func.jvp`; no ``∂M/∂z`` and no
  Christoffel tensor are formed (Arvanitidis, Hansen, Hauberg, ICLR 2018, eq. 8 in this
  form; do Carmo, *Riemannian Geometry*, ch. 3 for the normal-acceleration characterisation).
  ``J`` and ``∂²g[v, v]`` come from the metric's own jet (:meth:`PullbackMetric.jet
  <latentgeo.metric.PullbackMetric.jet>`).
* General metric fields (``MetricField``, Gaussian Fisher–Rao pullback): Christoffel symbols
  of the second kind from forward-mode autodiff of ``M`` (:meth:`Metric.tensor_fn
  <latentgeo.metric.Metric.tensor_fn>`),
  ``Γⁱ_{jk} = ½ Mⁱˡ (∂_j M_{lk} + ∂_k M_{lj} − ∂_l M_{jk})``, contracted directly:
  ``a = −M⁻¹ (∂M[v] v − ½ ∇_z(vᵀ M v))``.

All functions are pure torch and composable with :mod:`torch.func` (the shooting solver
differentiates through them in forward mode to get the variational equations).

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics import geodesic_acceleration
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> z = torch.randn(4, 2, dtype=torch.float64); v = torch.randn(4, 2, dtype=torch.float64)
    >>> bool(geodesic_acceleration(metric, z, v).abs().max() < 1e-12)   # linear map: straight lines
    True
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp, vmap

from .._validation import as_latent_batch
from ..metric import Metric

__all__ = ["geodesic_acceleration", "christoffel", "acceleration_fn", "acceleration_from_jet"]


def _check_metric(metric) -> Metric:
    if not isinstance(metric, Metric):
        raise ValueError(
            f"expected a latentgeo Metric (PullbackMetric or MetricField), got {type(metric).__name__}"
        )
    return metric


def _metric_derivatives(mfn, z):
    """``M (N, d, d)`` and ``dM (N, d, d, d)`` with ``dM[n, k, i, j] = ∂_k M_ij``."""
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    tang = eye[:, None, :].expand(d, n, d)
    m, dm = vmap(lambda t: jvp(mfn, (z,), (t,)), out_dims=(None, 0))(tang)
    return m, dm.permute(1, 0, 2, 3)


def matvec(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a (N, K, d) @ x (N, d) -> (N, K)``, unrolled over ``d ≤ 4`` (in 2-D about 2× faster on CPU
    than the batched matrix-vector product, whose per-matrix kernel dominates for ``d`` this small)."""
    d = x.shape[-1]
    if d > 4:
        return (a @ x.unsqueeze(-1)).squeeze(-1)
    y = a[..., 0] * x[:, :1]
    for i in range(1, d):
        y = y + a[..., i] * x[:, i : i + 1]
    return y


def acceleration_from_jet(jac: torch.Tensor, h: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """``γ'' = −(JᵀJ + ridge·I)⁻¹ Jᵀ h`` from ``J (N, K, d)`` and ``h = ∂²g[v, v] (N, K)``.

    Without a ridge this is the least-squares solution ``−J⁺h`` through a thin QR of ``J``
    (conditioning ``κ(J)``, not ``κ(J)²``); with a ridge, the regularised normal equations.
    """
    if ridge > 0.0:
        jt = jac.transpose(1, 2)
        m = jt @ jac + ridge * torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        rhs = (jt @ h.unsqueeze(-1)).squeeze(-1)
        return -torch.linalg.solve(m, rhs)
    q, r = torch.linalg.qr(jac, mode="reduced")  # (N, K, d), (N, d, d)
    qh = q.transpose(1, 2) @ h.unsqueeze(-1)  # (N, d, 1)
    return -torch.linalg.solve_triangular(r, qh, upper=True).squeeze(-1)


def acceleration_and_velocity_jacobian(jac: torch.Tensor, hv: torch.Tensor, v: torch.Tensor, ridge: float = 0.0):
    """``γ'' = −J⁺ H v`` and its exact Jacobian in the velocity, ``∂γ''/∂v = −2 J⁺ H``.

    From ``J (N, K, d)`` and the velocity's Hessian column ``H (N, K, d)``, ``H[n, :, i] =
    ∂²g[v_n, e_i]`` (a mixed jet: :meth:`~latentgeo.metric.PullbackMetric.jet` with ``mixed``):
    the acceleration is quadratic in ``v``, so one factorisation of ``J`` gives both. Returns
    ``(a (N, d), Av (N, d, d))``, ``Av[n, i, j] = ∂a_i/∂v_j``.
    """
    rhs = torch.cat([matvec(hv, v).unsqueeze(-1), 2.0 * hv], -1)  # (N, K, 1 + d)
    if ridge > 0.0:
        jt = jac.transpose(1, 2)
        m = jt @ jac + ridge * torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        x = -torch.linalg.solve(m, jt @ rhs)
    else:
        q, r = torch.linalg.qr(jac, mode="reduced")
        x = -torch.linalg.solve_triangular(r, q.transpose(1, 2) @ rhs, upper=True)
    return x[..., 0], x[..., 1:]


def acceleration_fn(metric: Metric) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A pure function ``(z (N, d), v (N, d)) -> γ'' (N, d)`` for ``metric`` (no input checks).

    Embedded metrics use the least-squares form ``−J⁺ ∂²g[v, v]`` from the metric's
    :meth:`~latentgeo.metric.PullbackMetric.jet` (one Taylor-mode pass through the decoder's fx
    trace, or nested ``jvp``); others contract autodiff Christoffel symbols of
    :meth:`~latentgeo.metric.Metric.tensor_fn`. Safe under :func:`torch.func.jvp`/``vmap``.
    """
    _check_metric(metric)
    ridge = float(metric.ridge)
    if metric.is_embedded:

        def acc(z, v):
            _, jac, h = metric.jet(z, v)  # (N, K), (N, K, d), (N, K)
            return acceleration_from_jet(jac, h, ridge)

        return acc

    from .._autodiff import nested_forward_hazard

    hazard = nested_forward_hazard(getattr(metric, "decoder", None))
    if hazard:
        raise NotImplementedError(f"the geodesic acceleration of a {type(metric).__name__} ({metric.kind!r}) takes "
                                  f"forward-mode derivatives of its tensor: {hazard}")
    mfn = metric.tensor_fn()

    def acc_general(z, v):
        m, dm = _metric_derivatives(mfn, z)
        t1 = torch.einsum("nkij,nk,nj->ni", dm, v, v)  # (∂_v M) v
        t2 = 0.5 * torch.einsum("nlkj,nk,nj->nl", dm, v, v)  # ½ ∇(vᵀMv)
        return -torch.linalg.solve(m, t1 - t2)

    return acc_general


def geodesic_acceleration(metric: Metric, z, v) -> torch.Tensor:
    """Geodesic acceleration ``γ'' = −Γ(z)[v, v]`` for batches of points and velocities.

    Args:
        metric: a :class:`~latentgeo.metric.PullbackMetric` or :class:`~latentgeo.metric.MetricField`.
        z: ``(N, d)`` points (or ``(d,)``).
        v: ``(N, d)`` velocities (same shape as ``z``).

    Returns:
        ``(N, d)`` accelerations (``(d,)`` for a single point).
    """
    _check_metric(metric)
    z, single = as_latent_batch(z, metric.latent_dim, name="z")
    v, single_v = as_latent_batch(v, metric.latent_dim, name="v")
    if z.shape != v.shape:
        raise ValueError(f"z and v must have the same shape, got {tuple(z.shape)} and {tuple(v.shape)}")
    v = v.to(z.dtype)
    a = acceleration_fn(metric)(z, v)
    return a[0] if single else a


def christoffel(metric: Metric, z) -> torch.Tensor:
    """Christoffel symbols of the second kind ``Γ[n, i, j, k] = Γⁱ_{jk}(z_n)``, shape ``(N, d, d, d)``.

    Computed from forward-mode autodiff of the metric tensor (``O(d³)`` memory per point):
    meant for tests, analysis and small ``d``; the solvers use :func:`geodesic_acceleration`.
    """
    _check_metric(metric)
    z, single = as_latent_batch(z, metric.latent_dim, name="z")
    m, dm = _metric_derivatives(metric.tensor_fn(), z)
    # lower-index symbols Γ_{l jk} = ½ (∂_j M_{lk} + ∂_k M_{lj} − ∂_l M_{jk})
    low = 0.5 * (dm.permute(0, 2, 1, 3) + dm.permute(0, 2, 3, 1) - dm)  # indices (n, l, j, k)
    d = z.shape[1]
    gam = torch.linalg.solve(m, low.reshape(z.shape[0], d, d * d)).reshape(z.shape[0], d, d, d)
    return gam[0] if single else gam
