"""Amortised planar and radial flows (Rezende & Mohamed 2015) as ``torch.distributions.Transform``.

The parameters are *per sample*: batched tensors (typically slices of the encoder's output)
that broadcast against the input from the right, so one transform object carries a different
flow for every data item. Invertibility is built in:

* planar ``f(z) = z + û tanh(wᵀz + b)`` with ``û = u + (m(wᵀu) − wᵀu) w/|w|²``,
  ``m(a) = −1 + softplus(a)``, so ``wᵀû > −1``;
  ``log|det J| = log(1 + (1 − tanh²(wᵀz + b)) wᵀû)``.
  The inverse solves the scalar equation ``α + wᵀû tanh(α + b) = wᵀy`` for ``α = wᵀz``
  (strictly increasing, root bracketed in ``wᵀy ± |wᵀû|``) by Newton's method safeguarded with
  bisection, then ``z = y − û tanh(α + b)``; a last Newton step is taken with autograd on, so
  gradients through the inverse follow the implicit function theorem.
* radial ``f(z) = z + β h(r)(z − z₀)``, ``h = 1/(α + r)``, ``r = |z − z₀|``, with
  ``α = softplus(α̂) > 0`` and ``β = −α + softplus(β̂) > −α``;
  ``log|det J| = (d − 1) log(1 + βh) + log(1 + βh − βh²r)``. The inverse is analytic:
  ``r`` is the positive root of ``r² + (α + β − |y − z₀|) r − α|y − z₀| = 0``.

Example:
    >>> import torch
    >>> from latentgeo.flows import PlanarTransform
    >>> params = torch.randn(5, PlanarTransform.n_params(2))   # e.g. from an encoder
    >>> t = PlanarTransform.from_params(params)
    >>> z = torch.randn(3, 5, 2)                                # 3 samples for each of 5 items
    >>> y = t(z)
    >>> t.log_abs_det_jacobian(z, y).shape
    torch.Size([3, 5])
    >>> bool(torch.allclose(t.inv(y), z, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
from torch.distributions import Transform, constraints
from torch.nn import functional as F

__all__ = ["PlanarTransform", "RadialTransform"]


def _check_params(params, width: int, name: str) -> torch.Tensor:
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (..., {width}), got {type(params).__name__}")
    if params.dim() < 1 or params.shape[-1] != width:
        raise ValueError(f"{name} must have last dimension {width}, got shape {tuple(params.shape)}")
    if not bool(torch.isfinite(params).all()):
        raise ValueError(f"{name} contains NaN/inf")
    return params


class PlanarTransform(Transform):
    """Planar flow ``z + û tanh(wᵀz + b)`` with per-sample ``u, w (..., d)``, ``b (...)``.

    ``u`` is the raw (unconstrained) vector; the constrained ``û`` (:attr:`u_hat`) ensures
    ``wᵀû ≥ −1`` and so invertibility. ``inverse_tol``/``max_iter`` control the root solve.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(self, u, w, b, cache_size: int = 0, max_iter: int = 100):
        super().__init__(cache_size=cache_size)
        for name, v in (("u", u), ("w", w), ("b", b)):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(v).__name__}")
        if u.shape[-1:] != w.shape[-1:]:
            raise ValueError(f"u and w must share their last dimension, got {tuple(u.shape)} and {tuple(w.shape)}")
        self.w, self.b = w, b
        wu = (w * u).sum(-1, keepdim=True)
        self.u_hat = u + (-1.0 + F.softplus(wu) - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
        self.max_iter = max_iter

    @staticmethod
    def n_params(dim: int) -> int:
        """Width of a flat parameter vector ``[u, w, b]`` for dimension ``dim``: ``2 dim + 1``."""
        return 2 * dim + 1

    @classmethod
    def from_params(cls, params: torch.Tensor, **kwargs) -> "PlanarTransform":
        """Build from flat parameters ``(..., 2d + 1)`` laid out as ``[u, w, b]``."""
        if not isinstance(params, torch.Tensor) or params.dim() < 1 or (params.shape[-1] - 1) % 2 or params.shape[-1] < 3:
            shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
            raise ValueError(f"params must have last dimension 2d + 1 (d ≥ 1), got {shape}")
        _check_params(params, params.shape[-1], "params")
        d = (params.shape[-1] - 1) // 2
        return cls(params[..., :d], params[..., d : 2 * d], params[..., 2 * d], **kwargs)

    def _call(self, x):
        a = (self.w * x).sum(-1) + self.b
        return x + self.u_hat * torch.tanh(a).unsqueeze(-1)

    def _inverse(self, y):
        wy = (self.w * y).sum(-1)
        m = (self.w * self.u_hat).sum(-1)  # wᵀû > −1
        b = self.b
        wy, m, b = torch.broadcast_tensors(wy, m, b)
        tol = 1e-12 if y.dtype == torch.float64 else 1e-6

        def g(a):
            return a + m * torch.tanh(a + b) - wy

        with torch.no_grad():
            lo, hi = wy - m.abs() - 1.0, wy + m.abs() + 1.0
            a = wy.clone()
            for _ in range(self.max_iter):
                ga = g(a)
                lo = torch.where(ga < 0, a, lo)
                hi = torch.where(ga > 0, a, hi)
                step = ga / (1.0 + m * (1.0 - torch.tanh(a + b) ** 2))
                a_new = a - step
                outside = (a_new <= lo) | (a_new >= hi) | ~torch.isfinite(a_new)
                a_new = torch.where(outside, 0.5 * (lo + hi), a_new)
                if bool((ga.abs() <= tol * (1.0 + wy.abs())).all()):
                    break
                a = a_new
        # one Newton step with autograd on: exact value, implicit-function gradients
        a = a - g(a) / (1.0 + m * (1.0 - torch.tanh(a + b) ** 2))
        return y - self.u_hat * torch.tanh(a + b).unsqueeze(-1)

    def log_abs_det_jacobian(self, x, y):
        a = (self.w * x).sum(-1) + self.b
        m = (self.w * self.u_hat).sum(-1)
        return torch.log1p((1.0 - torch.tanh(a) ** 2) * m)


class RadialTransform(Transform):
    """Radial flow ``z + β (z − z₀)/(α + |z − z₀|)`` with per-sample ``z₀ (..., d)``, raw ``α̂, β̂ (...)``.

    ``α = softplus(α̂)`` and ``β = −α + softplus(β̂)`` (:attr:`alpha`, :attr:`beta`) make it invertible.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(self, z0, alpha_raw, beta_raw, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        for name, v in (("z0", z0), ("alpha_raw", alpha_raw), ("beta_raw", beta_raw)):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(v).__name__}")
        self.z0 = z0
        self.alpha = F.softplus(alpha_raw)
        self.beta = -self.alpha + F.softplus(beta_raw)

    @staticmethod
    def n_params(dim: int) -> int:
        """Width of a flat parameter vector ``[z₀, α̂, β̂]`` for dimension ``dim``: ``dim + 2``."""
        return dim + 2

    @classmethod
    def from_params(cls, params: torch.Tensor, **kwargs) -> "RadialTransform":
        """Build from flat parameters ``(..., d + 2)`` laid out as ``[z₀, α̂, β̂]``."""
        if not isinstance(params, torch.Tensor) or params.dim() < 1 or params.shape[-1] < 3:
            shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
            raise ValueError(f"params must have last dimension d + 2 (d ≥ 1), got {shape}")
        _check_params(params, params.shape[-1], "params")
        d = params.shape[-1] - 2
        return cls(params[..., :d], params[..., d], params[..., d + 1], **kwargs)

    @staticmethod
    def _norm(v):
        sq = (v * v).sum(-1)
        pos = sq > 0
        return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))

    def _call(self, x):
        diff = x - self.z0
        r = self._norm(diff)
        return x + (self.beta / (self.alpha + r)).unsqueeze(-1) * diff

    def _inverse(self, y):
        diff = y - self.z0
        ry = self._norm(diff)
        p = self.alpha + self.beta - ry
        disc = torch.sqrt(p * p + 4.0 * self.alpha * ry)
        # positive root of r² + p r − α r_y = 0, without cancellation for either sign of p
        safe = torch.where(p > 0, p + disc, torch.ones_like(p))
        r = torch.where(p > 0, 2.0 * self.alpha * ry / safe, 0.5 * (disc - p))
        return self.z0 + diff / (1.0 + self.beta / (self.alpha + r)).unsqueeze(-1)

    def log_abs_det_jacobian(self, x, y):
        d = x.shape[-1]
        r = self._norm(x - self.z0)
        h = 1.0 / (self.alpha + r)
        bh = self.beta * h
        return (d - 1) * torch.log1p(bh) + torch.log1p(bh - self.beta * h * h * r)
