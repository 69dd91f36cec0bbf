"""The wrapped normal distribution on hyperbolic space (Nagano et al., ICML 2019).

``WrappedNormal(loc, scale, manifold)`` pushes a Gaussian ``v ~ N(0, diag(scale²))`` in the
tangent space at the origin to the manifold: parallel transport to ``loc``, then the exponential
map at ``loc``. Its density with respect to the Riemannian volume is exact:

``log p(x) = log N(u; 0, diag(scale²)) − (n−1) · log(sinh(√c r)/(√c r))``,
``u = PT_{loc→o}(log_loc x)``, ``r = |u|``,

where ``-c`` is the curvature and ``n`` the manifold dimension. All arithmetic runs on the
hyperboloid (:mod:`latentgeo.distributions.lorentz`); a Poincaré-ball ``loc`` is mapped to the
hyperboloid and samples are mapped back, so geoopt's clamping of ball points never enters.
``log(sinh s / s)`` is evaluated as ``s + log(-expm1(-2s)) − log(2s)`` (series near 0), so the
density stays exact at distances of 10 and beyond in float64.

Tangent coordinates: ``scale`` refers to *orthonormal* coordinates of ``T_o`` (on the ball the
Euclidean coordinates at 0 scaled by the conformal factor ``λ_0 = 2``), so the same ``scale``
describes the same distribution on both models.

Reusing the sampling tangent vector: :meth:`WrappedNormal.rsample_with_log_prob` returns the
samples and their log-density computed from the tangent vector ``v`` that produced them (no
log map). :meth:`WrappedNormal.rsample` remembers its last draw, and :meth:`log_prob` of that
very tensor returns the remembered value, so a Monte-Carlo KL ``log q(z) − log p(z)`` or an
IWAE weight on ``z = q.rsample()`` never takes a second log map (whose cancellation far from
the origin spoils the density in float32).

Example:
    >>> import torch, geoopt
    >>> from latentgeo.distributions import WrappedNormal
    >>> man = geoopt.Lorentz()
    >>> loc = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)   # the origin of H^2
    >>> q = WrappedNormal(loc, torch.tensor([[0.5, 0.5]], dtype=torch.float64), man)
    >>> z, logq = q.rsample_with_log_prob((4,))
    >>> z.shape, logq.shape
    (torch.Size([4, 1, 3]), torch.Size([4, 1]))
    >>> bool(torch.allclose(q.log_prob(z.clone()), logq))
    True
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch.distributions import Distribution, constraints

from . import lorentz as L

__all__ = ["WrappedNormal", "manifold_curvature"]


def manifold_curvature(manifold) -> tuple[str, float]:
    """``(model, c)`` for a geoopt ``Lorentz`` (``c = 1/k``) or ``PoincareBall`` (``c``); curvature is ``-c``.

    Raises:
        TypeError: ``manifold`` is not a geoopt Lorentz or Poincaré-ball manifold.
        ValueError: a non-positive or non-finite curvature parameter.
    """
    import geoopt

    if isinstance(manifold, geoopt.Lorentz):
        k = float(manifold.k.detach())
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"manifold: Lorentz k must be a positive finite number, got {k}")
        return "lorentz", 1.0 / k
    if isinstance(manifold, geoopt.PoincareBall):
        c = float(manifold.c.detach())
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"manifold: PoincareBall c must be a positive finite number, got {c}")
        return "ball", c
    raise TypeError(f"manifold must be a geoopt.Lorentz or geoopt.PoincareBall, got {type(manifold).__name__}")


def _check_tensor(x, name, dtype=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=dtype if dtype is not None else torch.get_default_dtype())
        except Exception:
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}") from None
    if not x.is_floating_point():
        x = x.to(dtype if dtype is not None else torch.get_default_dtype())
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (..., n), got a scalar")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN/inf")
    return x


def check_on_model(x: torch.Tensor, model: str, c: float, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` is not a point of the model (hyperboloid or ball)."""
    with torch.no_grad():
        if model == "lorentz":
            q = L.lorentz_inner(x, x)
            scale = (x * x).sum(-1).clamp_min(1.0 / c)
            tol = 1e-4 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
            bad = ((q + 1.0 / c).abs() > tol * scale) | (x[..., 0] <= 0)
            if bool(bad.any()):
                worst = float((q + 1.0 / c).abs().max())
                raise ValueError(
                    f"{name} must lie on the hyperboloid <x, x>_L = {-1.0 / c:g} with x_0 > 0; "
                    f"{int(bad.sum())} point(s) do not (largest |<x,x>_L + 1/c| = {worst:.3g})"
                )
        else:
            sq = (x * x).sum(-1)
            bad = c * sq >= 1.0
            if bool(bad.any()):
                raise ValueError(
                    f"{name} must lie in the open Poincaré ball |x| < {1.0 / math.sqrt(c):g}; "
                    f"{int(bad.sum())} point(s) do not (largest |x| = {float(sq.max().sqrt()):.6g})"
                )


class WrappedNormal(Distribution):
    """Wrapped normal ``G(loc, diag(scale²))`` on a hyperbolic manifold (see the module docstring).

    Args:
        loc: points of the manifold's model, ``(..., n+1)`` on the hyperboloid (geoopt
            ``Lorentz``) or ``(..., n)`` in the Poincaré ball (geoopt ``PoincareBall``).
        scale: positive standard deviations ``(..., n)`` of the Gaussian in orthonormal
            coordinates of the tangent space at the origin; broadcast against ``loc``'s batch.
        manifold: a geoopt ``Lorentz(k)`` (curvature ``-1/k``) or ``PoincareBall(c)``
            (curvature ``-c``); only its curvature is read (as a Python float, so it is not
            learned through this distribution) and computations run in ``loc``'s dtype.

    Batch shape: the broadcast of ``loc.shape[:-1]`` and ``scale.shape[:-1]``; event shape
    ``loc.shape[-1:]``.

    Raises:
        ValueError: NaN/inf in ``loc`` or ``scale``, non-positive ``scale``, ``loc`` off the
            manifold, or ``scale``'s last dimension not the manifold dimension ``n``.
        TypeError: ``manifold`` is not a geoopt Lorentz/PoincareBall.
    """

    arg_constraints = {"scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc, scale, manifold, validate_args: Optional[bool] = None):
        model, c = manifold_curvature(manifold)
        loc = _check_tensor(loc, "loc")
        scale = _check_tensor(scale, "scale", loc.dtype)
        if scale.dtype != loc.dtype:
            raise ValueError(f"scale has dtype {scale.dtype} but loc has {loc.dtype}; give both in one dtype")
        n = loc.shape[-1] - 1 if model == "lorentz" else loc.shape[-1]
        if n < 1:
            raise ValueError(f"loc's last dimension {loc.shape[-1]} is too small for a {model} point")
        if scale.shape[-1] != n:
            raise ValueError(
                f"scale must have last dimension n = {n} (the manifold dimension for loc of shape "
                f"{tuple(loc.shape)}), got shape {tuple(scale.shape)}"
            )
        if bool((scale <= 0).any()):
            raise ValueError(f"scale must be positive, got min {float(scale.min()):.3g}")
        check_on_model(loc, model, c, "loc")
        try:
            batch_shape = torch.broadcast_shapes(loc.shape[:-1], scale.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"loc {tuple(loc.shape)} and scale {tuple(scale.shape)} have batch shapes that do not broadcast"
            ) from None
        self.manifold = manifold
        self.model, self.c, self.n = model, c, n
        self.loc, self.scale = loc, scale
        self._mu = L.ball_to_hyperboloid(loc, c) if model == "ball" else loc  # hyperboloid point
        self._last: Optional[tuple] = None
        super().__init__(batch_shape, loc.shape[-1:], validate_args=False)

    # -- helpers -------------------------------------------------------------------------
    def _to_model(self, x_h: torch.Tensor) -> torch.Tensor:
        return L.hyperboloid_to_ball(x_h, self.c) if self.model == "ball" else x_h

    def _from_model(self, x: torch.Tensor) -> torch.Tensor:
        return L.ball_to_hyperboloid(x, self.c) if self.model == "ball" else x

    def push(self, v: torch.Tensor) -> torch.Tensor:
        """The sampling map: tangent coordinates ``v (..., n)`` at the origin → points of the model."""
        return self._to_model(L.transvect(self._mu, L.exp0(v, self.c), self.c))

    def pull(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`push`: ``u = PT_{loc→o}(log_loc x)`` in orthonormal coordinates at ``o``."""
        return L.log0(L.transvect_inv(self._mu, self._from_model(x), self.c), self.c)

    def log_prob_tangent(self, v: torch.Tensor) -> torch.Tensor:
        """Log-density (Riemannian volume) of the point ``push(v)``, computed from ``v (..., n)``."""
        z = v / self.scale
        log_gauss = -0.5 * (z * z).sum(-1) - self.scale.log().sum(-1) - 0.5 * self.n * math.log(2 * math.pi)
        r = L.safe_norm(v) * math.sqrt(self.c)
        return log_gauss - (self.n - 1) * L.log_sinhc(r)

    # -- Distribution API ----------------------------------------------------------------
    def rsample_with_log_prob(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised samples ``(*sample_shape, *batch, event)`` and their log-densities.

        The density is computed from the tangent vector that produced each sample (no log map).
        """
        shape = torch.Size(sample_shape) + self.batch_shape + (self.n,)
        eps = torch.randn(shape, dtype=self.scale.dtype, device=self.scale.device)
        v = eps * self.scale
        x = self.push(v)
        logp = self.log_prob_tangent(v)
        self._last = (x, logp)
        return x, logp

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.rsample_with_log_prob(sample_shape)[0]

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value) -> torch.Tensor:
        """Log-density w.r.t. the Riemannian volume (the remembered value for the last ``rsample``)."""
        if self._last is not None and value is self._last[0]:
            return self._last[1]
        x = _check_tensor(value, "value", self.loc.dtype)
        if x.shape[-1] != self.event_shape[-1]:
            raise ValueError(f"value must have last dimension {self.event_shape[-1]}, got shape {tuple(x.shape)}")
        check_on_model(x, self.model, self.c, "value")
        return self.log_prob_tangent(self.pull(x))

    @property
    def mean(self) -> torch.Tensor:
        """The location ``loc`` (the Fréchet mean of the wrapped normal), broadcast to the batch."""
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return WrappedNormal(
            self.loc.expand(batch_shape + self.loc.shape[-1:]),
            self.scale.expand(batch_shape + self.scale.shape[-1:]),
            self.manifold,
        )

    def __repr__(self) -> str:
        return (f"WrappedNormal(model={self.model}, c={self.c:g}, n={self.n}, "
                f"batch_shape={tuple(self.batch_shape)})")
