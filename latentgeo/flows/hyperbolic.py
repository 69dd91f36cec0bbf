"""Hyperbolic normalizing flows on the hyperboloid (Bose et al., ICML 2020).

Both layers map points ``x ∈ H^n_c`` (ambient coordinates ``(..., n+1)``) to points and return
``log|det|`` of the map with respect to the Riemannian volume, which equals the volume change
in tangent (orthonormal, exp₀) coordinates at the origin:

* :class:`TangentCoupling` (TC): ``exp₀ ∘ g ∘ log₀`` with an affine coupling ``g`` on ``T_o H``:
  ``u₂' = u₂ ⊙ exp(s(u₁, h)) + t(u₁, h)``;
  ``log det = Σ s + (n − 1)[ℓ(√c|g(u)|) − ℓ(√c|u|)]`` with ``ℓ(r) = log(sinh r / r)``, the
  volume terms of ``exp₀`` at ``g(u)`` and of ``log₀`` at ``x``.
* :class:`WrappedHyperboloidCoupling` (WHC): the second block of ``u = log₀ x`` is scaled,
  wrapped onto the lower-dimensional hyperboloid ``H^{n−d}``, moved by the isometry carrying
  its origin to ``t̂ = exp₀(t(u₁, h))`` (exp map ∘ parallel transport from the origin), and
  read back with ``log₀``:
  ``u₂' = log₀(exp_{t̂}(PT_{o→t̂}(u₂ ⊙ exp s)))``;
  ``log det = Σ s + (n − d − 1)[ℓ(√c|u₂ ⊙ e^s|) − ℓ(√c|u₂'|)] + (n − 1)[ℓ(√c|u'|) − ℓ(√c|u|)]``.

When the transformed block is one-dimensional (``n − d = 1``: always for ``n = 2``, and for
``n = 3`` with ``parity=0``), ``H^1`` is a line on which ``exp_{t̂} ∘ PT_{o→t̂}`` is the translation
by ``t``, so a WHC layer coincides with a TC layer there (in Bose et al.'s formulation too); in
particular a 2-D hyperbolic latent gets the same flow from ``"tc"`` and ``"whc"``.

``h`` is an optional context (the encoder's features), broadcast against the input's batch.
The coupling networks' last layers start at zero, so a fresh layer is the identity.

Example:
    >>> import torch
    >>> from latentgeo.flows import TangentCoupling
    >>> from latentgeo.distributions import lorentz
    >>> f = TangentCoupling(3, context_dim=4, parity=0).double()
    >>> x = lorentz.exp0(torch.randn(6, 3, dtype=torch.float64), 1.0)
    >>> y, logdet = f(x, torch.randn(6, 4, dtype=torch.float64))
    >>> y.shape, logdet.shape
    (torch.Size([6, 4]), torch.Size([6]))
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..distributions import lorentz as L

__all__ = ["TangentCoupling", "WrappedHyperboloidCoupling", "coupling_net"]


def coupling_net(in_dim: int, out_dim: int, hidden: Sequence[int] = (32, 32)) -> nn.Sequential:
    """``Linear → tanh → … → Linear`` with a zero-initialised output layer (identity flow at start)."""
    widths = (in_dim, *hidden, out_dim)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def _posint(v, name, least=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ValueError(f"{name} must be an integer ≥ {least}, got {v!r}")
    return v


class _Coupling(nn.Module):
    """Shared bookkeeping: the split of ``T_o H^n`` coordinates, the context, the conditioner."""

    def __init__(self, dim: int, context_dim: int = 0, parity: int = 0, hidden=(32, 32), c: float = 1.0,
                 scale_bound: float = 3.0):
        super().__init__()
        _posint(dim, "dim", 2)
        _posint(context_dim, "context_dim", 0)
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise ValueError(f"c must be a positive number (curvature −c), got {c!r}")
        self.dim, self.context_dim, self.parity, self.c = dim, context_dim, parity, float(c)
        self.scale_bound = float(scale_bound)
        idx = torch.arange(dim)
        first = idx[idx % 2 == parity]
        second = idx[idx % 2 != parity]
        self.register_buffer("idx1", first, persistent=False)
        self.register_buffer("idx2", second, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(torch.cat([first, second])), persistent=False)
        self.d1, self.d2 = len(first), len(second)
        self.net = coupling_net(self.d1 + context_dim, 2 * self.d2, tuple(hidden))

    def _check(self, x: torch.Tensor, context: Optional[torch.Tensor]):
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.dim + 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be hyperboloid points (..., {self.dim + 1}), got {shape}")
        if self.context_dim:
            if not isinstance(context, torch.Tensor) or context.shape[-1] != self.context_dim:
                shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ValueError(f"context must have last dimension {self.context_dim}, got {shape}")
            context = context.expand(x.shape[:-1] + (self.context_dim,))
        return context

    def _conditioner(self, u1, context):
        inp = u1 if not self.context_dim else torch.cat([u1, context], -1)
        out = self.net(inp)
        s_raw, t = out[..., : self.d2], out[..., self.d2 :]
        s = self.scale_bound * torch.tanh(s_raw / self.scale_bound)
        return s, t

    def _join(self, u1, u2):
        return torch.cat([u1, u2], -1)[..., self.inv_perm]

    def _radial(self, v, n):
        return (n - 1) * L.log_sinhc(L.safe_norm(v) * math.sqrt(self.c))

    def extra_repr(self):
        return f"dim={self.dim}, context_dim={self.context_dim}, parity={self.parity}, c={self.c:g}"


class TangentCoupling(_Coupling):
    """Tangent coupling ``exp₀ ∘ (affine coupling) ∘ log₀`` on ``H^n_c`` (see the module docstring).

    Args:
        dim: manifold dimension ``n ≥ 2`` (points have ``n + 1`` coordinates).
        context_dim: width of the conditioning features (0: unconditional).
        parity: which coordinates (even or odd indices) pass unchanged and condition the others.
        hidden: hidden widths of the conditioner.
        c: curvature ``−c`` of the hyperboloid.
        scale_bound: the log-scale is ``b·tanh(s/b)`` (bounded, for stable training).

    ``forward(x, context) -> (y, log_det)``; ``inverse(y, context) -> x``.
    """

    def forward(self, x, context=None):
        context = self._check(x, context)
        u = L.log0(x, self.c)
        u1, u2 = u[..., self.idx1], u[..., self.idx2]
        s, t = self._conditioner(u1, context)
        w = self._join(u1, u2 * torch.exp(s) + t)
        logdet = s.sum(-1) + self._radial(w, self.dim) - self._radial(u, self.dim)
        return L.exp0(w, self.c), logdet

    def inverse(self, y, context=None):
        context = self._check(y, context)
        w = L.log0(y, self.c)
        w1, w2 = w[..., self.idx1], w[..., self.idx2]
        s, t = self._conditioner(w1, context)
        return L.exp0(self._join(w1, (w2 - t) * torch.exp(-s)), self.c)


class WrappedHyperboloidCoupling(_Coupling):
    """Wrapped hyperboloid coupling (WHC) on ``H^n_c`` (see the module docstring).

    Same arguments as :class:`TangentCoupling`. The translation ``t(u₁, h)`` lives in the
    tangent space at the origin of ``H^{n−d}``; it is applied by parallel transport and the
    exponential map (the isometry moving the origin to ``exp₀ t``), not by addition.
    """

    def forward(self, x, context=None):
        context = self._check(x, context)
        u = L.log0(x, self.c)
        u1, u2 = u[..., self.idx1], u[..., self.idx2]
        s, t = self._conditioner(u1, context)
        v = u2 * torch.exp(s)
        t_pt = L.exp0(t, self.c)                                    # a point of H^{n-d}
        w2 = L.log0(L.transvect(t_pt, L.exp0(v, self.c), self.c), self.c)
        w = self._join(u1, w2)
        logdet = (s.sum(-1) + self._radial(v, self.d2) - self._radial(w2, self.d2)
                  + self._radial(w, self.dim) - self._radial(u, self.dim))
        return L.exp0(w, self.c), logdet

    def inverse(self, y, context=None):
        context = self._check(y, context)
        w = L.log0(y, self.c)
        w1, w2 = w[..., self.idx1], w[..., self.idx2]
        s, t = self._conditioner(w1, context)
        t_pt = L.exp0(t, self.c)
        v = L.log0(L.transvect_inv(t_pt, L.exp0(w2, self.c), self.c), self.c)
        return L.exp0(self._join(w1, v * torch.exp(-s)), self.c)
