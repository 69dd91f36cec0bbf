"""Geodesic acceleration, Christoffel symbols and the exp map against closed forms."""

import math

import pytest
import torch

import latentgeo as lg
from latentgeo.geodesics import christoffel, exp_map, geodesic_acceleration

D64 = torch.float64


def mlp(seed=0, dims=(2, 16, 16, 5), dtype=D64):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers[:-1]).to(dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def stereo(z):
    """Inverse stereographic projection R² → S² ⊂ R³ (from the north pole)."""
    s = (z * z).sum(1, keepdim=True)
    return torch.cat([2 * z, s - 1], 1) / (1 + s)


def christoffel_reference(metric, z):
    """Classic formula with dM/dz from torch.autograd.functional.jacobian of metric.tensor (one point at a time)."""
    out = []
    for zi in z:
        m = metric.tensor(zi[None])[0]
        dm = torch.autograd.functional.jacobian(lambda x: metric.tensor(x[None])[0], zi)  # (d, d, d): ∂_k M_ij at [i, j, k]
        d = zi.shape[0]
        low = torch.empty(d, d, d, dtype=z.dtype)
        for l in range(d):
            for j in range(d):
                for k in range(d):
                    low[l, j, k] = 0.5 * (dm[l, k, j] + dm[l, j, k] - dm[j, k, l])
        out.append(torch.linalg.solve(m, low.reshape(d, d * d)).reshape(d, d, d))
    return torch.stack(out)


def test_embedded_acceleration_matches_classic_christoffel():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(mlp(1)))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, generator=g, dtype=D64)
    v = torch.randn(6, 2, generator=g, dtype=D64)
    gam = christoffel_reference(metric, z)
    expected = -torch.einsum("nijk,nj,nk->ni", gam, v, v)
    a = geodesic_acceleration(metric, z, v)
    assert expected.abs().max() > 1e-2  # the metric is curved: the test can fail
    torch.testing.assert_close(a, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(christoffel(metric, z), gam, rtol=1e-9, atol=1e-9)


def test_gaussian_fisher_and_expected_acceleration_match_reference():
    torch.manual_seed(3)
    mean = mlp(2, (3, 8, 4))
    std_net = mlp(4, (3, 8, 4))
    dec = lg.GaussianDecoder(mean=mean, std=lambda z: torch.nn.functional.softplus(std_net(z)) + 0.1)
    z = torch.randn(3, 3, dtype=D64)
    v = torch.randn(3, 3, dtype=D64)
    for kind in ("fisher", "expected"):
        metric = lg.PullbackMetric(dec, kind=kind)
        gam = christoffel_reference(metric, z)
        expected = -torch.einsum("nijk,nj,nk->ni", gam, v, v)
        torch.testing.assert_close(geodesic_acceleration(metric, z, v), expected, rtol=1e-9, atol=1e-9)


def poincare(d):
    eye = torch.eye(d, dtype=D64)
    return lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * eye, latent_dim=d)


@pytest.mark.parametrize("d", [2, 3])
def test_metric_field_christoffel_closed_form(d):
    # conformal metric λ² I: Γⁱ_jk = δ_ij ∂_k log λ + δ_ik ∂_j log λ − δ_jk ∂_i log λ, ∂ log λ = 2z/(1−|z|²)
    z = 0.3 * torch.randn(4, d, dtype=D64)
    w = 2 * z / (1 - (z * z).sum(1, keepdim=True))
    eye = torch.eye(d, dtype=D64)
    gam = (
        torch.einsum("ij,nk->nijk", eye, w) + torch.einsum("ik,nj->nijk", eye, w) - torch.einsum("jk,ni->nijk", eye, w)
    )
    torch.testing.assert_close(christoffel(poincare(d), z), gam, rtol=1e-12, atol=1e-12)


def test_linear_decoder_has_zero_acceleration_and_straight_exp_map():
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], dtype=D64)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    z = torch.randn(5, 2, dtype=D64)
    v = torch.randn(5, 2, dtype=D64)
    assert geodesic_acceleration(metric, z, v).abs().max() < 1e-12
    t = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], dtype=D64)
    res = exp_map(metric, z, v, t=t)
    assert bool(res.converged.all())
    torch.testing.assert_close(res.z1, z + t[:, None] * v, rtol=1e-12, atol=1e-12)


def test_exp_map_on_sphere_follows_great_circles():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    g = torch.Generator().manual_seed(1)
    z = 0.7 * torch.randn(4, 2, generator=g, dtype=D64)
    v = torch.randn(4, 2, generator=g, dtype=D64)
    res = exp_map(metric, z, v, return_path=True, rtol=1e-9, atol=1e-11)
    assert bool(res.converged.all()) and "all" in res.message
    x0 = stereo(z)
    u = torch.func.jvp(stereo, (z,), (v,))[1]  # image velocity
    nu = u.norm(dim=1, keepdim=True)
    assert float(nu.max()) > 1.5  # long arcs included

    def closed(s):  # x(s) = cos(|u|s) x0 + sin(|u|s) u/|u|
        return torch.cos(nu[:, None] * s[None, :, None]) * x0[:, None] + torch.sin(nu[:, None] * s[None, :, None]) * (u / nu)[:, None]

    s = torch.linspace(0, 1, 9, dtype=D64)
    torch.testing.assert_close(stereo(res.z1), closed(s[-1:])[:, 0], rtol=0, atol=1e-7)
    pts = res.curve(s)
    torch.testing.assert_close(stereo(pts.reshape(-1, 2)).reshape(4, 9, 3), closed(s), rtol=0, atol=1e-7)
    assert res.knot_times.shape == res.knot_points.shape[:2]
    # the velocity at the end has the conserved speed
    sp0 = metric.norm(z, v)
    sp1 = metric.norm(res.z1, res.end_velocity)
    torch.testing.assert_close(sp1, sp0, rtol=1e-7, atol=0)
    assert float(res.speed_drift.max()) < 1e-7  # the result's own check of the conserved speed
    torch.testing.assert_close(res.length, sp0, rtol=1e-12, atol=0)


def test_exp_map_speeds_use_the_fast_jacobian_path(monkeypatch):
    # the end speeds (length, speed drift) of an embedded metric come from one Jacobian pass, not
    # from the transformable tensor_fn (generic vmap(jvp) path: 1.4 s of imports on a first call,
    # ~10 ms a point after); the ridge is included
    for ridge in (0.0, 0.3):
        metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo), ridge=ridge)
        z = torch.tensor([[0.3, -0.2], [1.1, 0.4]], dtype=D64)
        v = torch.tensor([[1.0, 0.5], [-0.4, 0.9]], dtype=D64)
        ref = exp_map(metric, z, v, rtol=1e-9, atol=1e-11)

        def refuse():
            raise AssertionError("exp_map called tensor_fn for an embedded metric")

        monkeypatch.setattr(metric, "tensor_fn", refuse)
        res = exp_map(metric, z, v, rtol=1e-9, atol=1e-11)
        monkeypatch.undo()
        torch.testing.assert_close(res.length, metric.norm(z, v), rtol=1e-12, atol=0)
        torch.testing.assert_close(res.z1, ref.z1, rtol=0, atol=0)
        assert float(res.speed_drift.max()) < 1e-7


def test_exp_map_float32_follows_dtype():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z = torch.tensor([[0.3, -0.2]], dtype=torch.float32)
    v = torch.tensor([[1.0, 0.5]], dtype=torch.float32)
    res = exp_map(metric, z, v, rtol=1e-5, atol=1e-6)
    assert res.z1.dtype == torch.float32 and bool(res.converged.all())
    u = torch.func.jvp(stereo, (z.double(),), (v.double(),))[1]
    nu = u.norm(dim=1, keepdim=True)
    x1 = torch.cos(nu) * stereo(z.double()) + torch.sin(nu) * u / nu
    torch.testing.assert_close(stereo(res.z1.double()), x1, rtol=0, atol=1e-4)


def test_exp_map_reports_failure_when_step_budget_is_exhausted():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    res = exp_map(metric, torch.zeros(2, 2, dtype=D64), torch.ones(2, 2, dtype=D64) * 3, max_steps=3)
    assert not bool(res.converged.any())
    assert "step attempts" in res.message and int(res.status[0]) == int(lg.geodesics.GeodesicStatus.NOT_CONVERGED)


def test_bad_input_raises():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo, latent_dim=2))
    z = torch.zeros(3, 2, dtype=D64)
    with pytest.raises(ValueError, match="same shape"):
        geodesic_acceleration(metric, z, torch.zeros(4, 2, dtype=D64))
    with pytest.raises(ValueError, match="NaN"):
        exp_map(metric, z, torch.full((3, 2), math.nan, dtype=D64))
    with pytest.raises(ValueError, match="latent dimension"):
        exp_map(metric, torch.zeros(3, 3, dtype=D64), torch.zeros(3, 3, dtype=D64))
    with pytest.raises(ValueError, match="t must"):
        exp_map(metric, z, z, t=torch.ones(5, dtype=D64))
    with pytest.raises(ValueError, match="Metric"):
        geodesic_acceleration("not a metric", z, z)
