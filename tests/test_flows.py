"""Posterior flows: inverses and log-determinants against torch.func Jacobians.

* Euclidean flows (planar, radial, zuko RealNVP/NSF): ``log|det J|`` of the map from ``jacfwd``.
* Hyperbolic couplings (TC, WHC): the volume change w.r.t. the Riemannian volume in tangent
  coordinates at the origin, ``log|det J_F(u)| + ½ log det G(F(u)) − ½ log det G(u)`` with
  ``F = log₀ ∘ f ∘ exp₀`` and ``G = Jᵀ η J`` the pullback of the Minkowski metric through ``exp₀``
  (both Jacobians from ``jacfwd``), so the exp/log-map volume terms are checked independently.
"""

import math

import geoopt  # noqa: F401  (imported by latentgeo.distributions on use; keeps warnings in one place)
import pytest
import torch
from torch.distributions import Independent, Normal

from latentgeo.distributions import WrappedNormal, lorentz as L
from latentgeo.flows import (
    AmortizedFlow,
    FlowPosterior,
    FlowStack,
    PlanarTransform,
    RadialTransform,
    TangentCoupling,
    WrappedHyperboloidCoupling,
    ZukoFlow,
)

D = torch.float64


def _randomize(module, std=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _euclid_logdet_ref(fn, x):
    """log|det J| of fn at each row of x (N, d), fn acting on one (d,) vector."""
    out = []
    for i in range(x.shape[0]):
        jac = torch.func.jacfwd(fn(i))(x[i])
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# -- planar / radial -------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PlanarTransform, RadialTransform])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_planar_radial_inverse_and_logdet(cls, d):
    g = torch.Generator().manual_seed(d)
    n = 6
    params = 2.0 * torch.randn(n, cls.n_params(d), generator=g, dtype=D)
    t = cls.from_params(params)
    x = 2.0 * torch.randn(n, d, generator=g, dtype=D)
    y = t(x)
    assert (t.inv(y) - x).abs().max() < 1e-10
    ld = t.log_abs_det_jacobian(x, y)
    ref = _euclid_logdet_ref(lambda i: (lambda v: cls.from_params(params[i])(v)), x)
    assert torch.allclose(ld, ref, atol=1e-6, rtol=0), (ld, ref)
    # float32: inverse to 1e-5
    t32 = cls.from_params(params.float())
    x32 = x.float()
    assert (t32.inv(t32(x32)) - x32).abs().max() < 1e-5


def test_planar_constraint_near_the_boundary():
    """wᵀu very negative: û makes wᵀû just above −1; the map stays invertible, log-det finite."""
    d = 3
    w = torch.tensor([[1.0, 0.0, 0.0]], dtype=D)
    u = torch.tensor([[-30.0, 1.0, 0.0]], dtype=D)
    t = PlanarTransform(u, w, torch.tensor([0.2], dtype=D))
    assert float((t.w * t.u_hat).sum()) >= -1.0
    x = torch.linspace(-3, 3, 41, dtype=D)[:, None] * torch.tensor([1.0, 0.3, -0.2], dtype=D)
    y = t(x)
    assert (t.inv(y) - x).abs().max() < 1e-9
    assert torch.isfinite(t.log_abs_det_jacobian(x, y)).all()
    del d


def test_planar_inverse_gradient_is_implicit():
    """Gradients through the root solve equal those of the analytic identity inv(f(x)) = x."""
    g = torch.Generator().manual_seed(4)
    params = torch.randn(3, PlanarTransform.n_params(2), generator=g, dtype=D, requires_grad=True)
    x = torch.randn(3, 2, generator=g, dtype=D, requires_grad=True)
    t = PlanarTransform.from_params(params)
    z = t.inv(t(x))
    gx, gp = torch.autograd.grad(z.sum(), (x, params))
    assert torch.allclose(gx, torch.ones_like(x), atol=1e-8)
    assert gp.abs().max() < 1e-8


def test_amortized_stack():
    for kind in ("planar", "radial"):
        flow = AmortizedFlow(kind, dim=3, n_layers=4)
        g = torch.Generator().manual_seed(1)
        ctx = torch.randn(5, flow.n_params, generator=g, dtype=D)
        x = torch.randn(2, 5, 3, generator=g, dtype=D)
        y, ld = flow(x, ctx)
        assert ld.shape == (2, 5)
        assert (flow.inverse(y, ctx) - x).abs().max() < 1e-10
        xf = x.reshape(-1, 3)
        ctxf = ctx.expand(2, 5, -1).reshape(-1, flow.n_params)
        ref = _euclid_logdet_ref(lambda i: (lambda v: flow(v, ctxf[i])[0]), xf)
        assert torch.allclose(ld.reshape(-1), ref, atol=1e-6)


def test_bad_flow_parameters():
    with pytest.raises(ValueError, match="params"):
        PlanarTransform.from_params(torch.randn(4, 4))
    with pytest.raises(ValueError, match="params"):
        RadialTransform.from_params(torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="kind"):
        AmortizedFlow("sylvester", 2)
    with pytest.raises(ValueError, match="context"):
        AmortizedFlow("planar", 2, 2)(torch.zeros(3, 2), torch.zeros(3, 4))


# -- zuko ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["realnvp", "nsf"])
def test_zuko_flow_inverse_and_logdet(kind):
    torch.manual_seed(0)
    d, h = 3, 4
    flow = ZukoFlow(kind, d, context_dim=h, transforms=2, hidden=(16,)).double()
    _randomize(flow, 0.3)
    g = torch.Generator().manual_seed(2)
    ctx = torch.randn(5, h, generator=g, dtype=D)
    x = torch.randn(2, 5, d, generator=g, dtype=D)   # samples (S, N, d) with per-item context (N, h)
    y, ld = flow(x, ctx)
    assert ld.shape == (2, 5)
    assert (flow.inverse(y, ctx) - x).abs().max() < 1e-10
    xf = x.reshape(-1, d)
    ctxf = ctx.expand(2, 5, h).reshape(-1, h)
    ref = []
    for i in range(xf.shape[0]):
        jac = torch.func.jacfwd(lambda v: flow(v[None], ctxf[i : i + 1])[0][0])(xf[i])
        ref.append(torch.linalg.slogdet(jac)[1])
    assert torch.allclose(ld.reshape(-1), torch.stack(ref), atol=1e-6)
    # float32 round trip
    f32 = flow.float()
    y32, _ = f32(x.float(), ctx.float())
    assert (f32.inverse(y32, ctx.float()) - x.float()).abs().max() < 1e-5


# -- hyperbolic couplings --------------------------------------------------------------
def _exp0_logvol(u, c):
    """½ log det(Jᵀ η J) of exp₀ at u (one point), from jacfwd."""
    jac = torch.func.jacfwd(lambda v: L.exp0(v, c))(u)
    eta = torch.diag(torch.tensor([-1.0] + [1.0] * u.shape[-1], dtype=u.dtype))
    return 0.5 * torch.linalg.slogdet(jac.T @ eta @ jac)[1]


def _manifold_logdet_ref(layer, u, ctx, c):
    def F(v):
        y, _ = layer(L.exp0(v, c)[None], None if ctx is None else ctx[None])
        return L.log0(y[0], c)

    jac = torch.func.jacfwd(F)(u)
    return torch.linalg.slogdet(jac)[1] + _exp0_logvol(F(u), c) - _exp0_logvol(u, c)


@pytest.mark.parametrize("cls", [TangentCoupling, WrappedHyperboloidCoupling])
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("parity", [0, 1])
def test_hyperbolic_coupling_inverse_and_logdet(cls, n, parity):
    c, h = 0.8, 3
    layer = _randomize(cls(n, context_dim=h, parity=parity, hidden=(16,), c=c).double(), 0.25, seed=n + parity)
    g = torch.Generator().manual_seed(10 * n + parity)
    u = torch.randn(6, n, generator=g, dtype=D)
    ctx = torch.randn(6, h, generator=g, dtype=D)
    x = L.exp0(u, c)
    y, ld = layer(x, ctx)
    # outputs within distance 12 of the origin (the Minkowski pullback reference loses digits beyond)
    far = L.safe_norm(L.log0(y.detach(), c)) * math.sqrt(c)
    assert float(far.max()) < 12.0 and float(far.max()) > 1.0
    assert ((L.lorentz_inner(y, y) + 1 / c).abs() / (y * y).sum(-1)).max() < 1e-12
    back = layer.inverse(y, ctx)
    assert ((back - x).abs() / x.abs().clamp_min(1.0)).max() < 1e-10
    assert (L.log0(back, c) - u).abs().max() < 1e-10
    ref = torch.stack([_manifold_logdet_ref(layer, u[i], ctx[i], c) for i in range(6)])
    assert torch.allclose(ld, ref, atol=1e-6), (ld, ref)


def test_hyperbolic_flow_stack_unconditional_float32():
    n = 4
    layers = [TangentCoupling(n, parity=0, hidden=(8,)), WrappedHyperboloidCoupling(n, parity=1, hidden=(8,)),
              TangentCoupling(n, parity=1, hidden=(8,)), WrappedHyperboloidCoupling(n, parity=0, hidden=(8,))]
    stack = _randomize(FlowStack(layers), 0.3)
    x = L.exp0(torch.randn(7, n), 1.0)
    y, ld = stack(x)
    assert ld.shape == (7,) and y.dtype == torch.float32
    assert (L.log0(stack.inverse(y), 1.0) - L.log0(x, 1.0)).abs().max() < 1e-5
    s64 = stack.double()
    u = torch.randn(3, n, dtype=D)
    _, ld64 = s64(L.exp0(u, 1.0))
    ref = torch.stack([_manifold_logdet_ref(s64, u[i], None, 1.0) for i in range(3)])
    assert torch.allclose(ld64, ref, atol=1e-6)


@pytest.mark.parametrize("n, parity", [(2, 0), (2, 1), (3, 0), (3, 1), (4, 0)])
def test_whc_equals_tc_exactly_when_the_moved_block_is_one_dimensional(n, parity):
    """H^1 is a line: exp_t ∘ PT_{o→t} is translation by t, so WHC = TC when one coordinate moves."""
    tc = _randomize(TangentCoupling(n, 2, parity, (8,)).double(), 0.4, seed=1)
    whc = WrappedHyperboloidCoupling(n, 2, parity, (8,)).double()
    whc.load_state_dict(tc.state_dict())
    g = torch.Generator().manual_seed(0)
    x = L.exp0(torch.randn(5, n, generator=g, dtype=D), 1.0)
    ctx = torch.randn(5, 2, generator=g, dtype=D)
    (y1, l1), (y2, l2) = tc(x, ctx), whc(x, ctx)
    same = torch.allclose(y1, y2, atol=1e-10) and torch.allclose(l1, l2, atol=1e-10)
    assert same == (whc.d2 == 1)


def test_fresh_coupling_is_identity():
    layer = WrappedHyperboloidCoupling(3, context_dim=2).double()
    x = L.exp0(torch.randn(4, 3, dtype=D), 1.0)
    y, ld = layer(x, torch.randn(4, 2, dtype=D))
    assert torch.allclose(y, x, atol=1e-12) and ld.abs().max() < 1e-12


def test_coupling_bad_input():
    with pytest.raises(ValueError, match="dim"):
        TangentCoupling(1)
    layer = TangentCoupling(3, context_dim=2)
    with pytest.raises(ValueError, match="x must be hyperboloid points"):
        layer(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="context"):
        layer(L.exp0(torch.zeros(4, 3), 1.0), torch.zeros(4, 5))


# -- posterior -------------------------------------------------------------------------
def test_flow_posterior_hyperbolic_log_prob_consistent():
    torch.manual_seed(3)
    n, h = 3, 2
    stack = _randomize(FlowStack([TangentCoupling(n, h, 0, (8,)), WrappedHyperboloidCoupling(n, h, 1, (8,))]).double(), 0.3)
    loc = L.exp0(torch.randn(4, n, dtype=D), 1.0)
    base = WrappedNormal(loc, 0.5 * torch.ones(4, n, dtype=D), geoopt.Lorentz())
    ctx = torch.randn(4, h, dtype=D)
    q = FlowPosterior(base, stack, ctx)
    z, lq = q.rsample_with_log_prob((5,))
    assert z.shape == (5, 4, n + 1) and lq.shape == (5, 4)
    assert q.log_prob(z) is lq
    assert torch.allclose(q.log_prob(z.clone()), lq, atol=1e-8)
    assert q.mean.shape == (4, n + 1)


def test_flow_posterior_euclidean_matches_transformed_distribution():
    torch.manual_seed(5)
    flow = AmortizedFlow("radial", 2, 3)
    ctx = torch.randn(4, flow.n_params, dtype=D)
    base = Independent(Normal(torch.randn(4, 2, dtype=D), torch.rand(4, 2, dtype=D) + 0.5), 1)
    q = FlowPosterior(base, flow, ctx)
    ref = torch.distributions.TransformedDistribution(base, flow.transforms(ctx))
    z = q.rsample((6,))
    assert torch.allclose(q.log_prob(z), ref.log_prob(z.clone()), atol=1e-9)


@pytest.mark.parametrize("cls", [TangentCoupling, WrappedHyperboloidCoupling])
def test_flow_posterior_density_integrates_to_one_on_the_disk(cls):
    """q = f_#(wrapped normal) on H²: ∫ q dvol = 1 by quadrature in the Poincaré disk (inverse path)."""
    import numpy as np

    stack = _randomize(FlowStack([cls(2, 0, 0, (8,)), cls(2, 0, 1, (8,))]).double(), 0.3, seed=2)
    loc = L.exp0(torch.tensor([0.4, -0.3], dtype=D), 1.0)
    q = FlowPosterior(WrappedNormal(loc, torch.tensor([0.5, 0.3], dtype=D), geoopt.Lorentz()), stack)
    xs, ws = np.polynomial.legendre.leggauss(400)
    s = torch.as_tensor(5.0 * (xs + 1.0), dtype=D)            # geodesic radius in [0, 10]
    w_s = torch.as_tensor(5.0 * ws, dtype=D)
    m = 400
    theta = torch.arange(m, dtype=D) * (2 * math.pi / m)
    rho = torch.tanh(s / 2)
    z = rho[:, None, None] * torch.stack([torch.cos(theta), torch.sin(theta)], -1)[None]
    x = L.ball_to_hyperboloid(z, 1.0)
    with torch.no_grad():
        dens = q.log_prob(x).exp()
    lam = 2.0 / (1.0 - (z * z).sum(-1))
    vol = lam**2 * rho[:, None] * (0.5 * (1 - rho**2))[:, None]   # λ² ρ dρ/ds
    total = float((dens * vol * w_s[:, None]).sum() * (2 * math.pi / m))
    assert abs(total - 1.0) < 1e-5, total
