"""Random walks (issue 12): closed-form laws of Brownian motion on H² / H³ (Poincaré ball) and on
S² / S³ through the inverse stereographic projection (a pullback metric), MMALA against known
targets (KS tests), the drift formulas against closed forms and each other, diagnostics, bad input.

Monte-Carlo tolerances: 4 standard errors (seeded; they also hold for other seeds).
"""

import math

import pytest
import torch
from scipy import stats

import latentgeo as lg
from latentgeo.walks import WalkStatus, support_fraction, support_threshold
from latentgeo.walks.geometry import brownian_drift, inverse_factor, inverse_metric_divergence


def _ball(d):
    return lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * torch.eye(d, dtype=z.dtype),
                          latent_dim=d)


def _stereo(z):  # inverse stereographic projection R^d -> S^d ⊂ R^(d+1); z = 0 ↦ the south pole
    r2 = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z / (1 + r2), (r2 - 1) / (1 + r2)], -1)


def _sphere(d):
    return lg.PullbackMetric(lg.DeterministicDecoder(_stereo, latent_dim=d))


def _cosh_dist(z):  # cosh of the hyperbolic distance from the origin of the Poincaré ball
    r2 = (z * z).sum(-1)
    return (1 + r2) / (1 - r2)


def _cos_polar(z):  # cos of the polar angle from the south pole (the start point)
    r2 = (z * z).sum(-1)
    return (1 - r2) / (1 + r2)


def _mean_se(x):
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------------
# Brownian motion: E[cosh d(0, z_t)] = e^(n t / 2) on H^n, E[cos θ_t] = e^(−n t / 2) on S^n
# (generator Δ/2; Δ cosh ρ = n cosh ρ on H^n, Δ cos θ = −n cos θ on S^n)
# ---------------------------------------------------------------------------------------
def test_brownian_poincare_disk_law():
    w = lg.random_walk(_ball(2), torch.zeros(2), 100, 0.005, method="brownian", n_walkers=4000, random_state=0)
    assert bool(w.success.all()) and w.trajectories.shape == (4000, 101, 2)
    for k in (50, 100):
        m, se = _mean_se(_cosh_dist(w.trajectories[:, k]))
        assert abs(m - math.exp(k * 0.005)) < 4 * se, (k, m, se)


def test_drift_vanishes_for_conformal_metrics_in_2d():
    # Δ_g = λ⁻² Δ for g = λ² I in two dimensions: the drift is zero on H² and S², so the "lso"
    # walk *is* Brownian motion there (the slides' failure needs d ≥ 3 or a non-conformal metric)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * 0.4
    for metric in (_ball(2), _sphere(2)):
        lfac, ok = inverse_factor(metric.tensor(z))
        b = brownian_drift(lg.geodesics.acceleration_fn(metric), z, lfac)
        assert bool(ok.all()) and float(b.abs().max()) < 1e-10


def test_brownian_drift_closed_form_3d():
    # g = λ² I in d dims: b = ½ (d − 2) λ⁻³ ∇λ; Poincaré ball λ = 2/(1−r²): b = (d−2) z (1−r²)/4;
    # sphere chart λ = 2/(1+r²): b = −(d−2) z (1+r²)/4 (general Christoffel path and pullback path)
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)) * 0.3
    r2 = (z * z).sum(-1, keepdim=True)
    for metric, expected in ((_ball(3), z * (1 - r2) / 4), (_sphere(3), -z * (1 + r2) / 4)):
        lfac, _ = inverse_factor(metric.tensor(z))
        b = brownian_drift(lg.geodesics.acceleration_fn(metric), z, lfac)
        torch.testing.assert_close(b, expected, rtol=1e-8, atol=1e-10)


def test_brownian_h3_law_and_lso_misses_it():
    exact = math.exp(1.5 * 0.5)
    brown = lg.random_walk(_ball(3), torch.zeros(3), 100, 0.005, method="brownian", n_walkers=4000, random_state=0)
    lso = lg.random_walk(_ball(3), torch.zeros(3), 100, 0.005, method="lso", n_walkers=4000, random_state=0)
    m, se = _mean_se(_cosh_dist(brown.trajectories[:, 50]))
    assert abs(m - math.exp(1.5 * 0.25)) < 4 * se
    m, se = _mean_se(_cosh_dist(brown.trajectories[:, -1]))
    assert abs(m - exact) < 4 * se
    m_lso, se_lso = _mean_se(_cosh_dist(lso.trajectories[:, -1]))
    assert exact - m_lso > 5 * se_lso  # no drift: the walk stays too close to the origin


def test_brownian_s2_through_pullback_metric():
    w = lg.random_walk(_sphere(2), torch.zeros(2), 100, 0.005, method="brownian", n_walkers=4000, random_state=1)
    for k in (50, 100):
        m, se = _mean_se(_cos_polar(w.trajectories[:, k]))
        assert abs(m - math.exp(-k * 0.005)) < 4 * se, (k, m, se)


def test_brownian_s3_pullback_and_lso_misses_it():
    exact = math.exp(-1.5 * 0.5)
    brown = lg.random_walk(_sphere(3), torch.zeros(3), 100, 0.005, method="brownian", n_walkers=4000, random_state=1)
    lso = lg.random_walk(_sphere(3), torch.zeros(3), 100, 0.005, method="lso", n_walkers=4000, random_state=1)
    m, se = _mean_se(_cos_polar(brown.trajectories[:, -1]))
    assert abs(m - exact) < 4 * se
    m_lso, se_lso = _mean_se(_cos_polar(lso.trajectories[:, -1]))
    assert exact - m_lso > 5 * se_lso


def test_geodesic_walk_s3_law():
    # a geodesic random walk with tangent covariance h M⁻¹ has generator hΔ/2 per step: no drift needed
    w = lg.random_walk(_sphere(3), torch.zeros(3), 25, 0.02, method="geodesic", n_walkers=1000, random_state=0)
    assert bool(w.success.all())
    m, se = _mean_se(_cos_polar(w.trajectories[:, -1]))
    assert abs(m - math.exp(-1.5 * 0.5)) < 4 * se


def test_euclidean_walk_variance():
    w = lg.random_walk(None, torch.zeros(2), 50, 0.01, method="euclidean", n_walkers=2000, random_state=0)
    var = w.trajectories[:, -1].var(0)
    assert torch.allclose(var, torch.full((2,), 0.5), rtol=0.15)


# ---------------------------------------------------------------------------------------
# MMALA
# ---------------------------------------------------------------------------------------
def test_mmala_drift_is_brownian_drift_for_the_volume_target():
    # two independent derivations: ½ M⁻¹∇log√det M + ½ ∇·M⁻¹ (Xifara et al.) = ½ Σ a(z, l_m)
    z = torch.randn(30, 3, generator=torch.Generator().manual_seed(2)) * 0.4
    metric = _sphere(3)
    m = metric.tensor(z)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(metric.log_volume(zz).sum(), zz)
    div = inverse_metric_divergence(metric.tensor_fn(), z, m)
    langevin = 0.5 * torch.linalg.solve(m, g) + 0.5 * div
    lfac, _ = inverse_factor(m)
    torch.testing.assert_close(langevin, brownian_drift(lg.geodesics.acceleration_fn(metric), z, lfac),
                               rtol=1e-7, atol=1e-9)


def test_inverse_metric_divergence_closed_form():
    mf = lg.MetricField(lambda z: torch.diag_embed(1 + z * z))
    z = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    div = inverse_metric_divergence(mf.tensor_fn(), z, mf.tensor(z))
    torch.testing.assert_close(div, -2 * z / (1 + z * z) ** 2)


def test_mmala_uniform_on_sphere_ks():
    # target: the Riemannian volume of S² in the stereographic chart, π ∝ (2/(1+r²))²; cos θ ~ U(−1, 1)
    metric = _sphere(2)
    w = lg.random_walk(metric, torch.zeros(2), 150, method="mmala", log_prob=metric.log_volume, n_walkers=1000,
                       random_state=0)
    assert 0.3 <= float(w.acceptance_rate.mean()) <= 0.95
    assert int((w.accepted + w.n_rejected).sum()) == 1000 * 150
    c = _cos_polar(w.trajectories[:, -1])  # one state per walker: independent samples
    assert stats.kstest(c.numpy(), stats.uniform(-1, 2).cdf).pvalue > 0.01


def test_mmala_gaussian_target_position_dependent_metric_ks():
    mf = lg.MetricField(lambda z: torch.diag_embed(1 + z * z))
    w = lg.random_walk(mf, torch.zeros(2), 150, method="mmala", log_prob=lambda z: -0.5 * (z * z).sum(-1),
                       n_walkers=1000, random_state=1)
    assert 0.3 <= float(w.acceptance_rate.mean()) <= 0.95
    end = w.trajectories[:, -1]
    for j in range(2):
        assert stats.kstest(end[:, j].numpy(), "norm").pvalue > 0.01
    # and it can fail: the same samples are not N(0, 2²)
    assert stats.kstest(end[:, 0].numpy() / 2, "norm").pvalue < 1e-6


def test_mmala_rejects_outside_support():
    # log π = −inf outside the unit disk: proposals there are rejected, walkers never leave
    mf = lg.MetricField(lambda z: torch.eye(2).expand(z.shape[0], 2, 2))

    def logp(z):
        r2 = (z * z).sum(-1)
        return torch.where(r2 < 1, -r2, torch.full_like(r2, -math.inf))

    w = lg.random_walk(mf, torch.zeros(2), 50, 0.5, method="mmala", log_prob=logp, n_walkers=200, random_state=0)
    assert bool(((w.trajectories ** 2).sum(-1) < 1).all())
    assert int(w.n_rejected.sum()) > 0 and bool(w.success.all())


# ---------------------------------------------------------------------------------------
# diagnostics, decoding, support, bad input
# ---------------------------------------------------------------------------------------
def test_nonfinite_step_stops_walker():
    # the metric is NaN outside the unit disk: walkers that step out are stopped there, never NaN
    mf = lg.MetricField(lambda z: torch.eye(2) / torch.sqrt(1 - (z * z).sum(-1))[:, None, None])
    z0 = torch.tensor([[0.0, 0.0], [0.9, 0.0]])
    w = lg.random_walk(mf, z0.repeat(50, 1), 10, 0.01, method="lso", random_state=0)
    assert bool(torch.isfinite(w.trajectories).all())
    assert bool(w.stopped.any()) and not bool(w.stopped.all())
    stopped = w.stopped.nonzero().reshape(-1)
    assert set(w.status[stopped].tolist()) <= {int(WalkStatus.NONFINITE_STEP)}
    i = int(stopped[0])
    k = int(w.steps_taken[i])
    assert bool((w.trajectories[i, k:] == w.trajectories[i, k]).all()) and not bool(w.mask[i, k + 1:].any())
    assert "non-finite" in w.messages[i] and "stopped" in repr(w)


def test_reproducible_and_decode():
    dec = lg.DeterministicDecoder(_stereo, latent_dim=2)
    metric = lg.PullbackMetric(dec)
    a = lg.random_walk(metric, torch.zeros(3, 2), 5, 0.01, method="brownian", random_state=7)
    b = lg.random_walk(metric, torch.zeros(3, 2), 5, 0.01, method="brownian", random_state=7)
    assert torch.equal(a.trajectories, b.trajectories)
    x = a.decode(dec)
    assert x.shape == (3, 6, 3)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(3, 6))
    assert a.decode(dec, steps=slice(None, None, 5)).shape == (3, 2, 3)
    assert a.acceptance_rate is None and isinstance(a, lg.WalkResult)


def test_support_fraction():
    codes = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    tau = support_threshold(codes, k=5, quantile=0.99)
    far = torch.full((1, 4, 2), 8.0)
    near = codes[:4].reshape(1, 4, 2)
    assert support_fraction(torch.cat([near, far]), codes, tau).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(z0=torch.tensor([[0.0, float("nan")]])), ValueError, "z0"),
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(step_size=-1.0), ValueError, "step_size"),
        (dict(step_size=None), ValueError, "step_size"),
        (dict(method="langevin"), ValueError, "method"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(method="mmala"), ValueError, "log_prob"),
        (dict(log_prob=lambda z: z.sum(-1)), ValueError, "log_prob"),
        (dict(z0=torch.zeros(4, 3)), ValueError, "z0"),
    ],
)
def test_bad_input(kwargs, exc, text):
    args = dict(metric=_ball(2), z0=torch.zeros(4, 2), n_steps=3, step_size=0.01, method="brownian")
    args.update(kwargs)
    with pytest.raises(exc, match=text):
        lg.random_walk(**args)


def test_bad_log_prob_shape():
    with pytest.raises(ValueError, match="log_prob"):
        lg.random_walk(_ball(2), torch.zeros(4, 2), 3, method="mmala", log_prob=lambda z: z)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_embedded_brownian_terms_match_generic_drift(d):
    # the jet-based fast paths (polarised for d ≤ 2, two-pass above) against ½ Σ a(z, l_m)
    from latentgeo.walks.geometry import brownian_terms_fn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, 7))
    for ridge in (0.0, 1e-2):
        metric = lg.PullbackMetric(lg.GaussianDecoder(mean=net, std=lambda z: 0.5 + torch.sigmoid(z.sum(-1, keepdim=True)) * torch.ones(1, 7)),
                                   ridge=ridge)
        z = torch.randn(25, d, generator=torch.Generator().manual_seed(1))
        lfac, ok, b = brownian_terms_fn(metric)(z)
        m = metric.tensor(z)
        torch.testing.assert_close(lfac @ lfac.transpose(1, 2), torch.linalg.inv(m))
        ref = brownian_drift(lg.geodesics.acceleration_fn(metric), z, inverse_factor(m)[0])
        torch.testing.assert_close(b, ref)
        assert bool(ok.all())


def test_matched_step_sizes_and_mixture_log_prob():
    from latentgeo.walks import matched_step_sizes, mixture_log_prob

    codes = torch.randn(300, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 3.0])
    mf = lg.MetricField(lambda z: 4.0 * torch.eye(2).expand(z.shape[0], 2, 2))
    h_e, h_m = matched_step_sizes(mf, codes, 0.1)
    assert h_e == pytest.approx((0.1 * float(codes.std(0).mean())) ** 2) and h_m == pytest.approx(4 * h_e)
    mu = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    sd = torch.tensor([[1.0, 0.5], [0.3, 2.0]])
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    ref = 0.5 * sum(stats.multivariate_normal(mu[i].numpy(), torch.diag(sd[i] ** 2).numpy()).pdf(z.numpy())
                    for i in range(2))
    torch.testing.assert_close(mixture_log_prob(mu, sd)(z), torch.as_tensor(ref).log())


def test_report_section_walks(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    ds = lg.Dataset(torch.tensor(x[:200] / 16.0, dtype=torch.float32), torch.tensor(y[:200]), (8, 8), "digits", {})
    torch.set_default_dtype(torch.float32)
    model = lg.VAE(64, 2, likelihood="gaussian", hidden=(16,), item_shape=(8, 8), random_state=0).eval()
    s = lg.write_report(model, ds, None, tmp_path, sections=["walks"], resolution=16, walks_walkers=4, walks_steps=8)
    w = s["walks"]
    assert set(w["methods"]) == {"euclidean", "lso", "brownian", "geodesic", "mmala"}
    for m, r in w["methods"].items():
        assert 1 / 9 - 1e-9 <= r["within_support"] <= 1.0, m  # the start point is a training code
        assert (r["acceptance"] is None) == (m != "mmala")
    assert (tmp_path / "walks.png").is_file() and (tmp_path / "walks_strips.png").is_file()
