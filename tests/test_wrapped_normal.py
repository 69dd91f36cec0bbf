"""WrappedNormal (Nagano et al. 2019) on the hyperboloid and the Poincaré ball.

References used here are independent of the implementation's closed form:
* the change-of-variables density of the sampling map ``v ↦ x`` with its Jacobian from
  ``torch.func.jacfwd`` and the volume ``sqrt det(Jᵀ g J)`` of the pullback of the Riemannian
  metric (Minkowski on the hyperboloid, ``λ(z)² I`` on the ball);
* numeric quadrature of the density against the ball's Riemannian volume;
* geoopt's own log map and parallel transport for the sample moments;
* mpmath for ``log(sinh r / r)``.
"""

import math

import geoopt
import mpmath
import pytest
import torch

from latentgeo.distributions import WrappedNormal, lorentz as L

D = torch.float64


def _lorentz_point(v, c=1.0):
    return L.exp0(torch.as_tensor(v, dtype=D), c)


def _reference_log_prob(q: WrappedNormal, v: torch.Tensor) -> torch.Tensor:
    """log N(v; 0, Σ) − ½ log det(Jᵀ g J) for the sampling map at v (one point, unbatched q)."""
    jac = torch.func.jacfwd(q.push)(v)  # (ambient, n)
    x = q.push(v)
    if q.model == "lorentz":
        eta = torch.diag(torch.tensor([-1.0] + [1.0] * q.n, dtype=D))
        g = jac.T @ eta @ jac
    else:
        lam = 2.0 / (1.0 - q.c * (x * x).sum())
        g = lam**2 * jac.T @ jac
    gauss = torch.distributions.Normal(torch.zeros_like(q.scale), q.scale).log_prob(v).sum()
    return gauss - 0.5 * torch.linalg.slogdet(g)[1]


@pytest.mark.parametrize("n", [2, 5, 10])
@pytest.mark.parametrize("c", [1.0, 0.7])
def test_log_prob_matches_change_of_variables(n, c):
    g = torch.Generator().manual_seed(n)
    man = geoopt.Lorentz(k=torch.tensor(1.0 / c, dtype=D))
    # loc at distance 0, 2 and 4 from the origin; samples at distance 0.05 ... 6 from loc,
    # so points lie up to distance 10 from the origin
    for loc_dist in (0.0, 2.0, 4.0):
        d = torch.randn(n, generator=g, dtype=D)
        loc = _lorentz_point(loc_dist * d / d.norm(), c)
        scale = 0.5 + torch.rand(n, generator=g, dtype=D)
        q = WrappedNormal(loc, scale, man)
        for r in (0.05, 1.0, 3.0, 6.0):
            v = torch.randn(n, generator=g, dtype=D)
            v = r * v / v.norm()
            x = q.push(v)
            assert L.dist(L.origin(n, c, dtype=D), x, c) <= 10.0 + 1e-9
            ref = _reference_log_prob(q, v)
            got = q.log_prob(x.clone())  # through the log map, not the remembered sample
            assert abs(float(got - ref)) < 1e-6 * max(1.0, abs(float(ref))), (n, c, loc_dist, r, float(got), float(ref))
            assert abs(float(q.log_prob_tangent(v) - ref)) < 1e-6 * max(1.0, abs(float(ref)))


@pytest.mark.parametrize("n", [2, 5, 10])
def test_log_prob_at_distance_ten(n):
    """Far from loc (distance 10, loc at the origin) the closed form still matches the Jacobian."""
    man = geoopt.Lorentz()
    loc = L.origin(n, 1.0, dtype=D)
    q = WrappedNormal(loc, torch.full((n,), 2.0, dtype=D), man)
    v = torch.ones(n, dtype=D) * 10.0 / math.sqrt(n)
    ref = _reference_log_prob(q, v)
    got = q.log_prob(q.push(v))
    assert torch.isfinite(got)
    assert abs(float(got - ref)) < 1e-6 * abs(float(ref))


@pytest.mark.parametrize("n", [2, 5])
def test_log_prob_on_the_ball_matches_change_of_variables(n):
    g = torch.Generator().manual_seed(1)
    c = 1.3
    ball = geoopt.PoincareBall(c=c).to(D)
    c = float(ball.c)  # softplus(isp_c): float32-rounded at construction
    loc_h = _lorentz_point(torch.randn(n, generator=g, dtype=D), c)
    loc = L.hyperboloid_to_ball(loc_h, c)
    q = WrappedNormal(loc, 0.4 + torch.rand(n, generator=g, dtype=D), ball)
    for r in (0.1, 1.0, 4.0):
        v = torch.randn(n, generator=g, dtype=D)
        v = r * v / v.norm()
        ref = _reference_log_prob(q, v)
        got = q.log_prob(q.push(v).clone())
        assert abs(float(got - ref)) < 1e-6 * max(1.0, abs(float(ref)))


def test_ball_and_hyperboloid_agree():
    n, c = 3, 1.0
    loc_h = _lorentz_point([0.3, -1.0, 0.5])
    scale = torch.tensor([0.3, 0.8, 0.5], dtype=D)
    qh = WrappedNormal(loc_h, scale, geoopt.Lorentz())
    qb = WrappedNormal(L.hyperboloid_to_ball(loc_h, c), scale, geoopt.PoincareBall().to(D))
    x = qh.sample((50,))
    assert torch.allclose(qh.log_prob(x), qb.log_prob(L.hyperboloid_to_ball(x, c)), atol=1e-9)


def test_density_integrates_to_one_on_the_poincare_disk():
    """∫ p dvol over the disk, dvol = λ(z)² dz with λ = 2/(1 − c|z|²), in polar coordinates."""
    c = 1.0
    ball = geoopt.PoincareBall(c=c).to(D)
    c = float(ball.c)  # softplus(isp_c): float32-rounded at construction
    loc = L.hyperboloid_to_ball(_lorentz_point([1.2, -0.6]), c)
    q = WrappedNormal(loc, torch.tensor([0.6, 0.25], dtype=D), ball)
    # radius ρ = tanh(s/2) with s ∈ [0, 12] (Gauss–Legendre), angle θ (periodic trapezoid)
    import numpy as np

    xs, ws = np.polynomial.legendre.leggauss(600)
    s = torch.as_tensor(6.0 * (xs + 1.0), dtype=D)
    w_s = torch.as_tensor(6.0 * ws, dtype=D)
    m = 720
    theta = torch.arange(m, dtype=D) * (2 * math.pi / m)
    rho = torch.tanh(s / 2)
    drho_ds = 0.5 * (1 - rho**2)
    z = rho[:, None, None] * torch.stack([torch.cos(theta), torch.sin(theta)], -1)[None]
    lam = 2.0 / (1.0 - c * (z * z).sum(-1))
    dens = q.log_prob(z).exp() * lam**2 * rho[:, None] * drho_ds[:, None]
    total = float((dens * w_s[:, None]).sum() * (2 * math.pi / m))
    assert abs(total - 1.0) < 1e-6, total


def test_sample_tangent_moments():
    """u = PT_{loc→o}(log_loc x) with geoopt's own maps has the moments of N(0, Σ)."""
    torch.manual_seed(0)
    n = 3
    man = geoopt.Lorentz().to(D)
    loc = _lorentz_point([1.0, 0.5, -1.5])
    scale = torch.tensor([0.2, 0.7, 1.3], dtype=D)
    q = WrappedNormal(loc, scale, man)
    N = 100_000
    x = q.sample((N,))
    o = man.origin(n + 1, dtype=D).expand(N, -1)
    u = man.transp(loc.expand(N, -1), o, man.logmap(loc.expand(N, -1), x))
    assert float(u[:, 0].abs().max()) < 1e-8
    u = u[:, 1:]
    se = scale / math.sqrt(N)
    assert bool((u.mean(0).abs() < 5 * se).all()), u.mean(0)
    cov = torch.cov(u.T)
    # var of a sample variance ≈ 2σ⁴/N; off-diagonals ≈ σ_iσ_j/√N
    tol = 5 * math.sqrt(2.0 / N) * torch.outer(scale, scale)
    assert bool(((cov - torch.diag(scale**2)).abs() < tol).all()), cov
    # and the implementation's own pull agrees with geoopt's
    assert torch.allclose(q.pull(x[:100]), u[:100], atol=1e-8)


def test_rsample_with_log_prob_reuses_the_tangent_and_is_differentiable():
    torch.manual_seed(1)
    mu_v = torch.tensor([[2.0, -1.0]], dtype=D, requires_grad=True)
    raw = torch.tensor([[0.1, -0.3]], dtype=D, requires_grad=True)
    q = WrappedNormal(L.exp0(mu_v, 1.0), torch.nn.functional.softplus(raw), geoopt.Lorentz())
    z, logq = q.rsample_with_log_prob((7,))
    assert z.shape == (7, 1, 3) and logq.shape == (7, 1)
    assert q.log_prob(z) is logq                      # remembered: no second log map
    assert torch.allclose(q.log_prob(z.clone()), logq, atol=1e-9)
    (z.sum() + logq.sum()).backward()
    assert torch.isfinite(mu_v.grad).all() and torch.isfinite(raw.grad).all()


def test_at_the_origin_gradients_are_finite():
    mu_v = torch.zeros(1, 2, dtype=D, requires_grad=True)
    q = WrappedNormal(L.exp0(mu_v, 1.0), torch.ones(1, 2, dtype=D), geoopt.Lorentz())
    lp = q.log_prob(L.exp0(torch.zeros(1, 2, dtype=D), 1.0))
    lp.sum().backward()
    assert torch.isfinite(mu_v.grad).all()
    assert abs(float(lp.detach()) + math.log(2 * math.pi)) < 1e-12


def test_float32_follows_loc_and_curvature_is_cast():
    man = geoopt.Lorentz(k=0.5)  # float32 curvature parameter
    loc = L.exp0(torch.tensor([0.5, 0.5]), 2.0)
    q = WrappedNormal(loc, torch.tensor([0.3, 0.3]), man)
    z, lp = q.rsample_with_log_prob((5,))
    assert z.dtype == torch.float32 and lp.dtype == torch.float32 and q.c == 2.0
    assert torch.allclose(L.lorentz_inner(z, z), torch.full((5,), -0.5), atol=1e-4)


@pytest.mark.parametrize("s", [1e-6, 5e-3, 1e-2, 0.3, 2.0, 10.0, 25.0, 60.0])
def test_log_sinhc_against_mpmath(s):
    ref = float(mpmath.log(mpmath.sinh(mpmath.mpf(s)) / s))
    got = float(L.log_sinhc(torch.tensor(s, dtype=D)))
    assert abs(got - ref) <= 1e-14 * max(1.0, abs(ref)) + 1e-18


def test_lorentz_maps_against_geoopt():
    g = torch.Generator().manual_seed(3)
    c = 0.8
    man = geoopt.Lorentz(k=torch.tensor(1 / c, dtype=D))
    mu = L.exp0(torch.randn(6, 4, generator=g, dtype=D), c)
    v = torch.randn(6, 4, generator=g, dtype=D)
    o = man.origin(5, dtype=D).expand(6, -1)
    w = man.transp(o, mu, torch.cat([torch.zeros(6, 1, dtype=D), v], -1))
    assert torch.allclose(L.transp0(mu, v, c), w, atol=1e-9)
    x = man.expmap(mu, w)
    assert torch.allclose(L.expmap(mu, w, c), x, rtol=1e-9)
    assert torch.allclose(L.transvect(mu, L.exp0(v, c), c), x, rtol=1e-9)
    assert torch.allclose(L.logmap(mu, x, c), man.logmap(mu, x), rtol=1e-7, atol=1e-7)
    assert torch.allclose(L.dist(mu, x, c), man.dist(mu, x), rtol=1e-9)
    assert torch.allclose(L.log0(man.expmap0(torch.cat([torch.zeros(6, 1, dtype=D), v], -1)), c), v, atol=1e-10)


# -- bad input -------------------------------------------------------------------------
def _ok():
    return L.origin(2, 1.0, dtype=D)[None], torch.ones(1, 2, dtype=D)


@pytest.mark.parametrize(
    "case, match",
    [
        ("nan_loc", "loc"),
        ("nan_scale", "scale"),
        ("zero_scale", "scale must be positive"),
        ("neg_scale", "scale must be positive"),
        ("off_manifold", "loc must lie on the hyperboloid"),
        ("shape", "scale must have last dimension"),
        ("batch", "do not broadcast"),
        ("ball_outside", "loc must lie in the open Poincaré ball"),
    ],
)
def test_bad_input_names_the_argument(case, match):
    loc, scale = _ok()
    man = geoopt.Lorentz()
    if case == "nan_loc":
        loc = loc.clone(); loc[0, 1] = float("nan")
    elif case == "nan_scale":
        scale = scale.clone(); scale[0, 0] = float("nan")
    elif case == "zero_scale":
        scale = torch.zeros(1, 2, dtype=D)
    elif case == "neg_scale":
        scale = -scale
    elif case == "off_manifold":
        loc = torch.tensor([[1.0, 0.5, 0.0]], dtype=D)
    elif case == "shape":
        scale = torch.ones(1, 3, dtype=D)
    elif case == "batch":
        loc = L.exp0(torch.zeros(3, 2, dtype=D), 1.0); scale = torch.ones(2, 2, dtype=D)
    elif case == "ball_outside":
        man = geoopt.PoincareBall().to(D); loc = torch.tensor([[0.8, 0.7]], dtype=D)
    with pytest.raises(ValueError, match=match):
        WrappedNormal(loc, scale, man)


def test_bad_manifold_and_value():
    loc, scale = _ok()
    with pytest.raises(TypeError, match="manifold"):
        WrappedNormal(loc, scale, geoopt.Sphere())
    q = WrappedNormal(loc, scale, geoopt.Lorentz())
    with pytest.raises(ValueError, match="value"):
        q.log_prob(torch.tensor([[1.0, 2.0, 3.0]], dtype=D))
    with pytest.raises(ValueError, match="value"):
        q.log_prob(torch.ones(1, 2, dtype=D))
