"""Stage 2 of connecting geodesics: batched Newton shooting on the geodesic ODE.

For each pair ``(z0, z1)`` find the initial velocity ``v`` with ``Exp_{z0}(v) = z1``. The
residual ``F(v) = γ_v(1) − z1`` and its Jacobian ``∂γ_v(1)/∂v`` come from one adaptive
Dormand–Prince integration of the geodesic ODE augmented with its variational equations

    d/dτ [δz; δv] = [δv; ∂a/∂z·δz + ∂a/∂v·δv],   δz(0) = 0, δv(0) = I,

where the directional derivatives of the acceleration ``a`` are forward-mode ``jvp``s
(``d`` of them, vectorised) — no finite differences. Newton steps are damped by halving
until the endpoint mismatch decreases (per pair); each pair stops on its own criterion

    ‖F‖_{M(z1)} ≤ ftol · ‖v‖_{M(z0)},

i.e. the metric size of the endpoint mismatch relative to the geodesic's length (which
bounds the relative length error to first order). The reported residual is the ODE's: the
endpoint mismatch of the integrated geodesic, not a discretisation surrogate.

References: Stoer, Bulirsch, *Introduction to Numerical Analysis*, §7.3 (shooting);
Hairer, Nørsett, Wanner, *Solving ODEs I*, §I.14 (variational equations).
"""

from __future__ import annotations

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
):
    """Damped Newton–Broyden shooting for a batch of pairs.

    The first iteration of a pair (and any iteration after a rejected step) integrates the
    variational equations for the exact Jacobian ``Φ = ∂γ(1)/∂v``; accepted steps update it by
    Broyden's rank-one formula and integrate the plain geodesic ODE only (about 2.5× cheaper).
    A trial that does not lower ``‖F‖_{M(z1)}`` is rejected: the exact Jacobian is recomputed
    and the step halved.

    Args:
        acc: pure acceleration ``(z, v) -> a`` (:func:`~latentgeo.geodesics.ode.acceleration_fn`).
        mfn: pure metric tensor ``z -> M(z)`` (for the stopping criterion).
        z0, z1: ``(N, d)`` endpoints.
        v_init: ``(N, d)`` initial guesses for ``γ'(0)``.
        ftol: relative endpoint tolerance (see module docstring).
        rtol, atol: integrator tolerances.
        max_iter: integrations per pair.
        record: keep the accepted trajectory's knots (for dense output).

    Returns:
        dict with ``v (N, d)``, ``converged (N,)``, ``residual (N,)`` (Euclidean endpoint
        mismatch), ``rel_residual (N,)`` (``‖F‖_{M(z1)}/L``), ``length (N,)``, ``speed_drift (N,)``,
        ``iterations (N,)``, ``reasons``, ``ok (N,)`` (an accepted integration exists),
        ``knots`` (``(t (N,S), z, v, a (N,S,d))`` of the accepted trajectories or ``None``).
    """
    from .ivp import _geodesic_rhs, _trace_to_padded

    n, d = z0.shape
    dev, dt = z0.device, z0.dtype
    f_var = _variational_rhs(acc, d)
    f_geo = _geodesic_rhs(acc, d)
    eye = torch.eye(d, dtype=dt, device=dev).reshape(1, d * d)
    m0 = mfn(z0)
    m1 = mfn(z1)
    tiny = torch.finfo(dt).tiny

    def mnorm(m, x):
        return torch.einsum("ni,nij,nj->n", x, m, x).clamp_min(0).sqrt()

    def run(idx, v, with_jac):
        k = idx.numel()
        if with_jac:
            y0 = torch.cat([z0[idx], v, torch.zeros(k, d * d, dtype=dt, device=dev), eye.expand(k, -1)], 1)
            fun = f_var
        else:
            y0 = torch.cat([z0[idx], v], 1)
            fun = f_geo
        y1, f1, ok, ns, _, reasons, trace = dopri5(
            fun, y0, rtol=rtol, atol=atol, err_cols=2 * d, max_steps=max_steps, record=2 * d if record else None
        )
        F = y1[:, :d] - z1[idx]
        phi = y1[:, 2 * d : 2 * d + d * d].reshape(k, d, d) if with_jac else None
        knots = _trace_to_padded(trace, k, ns) if record else None
        vend = y1[:, d : 2 * d]
        return F, phi, ok, reasons, knots, y1[:, :d], vend

    v_acc = v_init.clone()
    F_acc = torch.full((n, d), float("inf"), dtype=dt, device=dev)
    fn_acc = torch.full((n,), float("inf"), dtype=dt, device=dev)
    B = torch.eye(d, dtype=dt, device=dev).expand(n, d, d).clone()
    step = torch.zeros(n, d, dtype=dt, device=dev)
    alpha = torch.ones(n, dtype=dt, device=dev)
    have = torch.zeros(n, dtype=torch.bool, device=dev)
    need_jac = torch.ones(n, dtype=torch.bool, device=dev)
    exact = torch.zeros(n, dtype=torch.bool, device=dev)  # B is the exact Jacobian at v_acc
    conv = torch.zeros(n, dtype=torch.bool, device=dev)
    dead = torch.zeros(n, dtype=torch.bool, device=dev)
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    drift = torch.full((n,), float("nan"), dtype=dt, device=dev)
    reasons = [""] * n
    store = None
    if record:
        store = (
            torch.zeros(n, 2, dtype=dt, device=dev),
            torch.zeros(n, 2, 2 * d, dtype=dt, device=dev),
            torch.zeros(n, 2, 2 * d, dtype=dt, device=dev),
        )
        store[0][:, 1] = 1.0

    def new_step(idx, jac, F):
        sol, info = torch.linalg.solve_ex(jac, -F)
        good = (info == 0) & torch.isfinite(sol).all(1)
        step[idx] = torch.where(good[:, None], sol, torch.zeros_like(sol))
        return good

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
        it = 0
        while it < int(max_iter):
            it += 1
            act = torch.nonzero(~(conv | dead)).reshape(-1)
            if act.numel() == 0:
                break
            for with_jac in (True, False):
                sub = act[need_jac[act] == with_jac]
                if sub.numel() == 0:
                    continue
                # exact-Jacobian evaluations are taken at the accepted point (or the initial guess);
                # Broyden trials at the accepted point plus the (damped) step
                v_try = v_acc[sub] if with_jac else torch.where(have[sub, None], v_acc[sub] + alpha[sub, None] * step[sub], v_acc[sub])
                iters[sub] += 1
                F, phi, ok, rs, knots, zend, vend = run(sub, v_try, with_jac)
                fnorm = mnorm(m1[sub], F)
                length = mnorm(m0[sub], v_try)
                finite = ok & torch.isfinite(fnorm)
                if with_jac:
                    finite = finite & torch.isfinite(phi).all((1, 2))
                    better = finite & (~have[sub] | (fnorm <= fn_acc[sub]))
                else:
                    better = finite & (~have[sub] | (fnorm < fn_acc[sub]))
                ib = sub[better]
                if ib.numel():
                    first = ~have[ib]
                    if not with_jac:
                        # Broyden rank-one update with the accepted secant (Δv, ΔF)
                        dv = v_try[better] - v_acc[ib]
                        dF = F[better] - F_acc[ib]
                        Bi = B[ib]
                        corr = (dF - (Bi @ dv.unsqueeze(-1)).squeeze(-1)) / (dv * dv).sum(1, keepdim=True).clamp_min(tiny)
                        B[ib] = torch.where(first[:, None, None], Bi, Bi + corr.unsqueeze(-1) * dv.unsqueeze(1))
                        alpha[ib] = 1.0
                        exact[ib] = False
                    else:
                        B[ib] = phi[better]
                        alpha[ib] = torch.where(have[ib], alpha[ib], torch.ones_like(alpha[ib]))
                        exact[ib] = True
                    v_acc[ib] = v_try[better]
                    F_acc[ib] = F[better]
                    fn_acc[ib] = fnorm[better]
                    have[ib] = True
                    need_jac[ib] = False
                    mend = mfn(zend[better])
                    sp1 = mnorm(mend, vend[better])
                    lb = length[better]
                    drift[ib] = torch.where(lb > 0, (sp1 - lb).abs() / lb.clamp_min(tiny), sp1)
                    if record:
                        store = _merge_knots(store, ib, tuple(k[better] for k in knots))
                    solved = fnorm[better] <= ftol * lb
                    conv[ib[solved]] = True
                    upd = ib[~solved]
                    if upd.numel():
                        good = new_step(upd, B[upd], F_acc[upd])
                        for j in torch.nonzero(~good).reshape(-1).tolist():
                            i = int(upd[j])
                            reasons[i] = "shooting Jacobian ∂γ(1)/∂v is singular (conjugate point?)"
                            dead[i] = True
                rej = sub[~better]
                for j in torch.nonzero(~better).reshape(-1).tolist():
                    i = int(sub[j])
                    if not bool(have[i]):
                        reasons[i] = "integration from the initial guess failed: " + (rs[j] or "non-finite state")
                        dead[i] = True
                    elif with_jac:
                        reasons[i] = "integration at the accepted point failed: " + (rs[j] or "non-finite state")
                        dead[i] = True
                if not with_jac and rej.numel():
                    # a rejected trial: recompute the exact Jacobian at the accepted point; halve the
                    # step only if it already came from an exact Jacobian
                    alpha[rej] = torch.where(exact[rej], alpha[rej] * 0.5, alpha[rej])
                    need_jac[rej] = True
                    small = rej[alpha[rej] < 1e-3]
                    for i in small.tolist():
                        reasons[i] = f"Newton line search stalled at endpoint mismatch {float(fn_acc[i]):.3g} (metric norm)"
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
