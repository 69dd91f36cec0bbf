"""Tests of latentgeo._autodiff.second_order (the fx interpreter in Taylor mode) against nested torch.func.jvp / autograd jacobians."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

import latentgeo._autodiff._trace as trace
from latentgeo._autodiff import jacobian_columns
from latentgeo._autodiff import second_order as traced_second_order
from latentgeo.variance import RBFPrecision

TOL = 1e-11
DT = torch.float64


def _leaves(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _reference(f, z, v):
    """out, cols (d, *out) from autograd.functional.jacobian per row, h from nested jvp."""
    out = f(z)
    h = jvp(lambda x: jvp(f, (x,), (v,))[1], (z,), (v,))[1]
    n, d = z.shape
    cols = []
    for k, o in enumerate(_leaves(out)):
        per_row = []
        for r in range(n):
            def fr(x, r=r, k=k):
                y = _leaves(f(x[None]))[k]
                return y[0]

            jac = torch.autograd.functional.jacobian(fr, z[r])  # (*leaf_row, d)
            per_row.append(jac.movedim(-1, 0))  # (d, *leaf_row)
        cols.append(torch.stack(per_row, 1))
    return out, cols, h


def _check(module, z, v, tol=TOL, nonzero_h=True):
    res = traced_second_order(module, z, v)
    assert res is not None
    out, cols, h = res
    r_out, r_cols, r_h = _reference(module, z, v)
    assert type(out) is type(r_out)
    for a, b in zip(_leaves(out), _leaves(r_out)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=0)
    for a, b in zip(_leaves(cols), r_cols):
        assert a.shape == b.shape
        assert (a - b).abs().max() < tol
    for a, b in zip(_leaves(h), _leaves(r_h)):
        assert a.shape == b.shape
        assert (a - b).abs().max() < tol * max(1.0, b.abs().max().item())
        assert b.abs().max() > 1e-6 or not nonzero_h
    return res


def forbid_generic(monkeypatch, mode: str, nested_jvp: bool = True):
    """Fail if a node goes through the slow generic (vmap/jvp-of-jvp) path of the second-order
    ``mode`` (``"TAYLOR"``, ``"MIXED"``, ``"HESSIAN"``), or (``nested_jvp``) takes an elementwise
    derivative by nested jvp."""
    def boom(*a, **k):
        raise AssertionError("generic fallback used")

    import latentgeo._autodiff as autodiff
    import latentgeo._autodiff._taylor as taylor

    monkeypatch.setattr(autodiff, mode, getattr(taylor, mode)._replace(generic=boom))
    if nested_jvp:
        monkeypatch.setattr(taylor, "jvp", boom)


@pytest.fixture
def no_generic(monkeypatch):
    forbid_generic(monkeypatch, "TAYLOR")


def _zv(n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randn(n, d, generator=g, dtype=DT)


@pytest.mark.parametrize(
    "act",
    [nn.Tanh(), nn.ELU(alpha=0.7), nn.ELU(alpha=1.3, inplace=True), nn.Softplus(beta=2.0, threshold=1.0), nn.Sigmoid(),
     nn.LeakyReLU(0.1), nn.ReLU()],
    ids=lambda m: type(m).__name__ + ("_inplace" if getattr(m, "inplace", False) else ""),
)
def test_mlp_activations(act, no_generic):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 5)).to(DT)
    z, v = _zv()
    _check(net, z, v, nonzero_h=not isinstance(act, (nn.ReLU, nn.LeakyReLU)))


def test_unary_without_closed_form_uses_nested_jvp():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 2)).to(DT)
    z, v = _zv()
    _check(net, z, v)


class TwoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2, 12), nn.Tanh())
        self.mu = nn.Linear(12, 4)
        self.sd = nn.Linear(12, 4)

    def forward(self, z):
        h = self.trunk(z)
        return self.mu(h), F.softplus(self.sd(h)) + 1e-3


def test_two_heads(no_generic):
    torch.manual_seed(3)
    net = TwoHead().to(DT)
    z, v = _zv(d=2)
    out, cols, h = _check(net, z, v)
    assert isinstance(out, tuple) and len(cols) == 2 and len(h) == 2


def _rbf(d=3, c=7, out_shape=(2, 5), seed=4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=DT)
    gammas = torch.rand(c, generator=g, dtype=DT) + 0.3
    m = RBFPrecision(centers, gammas, out_shape, zeta=0.05)
    with torch.no_grad():
        m.log_w.copy_(torch.randn(m.log_w.shape, generator=g, dtype=DT))
    return m


def test_rbf_precision_fast_path(no_generic):
    m = _rbf()
    z, v = _zv()
    out, cols, h = _check(m, z, v)
    assert out.shape == (6, 2, 5) and cols.shape == (3, 6, 2, 5) and h.shape == (6, 2, 5)


class Arith(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, z):
        a = self.lin(z)
        b = torch.exp(-0.5 * a) + z.pow(2).sum(-1, keepdim=True)
        c = a * b / (1.0 + b.pow(3)) - torch.sqrt(b) + torch.log(b) * torch.sin(a)
        d = c.unsqueeze(-1) @ b.unsqueeze(-2)  # matmul of two varying operands (N, 4, 4)
        e = torch.cos(d).mean(-1) + a.reciprocal() + 2.0 / b + b.rsqrt() + z[:, :1] ** 1.5 * 0 + torch.square(c)
        return torch.cat([e, torch.softmax(c, -1)], -1)  # softmax: generic fallback


def test_arithmetic():
    torch.manual_seed(5)
    m = Arith().to(DT)
    z, v = _zv()
    z = z.abs() + 0.5  # keep z ** 1.5 real
    _check(m, z, v, tol=1e-10)


def test_image_shaped_output(no_generic):
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(2, 24), nn.Tanh(), nn.Linear(24, 2 * 3 * 4), nn.Sigmoid(),
                        nn.Unflatten(1, (2, 3, 4))).to(DT)
    z, v = _zv(d=2)
    out, cols, h = _check(net, z, v)
    assert cols.shape == (2, 6, 2, 3, 4) and h.shape == (6, 2, 3, 4)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, z):
        if z.sum() > 0:  # data-dependent control flow
            return self.lin(z)
        return -self.lin(z)


def test_ineligible_returns_none():
    z, v = _zv(d=2)
    assert traced_second_order(Untraceable().to(DT), z, v) is None
    drop = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5)).to(DT)
    assert traced_second_order(drop.train(), z, v) is None
    assert traced_second_order(drop.eval(), z, v) is not None
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh()).to(DT)
    res = torch.func.vmap(lambda zz: torch.tensor(traced_second_order(net, zz[None], zz[None]) is None))(z)
    assert bool(res.all())


def test_bad_input():
    net = nn.Sequential(nn.Linear(2, 3)).to(DT)
    z, v = _zv(d=2)
    with pytest.raises(ValueError, match="v must"):
        traced_second_order(net, z, v[:, :1])
    with pytest.raises(ValueError, match="z must"):
        traced_second_order(net, z[0], v[0])
    with pytest.raises(ValueError, match="nn.Module"):
        traced_second_order(lambda x: x, z, v)


def test_cache_reused(monkeypatch):
    calls = []
    orig = trace.symbolic_trace

    def counting(m):
        calls.append(m)
        return orig(m)

    monkeypatch.setattr(trace, "symbolic_trace", counting)
    net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    z, v = _zv(d=2)
    r1 = traced_second_order(net, z, v)
    r2 = traced_second_order(net, 2 * z, v)
    assert jacobian_columns(net, z) is not None
    assert len(calls) == 1
    with torch.no_grad():
        net[0].weight.mul_(2.0)  # weights are read live
    r3 = traced_second_order(net, z, v)
    assert len(calls) == 1
    assert not torch.allclose(r1[2], r2[2]) and not torch.allclose(r1[2], r3[2])


class InvStereo(nn.Module):
    def forward(self, z):
        s = z.pow(2).sum(-1, keepdim=True)
        return torch.cat([2.0 * z / (1.0 + s), (s - 1.0) / (1.0 + s)], -1)


def test_geodesic_acceleration_sphere(no_generic):
    z, v = _zv(n=9, d=2, seed=7)
    out, cols, h = traced_second_order(InvStereo(), z, v)
    jac = cols.permute(1, 2, 0)  # (N, K, d)
    jt = jac.transpose(1, 2)
    acc = -torch.linalg.solve(jt @ jac, (jt @ h.unsqueeze(-1)).squeeze(-1))
    s = (z * z).sum(-1, keepdim=True)
    grad_log_lam = -2.0 * z / (1.0 + s)
    closed = -2.0 * (grad_log_lam * v).sum(-1, keepdim=True) * v + (v * v).sum(-1, keepdim=True) * grad_log_lam
    assert (acc - closed).abs().max() < 1e-11
    assert closed.abs().max() > 1e-2
    assert torch.allclose(out.norm(dim=-1), torch.ones(9, dtype=DT), atol=1e-13)


def test_float32_and_autograd_through_result():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))
    z, v = (t.float() for t in _zv(d=2))
    out, cols, h = traced_second_order(net, z, v)
    assert h.dtype == torch.float32 and cols.dtype == torch.float32
    ref = jvp(lambda x: jvp(net, (x,), (v,))[1], (z,), (v,))[1]
    assert torch.allclose(h, ref, atol=1e-5)
    zz = z.double().requires_grad_()
    net64 = net.double()
    g = torch.autograd.grad(traced_second_order(net64, zz, v.double())[2].sum(), zz)[0]
    g_ref = torch.autograd.grad(jvp(lambda x: jvp(net64, (x,), (v.double(),))[1], (zz,), (v.double(),))[1].sum(), zz)[0]
    assert torch.allclose(g, g_ref, atol=1e-12)


class Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 24)

    def forward(self, z):
        a = torch.tanh(self.lin(z)).reshape(z.shape[0], 4, 3, 2)
        b = a.pow(2).sum(-1)  # short last axis: unrolled
        c = a.mean(dim=(-1,), keepdim=True).squeeze(-1) * b  # unrolled mean, keepdim
        d = torch.sum(c, 1) + b.mean(-2)  # other axis: _fxjac's rule
        e = torch.exp(a.reshape(z.shape[0], 24)).sum(-1, keepdim=True)  # long last axis
        return d * e


def test_reductions(no_generic):
    torch.manual_seed(9)
    m = Reductions().to(DT)
    z, v = _zv()
    _check(m, z, v)


def _mlp(d_in, d_out, act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 10), act(), nn.Linear(10, d_out)).to(DT)


_CAT = None
_PLAIN = None


def _embedding_cases():
    global _CAT, _PLAIN
    _CAT, _PLAIN = _mlp(2, 6, seed=5), _mlp(2, 6, seed=6)
    from latentgeo.decoders import BernoulliDecoder, CategoricalDecoder, DeterministicDecoder, GaussianDecoder
    from latentgeo.metric import PullbackMetric

    rbf = _rbf(d=2, c=5, out_shape=(6,), seed=11)
    sig = nn.Sequential(_mlp(2, 6, seed=4), nn.Sigmoid())
    return {
        "deterministic": PullbackMetric(DeterministicDecoder(_mlp(2, 5, seed=1))),
        "gauss-rbf-expected": PullbackMetric(GaussianDecoder(mean=_mlp(2, 6, seed=2), std=rbf)),
        "gauss-rbf-mean": PullbackMetric(GaussianDecoder(mean=_mlp(2, 6, seed=2), std=rbf), kind="mean"),
        "gauss-model": PullbackMetric(GaussianDecoder(model=TwoHead().to(DT))),
        "gauss-model-mean": PullbackMetric(GaussianDecoder(model=TwoHead().to(DT)), kind="mean"),
        "bernoulli-logits-fisher": PullbackMetric(BernoulliDecoder(logits=_mlp(2, 6, nn.ELU, seed=3))),
        "bernoulli-logits-mean": PullbackMetric(BernoulliDecoder(logits=_mlp(2, 6, seed=3)), kind="mean"),
        "bernoulli-probs-fisher": PullbackMetric(BernoulliDecoder(probs=sig)),
        "categorical-logits-fisher": PullbackMetric(CategoricalDecoder(logits=lambda x: _CAT(x).reshape(-1, 2, 3))),
        "plain-function-gauss": PullbackMetric(GaussianDecoder(mean=lambda x: 2.0 * _PLAIN(x), std=lambda x: rbf(x))),
    }


@pytest.mark.parametrize("name", list(_embedding_cases()))
def test_embedding_second_order_matches_geodesic_acceleration(name):
    from latentgeo.geodesics.ode import geodesic_acceleration

    metric = _embedding_cases()[name]
    z, v = _zv(n=5, d=2, seed=12)
    g, jac, h = metric.decoder.embedding_jet(z, v, metric.kind)
    emb = metric.embedding
    g_ref = emb(z)
    h_ref = jvp(lambda x: jvp(emb, (x,), (v,))[1], (z,), (v,))[1]
    jac_ref = torch.stack([torch.autograd.functional.jacobian(lambda x: emb(x[None])[0], z[r]) for r in range(5)])
    assert (g - g_ref).abs().max() < TOL
    assert jac.shape == jac_ref.shape and (jac - jac_ref).abs().max() < TOL
    assert (h - h_ref).abs().max() < TOL and h_ref.abs().max() > 1e-6
    jt = jac.transpose(1, 2)
    acc = -torch.linalg.solve(jt @ jac, (jt @ h.unsqueeze(-1)).squeeze(-1))
    assert (acc - geodesic_acceleration(metric, z, v)).abs().max() < 1e-9


def test_embedding_jet_declines_and_metric_jet_falls_back():
    from latentgeo.decoders import CategoricalDecoder, DeterministicDecoder, GaussianDecoder
    from latentgeo.metric import MetricField, PullbackMetric

    z, v = _zv(n=4, d=2)
    net = _mlp(2, 6)
    gauss = GaussianDecoder(mean=net, std=_rbf(2, 3, (6,)))
    assert gauss.embedding_jet(z, v, "fisher") is None  # not an embedded kind
    with pytest.raises(ValueError, match="not a Euclidean pullback"):
        PullbackMetric(gauss, kind="fisher").jet(z, v)
    assert not hasattr(MetricField(lambda x: torch.eye(2, dtype=DT).expand(x.shape[0], 2, 2)), "jet")
    assert DeterministicDecoder(Untraceable().to(DT)).embedding_jet(z, v) is None  # does not trace
    # plain functions and categorical decoders are traced too (they were not before the _autodiff package)
    for dec in (DeterministicDecoder(lambda x: net(x)), DeterministicDecoder(net), CategoricalDecoder(logits=net)):
        assert dec.embedding_jet(z, v) is not None
    # fast_path=False and untraceable decoders: the metric's jet is nested jvp, the same numbers
    for dec in (DeterministicDecoder(net), DeterministicDecoder(Untraceable().to(DT))):
        fast, slow = PullbackMetric(dec).jet(z, v), PullbackMetric(dec, fast_path=False).jet(z, v)
        for a, b in zip(fast, slow):
            assert (a - b).abs().max() < TOL
