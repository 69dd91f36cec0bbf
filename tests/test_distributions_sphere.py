"""VonMisesFisher, PowerSpherical, HypersphericalUniform and the log-Bessel layer, against
independent references: mpmath Bessel functions, scipy.stats.vonmises_fisher, closed forms,
numerical integration."""

import math

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch.distributions import kl_divergence

from latentgeo.distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher
from latentgeo.distributions._bessel import bessel_ratio, log_iv

mpmath.mp.dps = 40
F64 = torch.float64


def mp_A(m, k):
    return float(mpmath.besseli(mpmath.mpf(m) / 2, k) / mpmath.besseli(mpmath.mpf(m) / 2 - 1, k))


def mp_kl(m, k):
    """KL(vMF ‖ U) = κA + log C_m(κ) + log|S^{m−1}|, all in mpmath."""
    k = mpmath.mpf(k)
    v = mpmath.mpf(m) / 2 - 1
    log_c = v * mpmath.log(k) - (mpmath.mpf(m) / 2) * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(v, k))
    log_s = mpmath.log(2) + (mpmath.mpf(m) / 2) * mpmath.log(mpmath.pi) - mpmath.loggamma(mpmath.mpf(m) / 2)
    return float(k * mp_A(m, k) + log_c + log_s)


def e1(m, dtype=F64):
    x = torch.zeros(m, dtype=dtype)
    x[0] = 1
    return x


# -- log-Bessel ---------------------------------------------------------------------------
ORDERS_M = [2, 3, 5, 10, 50, 100, 128, 1000, 2000]
KAPPAS = [1e-4, 1e-3, 0.1, 1.0, 1.7, 10.0, 100.0, 1e3, 1e4, 1e5]


def test_log_bessel_float64_and_gradient_vs_mpmath():
    for m in ORDERS_M:
        v = m / 2 - 1
        x = torch.tensor(KAPPAS, dtype=F64, requires_grad=True)
        got = log_iv(v, x)
        (grad,) = torch.autograd.grad(got.sum(), x)
        got = got.detach()
        for i, k in enumerate(KAPPAS):
            ref = mpmath.log(mpmath.besseli(v, k))
            assert abs(float(got[i]) - float(ref)) <= 1e-12 * max(1.0, abs(float(ref))), (m, k)
            dref = float(mpmath.diff(lambda t: mpmath.log(mpmath.besseli(v, t)), mpmath.mpf(k)))
            assert abs(float(grad[i]) - dref) <= 1e-9 * abs(dref), (m, k, float(grad[i]), dref)


def test_log_bessel_float32_finite_and_accurate():
    for m in ORDERS_M:
        v = m / 2 - 1
        x = torch.tensor(KAPPAS, dtype=torch.float32, requires_grad=True)
        got = log_iv(v, x)
        (grad,) = torch.autograd.grad(got.sum(), x)
        assert got.dtype == torch.float32 and torch.isfinite(got).all() and torch.isfinite(grad).all()
        got, x = got.detach(), x.detach()
        for i in range(len(KAPPAS)):
            k32 = float(x[i])  # the float32-rounded argument
            ref = float(mpmath.log(mpmath.besseli(v, k32)))
            assert abs(float(got[i]) - ref) <= 2e-7 * max(1.0, abs(ref)) + 1e-6, (m, k32)


def test_bessel_ratio_vs_mpmath():
    for m in ORDERS_M:
        a = bessel_ratio(m, torch.tensor(KAPPAS, dtype=F64))
        for i, k in enumerate(KAPPAS):
            assert abs(float(a[i]) - mp_A(m, k)) <= 1e-10 * mp_A(m, k), (m, k)


# -- vMF samples -------------------------------------------------------------------------
@pytest.mark.parametrize("m", [3, 5, 10, 50, 100, 1000])
def test_vmf_mean_resultant_length_grid(m):
    n = 4000
    kappas = [1e-3, 0.1, 1.0, 10.0, 100.0, 1e4]
    mu = torch.nn.functional.normalize(torch.arange(1.0, m + 1, dtype=F64), dim=0)
    q = VonMisesFisher(mu.expand(len(kappas), m), torch.tensor(kappas, dtype=F64))
    z = q.sample((n,), random_state=m)
    w = z @ mu  # (n, K)
    for j, k in enumerate(kappas):
        ref = mp_A(m, k)
        se = float(w[:, j].std()) / math.sqrt(n)
        assert abs(float(w[:, j].mean()) - ref) <= 4 * se + 1e-12, (m, k, float(w[:, j].mean()), ref, se)
        assert abs(float(q.mean[j] @ mu) - ref) <= 1e-10 * ref


@pytest.mark.parametrize("m,kappa", [(5, 3.0), (10, 50.0), (3, 0.5)])
def test_vmf_moments_agree_with_scipy_samples(m, kappa):
    rng = np.random.default_rng(0)
    mu = rng.normal(size=m)
    mu /= np.linalg.norm(mu)
    n = 20000
    ref = scipy.stats.vonmises_fisher(mu, kappa).rvs(n, random_state=rng)
    ours = VonMisesFisher(torch.tensor(mu), torch.tensor(kappa, dtype=F64)).sample((n,), random_state=3).numpy()
    # first moments (all coordinates) and the second moment of a fixed random direction
    d = rng.normal(size=m)
    for f in (lambda z: z, lambda z: (z @ d)[:, None] ** 2):
        a, b = f(ours), f(ref)
        se = np.sqrt(a.var(0) / n + b.var(0) / n)
        assert np.all(np.abs(a.mean(0) - b.mean(0)) <= 4.5 * se), (a.mean(0), b.mean(0), se)


def test_vmf_log_prob_and_entropy_vs_scipy():
    rng = np.random.default_rng(1)
    for m, kappa in [(3, 1.0), (5, 30.0), (50, 7.0)]:
        mu = rng.normal(size=m)
        mu /= np.linalg.norm(mu)
        sp = scipy.stats.vonmises_fisher(mu, kappa)
        x = sp.rvs(50, random_state=rng)
        q = VonMisesFisher(torch.tensor(mu), torch.tensor(kappa, dtype=F64))
        np.testing.assert_allclose(q.log_prob(torch.tensor(x)).numpy(), sp.logpdf(x), rtol=1e-9, atol=1e-9)
        assert abs(float(q.entropy()) - float(sp.entropy())) <= 1e-8 * max(1, abs(float(sp.entropy())))


@pytest.mark.parametrize("m", [3, 10, 1000])
def test_vmf_samples_on_sphere_float32_incl_e1(m):
    g = torch.Generator().manual_seed(0)
    locs = [e1(m, torch.float32),
            torch.nn.functional.normalize(e1(m, torch.float64) + 1e-6 * torch.randn(m, generator=g, dtype=F64),
                                          dim=0).float(),
            -e1(m, torch.float32),
            torch.nn.functional.normalize(torch.randn(m, generator=g), dim=0)]
    for loc in locs:
        for k in [1e-3, 1.0, 1e4, 1e5]:
            kap = torch.tensor(k, requires_grad=True)
            q = VonMisesFisher(loc.clone().requires_grad_(True), kap)
            z = q.rsample((2000,), random_state=1)
            assert z.dtype == torch.float32
            assert float((z.norm(dim=-1) - 1).abs().max()) <= 1e-6
            # the samples concentrate where they should: μᵀz close to A_m(κ)
            assert abs(float((z @ loc).mean()) - mp_A(m, k)) <= 0.05 + 4 * float((z @ loc).std()) / math.sqrt(2000)
            (gk,) = torch.autograd.grad(z[:, 0].sum(), kap)
            assert torch.isfinite(gk)


def test_householder_exact_at_e1():
    # loc = e₁ exactly: z must equal the canonical sample (first coordinate = w)
    m = 6
    q = VonMisesFisher(e1(m), torch.tensor(20.0, dtype=F64))
    z = q.sample((1000,), random_state=0)
    assert torch.isfinite(z).all()
    assert abs(float(z[:, 0].mean()) - mp_A(m, 20.0)) < 4 * float(z[:, 0].std()) / math.sqrt(1000)


# -- KL ----------------------------------------------------------------------------------
def test_kl_m3_closed_form():
    for k, lit in [(1.0, 0.151596), (10.0, 1.995732)]:
        q = VonMisesFisher(e1(3), torch.tensor(k, dtype=F64))
        kl = float(kl_divergence(q, HypersphericalUniform(3)))
        closed = k / math.tanh(k) - 1 + math.log(k / math.sinh(k))
        assert abs(kl - closed) < 1e-12
        assert abs(kl - lit) < 5e-7
    ks = torch.tensor([1e-4, 1e-2, 0.3, 3.0, 30.0, 300.0], dtype=F64)
    kl = kl_divergence(VonMisesFisher(e1(3).expand(6, 3), ks), HypersphericalUniform(3))
    closed = [float(mpmath.mpf(k) * mpmath.coth(k) - 1 + mpmath.log(k / mpmath.sinh(k))) for k in ks.tolist()]
    np.testing.assert_allclose(kl.numpy(), closed, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_high_dimension_vs_mpmath(dtype):
    for m, k in [(128, 1.7), (1000, 10.0), (1000, 1e-3), (50, 1e4), (1000, 1e5)]:
        q = VonMisesFisher(e1(m, dtype), torch.tensor(k, dtype=dtype))
        kl = kl_divergence(q, HypersphericalUniform(m))
        ref = mp_kl(m, float(torch.tensor(k, dtype=dtype)))
        assert kl.dtype == dtype and torch.isfinite(kl)
        rtol = 1e-6 if dtype == F64 else 2e-6  # float32: computed in float64, then rounded to float32
        assert abs(float(kl) - ref) <= rtol * abs(ref), (m, k, float(kl), ref)


def test_kl_gradient_finite_float32():
    k = torch.tensor([1.7, 10.0, 1e4], requires_grad=True)
    kl = kl_divergence(VonMisesFisher(e1(128, torch.float32).expand(3, 128), k), HypersphericalUniform(128))
    (g,) = torch.autograd.grad(kl.sum(), k)
    assert torch.isfinite(g).all() and (g > 0).all()


# -- reparameterisation gradient --------------------------------------------------------
@pytest.mark.parametrize("m,kappa", [(5, 2.0), (10, 5.0), (3, 1.0), (2, 3.0)])
def test_rsample_kappa_gradient_matches_exact_derivative(m, kappa):
    n = 40000
    mu = torch.nn.functional.normalize(torch.linspace(1.0, 2.0, m, dtype=F64), dim=0)
    kap = torch.full((n,), kappa, dtype=F64, requires_grad=True)
    z = VonMisesFisher(mu.expand(n, m), kap).rsample(random_state=7)
    (g,) = torch.autograd.grad(z[:, 0].sum(), kap)  # per-sample d z₁ / dκ
    a = mp_A(m, kappa)
    exact = (1 - a * a - (m - 1) * a / kappa) * float(mu[0])  # d/dκ [A_m(κ) μ₁]
    se = float(g.std()) / math.sqrt(n)
    assert abs(float(g.mean()) - exact) <= 4 * se, (float(g.mean()), exact, se)


def test_rsample_loc_gradient_matches_exact_derivative():
    m, kappa, n = 4, 3.0, 40000
    mu = torch.nn.functional.normalize(torch.tensor([0.3, 1.0, -0.5, 0.2], dtype=F64), dim=0)
    c = torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=F64)
    loc = mu.expand(n, m).clone().requires_grad_(True)
    z = VonMisesFisher(loc, torch.tensor(kappa, dtype=F64)).rsample(random_state=2)
    (g,) = torch.autograd.grad((z @ c).sum(), loc)
    # E[cᵀz] = A cᵀμ; its gradient tangent to the sphere is A (c − (cᵀμ)μ)
    a = mp_A(m, kappa)
    exact = a * (c - (c @ mu) * mu)
    gt = g - (g @ mu)[:, None] * mu
    se = gt.std(0) / math.sqrt(n)
    assert torch.all((gt.mean(0) - exact).abs() <= 4 * se + 1e-12)


# -- Metropolis–Hastings -----------------------------------------------------------------
@pytest.mark.parametrize("m,kappa", [(10, 10.0), (50, 100.0), (5, 0.5)])
def test_mh_sampler_acceptance_and_moments(m, kappa):
    n = 8000
    q = VonMisesFisher(e1(m), torch.tensor(kappa, dtype=F64), sampler="mh")
    w = q.sample((n,), random_state=4)[:, 0]
    assert 0 < q.acceptance_rate <= 1
    se = float(w.std()) / math.sqrt(n)
    assert abs(float(w.mean()) - mp_A(m, kappa)) <= 4 * se
    r = VonMisesFisher(e1(m), torch.tensor(kappa, dtype=F64))
    r.sample((100,), random_state=0)
    assert 0 < r.acceptance_rate <= 1


# -- power spherical ---------------------------------------------------------------------
@pytest.mark.parametrize("m,kappa", [(3, 1.0), (10, 50.0), (100, 5.0), (1000, 1e4)])
def test_power_spherical_moments_closed_form(m, kappa):
    n = 8000
    mu = torch.nn.functional.normalize(torch.linspace(-1.0, 2.0, m, dtype=F64), dim=0)
    p = PowerSpherical(mu, torch.tensor(kappa, dtype=F64))
    t = p.sample((n,), random_state=5) @ mu
    al, be = (m - 1) / 2 + kappa, (m - 1) / 2
    mean_t = (al - be) / (al + be)
    ex2 = al * (al + 1) / ((al + be) * (al + be + 1))
    mean_t2 = 4 * ex2 - 4 * al / (al + be) + 1
    for est, ref in [(t, mean_t), (t * t, mean_t2)]:
        se = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - ref) <= 4 * se + 1e-13
    assert abs(float(p.mean @ mu) - mean_t) < 1e-12


@pytest.mark.parametrize("m,kappa", [(3, 2.0), (10, 50.0), (64, 0.3)])
def test_power_spherical_kl_and_log_prob_vs_quadrature(m, kappa):
    p = PowerSpherical(e1(m), torch.tensor(kappa, dtype=F64))
    log_c = float(p.log_prob(e1(m))) - kappa * math.log(2.0)  # log C from log p(μ) = log C + κ log 2
    log_s = lambda k: math.log(2) + k / 2 * math.log(math.pi) - math.lgamma(k / 2)  # noqa: E731
    # density of t = μᵀz: C (1+t)^κ |S^{m−2}| (1−t²)^{(m−3)/2}
    dens = lambda t: math.exp(log_c + kappa * math.log1p(t) + log_s(m - 1) + (m - 3) / 2 * math.log1p(-t * t))  # noqa: E731
    total = scipy.integrate.quad(dens, -1, 1, limit=200, points=[1 - 1 / (1 + kappa)])[0]
    assert abs(total - 1) < 1e-8  # log_prob is normalised
    integrand = lambda t: dens(t) * (log_c + kappa * math.log1p(t))  # noqa: E731
    kl_ref = scipy.integrate.quad(integrand, -1, 1, limit=200)[0] + log_s(m)
    kl = float(kl_divergence(p, HypersphericalUniform(m)))
    assert abs(kl - kl_ref) < 1e-8 * max(1, abs(kl_ref))


def test_power_spherical_on_sphere_and_gradients():
    for dtype, tol in [(F64, 1e-12), (torch.float32, 1e-6)]:
        for m in [3, 10, 1000]:
            loc = e1(m, dtype)
            for k in [1e-3, 1.0, 1e5]:
                kap = torch.tensor(k, dtype=dtype, requires_grad=True)
                z = PowerSpherical(loc, kap).rsample((500,), random_state=0)
                assert z.dtype == dtype and float((z.norm(dim=-1) - 1).abs().max()) <= tol
                (g,) = torch.autograd.grad(z[:, 0].mean(), kap)
                assert torch.isfinite(g) and float(g) >= 0


# -- uniform ---------------------------------------------------------------------------
def test_uniform():
    u = HypersphericalUniform(5, batch_shape=(2,), dtype=F64)
    z = u.sample((10000,), random_state=0)
    assert z.shape == (10000, 2, 5) and torch.allclose(z.norm(dim=-1), torch.ones(1, dtype=F64))
    assert float(z.mean((0, 1)).abs().max()) < 4 / math.sqrt(20000)
    assert torch.allclose(u.log_prob(z[0]), torch.full((2,), -math.log(8 * math.pi**2 / 3), dtype=F64))
    with pytest.raises(ValueError, match="dim"):
        HypersphericalUniform(1)


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kname", [(VonMisesFisher, "concentration"), (PowerSpherical, "scale")])
def test_bad_input_names_the_argument(cls, kname):
    loc = e1(4)
    with pytest.raises(ValueError, match="loc"):
        cls(torch.tensor([float("nan"), 0, 0, 1], dtype=F64), torch.tensor(1.0, dtype=F64))
    with pytest.raises(ValueError, match="loc"):
        cls(torch.tensor([2.0, 0, 0, 0], dtype=F64), torch.tensor(1.0, dtype=F64))
    with pytest.raises(ValueError, match="loc"):
        cls(torch.tensor([1.0], dtype=F64), torch.tensor(1.0, dtype=F64))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=kname):
            cls(loc, torch.tensor(bad, dtype=F64))
    with pytest.raises(ValueError, match=kname):
        cls(loc.expand(3, 4), torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match=kname):
        cls(loc, torch.ones(3, dtype=F64))  # would grow the batch
    # (N, 1) concentrations, as s-vae-pytorch passes them, are accepted
    d = cls(loc.expand(3, 4), torch.ones(3, 1, dtype=F64))
    assert d.batch_shape == (3,)
    with pytest.raises(ValueError, match="sampler"):
        VonMisesFisher(loc, torch.tensor(1.0, dtype=F64), sampler="gibbs")


def test_shared_loc_fast_path_equals_batched_path():
    for m in (3, 7):
        for loc in (e1(m), -e1(m), torch.nn.functional.normalize(torch.arange(1.0, m + 1, dtype=F64), dim=0)):
            k = torch.tensor(4.0, dtype=F64)
            fast = VonMisesFisher(loc, k).sample((300,), random_state=0)
            slow = VonMisesFisher(loc.clone().requires_grad_(True), k).rsample((300,), random_state=0)
            assert torch.allclose(fast, slow.detach(), atol=1e-12)
            fast = PowerSpherical(loc, k).sample((300,), random_state=0)
            slow = PowerSpherical(loc.clone().requires_grad_(True), k).rsample((300,), random_state=0)
            assert torch.allclose(fast, slow.detach(), atol=1e-12)


def _mp_dw_dkappa(m, k, w):
    """−(∂F/∂κ)/f for the w-marginal ∝ (1 − t²)^{(m−3)/2} e^{κt}, by mpmath quadrature and differences."""
    nu = mpmath.mpf(m - 3) / 2
    w = mpmath.mpf(w)
    dens = lambda t, kk: (1 - t * t) ** nu * mpmath.exp(kk * (t - 1))  # noqa: E731
    split = [-1, 1 - mpmath.mpf(20) / k, 1] if k > 40 else [-1, 0, 1]
    Z = lambda kk: mpmath.quad(lambda t: dens(t, kk), split)  # noqa: E731
    F = lambda kk: mpmath.quad(lambda t: dens(t, kk), [-1, w]) / Z(kk)  # noqa: E731
    h = mpmath.mpf(k) * mpmath.mpf(10) ** -12
    return float(-(F(k + h) - F(k - h)) / (2 * h) / (dens(w, k) / Z(k)))


def test_implicit_gradient_quadrature_vs_mpmath():
    from latentgeo.distributions.von_mises_fisher import _dw_dkappa

    mpmath.mp.dps = 30
    cases = [(2, 2.0, [-0.9, 0.95]), (2, 1000.0, [0.999, 0.9999]), (5, 2.0, [-0.5, 0.9]),
             (10, 1000.0, [0.998, 0.99]), (1000, 1e-3, [-0.05, 0.03]), (100, 50.0, [0.3, 0.6])]
    for m, k, ws in cases:
        kk = torch.tensor([k] * len(ws), dtype=F64)
        omw = torch.tensor([float(1 - mpmath.mpf(w)) for w in ws], dtype=F64)
        got = _dw_dkappa(omw, 2 - omw, kk, bessel_ratio(m, kk), m)
        for g, w in zip(got.tolist(), ws):
            ref = _mp_dw_dkappa(m, k, w)
            assert abs(g - ref) <= 1e-9 * abs(ref), (m, k, w, g, ref)
    mpmath.mp.dps = 40
