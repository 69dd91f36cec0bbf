"""The von Mises–Fisher distribution on ``S^{m−1} ⊂ R^m`` and the uniform distribution on the sphere.

``vMF(μ, κ)`` has density ``C_m(κ) exp(κ μᵀz)`` with respect to the surface measure, with
``C_m(κ) = κ^{m/2−1} / ((2π)^{m/2} I_{m/2−1}(κ))``. Everything here is right over the whole
range ``m ≥ 2`` (tested up to ``m = 1000``) and ``κ`` from ``1e-4`` to ``1e5``, in float32
and float64:

* the Bessel terms come from :mod:`latentgeo.distributions._bessel` (float64, asymptotic
  expansions where ``scipy.special.ive`` underflows);
* sampling is Wood's (1994) algorithm with the stable ``b = (m−1)/(2κ + √(4κ² + (m−1)²))``,
  run in float64 whatever the dtype, with ``1 ∓ w`` carried separately so ``√(1 − w²)`` keeps
  its precision near the poles; a batched rejection loop redraws only the rejected entries;
  the proposal's Beta variable is ``‖x‖²/(‖x‖² + s)`` with ``x`` the Gaussian whose direction is
  the tangent direction of the sample and ``s ~ χ²_{m−1}`` (exact: a Gaussian's direction is
  independent of its norm), and a single κ is kept a scalar in the loop;
  ``m = 3`` uses the exact inverse CDF ``w = 1 + log(u + (1 − u) e^{−2κ}) / κ``;
* the map ``e₁ ↦ μ`` is a Householder reflection built from ``e₁ ± μ`` (whichever is longer),
  exact at ``μ = e₁``;
* gradients in κ are **implicit reparameterisation** gradients (Figurnov et al. 2018) of the
  marginal of ``w = μᵀz``: ``dw/dκ = −(∂F/∂κ)/f`` with ``F`` the CDF of ``w``, which is
  ``∫_{−1}^{w} (A_m(κ) − t) f(t)/f(w) dt`` (or ``∫_w^1 (t − A_m) f(t)/f(w) dt``, whichever side
  has no cancellation), by Gauss–Legendre quadrature on the range where the integrand is not
  negligible (for ``m = 2``, whose ``(1 − t²)^{−1/2}`` is singular at the ends, the end piece is
  integrated separately). Unbiased, unlike the plain reparameterisation of the accepted proposal, and
  independent of how ``w`` was drawn. Gradients in ``loc`` flow through the reflection.

The ``sampler="mh"`` option replaces the rejection loop by an independence Metropolis–Hastings
chain with Wood's proposal (as in the blog post compared in issue 13): ``mh_steps`` steps per
sample, each drawing a fresh proposal; the fraction of accepted moves is stored in
:attr:`VonMisesFisher.acceptance_rate`. Its samples are exact only in the limit of many steps
(the chain starts at a proposal draw); with Wood's tight envelope 20 steps leave no visible bias.

:class:`HypersphericalUniform` takes the **ambient** dimension ``m`` (its event shape is
``(m,)``, like ``loc``'s last axis), the same convention as :class:`VonMisesFisher`.

Example:
    >>> import torch
    >>> from latentgeo.distributions import VonMisesFisher, HypersphericalUniform
    >>> q = VonMisesFisher(torch.tensor([0.0, 0.0, 1.0]), torch.tensor(10.0))
    >>> z = q.rsample((4,), random_state=0)
    >>> z.shape, bool(torch.allclose(z.norm(dim=-1), torch.ones(4)))
    (torch.Size([4, 3]), True)
    >>> round(float(torch.distributions.kl_divergence(q, HypersphericalUniform(3))), 6)
    1.995732
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from ._bessel import bessel_ratio, log_hyp0f1_excess
from ._sphere import (check_concentration, check_loc, householder_from_e1, log_sphere_area, seeded,
                      uniform_directions)

__all__ = ["VonMisesFisher", "HypersphericalUniform"]

_SAMPLERS = ("rejection", "mh")
_GL_NODES = 128
_DROP = 50.0  # the integrand is cut where it is e^-50 below its peak
_CHUNK = 16384
_MAX_ROUNDS = 1000


def _gl(dtype, device):
    x, wts = np.polynomial.legendre.leggauss(_GL_NODES)
    y = torch.as_tensor((x + 1.0) / 2.0, dtype=dtype, device=device)
    return y, torch.as_tensor(wts / 2.0, dtype=dtype, device=device)


def _logr(s, s0, other0, kappa, nu, sign):
    """``log f(t)/f(w)`` in a distance-from-the-end variable ``s`` (see :func:`_dw_dkappa`).

    ``sign = −1``: ``s = 1 − t``, ``s0 = 1 − w``, ``other0 = 1 + w``;
    ``sign = +1``: ``s = 1 + t``, ``s0 = 1 + w``, ``other0 = 1 − w``.
    The other end's distance is ``2 − s = other0 + (s0 − s)``, kept exact.
    """
    out = sign * kappa * (s - s0)
    if nu != 0.0:
        other = other0 + (s0 - s)
        out = out + nu * (torch.log(s) + torch.log(other) - torch.log(s0) - torch.log(other0))
    return out


def _truncate(peak, far, s0, other0, kappa, nu, sign):
    """Point between ``peak`` and ``far`` closest to ``peak`` where ``log r`` is ``_DROP`` below the peak
    (``far`` when there is none). Valid because ``log r`` is concave for ``m ≥ 3``."""
    k = torch.arange(0, 41, dtype=peak.dtype, device=peak.device)
    frac = torch.pow(2.0, -k)  # (K,)
    cand = peak[:, None] + (far - peak)[:, None] * frac[None, :]  # (n, K), cand[:, 0] = far
    with torch.no_grad():
        lp = _logr(peak, s0, other0, kappa, nu, sign)
        lc = _logr(cand, s0[:, None], other0[:, None], kappa[:, None], nu, sign)
    ok = (lp[:, None] - lc) >= _DROP
    ok = ok | torch.isnan(lc)
    # the largest k with ok (closest to the peak); ok is monotone in k by concavity
    idx = torch.where(ok, k[None, :].expand_as(ok), torch.full_like(cand, -1.0)).amax(1).long()
    chosen = cand.gather(1, idx.clamp_min(0)[:, None]).squeeze(1)
    return torch.where(idx >= 0, chosen, far)


def _piece(lo, hi, s0, other0, base, kappa, nu, sign):
    """Gauss–Legendre ``∫_lo^hi (base − s) r(s) ds`` with nodes clustered at ``lo`` (``s = lo + (hi−lo)y²``),
    which makes the integrand analytic at a ``t = ±1`` end (``lo = 0``) for half-integer ν."""
    y, wts = _gl(s0.dtype, s0.device)
    span = (hi - lo)[:, None]
    s = lo[:, None] + span * y[None, :] ** 2
    jac = 2.0 * span * y[None, :]
    lr = _logr(s, s0[:, None], other0[:, None], kappa[:, None], nu, sign)
    out = ((base[:, None] - s) * torch.exp(lr) * jac * wts[None, :]).sum(1)
    return torch.where(hi > lo, out, torch.zeros_like(out))  # an empty piece (0·inf at a singular end)


def _side_integral(s0, other0, base, kappa, nu, sign, peak):
    """``∫_0^{s0} (base − s) r(s) ds`` with ``r = f/f(w)``, truncated around ``peak`` (float64)."""
    zero = torch.zeros_like(peak)
    if nu >= 0.0:  # log r concave: cut where it is e^-50 below the peak
        lo = _truncate(peak, zero, s0, other0, kappa, nu, sign)
        hi = _truncate(peak, s0, s0, other0, kappa, nu, sign)
        return _piece(lo, hi, s0, other0, base, kappa, nu, sign)
    # m = 2: (1 − t²)^{-1/2} is singular at the ends and log r is not concave; cut by the
    # exponential factor alone and keep the (tiny, singular) end piece [0, lo] as a piece of its own
    lo = _truncate(peak, zero, s0, other0, kappa, 0.0, sign)
    hi = _truncate(peak, s0, s0, other0, kappa, 0.0, sign)
    return (_piece(zero, lo, s0, other0, base, kappa, nu, sign)
            + _piece(lo, hi, s0, other0, base, kappa, nu, sign))


def _dw_dkappa(omw, opw, kappa, a, m):
    """Implicit reparameterisation gradient ``dw/dκ`` of the vMF ``w`` marginal (float64, flat)."""
    nu = (m - 3) / 2.0
    out = torch.empty_like(omw)
    oma, opa = 1.0 - a, 1.0 + a
    # mode t* of (1 − t²)^ν e^{κt}: 1 − t* and 1 + t*, in stable forms
    if nu > 0:
        root = torch.sqrt(nu * nu + kappa * kappa)
        s_star = (nu + nu * nu / (root + kappa)) / (nu + root)
        q_star = 2.0 - s_star
    else:
        s_star = torch.zeros_like(kappa)
        q_star = torch.full_like(kappa, 2.0)
    for i in range(0, omw.numel(), _CHUNK):
        sl = slice(i, i + _CHUNK)
        o, p, k, om, op = omw[sl], opw[sl], kappa[sl], oma[sl], opa[sl]
        upper = o <= om  # w ≥ A_m: integrate (t − A) r over [w, 1]
        res = torch.empty_like(o)
        if bool(upper.any()):
            u = upper
            peak = torch.minimum(o[u], s_star[sl][u])
            res[u] = _side_integral(o[u], p[u], om[u], k[u], nu, -1.0, peak)
        lower = ~upper
        if bool(lower.any()):
            l_ = lower
            peak = torch.minimum(p[l_], q_star[sl][l_])
            res[l_] = _side_integral(p[l_], o[l_], op[l_], k[l_], nu, 1.0, peak)
        out[sl] = res
    return out


class VonMisesFisher(Distribution):
    """von Mises–Fisher distribution ``vMF(loc, concentration)`` on ``S^{m−1} ⊂ R^m``.

    Args:
        loc: mean directions ``(..., m)``, ``m ≥ 2``, unit norm. A ``loc`` whose norm is off by
            more than ``1e-4`` (float32) / ``1e-8`` (float64) is refused with a ``ValueError``
            (no silent normalisation); smaller deviations are renormalised.
        concentration: ``κ > 0``, broadcastable to ``loc.shape[:-1]`` (``(N, 1)`` for ``loc (N, m)``
            is accepted too). ``κ ≤ 0``, NaN, a wrong shape raise ``ValueError`` naming it.
        validate_args: as for :class:`torch.distributions.Distribution` (the checks above run always).
        sampler: ``"rejection"`` (Wood's algorithm, exact) or ``"mh"`` (independence
            Metropolis–Hastings with Wood's proposal; see the module docstring).
        mh_steps: steps per sample of the ``"mh"`` chain.

    Attributes:
        acceptance_rate: after a draw, the fraction of proposals accepted (rejection: accepted /
            proposed; ``"mh"``: accepted moves / steps; ``1.0`` for ``m = 3``, which needs none).

    Example:
        >>> import torch
        >>> from latentgeo.distributions import VonMisesFisher
        >>> mu = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, 0.0, 2.0]), dim=0)
        >>> q = VonMisesFisher(mu, torch.tensor(5.0), sampler="mh")
        >>> z = q.sample((1000,), random_state=1)
        >>> 0 < q.acceptance_rate <= 1, round(float(q.mean @ mu), 4)
        (True, 0.7193)
    """

    arg_constraints = {"loc": constraints.real_vector, "concentration": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, concentration, validate_args=None, sampler: str = "rejection", mh_steps: int = 20):
        loc = check_loc(loc, "loc")
        kappa = check_concentration(concentration, loc, "concentration")
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
        if isinstance(mh_steps, bool) or not isinstance(mh_steps, int) or mh_steps < 1:
            raise ValueError(f"mh_steps must be a positive integer, got {mh_steps!r}")
        self.loc, self.concentration = loc, kappa
        self.sampler, self.mh_steps = sampler, mh_steps
        self.acceptance_rate: Optional[float] = None
        self._m = loc.shape[-1]
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return VonMisesFisher(self.loc.expand(batch_shape + self.event_shape),
                              self.concentration.expand(batch_shape), validate_args=False,
                              sampler=self.sampler, mh_steps=self.mh_steps)

    # -- closed forms -------------------------------------------------------------------
    @property
    def mean_resultant_length(self) -> torch.Tensor:
        """``A_m(κ) = E[μᵀz] = I_{m/2}(κ) / I_{m/2−1}(κ)``."""
        k64 = self.concentration.to(torch.float64)
        return bessel_ratio(self._m, k64).to(self.loc.dtype)

    @property
    def mean(self) -> torch.Tensor:
        """``E[z] = A_m(κ) μ`` (inside the ball; the location on the sphere is :attr:`loc`)."""
        return self.mean_resultant_length[..., None] * self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    def _kl_uniform64(self) -> torch.Tensor:
        k64 = self.concentration.to(torch.float64)
        return k64 * bessel_ratio(self._m, k64) - log_hyp0f1_excess(self._m, k64)

    def log_prob(self, value) -> torch.Tensor:
        """``log C_m(κ) + κ μᵀz``, computed as ``−κ‖z − μ‖²/2 + (κ − log 0F1) − log|S^{m−1}|``."""
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"value must have last dimension {self._m}, got shape {tuple(value.shape)}")
        k64 = self.concentration.to(torch.float64)
        shift = (k64 - log_hyp0f1_excess(self._m, k64)).to(self.loc.dtype) - log_sphere_area(self._m)
        d2 = (value - self.loc).pow(2).sum(-1)
        return -0.5 * self.concentration * d2 + shift

    def entropy(self) -> torch.Tensor:
        """``−κ A_m(κ) − log C_m(κ)`` (= ``log|S^{m−1}| − KL(q ‖ uniform)``)."""
        return (log_sphere_area(self._m) - self._kl_uniform64()).to(self.loc.dtype)

    # -- sampling -----------------------------------------------------------------------
    def _wood_proposal(self, kappa, b):
        """One Wood proposal per entry: ``(w, 1 − w, 1 + w)`` (float64, no grad)."""
        alpha = torch.full_like(kappa, (self._m - 1) / 2.0)
        g1, g2 = torch._standard_gamma(alpha), torch._standard_gamma(alpha)
        den = g2 + b * g1
        return (g2 - b * g1) / den, 2.0 * b * g1 / den, 2.0 * g2 / den

    def _log_weight(self, kappa, b, omw):
        """``log`` of target/proposal for Wood's envelope, ``κ(w − x₀) + (m−1) log((1 − x₀w)/(1 − x₀²))``."""
        m = self._m
        omx0 = 2.0 * b / (1.0 + b)
        x0 = (1.0 - b) / (1.0 + b)
        log_1mx0sq = torch.log(4.0 * b) - 2.0 * torch.log1p(b)
        return kappa * (omx0 - omw) + (m - 1) * (torch.log(omx0 + x0 * omw) - log_1mx0sq)

    def _rejection(self, kappa, b, n, dtype):
        """Wood's rejection loop for ``n`` draws; ``kappa``/``b`` float64, flat ``(n,)`` or scalar ``()``.

        Wood's proposal is ``w = (s₂ − b s₁)/(s₂ + b s₁)`` with ``s₁, s₂`` independent ``χ²_{m−1}``
        (``s₁/(s₁ + s₂) ~ Beta((m−1)/2, (m−1)/2)``). With ``dtype`` given, ``s₁ = ‖x‖²`` for a
        Gaussian ``x ∈ R^{m−1}`` of that dtype, and the tangent direction ``v = x/‖x‖`` is returned
        too: a Gaussian's direction is uniform and independent of its norm, and acceptance depends
        on the norms only, so an accepted ``v`` is uniform and independent of the accepted ``w``
        (one Gamma draw and one Gaussian vector per proposal, instead of two Gammas and a Gaussian).
        Returns ``(w, 1 − w, 1 + w, v or None)``.
        """
        m = self._m
        scalar = kappa.dim() == 0
        f64 = torch.float64
        if scalar:  # κ-only terms once, not per draw
            omx0 = 2.0 * b / (1.0 + b)
            x0 = (1.0 - b) / (1.0 + b)
            log_1mx0sq = torch.log(4.0 * b) - 2.0 * torch.log1p(b)
        dev = kappa.device

        def propose(count, k, bb):
            """``count`` proposals: ``(w, 1 − w, 1 + w, v or None, accepted mask)``."""
            alpha = torch.full((count,), (m - 1) / 2.0, dtype=f64, device=dev)
            s2 = 2.0 * torch._standard_gamma(alpha)
            if dtype is None:
                s1, d = 2.0 * torch._standard_gamma(alpha), None
            else:
                x = torch.randn(count, m - 1, dtype=dtype, device=dev)
                s1x = (x * x).sum(-1)
                s1, d = s1x.to(f64), x * torch.rsqrt(s1x)[:, None]
            den = s2 + bb * s1
            pomw = 2.0 * bb * s1 / den
            if scalar:
                lw = k * (omx0 - pomw) + (m - 1) * (torch.log(omx0 + x0 * pomw) - log_1mx0sq)
            else:
                lw = self._log_weight(k, bb, pomw)
            ok = lw >= torch.log(torch.rand(count, dtype=f64, device=dev))
            return (s2 - bb * s1) / den, pomw, 2.0 * s2 / den, d, ok

        # first round: every entry gets a proposal in place; later rounds redraw the rejected ones only
        w, omw, opw, v, ok = propose(n, kappa, b)
        todo = (~ok).nonzero().reshape(-1)
        proposed, rounds = n, 1
        while todo.numel():
            rounds += 1
            if rounds > _MAX_ROUNDS:  # Wood's envelope accepts > 50% everywhere: never reached
                kk = kappa if scalar else kappa[todo]
                raise RuntimeError(f"vMF rejection sampler: {todo.numel()} draws still rejected after "
                                   f"{_MAX_ROUNDS} rounds (kappa in [{float(kk.min()):.3g}, "
                                   f"{float(kk.max()):.3g}], m = {m})")
            k, bb = (kappa, b) if scalar else (kappa[todo], b[todo])
            pw, pomw, popw, pv, ok = propose(todo.numel(), k, bb)
            proposed += todo.numel()
            idx = todo[ok]
            w[idx], omw[idx], opw[idx] = pw[ok], pomw[ok], popw[ok]
            if v is not None:
                v[idx] = pv[ok]
            todo = todo[~ok]
        self.acceptance_rate = n / proposed if proposed else 1.0
        return w, omw, opw, v

    def _sample_w(self, kappa):
        """``(w, 1 − w, 1 + w)`` for flat float64 ``kappa (n,)``."""
        m = self._m
        if m == 3:
            u = torch.rand_like(kappa)
            omw = -torch.log1p((1.0 - u) * torch.expm1(-2.0 * kappa)) / kappa
            omw = omw.clamp(0.0, 2.0)
            self.acceptance_rate = 1.0
            return 1.0 - omw, omw, 2.0 - omw
        b = (m - 1) / (2.0 * kappa + torch.sqrt(4.0 * kappa * kappa + (m - 1.0) ** 2))
        if self.sampler == "rejection":
            w, omw, opw, _ = self._rejection(kappa, b, kappa.numel(), None)
            return w, omw, opw
        # independence Metropolis–Hastings
        w, omw, opw = self._wood_proposal(kappa, b)
        lw = self._log_weight(kappa, b, omw)
        accepted = 0
        for _ in range(self.mh_steps):
            pw, pomw, popw = self._wood_proposal(kappa, b)
            plw = self._log_weight(kappa, b, pomw)
            ok = (plw - lw) >= torch.log(torch.rand_like(kappa))
            w, omw, opw, lw = (torch.where(ok, a, c) for a, c in ((pw, w), (pomw, omw), (popw, opw), (plw, lw)))
            accepted += int(ok.sum())
        self.acceptance_rate = accepted / (self.mh_steps * kappa.numel())
        return w, omw, opw

    def rsample(self, sample_shape=torch.Size(), random_state=None) -> torch.Tensor:
        """Reparameterised samples ``(*sample_shape, *batch_shape, m)`` on the sphere.

        ``random_state``: ``None`` draws from torch's global generator (the
        :mod:`torch.distributions` convention); an ``int`` or generator seeds a forked RNG.
        """
        shape = self._extended_shape(sample_shape)
        m, dtype, dev = self._m, self.loc.dtype, self.loc.device
        kappa = self.concentration.expand(shape[:-1])
        scalar = self.concentration.numel() == 1
        n = kappa.numel()
        # one κ for every draw: the rejection loop works with the scalar (no (n,) float64 copy unless needed)
        k64 = None if scalar and not kappa.requires_grad else kappa.detach().to(torch.float64).reshape(-1)
        with seeded(random_state, dev), torch.no_grad():
            if self.sampler == "rejection" and m != 3:
                kk = self.concentration.detach().to(torch.float64).reshape(()) if scalar else k64
                b = (m - 1) / (2.0 * kk + torch.sqrt(4.0 * kk * kk + (m - 1.0) ** 2))
                w, omw, opw, v = self._rejection(kk, b, n, dtype)
            else:
                if k64 is None:
                    k64 = kappa.detach().to(torch.float64).reshape(-1)
                w, omw, opw = self._sample_w(k64)
                v = uniform_directions((n,), m - 1, dtype, dev)
        w, omw, opw = w.reshape(shape[:-1]), omw.reshape(shape[:-1]), opw.reshape(shape[:-1])
        if kappa.requires_grad:
            with torch.no_grad():
                a = bessel_ratio(m, k64)
                dw = _dw_dkappa(omw.reshape(-1), opw.reshape(-1), k64, a, m).reshape(shape[:-1])
            delta = (kappa - kappa.detach()) * dw.to(dtype)
            w_t = w.to(dtype) + delta
            sin = torch.sqrt((omw.to(dtype) - delta).clamp_min(0) * (opw.to(dtype) + delta).clamp_min(0))
            sin = torch.where(sin > 0, sin, torch.zeros_like(sin))
        else:  # no κ-gradient: √((1 − w)(1 + w)) in float64, then cast (1 ∓ w ≥ 0 by construction)
            w_t, sin = w.to(dtype), torch.sqrt(omw * opw).to(dtype)
        v = v.reshape(*shape[:-1], m - 1).to(dtype)
        if torch.is_grad_enabled() and (w_t.requires_grad or sin.requires_grad):
            z0 = torch.cat([w_t[..., None], sin[..., None] * v], -1)
        else:  # no autograd graph: fill one buffer instead of concatenating temporaries
            z0 = torch.empty(shape, dtype=dtype, device=dev)
            z0[..., 0] = w_t
            torch.mul(v, sin[..., None], out=z0[..., 1:])
        loc = self.loc if (not self.batch_shape and not self.loc.requires_grad) else self.loc.expand(shape)
        z = householder_from_e1(z0, loc)
        return z / z.norm(dim=-1, keepdim=True)

    def sample(self, sample_shape=torch.Size(), random_state=None) -> torch.Tensor:
        """Samples without gradients (see :meth:`rsample`)."""
        with torch.no_grad():
            return self.rsample(sample_shape, random_state=random_state)

    def __repr__(self):
        return (f"VonMisesFisher(m={self._m}, batch_shape={tuple(self.batch_shape)}, "
                f"dtype={self.loc.dtype}, sampler={self.sampler!r})")


class HypersphericalUniform(Distribution):
    """The uniform distribution on ``S^{m−1} ⊂ R^m``.

    Args:
        dim: the **ambient** dimension ``m ≥ 2`` (event shape ``(m,)``; the sphere is ``S^{m−1}``).
        batch_shape: optional batch shape.
        dtype, device: of samples and log-densities (default: torch's default dtype, CPU).

    Example:
        >>> from latentgeo.distributions import HypersphericalUniform
        >>> u = HypersphericalUniform(3)
        >>> round(float(u.entropy()), 6)  # log 4π
        2.531024
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, dim: int, batch_shape=torch.Size(), dtype=None, device=None, validate_args=None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim (the ambient dimension m of S^(m-1)) must be an integer >= 2, got {dim!r}")
        self.dim = dim
        self._dtype = dtype or torch.get_default_dtype()
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return HypersphericalUniform(self.dim, batch_shape, self._dtype, self._device)

    @property
    def mean(self):
        return torch.zeros(self._extended_shape(), dtype=self._dtype, device=self._device)

    def rsample(self, sample_shape=torch.Size(), random_state=None):
        shape = self._extended_shape(sample_shape)
        with seeded(random_state, self._device):
            return uniform_directions(shape[:-1], self.dim, self._dtype, self._device)

    def sample(self, sample_shape=torch.Size(), random_state=None):
        return self.rsample(sample_shape, random_state)

    def log_prob(self, value):
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=self._dtype, device=self._device)
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"value must have last dimension {self.dim}, got shape {tuple(value.shape)}")
        return torch.full(value.shape[:-1], -log_sphere_area(self.dim), dtype=value.dtype, device=value.device)

    def entropy(self):
        return torch.full(self.batch_shape, log_sphere_area(self.dim), dtype=self._dtype, device=self._device)

    def __repr__(self):
        return f"HypersphericalUniform(dim={self.dim}, batch_shape={tuple(self.batch_shape)})"


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> torch.Tensor:
    """``KL(vMF ‖ U) = κ A_m(κ) − log 0F1(; m/2; κ²/4)`` (= ``κA + log C_m + log|S^{m−1}|``)."""
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL(vMF ‖ uniform): the vMF lives in R^{p.event_shape[0]} but the uniform in R^{q.dim}")
    kl = p._kl_uniform64().to(p.loc.dtype)
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
