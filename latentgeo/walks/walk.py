"""``random_walk``: batched random walks on a latent metric (one driver for every method)."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from .._progress import progress_bar
from .._random import as_generator
from .._validation import as_latent_batch, check_choice, check_int, check_real
from .geometry import brownian_terms_fn, exp_step, inverse_factor, metric_derivatives_fn
from .mmala import mmala_log_q, mmala_state
from .result import WalkResult, WalkStatus

__all__ = ["random_walk", "METHODS"]

METHODS = ("euclidean", "lso", "brownian", "geodesic", "mmala")


def random_walk(
    metric,
    z0,
    n_steps: int,
    step_size: Optional[float] = None,
    method: str = "brownian",
    *,
    log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    n_walkers: Optional[int] = None,
    random_state=None,
    progress: Optional[bool] = None,
) -> WalkResult:
    """Random walks of a batch of walkers on the latent space of ``metric``.

    Every method takes steps of variance ``h = step_size`` (a time step: ``√h`` is the step
    length scale):

    * ``"euclidean"``: ``z' = z + √h ξ``, ``ξ ~ N(0, I)`` (the baseline; ``metric`` may be ``None``);
    * ``"lso"``: ``z' = z + √h L ξ``, ``L Lᵀ = M(z)⁻¹``: the Latent Space Oddity slides' walk
      (covariance ``M⁻¹``, no drift);
    * ``"brownian"``: Riemannian Brownian motion (generator ``Δ_g/2``) by Euler–Maruyama,
      ``z' = z + h b(z) + √h L ξ`` with ``bⁱ = −½ g^{jk} Γⁱ_{jk}`` (for embedded metrics
      ``b = −½ M⁻¹ Jᵀ Σ_m ∂²g[l_m, l_m]``); its invariant density is ``∝ √det M`` (Hsu 2002, §3.3);
    * ``"geodesic"``: a tangent Gaussian step ``v = √h L ξ`` (covariance ``h M⁻¹``) followed along
      the exponential map, ``z' = Exp_z(v)``;
    * ``"mmala"``: Riemannian-manifold MALA (Girolami & Calderhead 2011) for ``log_prob`` with the
      drift of Xifara et al. (2014), Metropolis–Hastings corrected (see :mod:`latentgeo.walks.mmala`).

    Args:
        metric: a latentgeo metric (``PullbackMetric``, ``MetricField``); ``None`` only for ``"euclidean"``.
        z0: ``(W, d)`` start points (or ``(d,)`` with ``n_walkers``).
        n_steps: steps per walker (``>= 1``).
        step_size: ``h > 0``. Required except for ``"mmala"``, whose default ``h = 1`` is the natural
            scale when ``M`` is comparable to the target's curvature ``−∇²log π``.
        method: one of ``"euclidean"``, ``"lso"``, ``"brownian"``, ``"geodesic"``, ``"mmala"``.
        log_prob: ``"mmala"`` only: the target's log-density ``(N, d) -> (N,)`` (unnormalised,
            w.r.t. Lebesgue measure in the latent coordinates, differentiable by autograd),
            e.g. ``prior.log_prob(z) + metric.log_volume(z)``.
        n_walkers: repeat a single start point this many times.
        random_state: ``None``, an int seed, a ``torch.Generator`` (see :mod:`latentgeo._random`).
            The noise is drawn on the CPU and moved to the walkers' device, so a seed gives the
            same walks on a GPU as on the CPU; a ``torch.Generator`` on the walkers' device draws
            there instead.
        progress: ``None`` (a bar only in a terminal/Jupyter), ``True``, ``False``.

    Returns:
        :class:`~latentgeo.walks.WalkResult`: ``trajectories (W, n_steps + 1, d)``, ``status`` per
        walker (a walker whose step becomes non-finite, whose metric is not positive definite or
        whose exp map fails is stopped there and reported, never propagated as NaN),
        ``acceptance_rate`` (MMALA), counts of rejected and non-finite proposals, ``stats``.

    Example (Brownian motion on the Poincaré disk):
        >>> import torch, latentgeo as lg
        >>> disk = lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * torch.eye(2))
        >>> walk = lg.random_walk(disk, torch.zeros(2), 20, 1e-3, n_walkers=5, random_state=0)
        >>> walk.trajectories.shape, bool(walk.success.all())
        (torch.Size([5, 21, 2]), True)
    """
    method = check_choice(method, "method", METHODS)
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    if step_size is None:
        if method != "mmala":
            raise ValueError(f"step_size is required for method {method!r} (a positive time step h), got None")
        step_size = 1.0
    h = check_real(step_size, "step_size", minimum=0.0, strict_min=True)
    if metric is None and method != "euclidean":
        raise ValueError(f"method {method!r} needs a metric, got metric=None")
    latent_dim = getattr(metric, "latent_dim", None) if metric is not None else None
    z, _ = as_latent_batch(z0, latent_dim, name="z0")
    if n_walkers is not None:
        n_walkers = check_int(n_walkers, "n_walkers", minimum=1)
        if z.shape[0] != 1:
            raise ValueError(f"n_walkers repeats a single start point; z0 has {z.shape[0]} rows")
        z = z.expand(n_walkers, -1)
    z = z.detach().clone()
    if method == "mmala":
        if not callable(log_prob):
            raise ValueError(f"method 'mmala' needs log_prob, a callable (N, d) -> (N,), got {log_prob!r}")
    elif log_prob is not None:
        raise ValueError(f"log_prob is used by method 'mmala' only, got it with method {method!r}")
    if metric is not None:
        metric.tensor(z[:1])  # the metric's own checks (dtype, device, shape) with a clear error
    # the noise is drawn on the CPU and moved, so a seed gives the same walk on every device; a
    # torch.Generator on the walkers' device is used there as is
    own = isinstance(random_state, torch.Generator) and random_state.device == z.device
    gen = random_state if own else as_generator(random_state)

    w, d = z.shape
    traj = torch.empty(w, n_steps + 1, d, dtype=z.dtype, device=z.device)
    traj[:, 0] = z
    status = torch.zeros(w, dtype=torch.long, device=z.device)
    steps_taken = torch.full((w,), n_steps, dtype=torch.long, device=z.device)
    accepted = torch.zeros(w, dtype=torch.long, device=z.device)
    rejected = torch.zeros_like(accepted)
    nonfinite = torch.zeros_like(accepted)
    active = torch.ones(w, dtype=torch.bool, device=z.device)
    sqh = math.sqrt(h)

    derivs = None
    if metric is not None:
        tfn = metric.tensor_fn()
        if method == "mmala":
            # its drift needs the tensor's derivatives: one Hessian-mode jet of the decoder where it
            # has one, else forward-mode derivatives of the tensor (nested through the decoder)
            derivs = metric_derivatives_fn(metric)
            if derivs is not None and derivs(z[:1]) is None:
                derivs = None
            if derivs is None:
                from .._autodiff import nested_forward_hazard

                hazard = nested_forward_hazard(getattr(metric, "decoder", None))
                if hazard:
                    raise NotImplementedError(f"method='mmala' differentiates the metric tensor in forward mode: {hazard}")
    terms = brownian_terms_fn(metric) if method == "brownian" else None
    state = None
    if method == "mmala":
        state = mmala_state(log_prob, tfn, z, h, derivs)
        bad = ~state.ok
        if bool(bad.any()):
            pd = inverse_factor(state.metric)[1]
            status[bad] = torch.where(pd[bad], int(WalkStatus.NONFINITE_TARGET), int(WalkStatus.METRIC_NOT_PD))
            steps_taken[bad] = 0
            active &= ~bad

    def stop(idx, code, step):
        status[idx] = int(code)
        steps_taken[idx] = step
        active[idx] = False

    t0 = time.perf_counter()
    with progress_bar(total=n_steps, desc=f"random walk ({method})", progress=progress, unit="step") as bar:
        for s in range(n_steps):
            xi = torch.randn(w, d, generator=gen, dtype=z.dtype, device=gen.device).to(z.device)
            u = torch.rand(w, generator=gen, dtype=z.dtype, device=gen.device).to(z.device) if method == "mmala" else None
            idx = torch.nonzero(active).reshape(-1)
            if idx.numel():
                zc, xc = z[idx], xi[idx]
                if method == "mmala":
                    z[idx] = _mmala_step(idx, zc, xc, u[idx], state, log_prob, tfn, h, sqh, accepted, rejected, nonfinite,
                                         derivs)
                else:
                    znew, code = _plain_step(method, metric, zc, xc, h, sqh, tfn if metric is not None else None,
                                             terms)
                    good = code == 0
                    if not bool(good.all()):
                        bad = ~good
                        nonfinite[idx[bad]] += (code[bad] == int(WalkStatus.NONFINITE_STEP)).long()
                        for c in code[bad].unique().tolist():
                            stop(idx[bad & (code == c)], c, s)
                    z[idx[good]] = znew[good]
                    accepted[idx[good]] += 1
            traj[:, s + 1] = z
            bar.update(1)
    stats = {"wall_time": time.perf_counter() - t0, "n_steps": n_steps, "n_walkers": w}
    return WalkResult(traj, method, h, status, steps_taken, accepted, rejected, nonfinite, stats, mh=method == "mmala")


def _plain_step(method, metric, z, xi, h, sqh, tfn, terms):
    """One step of a drift/diffusion walk: ``(z' (n, d), status code (n,))`` (no MH)."""
    n = z.shape[0]
    code = torch.zeros(n, dtype=torch.long, device=z.device)
    with torch.no_grad():
        if method == "euclidean":
            znew = z + sqh * xi
        elif method == "brownian":
            lfac, ok, drift = terms(z)
            code[~ok] = int(WalkStatus.METRIC_NOT_PD)
            znew = z + h * drift + sqh * (lfac @ xi.unsqueeze(-1)).squeeze(-1)
            code[ok & ~torch.isfinite(drift).all(1)] = int(WalkStatus.NONFINITE_STEP)
        else:
            m = tfn(z)
            lfac, ok = inverse_factor(m)
            finite_m = torch.isfinite(m).reshape(n, -1).all(1)
            code[~ok] = torch.where(finite_m[~ok], int(WalkStatus.METRIC_NOT_PD), int(WalkStatus.NONFINITE_STEP))
            noise = sqh * (lfac @ xi.unsqueeze(-1)).squeeze(-1)
            if method == "lso":
                znew = z + noise
            else:  # geodesic
                znew = z.clone()
                if bool(ok.any()):
                    end, ok_exp = exp_step(metric, z[ok], noise[ok])
                    znew[ok] = torch.where(ok_exp[:, None], end, z[ok])
                    sub = code[ok]
                    sub[~ok_exp] = int(WalkStatus.EXP_MAP_FAILED)
                    code[ok] = sub
    finite = torch.isfinite(znew).all(1)
    code[(code == 0) & ~finite] = int(WalkStatus.NONFINITE_STEP)
    return znew, code


def _mmala_step(idx, z, xi, u, state, log_prob, tfn, h, sqh, accepted, rejected, nonfinite, derivs=None):
    """One Metropolis–Hastings-corrected MMALA step for the walkers ``idx``; returns their new positions."""
    cur = type(state)(*(t[idx] for t in state))
    with torch.no_grad():
        prop = cur.mean + sqh * (cur.lfac @ xi.unsqueeze(-1)).squeeze(-1)
    finite = torch.isfinite(prop).all(1)
    prop = torch.where(finite[:, None], prop, z)
    new = mmala_state(log_prob, tfn, prop, h, derivs)
    with torch.no_grad():
        log_alpha = new.log_p - cur.log_p + mmala_log_q(z, new, h) - mmala_log_q(prop, cur, h)
        valid = finite & new.ok & ~torch.isnan(log_alpha)
        acc = valid & (torch.log(u) < log_alpha)
        nonfinite[idx[~valid & ~(new.log_p == -math.inf)]] += 1
        accepted[idx[acc]] += 1
        rejected[idx[~acc]] += 1
        for full, part in zip(state, new):
            full[idx[acc]] = part[acc]
        return torch.where(acc[:, None], prop, z)
