"""Stage 2 of connecting geodesics: batched Newton shooting on the geodesic ODE.

For each pair ``(z0, z1)`` find the initial velocity ``v`` with ``Exp_{z0}(v) = z1``. The
residual ``F(v) = γ_v(1) − z1`` and its Jacobian ``∂γ_v(1)/∂v`` come from one adaptive
Dormand–Prince integration per Newton iteration: the Jacobian by internal numerical
differentiation (perturbed copies in the same batch, on the nominal step sequence), or
optionally from the variational equations

    d/dτ [δz; δv] = [δv; ∂a/∂z·δz + ∂a/∂v·δv],   δz(0) = 0, δv(0) = I,

with forward-mode ``jvp``s of the acceleration. Newton steps are damped by halving until
the endpoint mismatch decreases (per pair); each pair stops on its own criterion

    ‖F‖_{M(z1)} ≤ ftol · ‖v‖_{M(z0)},

i.e. the metric size of the endpoint mismatch relative to the geodesic's length (which
bounds the relative length error to first order). The reported residual is the ODE's: the
endpoint mismatch of the integrated geodesic, not a discretisation surrogate.

References: Stoer, Bulirsch, *Introduction to Numerical Analysis*, §7.3 (shooting);
Hairer, Nørsett, Wanner, *Solving ODEs I*, §I.14 (variational equations). Bock,
*Numerical treatment of inverse problems in chemical reaction kinetics* (1981) (internal
numerical differentiation).
"""

from __future__ import annotations

import time

import torch
from torch.func import jvp, vmap

from .ivp import dopri5

__all__ = ["shoot"]


def _variational_rhs(acc, d):
    dd = d * d

    def f(y):
        n = y.shape[0]
        z, v = y[:, :d], y[:, d : 2 * d]
        pz = y[:, 2 * d : 2 * d + dd].reshape(n, d, d)
        pv = y[:, 2 * d + dd :].reshape(n, d, d)
        a, da = vmap(lambda tz, tv: jvp(acc, (z, v), (tz, tv)), in_dims=(2, 2), out_dims=(None, 2))(pz, pv)
        return torch.cat([v, a, pv.reshape(n, dd), da.reshape(n, dd)], 1)

    return f


def _merge_knots(store, idx, knots):
    """Write padded knots ``(k, S, ·)`` of the pairs ``idx`` into ``store`` (padding as needed)."""
    kt, Y, F = knots
    if store is None:
        return None
    skt, sY, sF = store
    s_old, s_new = skt.shape[1], kt.shape[1]
    if s_new > s_old:
        skt = torch.cat([skt, skt[:, -1:].expand(-1, s_new - s_old)], 1)
        sY = torch.cat([sY, sY[:, -1:].expand(-1, s_new - s_old, -1)], 1)
        sF = torch.cat([sF, sF[:, -1:].expand(-1, s_new - s_old, -1)], 1)
    elif s_new < s_old:
        kt = torch.cat([kt, kt[:, -1:].expand(-1, s_old - s_new)], 1)
        Y = torch.cat([Y, Y[:, -1:].expand(-1, s_old - s_new, -1)], 1)
        F = torch.cat([F, F[:, -1:].expand(-1, s_old - s_new, -1)], 1)
    skt, sY, sF = skt.clone(), sY.clone(), sF.clone()
    skt[idx], sY[idx], sF[idx] = kt, Y, F
    return skt, sY, sF


def _ind_rhs(acc, d):
    """Nominal trajectory plus ``d`` perturbed copies, stacked into one batch (row-wise RHS)."""

    def f(y):
        n = y.shape[0]
        zz = y.reshape(n * (d + 1), 2 * d)
        z, v = zz[:, :d], zz[:, d:]
        return torch.cat([v, acc(z, v)], 1).reshape(n, -1)

    return f


def shoot(
    acc,
    mfn,
    z0: torch.Tensor,
    z1: torch.Tensor,
    v_init: torch.Tensor,
    *,
    ftol: float,
    rtol: float,
    atol: float,
    max_iter: int = 20,
    max_steps: int = 10_000,
    record: bool = True,
    jacobian: str = "ind",
    bound=None,
    deadline=None,
):
    """Damped Newton shooting for a batch of pairs.

    Every iteration integrates the geodesic ODE from the current velocity together with the
    shooting Jacobian ``Φ = ∂γ(1)/∂v``: by default by *internal numerical differentiation*
    (Bock 1981: ``d`` copies with perturbed initial velocities ride along in the same batch and
    take exactly the nominal trajectory's steps, so the difference quotient differentiates the
    discrete integrator itself — no step-size noise), or with ``jacobian="variational"`` from the
    variational equations by forward-mode AD (exact, about 2–3× dearer per step). The residual
    ``F`` is always the nominal trajectory's endpoint mismatch. A trial that does not lower
    ``‖F‖_{M(z1)}`` is rejected and the step halved.

    Args:
        acc: pure acceleration ``(z, v) -> a`` (:func:`~latentgeo.geodesics.ode.acceleration_fn`).
        mfn: pure metric tensor ``z -> M(z)`` (for the stopping criterion).
        z0, z1: ``(N, d)`` endpoints.
        v_init: ``(N, d)`` initial guesses for ``γ'(0)``.
        ftol: relative endpoint tolerance (see module docstring).
        rtol, atol: integrator tolerances.
        max_iter: integrations per pair.
        record: keep the accepted trajectory's knots (for dense output).
        jacobian: ``"ind"`` or ``"variational"``.
        bound: optional ``(N,)`` box size: an integration whose nominal position leaves
            ``max |z| ≤ bound`` stops (failed) instead of running to ``max_steps``.

    Returns:
        dict with ``v (N, d)``, ``converged (N,)``, ``residual (N,)`` (Euclidean endpoint
        mismatch), ``rel_residual (N,)`` (``‖F‖_{M(z1)}/L``), ``length (N,)``, ``speed_drift (N,)``,
        ``iterations (N,)``, ``reasons``, ``ok (N,)`` (an accepted integration exists),
        ``knots`` (``(t (N,S), z, v, a (N,S,d))`` of the accepted trajectories or ``None``).
    """
    from .ivp import _trace_to_padded

    if jacobian not in ("ind", "variational"):
        raise ValueError(f"unknown jacobian {jacobian!r}; expected 'ind' or 'variational'")
    n, d = z0.shape
    dev, dt = z0.device, z0.dtype
    f_var = _variational_rhs(acc, d)
    f_ind = _ind_rhs(acc, d)
    eye = torch.eye(d, dtype=dt, device=dev)
    m0 = mfn(z0)
    m1 = mfn(z1)
    tiny = torch.finfo(dt).tiny
    sqrt_eps = float(torch.finfo(dt).eps) ** 0.5

    def mnorm(m, x):
        return torch.einsum("ni,nij,nj->n", x, m, x).clamp_min(0).sqrt()

    def run(idx, v):
        k = idx.numel()
        if jacobian == "variational":
            y0 = torch.cat([z0[idx], v, torch.zeros(k, d * d, dtype=dt, device=dev), eye.reshape(1, -1).expand(k, -1)], 1)
            fun = f_var
        else:
            eps = sqrt_eps * v.abs().amax(1).clamp_min(1e-3)  # (k,)
            vs = torch.cat([v[:, None], v[:, None] + eps[:, None, None] * eye[None]], 1)  # (k, d+1, d)
            zs = z0[idx][:, None].expand(-1, d + 1, -1)
            y0 = torch.cat([zs, vs], -1).reshape(k, -1)
            fun = f_ind
        y1, f1, ok, ns, _, reasons, trace = dopri5(
            fun, y0, rtol=rtol, atol=atol, err_cols=2 * d, max_steps=max_steps, record=2 * d if record else None,
            bound=None if bound is None else bound[idx], bound_cols=d, deadline=deadline,
        )
        F = y1[:, :d] - z1[idx]
        if jacobian == "variational":
            phi = y1[:, 2 * d : 2 * d + d * d].reshape(k, d, d)
        else:
            ends = y1.reshape(k, d + 1, 2 * d)[:, :, :d]
            phi = ((ends[:, 1:] - ends[:, :1]) / eps[:, None, None]).transpose(1, 2)  # column j: ∂z(1)/∂v_j
        knots = _trace_to_padded(trace, k, ns) if record else None
        return F, phi, ok, reasons, knots, y1[:, :d], y1[:, d : 2 * d]

    v_acc = v_init.clone()
    F_acc = torch.full((n, d), float("inf"), dtype=dt, device=dev)
    fn_acc = torch.full((n,), float("inf"), dtype=dt, device=dev)
    step = torch.zeros(n, d, dtype=dt, device=dev)
    alpha = torch.ones(n, dtype=dt, device=dev)
    have = torch.zeros(n, dtype=torch.bool, device=dev)
    conv = torch.zeros(n, dtype=torch.bool, device=dev)
    dead = torch.zeros(n, dtype=torch.bool, device=dev)
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    drift = torch.full((n,), float("nan"), dtype=dt, device=dev)
    reasons = [""] * n
    store = None
    if record:
        store = (
            torch.ones(n, 2, dtype=dt, device=dev),
            torch.zeros(n, 2, 2 * d, dtype=dt, device=dev),
            torch.zeros(n, 2, 2 * d, dtype=dt, device=dev),
        )
        store[0][:, 0] = 0.0

    with torch.no_grad():
        same = (z0 == z1).all(1)
        if bool(same.any()):
            v_acc[same] = 0.0
            F_acc[same] = 0.0
            fn_acc[same] = 0.0
            drift[same] = 0.0
            conv |= same
            have |= same
            if record:
                zz = z0[same]
                store[1][same] = torch.cat([zz, torch.zeros_like(zz)], 1)[:, None].expand(-1, 2, -1)
        for _ in range(int(max_iter)):
            act = torch.nonzero(~(conv | dead)).reshape(-1)
            if deadline is not None and time.perf_counter() > deadline:
                for i in act.tolist():
                    if not reasons[i]:
                        reasons[i] = "time budget exhausted during Newton shooting"
                dead[act] = True
                act = act[:0]
            if act.numel() == 0:
                break
            iters[act] += 1
            v_try = torch.where(have[act, None], v_acc[act] + alpha[act, None] * step[act], v_acc[act])
            F, phi, ok, rs, knots, zend, vend = run(act, v_try)
            fnorm = mnorm(m1[act], F)
            length = mnorm(m0[act], v_try)
            finite = ok & torch.isfinite(fnorm) & torch.isfinite(phi).all((1, 2))
            better = finite & (~have[act] | (fnorm < fn_acc[act]))
            ib = act[better]
            if ib.numel():
                v_acc[ib] = v_try[better]
                F_acc[ib] = F[better]
                fn_acc[ib] = fnorm[better]
                have[ib] = True
                alpha[ib] = 1.0
                mend = mfn(zend[better])
                sp1 = mnorm(mend, vend[better])
                lb = length[better]
                drift[ib] = torch.where(lb > 0, (sp1 - lb).abs() / lb.clamp_min(tiny), sp1)
                if record:
                    store = _merge_knots(store, ib, tuple(k[better] for k in knots))
                solved = fnorm[better] <= ftol * lb
                conv[ib[solved]] = True
                upd = ~solved
                if bool(upd.any()):
                    iu = ib[upd]
                    sol, info = torch.linalg.solve_ex(phi[better][upd], -F[better][upd])
                    good = (info == 0) & torch.isfinite(sol).all(1)
                    step[iu] = torch.where(good[:, None], sol, torch.zeros_like(sol))
                    for j in torch.nonzero(~good).reshape(-1).tolist():
                        i = int(iu[j])
                        reasons[i] = "shooting Jacobian ∂γ(1)/∂v is singular (conjugate point?)"
                        dead[i] = True
            for j in torch.nonzero(~better).reshape(-1).tolist():
                i = int(act[j])
                if not bool(have[i]):
                    reasons[i] = "integration from the initial guess failed: " + (rs[j] or "non-finite state")
                    dead[i] = True
                else:
                    alpha[i] = alpha[i] * 0.5
                    if float(alpha[i]) < 1e-3:
                        reasons[i] = (
                            f"Newton line search stalled at endpoint mismatch {float(fn_acc[i]):.3g} (metric norm)"
                            + (f"; integrator: {rs[j]}" if rs[j] else "")
                        )
                        dead[i] = True
        length = mnorm(m0, v_acc)
        for i in torch.nonzero(~conv & ~dead).reshape(-1).tolist():
            reasons[i] = (
                f"no convergence in {int(max_iter)} Newton iterations (endpoint mismatch "
                f"{float(fn_acc[i]):.3g} vs target {ftol * float(length[i]):.3g})"
            )
    rel = torch.where(length > 0, fn_acc / length.clamp_min(tiny), fn_acc)
    knots_out = None
    if record:
        kt, Y, Fk = store
        knots_out = (kt, Y[..., :d], Y[..., d:], Fk[..., d:])
    return {
        "v": v_acc,
        "converged": conv,
        "residual": F_acc.norm(dim=1),
        "rel_residual": rel,
        "length": length,
        "speed_drift": drift,
        "iterations": iters,
        "reasons": reasons,
        "ok": have,
        "knots": knots_out,
    }
