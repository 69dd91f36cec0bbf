"""Stereographic charts: round trips, the round metric in closed form, chart-independent geodesic
lengths (great-circle angles for the identity decoder), a VAE decoder through a chart."""

import math

import pytest
import torch

import latentgeo as lg
from latentgeo.charts import ChartDecoder, StereographicChart, chart_decoder
from latentgeo.models import VAE

F64 = torch.float64


def unit(*v):
    return torch.nn.functional.normalize(torch.tensor(v, dtype=F64), dim=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_round_trip_and_basis(dtype, tol):
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 5):
        poles = [torch.eye(d + 1, dtype=dtype)[0], -torch.eye(d + 1, dtype=dtype)[0],
                 torch.nn.functional.normalize(torch.randn(d + 1, generator=g, dtype=F64), dim=0).to(dtype)]
        for pole in poles:
            ch = StereographicChart(pole)
            assert ch.dim == d and torch.allclose(ch.basis.T @ ch.basis, torch.eye(d, dtype=dtype), atol=tol)
            assert float((ch.basis.T @ ch.pole).abs().max()) < tol
            x = torch.nn.functional.normalize(torch.randn(50, d + 1, generator=g, dtype=F64), dim=1).to(dtype)
            x = x[(x @ ch.pole) < 0.9]  # away from the pole
            y = ch.to_chart(x)
            assert y.shape == (x.shape[0], d)
            assert float((ch.from_chart(y) - x).abs().max()) < tol * 10
            assert torch.allclose(ch.to_chart(-ch.pole[None]), torch.zeros(1, d, dtype=dtype), atol=tol)  # antipode → 0
            yy = torch.randn(20, d, generator=g, dtype=F64).to(dtype) * 3
            assert float((ch.from_chart(yy).norm(dim=1) - 1).abs().max()) < tol


def test_inverse_stereographic_metric_closed_form():
    g = torch.Generator().manual_seed(1)
    for d in (1, 2, 4):
        ch = StereographicChart(torch.nn.functional.normalize(torch.randn(d + 1, generator=g, dtype=F64), dim=0))
        metric = lg.PullbackMetric(chart_decoder(lg.DeterministicDecoder(lambda x: x), ch))
        y = torch.randn(30, d, generator=g, dtype=F64) * 2
        G = metric.tensor(y)
        ref = (4 / (1 + y.pow(2).sum(1)) ** 2)[:, None, None] * torch.eye(d, dtype=F64)
        assert torch.allclose(G, ref, rtol=1e-10, atol=1e-12)


def test_opposite_mean():
    codes = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.1], [0.9, -0.1, 0.3], [1.0, 0.0, -0.2]],
                                                       dtype=F64), dim=1)
    ch = StereographicChart.opposite_mean(codes)
    m = codes.mean(0)
    assert torch.allclose(ch.pole, -m / m.norm())
    assert float(ch.to_chart(codes).norm(dim=1).max()) < 0.2  # the codes sit near the chart's origin
    with pytest.raises(ValueError, match="mean"):
        StereographicChart.opposite_mean(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=F64))


def _length(decoder, chart, a, b):
    metric = lg.PullbackMetric(chart_decoder(decoder, chart))
    res = lg.connecting_geodesic(metric, chart.to_chart(a), chart.to_chart(b), budget=None)
    assert bool(res.converged.all()), res
    return res.length


def test_geodesic_lengths_chart_independent():
    a = torch.stack([unit(1.0, 0.3, 0.2), unit(0.1, 1.0, 0.0), unit(-0.3, 0.2, 1.0)])
    b = torch.stack([unit(0.2, 1.0, -0.4), unit(0.0, 0.3, 1.0), unit(1.0, 0.1, 0.4)])
    pole1 = -torch.nn.functional.normalize((a + b).sum(0), dim=0)
    pole2 = unit(0.3, -1.0, 0.4)
    assert float(pole1 @ pole2) < 0.9
    charts = [StereographicChart(pole1), StereographicChart(pole2)]
    # identity decoder: the great-circle angle, in both charts
    angle = torch.arccos((a * b).sum(1))
    for ch in charts:
        L = _length(lg.DeterministicDecoder(lambda x: x), ch, a, b)
        assert torch.allclose(L, angle, rtol=1e-5, atol=1e-7), (L, angle)
    # a nonlinear decoder: both charts give the same length
    W = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    dec = lg.DeterministicDecoder(lambda x: torch.tanh(x @ W))
    L1, L2 = (_length(dec, ch, a, b) for ch in charts)
    assert torch.allclose(L1, L2, rtol=1e-5), (L1, L2)
    assert bool((L1 > 0).all())


def test_vae_decoder_through_a_chart():
    vae = VAE(16, 2, latent="sphere", hidden=(8,), item_shape=(4, 4), random_state=0).to(F64)
    x = torch.rand(40, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    codes = vae.encode_mean(x)
    ch = StereographicChart.opposite_mean(codes)
    dec = chart_decoder(vae.decoder_for_analysis(), ch)
    assert isinstance(dec, ChartDecoder) and dec.latent_dim == 2
    y = ch.to_chart(codes)
    G = lg.PullbackMetric(dec).tensor(y[:5])
    assert G.shape == (5, 2, 2) and torch.isfinite(G).all()
    assert bool((torch.linalg.eigvalsh(G) > 0).all())
    mu, _ = dec.base.mean_std(codes[:5])
    assert torch.allclose(dec.base.mean_std(ch.from_chart(y[:5]))[0], mu, atol=1e-10)
    res = lg.connecting_geodesic(lg.PullbackMetric(dec), y[:2], y[2:4], budget=None)
    assert torch.isfinite(res.length).all()


def test_bad_input():
    with pytest.raises(ValueError, match="pole"):
        StereographicChart(torch.tensor([2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="pole"):
        StereographicChart(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="pole"):
        StereographicChart(torch.tensor([float("nan"), 0.0, 1.0]))
    with pytest.raises(TypeError, match="base"):
        ChartDecoder(lambda x: x, StereographicChart(torch.tensor([0.0, 0.0, 1.0])))
    with pytest.raises(ValueError, match="width"):
        chart_decoder(lg.DeterministicDecoder(lambda x: x, latent_dim=2), StereographicChart(torch.tensor([0.0, 0.0, 1.0])))


def test_kmeans_and_walks_run_unchanged_in_a_chart():
    from latentgeo.clustering import GeodesicKMeans

    g = torch.Generator().manual_seed(0)
    centres = torch.stack([unit(1.0, 0.2, 0.0), unit(0.2, 1.0, 0.1)])
    x = torch.nn.functional.normalize(centres.repeat_interleave(10, 0) + 0.05 * torch.randn(20, 3, generator=g,
                                                                                            dtype=F64), dim=1)
    ch = StereographicChart.opposite_mean(x)
    metric = lg.PullbackMetric(chart_decoder(lg.DeterministicDecoder(lambda z: z), ch))
    labels = torch.as_tensor(GeodesicKMeans(metric, n_clusters=2, random_state=0).fit(ch.to_chart(x)).labels_)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1 and labels[0] != labels[10]
    walk = lg.random_walk(metric, ch.to_chart(x[:2]), 30, step_size=1e-3, method="brownian", random_state=0)
    assert "2/2" in repr(walk)
