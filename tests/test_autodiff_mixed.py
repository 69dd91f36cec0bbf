"""The mixed second-order mode of the fx interpreter (``∂²f[v, e_i]``: the velocity's Hessian column)
and what the geodesic solvers build on it: the exact velocity Jacobian of the acceleration.

References are independent of the interpreter: nested ``torch.func.jvp`` with the coordinate
directions, ``torch.func.jacfwd`` of closed-form accelerations (the inverse stereographic sphere).
"""

import pytest
import torch
from torch import nn
from torch.func import jacfwd, jvp

from latentgeo._autodiff import mixed_second_order, second_order
from test_autodiff_taylor import Arith, forbid_generic, InvStereo, Reductions, TwoHead, _embedding_cases, _leaves, _rbf, _zv

TOL = 1e-11
DT = torch.float64


def _mixed_reference(f, z, v):
    """``mix[i] = ∂²f[v, e_i]`` by nested jvp (leaves ``(d, *leaf.shape)``)."""
    n, d = z.shape
    per = []
    for i in range(d):
        e = torch.zeros_like(z)
        e[:, i] = 1.0
        per.append(_leaves(jvp(lambda x: jvp(f, (x,), (v,))[1], (z,), (e,))[1]))
    return [torch.stack([p[k] for p in per]) for k in range(len(per[0]))]


@pytest.fixture
def no_generic(monkeypatch):
    """Fail if a node goes through the slow generic (vmap / jvp-of-jvp) path in mixed mode."""
    forbid_generic(monkeypatch, "MIXED")


def _check(module, z, v, tol=TOL):
    res = mixed_second_order(module, z, v)
    assert res is not None
    out, cols, mix = res
    t_out, t_cols, t_h = second_order(module, z, v)
    ref = _mixed_reference(module, z, v)
    for a, b in zip(_leaves(out), _leaves(t_out)):
        assert torch.equal(a, b)
    for a, b in zip(_leaves(cols), _leaves(t_cols)):
        assert torch.allclose(a, b, atol=tol, rtol=0)
    for m, r, h in zip(_leaves(mix), ref, _leaves(t_h)):
        scale = max(1.0, r.abs().max().item())
        assert m.shape == r.shape and (m - r).abs().max() < tol * scale
        assert r.abs().max() > 1e-6
        # the Taylor slot is the mixed column contracted with v: ∂²f[v, v] = Σ_i v_i ∂²f[v, e_i]
        vv = v.reshape((v.shape[0],) + (1,) * (h.dim() - 1) + (v.shape[1],)).movedim(-1, 0)
        assert (torch.sum(vv * m, 0) - h).abs().max() < tol * scale
    return res


@pytest.mark.parametrize(
    "act",
    [nn.Tanh(), nn.ELU(alpha=0.7), nn.ELU(alpha=1.3, inplace=True), nn.Softplus(beta=2.0, threshold=1.0), nn.Sigmoid()],
    ids=lambda m: type(m).__name__ + ("_inplace" if getattr(m, "inplace", False) else ""),
)
def test_mlp_activations(act, no_generic):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 5)).to(DT)
    z, v = _zv()
    _check(net, z, v)


def test_closed_forms_products_quotients_and_reductions(no_generic):
    z, v = _zv()
    _check(_rbf(), z, v)  # the RBF head: pow, sum over a short axis, sqrt, reciprocal
    torch.manual_seed(9)
    _check(Reductions().to(DT), z, v)
    torch.manual_seed(3)
    out, cols, mix = _check(TwoHead().to(DT), *_zv(d=2))
    assert isinstance(mix, tuple) and mix[0].shape == (2, 6, 4)


def test_generic_nodes_and_varying_matmul():
    """Arith has a matmul of two varying operands, a quotient of varying values and softmax
    (no rule: the generic path, vmapped over the d mixed directions); SiLU/GELU take nested jvp."""
    torch.manual_seed(5)
    z, v = _zv()
    _check(Arith().to(DT), z.abs() + 0.5, v, tol=1e-10)
    torch.manual_seed(2)
    _check(nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 2)).to(DT), z, v)


def test_ineligible_and_bad_input():
    from test_autodiff_taylor import Untraceable

    z, v = _zv(d=2)
    assert mixed_second_order(Untraceable().to(DT), z, v) is None
    with pytest.raises(ValueError, match="v must"):
        mixed_second_order(nn.Linear(2, 2).to(DT), z, v[:, :1])
    with pytest.raises(ValueError, match="nn.Module"):
        mixed_second_order(lambda x: x, z, v)


@pytest.mark.parametrize("name", list(_embedding_cases()))
def test_embedding_mixed_jet_matches_nested_jvp(name):
    """Every decoder's mixed embedding jet (Gaussian, Bernoulli, categorical through their
    outer maps; plain functions) against nested jvp, and the metric's generic path."""
    metric = _embedding_cases()[name]
    z, v = _zv(n=5, d=2, seed=12)
    fast = metric.decoder.embedding_jet(z, v, metric.kind, mixed=True)
    assert fast is not None
    g, jac, hv = fast
    g0, jac0, h0 = metric.decoder.embedding_jet(z, v, metric.kind)
    emb = metric.embedding
    (ref,) = _mixed_reference(emb, z, v)  # (d, N, K)
    ref = ref.permute(1, 2, 0)
    assert torch.equal(g, g0) and (jac - jac0).abs().max() < TOL
    assert hv.shape == ref.shape and (hv - ref).abs().max() < TOL * max(1.0, ref.abs().max().item())
    assert ((hv @ v[:, :, None])[..., 0] - h0).abs().max() < 1e-10
    metric.fast_path = False
    try:
        _, _, hv_generic = metric.jet(z, v, mixed=True)
    finally:
        metric.fast_path = True
    assert (hv_generic - ref).abs().max() < TOL * max(1.0, ref.abs().max().item())


def _sphere_acc(z, v):
    """The inverse stereographic sphere's geodesic acceleration in closed form (conformal factor
    ``λ = 2 / (1 + |z|²)``: ``a = −2⟨∇log λ, v⟩ v + |v|² ∇log λ``)."""
    g = -2.0 * z / (1.0 + (z * z).sum(-1, keepdim=True))
    return -2.0 * (g * v).sum(-1, keepdim=True) * v + (v * v).sum(-1, keepdim=True) * g


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_velocity_jacobian_of_the_acceleration_in_closed_form(ridge):
    from latentgeo.geodesics.ode import acceleration_and_velocity_jacobian

    z, v = _zv(n=9, d=2, seed=7)
    _, cols, mix = mixed_second_order(InvStereo(), z, v)
    jac, hv = cols.permute(1, 2, 0), mix.permute(1, 2, 0)
    a, av = acceleration_and_velocity_jacobian(jac, hv, v, ridge)
    ref_av = torch.stack([jacfwd(lambda w, zi=zi: _sphere_acc(zi[None], w[None])[0])(vi) for zi, vi in zip(z, v)])
    if ridge == 0.0:
        assert (a - _sphere_acc(z, v)).abs().max() < 1e-11
        assert (av - ref_av).abs().max() < 1e-11 and ref_av.abs().max() > 1e-2
    else:
        # the regularised normal equations: the acceleration is still quadratic in v, so central
        # differences of Taylor-mode accelerations with unit steps are exact
        from latentgeo.geodesics.ode import acceleration_from_jet

        def acc_r(w):
            return acceleration_from_jet(jac, second_order(InvStereo(), z, w)[2], ridge)

        assert (a - acc_r(v)).abs().max() < 1e-12
        for j in range(2):
            e = torch.zeros_like(v)
            e[:, j] = 1.0
            assert (av[:, :, j] - 0.5 * (acc_r(v + e) - acc_r(v - e))).abs().max() < 1e-11
        assert (av - ref_av).abs().max() > 1e-4  # (the ridge moves it off the exact sphere)


def test_piecewise_jacobians_of_the_pregeodesic():
    """``piecewise._accelerations``: for an embedded metric ``Jv`` is exact (the closed-form
    pregeodesic's jacfwd to rounding) and ``Jz`` a forward difference; a metric field (no
    embedding) gets both by forward differences, to the same values within their error."""
    import latentgeo as lg
    from latentgeo.geodesics import piecewise as P

    def pre(z, v):
        return P._pregeodesic(_sphere_acc(z, v), v)

    z, v = _zv(n=7, d=2, seed=3)
    ref_z = torch.stack([jacfwd(lambda x, vi=vi: pre(x[None], vi[None])[0])(zi) for zi, vi in zip(z, v)])
    ref_v = torch.stack([jacfwd(lambda w, zi=zi: pre(zi[None], w[None])[0])(vi) for zi, vi in zip(z, v)])
    emb = lg.PullbackMetric(lg.DeterministicDecoder(InvStereo()))
    f, Jz, Jv = P._accelerations(emb, None, None, z, v, jac=True)
    assert (f - pre(z, v)).abs().max() < 1e-11
    assert (Jv - ref_v).abs().max() < 1e-10 and ref_v.abs().max() > 1e-2
    assert (Jz - ref_z).abs().max() < 1e-6 * ref_z.abs().max()

    def field(x):
        lam = 2.0 / (1.0 + (x * x).sum(-1))
        return (lam**2)[:, None, None] * torch.eye(2, dtype=x.dtype)

    mf = lg.MetricField(field, latent_dim=2)
    from latentgeo.geodesics.ode import acceleration_fn

    f2, Jz2, Jv2 = P._accelerations(mf, acceleration_fn(mf), mf.tensor_fn(), z, v, jac=True)
    assert (f2 - f).abs().max() < 1e-10
    assert (Jv2 - ref_v).abs().max() < 1e-6 * ref_v.abs().max()
    assert (Jz2 - ref_z).abs().max() < 1e-6 * ref_z.abs().max()


@pytest.mark.parametrize("split", [0, 10**9], ids=["two passes", "one mixed pass"])
def test_collocation_newton_jets_match_forward_differences(split, monkeypatch):
    """``spectral._newton_jets`` (a mixed jet at the fresh pairs' nodes; Taylor jets for the chord
    pairs and the position differences, in their own pass or in the mixed one) against the
    closed-form sphere's Jacobians."""
    import latentgeo as lg
    from latentgeo.geodesics import spectral as S

    monkeypatch.setattr(S, "_SPLIT_ROWS", split)

    metric = lg.PullbackMetric(lg.DeterministicDecoder(InvStereo()))
    g = torch.Generator().manual_seed(0)
    y, yp = torch.randn(3, 5, 2, generator=g, dtype=DT), torch.randn(3, 5, 2, generator=g, dtype=DT)
    fresh = torch.tensor([True, False, True])
    hz = 1e-7 * (1.0 + y[fresh].abs().amax(-1, keepdim=True))
    a, norm, Az, Av = S._newton_jets(metric, y, yp, fresh, hz)
    assert (a - _sphere_acc(y.reshape(-1, 2), yp.reshape(-1, 2))).abs().max() < 1e-11
    sp = norm(yp.reshape(-1, 2))
    lam = 2.0 / (1.0 + (y.reshape(-1, 2) ** 2).sum(-1))
    assert (sp - lam * yp.reshape(-1, 2).norm(dim=-1)).abs().max() < 1e-12
    yf, ypf = y[fresh].reshape(-1, 2), yp[fresh].reshape(-1, 2)
    ref_v = torch.stack([jacfwd(lambda w, zi=zi: _sphere_acc(zi[None], w[None])[0])(vi) for zi, vi in zip(yf, ypf)])
    ref_z = torch.stack([jacfwd(lambda x, vi=vi: _sphere_acc(x[None], vi[None])[0])(zi) for zi, vi in zip(yf, ypf)])
    # layout [j, n, q, i] = ∂a_i/∂(γ or γ')_j
    assert Av.shape == (2, 2, 5, 2)
    assert (Av.permute(1, 2, 3, 0).reshape(-1, 2, 2) - ref_v).abs().max() < 1e-10
    assert (Az.permute(1, 2, 3, 0).reshape(-1, 2, 2) - ref_z).abs().max() < 1e-5 * ref_z.abs().max()
    _, _, none_z, none_v = S._newton_jets(metric, y, yp, torch.zeros(3, dtype=torch.bool), hz[:0])
    assert none_z is None and none_v is None
