"""Closed-form first and second derivatives of the unary activations (SiLU, Mish, GELU, ...).

torch has no forward-mode derivative of ``silu_backward``, ``mish_backward`` or
``hardsigmoid_backward``: nested ``torch.func.jvp`` through those modules raises, so decoders with
SiLU or Mish layers could not be analysed at all (``connecting_geodesic`` raised
``NotImplementedError``). The references here are the same functions written with elementwise ops
that torch differentiates twice (``x * sigmoid(x)``, ...), differentiated by nested jvp.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

import latentgeo as lg
from latentgeo._autodiff import mixed_second_order, second_order
from latentgeo._autodiff._first_order import _elementwise_derivs

DT = torch.float64
SCALE, ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717

# kind, params, a formula torch differentiates twice in forward mode
REFERENCES = [
    ("silu", {}, lambda x: x * torch.sigmoid(x)),
    ("mish", {}, lambda x: x * torch.tanh(torch.log1p(torch.exp(x)))),
    ("gelu", {"approximate": "none"}, lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    ("gelu", {"approximate": "tanh"}, lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    ("softsign", {}, lambda x: x / (1 + x.abs())),
    ("selu", {}, lambda x: SCALE * torch.where(x > 0, x, ALPHA * (torch.exp(x) - 1))),
    ("celu", {"alpha": 0.7}, lambda x: torch.where(x > 0, x, 0.7 * (torch.exp(x / 0.7) - 1))),
    ("logsigmoid", {}, lambda x: -torch.log1p(torch.exp(-x))),
    ("hardsigmoid", {}, lambda x: torch.clamp(x / 6 + 0.5, 0, 1)),
    ("hardswish", {}, lambda x: x * torch.clamp(x + 3, 0, 6) / 6),
    ("tanhshrink", {}, lambda x: x - torch.tanh(x)),
    ("softshrink", {"lambd": 0.3}, lambda x: torch.where(x > 0.3, x - 0.3, torch.where(x < -0.3, x + 0.3, 0 * x))),
    ("hardshrink", {"lambd": 0.3}, lambda x: torch.where(x.abs() > 0.3, x, 0 * x)),
    ("relu6", {}, lambda x: torch.clamp(x, 0, 6)),
]


def _points():
    # away from the kinks (0, ±0.3, ±3, 6) where one-sided derivatives differ
    x = torch.linspace(-7.9, 7.9, 301, dtype=DT)
    kinks = torch.tensor([0.0, 0.3, -0.3, 3.0, -3.0, 6.0], dtype=DT)
    return x[(x[:, None] - kinks).abs().amin(1) > 1e-3]


@pytest.mark.parametrize("kind,params,ref", REFERENCES, ids=lambda p: p if isinstance(p, str) else "")
def test_closed_forms_match_nested_jvp(kind, params, ref):
    x = _points()
    one = torch.ones_like(x)
    (_, d1), (_, d2) = jvp(lambda w: jvp(ref, (w,), (one,)), (x,), (one,))
    full = {"approximate": "none", "alpha": 1.0, "lambd": 0.5, **params}
    c1, c2 = _elementwise_derivs(kind, full, x)
    assert torch.allclose(c1, d1, atol=1e-12, rtol=1e-12)
    assert torch.allclose(torch.zeros_like(x) if c2 is None else c2, d2, atol=1e-12, rtol=1e-12)
    assert d1.abs().max() > 0.1  # (the reference is not trivially zero)


@pytest.mark.parametrize("f", [F.silu, F.mish, F.hardsigmoid], ids=lambda f: f.__name__)
def test_torch_cannot_nest_jvp_through_them(f):
    """Why the closed forms are needed: under ``no_grad`` (how the solvers run) torch cannot take
    a nested jvp through these (if torch learns it, this test says so)."""
    x = torch.randn(5, 3, dtype=DT)
    one = torch.ones_like(x)
    with torch.no_grad(), pytest.raises(NotImplementedError, match="_backward"):
        jvp(lambda w: jvp(f, (w,), (one,))[1], (x,), (one,))


class Functional(nn.Module):
    """The functional forms, with keyword arguments, in one network."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 12), nn.Linear(12, 12), nn.Linear(12, 4)

    def forward(self, z):
        h = F.silu(self.a(z))
        h = F.gelu(self.b(h), approximate="tanh") + F.mish(h) + F.celu(h, alpha=0.5)
        return self.c(F.logsigmoid(h) + F.tanhshrink(h))


class Decomposed(nn.Module):
    """Functional's twin written with elementwise ops (products, sigmoid, tanh, exp)."""

    def __init__(self, f):
        super().__init__()
        self.a, self.b, self.c = f.a, f.b, f.c

    def forward(self, z):
        x = self.a(z)
        h = x * torch.sigmoid(x)
        u = self.b(h)
        g = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u * u * u)))
        m = h * torch.tanh(torch.log1p(torch.exp(h)))
        ce = torch.where(h > 0, h, 0.5 * (torch.exp(h / 0.5) - 1))
        h = g + m + ce
        return self.c(-torch.log1p(torch.exp(-h)) + h - torch.tanh(h))


@pytest.mark.parametrize("inplace", [False, True])
def test_networks_second_order_and_mixed(inplace):
    """Modules (in place too: the derivatives are taken before the call) and functional forms,
    Taylor and mixed modes, against nested jvp of a decomposed twin."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.SiLU(inplace=inplace), nn.Linear(16, 16), nn.Mish(inplace=inplace),
                        nn.Linear(16, 16), nn.Hardswish(inplace=inplace), nn.Linear(16, 5)).to(DT)

    def twin(z):
        h = net[0](z)
        h = h * torch.sigmoid(h)
        h = net[2](h)
        h = h * torch.tanh(torch.log1p(torch.exp(h)))
        h = net[4](h)
        return net[6](h * torch.clamp(h + 3, 0, 6) / 6)

    f = Functional().to(DT)
    for module, ref in ((net, twin), (f, Decomposed(f))):
        z = torch.randn(7, 3, dtype=DT)
        v = torch.randn(7, 3, dtype=DT)
        out, cols, h = second_order(module, z, v)
        r_out, r_h = jvp(lambda x: jvp(ref, (x,), (v,))[1], (z,), (v,))
        _, r_out0 = jvp(ref, (z,), (v,))
        assert torch.allclose(h, r_h, atol=1e-11, rtol=1e-10)
        assert torch.allclose(torch.einsum("dnk,nd->nk", cols, v), r_out0, atol=1e-12, rtol=1e-10)
        _, _, mix = mixed_second_order(module, z, v)
        for i in range(3):
            e = torch.zeros_like(z)
            e[:, i] = 1.0
            ri = jvp(lambda x: jvp(ref, (x,), (v,))[1], (z,), (e,))[1]
            assert torch.allclose(mix[i], ri, atol=1e-11, rtol=1e-10)


def test_silu_decoder_geodesic():
    """A SiLU decoder (with the RBF variance) used to raise NotImplementedError; its certified
    lengths equal those of the decomposed twin's (a different path through the interpreter)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 24), nn.SiLU(), nn.Linear(24, 24), nn.SiLU(), nn.Linear(24, 10)).to(DT)

    def twin(z):
        h = net[0](z)
        h = net[2](h * torch.sigmoid(h))
        h = h * torch.sigmoid(h)
        return net[4](h)

    codes = torch.randn(120, 2, dtype=DT)
    with torch.no_grad():
        data = net(codes) + 0.05 * torch.randn(120, 10, dtype=DT)
    dec = lg.fit_rbf_variance(net, codes, data, n_centers=6)
    dec_twin = lg.GaussianDecoder(mean=twin, std=dec.std, latent_dim=2)
    z0, z1 = codes[:3], codes[3:6]
    r = lg.connecting_geodesic(lg.PullbackMetric(dec), z0, z1, progress=False)
    r2 = lg.connecting_geodesic(lg.PullbackMetric(dec_twin), z0, z1, progress=False)
    assert bool(r.converged.all()) and bool(r2.converged.all())
    assert torch.allclose(r.length, r2.length, rtol=1e-7)


class UntraceableSiLU(nn.Module):
    """Data-dependent control flow: no fx trace, so the generic nested-jvp path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 4)

    def forward(self, z):
        if bool(z.abs().sum() > -1.0):
            return self.b(F.silu(self.a(z)))
        return self.b(self.a(z))


def test_untraceable_silu_decoder_gets_a_clear_error():
    torch.manual_seed(0)
    m = lg.PullbackMetric(lg.DeterministicDecoder(UntraceableSiLU().to(DT), latent_dim=2))
    z0, z1 = torch.zeros(1, 2, dtype=DT), torch.ones(1, 2, dtype=DT)
    with pytest.raises(NotImplementedError, match="nested torch.func.jvp failed.*silu_backward.*traced path"):
        lg.connecting_geodesic(m, z0, z1, progress=False)


def test_nonsmooth_ops():
    from latentgeo._autodiff import nonsmooth_ops

    assert nonsmooth_ops(nn.Sequential(nn.Linear(2, 4), nn.ELU(), nn.Linear(4, 2))) == ["nn.ELU (its second derivative jumps at 0)"]
    assert nonsmooth_ops(nn.Sequential(nn.Linear(2, 4), nn.ELU(alpha=0.5), nn.ReLU6())) == [
        "nn.ELU (its derivative jumps at 0)", "nn.ReLU6 (its derivative jumps at its clamp limits)"]
    smooth = [nn.Tanh(), nn.Sigmoid(), nn.Softplus(), nn.SiLU(), nn.GELU(), nn.Mish(), nn.LogSigmoid(), nn.Tanhshrink()]
    assert nonsmooth_ops(nn.Sequential(nn.Linear(2, 4), *smooth)) == []

    class Fn(nn.Module):
        def forward(self, z):
            return F.relu(z) + z.abs() + F.softsign(z) + F.elu(z, alpha=2.0) + torch.clamp(z, min=-1e9)

    assert nonsmooth_ops(Fn()) == ["F.relu (its derivative jumps at 0)", "Tensor.abs (its derivative jumps at 0)",
                                   "F.softsign (its second derivative jumps at 0)", "F.elu (its derivative jumps at 0)"]
    assert nonsmooth_ops(UntraceableSiLU()) is None


def test_uncertified_pairs_name_the_kinked_activation():
    """An ELU decoder (stopped by a tiny budget): the pairs that are not certified say what jumps
    and what the solver did about it; a ReLU twin says the metric jumps; the Softplus twin says
    nothing of the kind."""
    torch.manual_seed(0)
    layers = [nn.Linear(2, 32), nn.ELU(), nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 20)]
    net = nn.Sequential(*layers).to(DT)
    z = 2 * torch.randn(12, 2, dtype=DT)
    # (a tiny budget: with the kink meshes most of these pairs certify)
    r = lg.connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2)), z[:6], z[6:],
                               progress=False, budget=1e-6)
    bad = [m for m in r.messages if m]
    assert len(bad) == 6 and all("not twice continuously differentiable: nn.ELU (its second derivative jumps at 0)" in m
                                 and "the piecewise meshes put a point at each such kink" in m for m in bad)
    relu = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ELU) else m for m in layers]).to(DT)
    r3 = lg.connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(relu, latent_dim=2)), z[:6], z[6:],
                                progress=False, budget=1e-6)
    assert all("nn.ReLU (its derivative jumps at 0)" in m and "refracts" in m for m in r3.messages)
    smooth = nn.Sequential(*[nn.Softplus() if isinstance(m, nn.ELU) else m for m in layers]).to(DT)
    r2 = lg.connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(smooth, latent_dim=2)), z[:6], z[6:],
                                progress=False, budget=1e-6)
    assert any(r2.messages) and not any("continuously differentiable" in m for m in r2.messages)


def test_kinked_decoder_meshes_put_a_point_at_every_kink(monkeypatch):
    """ELU (C¹: its second derivative jumps at 0): the piecewise meshes get a point wherever a unit's
    input crosses 0 along the curve, so every segment is smooth. The certified curves, integrated
    from their initial velocities, land on their endpoints; without the kink points the same pairs
    are not certified."""
    import latentgeo.geodesics.connecting as cn
    import latentgeo.geodesics.piecewise as pw

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.ELU(), nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 20)).to(DT)
    m = lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2))
    z = torch.randn(8, 2, dtype=DT)
    z0, z1 = z[:4], z[4:]
    # the kinks along a curve are where a column of the switching function changes sign
    kfn = pw._kink_fn(m)
    assert kfn is not None and kfn(z).shape == (8, 64)
    K = pw._consts(4, DT, "cpu")
    B = pw._from_series(z0, z1, lg.geodesics.spectral._line_series(z0, z1, 8), 16, K)
    Bk, found = pw._with_kinks(B, kfn, K)
    assert found > 0 and float(pw._kink_offsets(Bk, kfn, K).max()) < 1e-9 < float(pw._kink_offsets(B, kfn, K).max())
    r = lg.connecting_geodesic(m, z0, z1, progress=False, budget=10.0)
    assert int(r.converged.sum()) >= 3
    ok = r.converged
    e = lg.exp_map(m, z0[ok], r.initial_velocity[ok], rtol=1e-12, atol=1e-14, max_steps=100_000)
    miss = (e.z1 - z1[ok]).norm(dim=1) / (z1[ok] - z0[ok]).norm(dim=1)
    assert float(miss.max()) < 1e-5
    monkeypatch.setattr(pw, "_kink_fn", lambda metric, c0=False: None)
    monkeypatch.setattr(cn, "_kink_fn", lambda metric, c0=False: None)
    r0 = lg.connecting_geodesic(m, z0, z1, progress=False, budget=10.0)
    assert int(r0.converged.sum()) < int(r.converged.sum())


class FunctionalELU(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.net[4](F.elu(self.net[2](F.elu(self.net[0](z)))))


def test_kink_points_of_functional_calls_and_plain_functions():
    """``F.elu`` in a ``forward`` (found in the fx trace) and a lambda around the network (its
    captured modules): the same switching values and the same certified lengths as the modules."""
    import latentgeo.geodesics.piecewise as pw

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.ELU(), nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 20)).to(DT)
    z = torch.randn(8, 2, dtype=DT)
    decs = [lg.DeterministicDecoder(net, latent_dim=2), lg.DeterministicDecoder(FunctionalELU(net), latent_dim=2),
            lg.DeterministicDecoder(lambda q: net(q), latent_dim=2)]
    ref = None
    for dec in decs:
        m = lg.PullbackMetric(dec)
        s = pw._kink_fn(m)(z)
        r = lg.connecting_geodesic(m, z[:4], z[4:], progress=False, budget=10.0)
        if ref is None:
            ref = (s, r.length)
            assert bool(r.converged.all())
        assert torch.equal(s, ref[0]) and torch.allclose(r.length, ref[1], rtol=1e-9)
    assert pw._kink_fn(lg.PullbackMetric(lg.DeterministicDecoder(
        nn.Sequential(nn.Linear(2, 4), nn.ELU(alpha=0.5), nn.Tanh()).to(DT), latent_dim=2))) is None  # (C⁰: not handled)


def test_metric_jumps_energy_stage_only(monkeypatch):
    """ReLU (C⁰: the metric jumps where a unit switches): pairs whose straight line crosses a kink
    get the energy stage only (no collocation is attempted; on a ReLU digits VAE the other stages
    took the 1 s budget and found the same lengths), pairs whose line crosses none are solved as
    usual, and a certified curve that crosses a kink is not reported as certified."""
    import latentgeo.geodesics.connecting as cn
    import latentgeo.geodesics.spectral as sp

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 8)).to(DT)
    m = lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2))
    z = 2 * torch.randn(8, 2, dtype=DT)

    def no_collocation(*a, **k):
        raise AssertionError("collocation attempted")

    monkeypatch.setattr(cn, "collocate", no_collocation)
    monkeypatch.setattr(cn, "collocate_piecewise", no_collocation)
    r = lg.connecting_geodesic(m, z[:4], z[4:], progress=False)
    assert all("crosses a jump of the metric" in s and "energy minimisation only" in s for s in r.messages)
    assert bool((r.length <= r.line_length * (1 + 1e-12)).all()) and bool((r.length < r.line_length).any())
    monkeypatch.undo()
    # saturating activations whose pairs stay in the linear range: certified as before
    hs = nn.Sequential(nn.Linear(2, 16), nn.Hardsigmoid(), nn.Linear(16, 8)).to(DT)
    with torch.no_grad():
        hs[0].weight.mul_(0.3)
        hs[0].bias.zero_()
    r2 = lg.connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(hs, latent_dim=2)), z[:4] / 4, z[4:] / 4,
                                progress=False)
    assert bool(r2.converged.all())
    # the post-check: curves certified on a smooth twin, judged on the ReLU decoder, cross kinks
    twin = nn.Sequential(net[0], nn.Softplus(beta=50.0), net[2])
    rt = lg.connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(twin, latent_dim=2)), z[:4], z[4:], progress=False)
    assert bool(rt.converged.all())
    out = cn._uncertify_kink_crossings(rt, m)
    assert not bool(out.converged.any()) and all("crosses one" in s for s in out.reasons)
