"""The Poincaré-ball chart and decoders re-expressed on it.

Closed forms: the ball metric ``4/(1 − c|z|²)² I`` is the pullback of the Lorentz metric through
``from_ball`` (checked with jacfwd); a 1-D Gaussian decoder whose ``(μ/√2, σ)`` is the
upper-half-plane image of the hyperboloid point has Fisher metric ``(dμ² + 2dσ²)/σ² = 2 × `` the
hyperbolic metric, so its pullback on the ball is ``2λ²I`` and its geodesic distances are
``√2 ×`` the closed-form Poincaré distance.
"""

import math

import pytest
import torch

import latentgeo as lg
from latentgeo.charts import PoincareChart, poincare_decoder

D = torch.float64


@pytest.mark.parametrize("c", [1.0, 0.6])
def test_chart_round_trip_and_metric_is_the_lorentz_pullback(c):
    chart = PoincareChart(3, c)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=g, dtype=D)
    z = 0.95 * z / z.norm(dim=-1, keepdim=True) * torch.rand(8, 1, generator=g, dtype=D) / math.sqrt(c)
    x = chart.from_ball(z)
    assert torch.allclose(-x[:, 0] ** 2 + (x[:, 1:] ** 2).sum(-1), torch.full((8,), -1 / c, dtype=D))
    assert torch.allclose(chart.to_ball(x), z, atol=1e-12)
    eta = torch.diag(torch.tensor([-1.0, 1, 1, 1], dtype=D))
    for i in range(8):
        J = torch.func.jacfwd(chart.from_ball)(z[i])
        assert torch.allclose(J.T @ eta @ J, chart.metric(z[i]), rtol=1e-10)
    # distance against the hyperboloid's acosh(-c<x, y>)/sqrt(c)
    inner = -x[:4, 0] * x[4:, 0] + (x[:4, 1:] * x[4:, 1:]).sum(-1)
    assert torch.allclose(chart.dist(z[:4], z[4:]), torch.acosh(-c * inner) / math.sqrt(c), rtol=1e-10)


def _fisher_half_plane_decoder():
    """μ = √2·X, σ = Y with (X, Y) = (x₁, 1)/(x₀ − x₂) the half-plane image of x ∈ H² (c = 1)."""
    def mean(x):
        return (math.sqrt(2.0) * x[:, 1] / (x[:, 0] - x[:, 2]))[:, None]

    def std(x):
        return (1.0 / (x[:, 0] - x[:, 2]))[:, None]

    return lg.GaussianDecoder(mean=mean, std=std, latent_dim=3)


def test_fisher_metric_on_the_ball_is_twice_the_hyperbolic_metric():
    chart = PoincareChart(2)
    dec = poincare_decoder(_fisher_half_plane_decoder(), chart)
    z = torch.tensor([[0.0, 0.0], [0.5, -0.3], [-0.7, 0.6], [0.1, 0.9]], dtype=D)
    G = lg.PullbackMetric(dec, kind="fisher").tensor(z)
    assert torch.allclose(G, 2.0 * chart.metric(z), rtol=1e-9)


def test_geodesic_distance_matches_the_poincare_distance():
    chart = PoincareChart(2)
    metric = lg.PullbackMetric(poincare_decoder(_fisher_half_plane_decoder(), chart), kind="fisher")
    z0 = torch.tensor([[0.1, 0.2], [-0.5, 0.1], [0.0, -0.6]], dtype=D)
    z1 = torch.tensor([[0.6, -0.4], [0.4, 0.5], [0.2, 0.7]], dtype=D)
    res = lg.connecting_geodesic(metric, z0, z1, budget=None)
    assert bool(res.converged.all()), res
    ref = math.sqrt(2.0) * chart.dist(z0, z1)
    assert torch.allclose(res.length, ref, rtol=1e-5), (res.length, ref)
    assert bool((res.line_length >= res.length - 1e-9).all())


def test_hyperbolic_vae_decoder_on_the_ball_is_the_chain_rule_pullback():
    vae = lg.VAE(10, 2, latent="hyperbolic", hidden=(16,), random_state=0).double()
    chart = PoincareChart.for_model(vae)
    dec_h = vae.decoder_for_analysis()
    dec_b = poincare_decoder(dec_h, chart)
    z = torch.tensor([[0.2, -0.1], [-0.4, 0.5]], dtype=D)
    Gb = lg.PullbackMetric(dec_b).tensor(z)
    Gh = lg.PullbackMetric(dec_h).tensor(chart.from_ball(z))  # metric on ambient R^3 codes
    for i in range(2):
        J = torch.func.jacfwd(chart.from_ball)(z[i])
        assert torch.allclose(Gb[i], J.T @ Gh[i] @ J, rtol=1e-9, atol=1e-12)
    assert bool((torch.linalg.eigvalsh(Gb) > 0).all())


def test_bad_input():
    with pytest.raises(ValueError, match="curvature"):
        PoincareChart(2, curvature=0.0)
    with pytest.raises(ValueError, match="z must lie in the open Poincaré ball"):
        PoincareChart(2).metric(torch.tensor([[0.8, 0.8]]))
    with pytest.raises(ValueError, match="hyperbolic latent"):
        PoincareChart.for_model(lg.VAE(4, 2, hidden=(4,)))
    with pytest.raises(TypeError, match="decoder"):
        poincare_decoder(object(), PoincareChart(2))


def test_codes_outside_the_ball_are_reported_not_decoded_on_the_other_sheet():
    dec = lg.DeterministicDecoder(lambda x: torch.tanh(x @ torch.ones(3, 4, dtype=x.dtype)))
    metric = lg.PullbackMetric(poincare_decoder(dec, PoincareChart(2)))
    assert torch.isfinite(metric.tensor(torch.tensor([[0.1, 0.2]], dtype=D))).all()
    with pytest.raises(ValueError, match=r"NaN/inf at 1 point\(s\) \(indices 1\)"):
        metric.tensor(torch.tensor([[0.1, 0.2], [0.9, 0.9]], dtype=D))


def test_kmeans_and_walks_run_unchanged_on_the_ball():
    chart = PoincareChart(2)
    metric = lg.PullbackMetric(poincare_decoder(_fisher_half_plane_decoder(), chart), kind="fisher")
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.5, 0.0], dtype=D) + 0.05 * torch.randn(4, 2, generator=g, dtype=D)
    b = torch.tensor([-0.5, 0.2], dtype=D) + 0.05 * torch.randn(4, 2, generator=g, dtype=D)
    labels = lg.GeodesicKMeans(metric, n_clusters=2, random_state=0, n_init=1).fit_predict(torch.cat([a, b]))
    assert len(set(labels[:4].tolist())) == 1 and len(set(labels[4:].tolist())) == 1 and labels[0] != labels[4]
    walk = lg.random_walk(metric, a[:2], 30, 0.02, method="brownian", random_state=0, progress=False)
    assert int(walk.stopped.sum()) == 0
    tr = walk.trajectories
    assert torch.isfinite(tr).all() and float(tr.norm(dim=-1).max()) < 1.0
