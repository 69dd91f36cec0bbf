"""Log map, exp∘log, and distance matrices."""

import math

import pytest
import torch

import latentgeo as lg
from latentgeo.geodesics import (

    Collocation,
    GeodesicConvergenceError,
    distance_matrix,
    exp_map,
    log_map,
)

D64 = torch.float64


def curved_metric(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)).double()
    for p in net.parameters():
        p.data.mul_(2.0)
        p.requires_grad_(False)
    return lg.PullbackMetric(lg.DeterministicDecoder(net))


def poincare():
    eye = torch.eye(2, dtype=D64)
    return lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * eye, latent_dim=2)


def hyperbolic_distance(a, b):
    na, nb = (a * a).sum(-1), (b * b).sum(-1)
    return torch.acosh(1 + 2 * ((a - b) ** 2).sum(-1) / ((1 - na) * (1 - nb)))


def test_exp_of_log_returns_the_endpoint():
    metric = curved_metric()
    z0 = torch.tensor([[-1.0, -0.5], [0.2, -0.3]], dtype=D64)
    z1 = torch.tensor([[1.0, 0.8], [0.25, -0.1]], dtype=D64)
    v, geo = log_map(metric, z0, z1, return_result=True)
    assert bool(geo.converged.all()), geo.message
    res = exp_map(metric, z0, v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(res.z1, z1, rtol=0, atol=1e-6)
    # ‖v‖ is the geodesic distance (speed conserved to the end), and the straight line is not a geodesic here
    # (the speed at t = 0 equals the quadrature length to within the certified speed drift, ≤ tol = 1e-6)
    torch.testing.assert_close(metric.norm(z0, v), geo.length, rtol=1e-6, atol=0)
    torch.testing.assert_close(metric.norm(res.z1, res.end_velocity), geo.length, rtol=1e-6, atol=0)
    assert float((v - (z1 - z0)).norm(dim=1).max()) > 1e-2


def test_log_map_poincare_closed_form():
    # at the origin of the Poincaré disk, Log_0(y) = artanh(|y|) · y/|y|  (metric 4I at 0: |v|_M = 2|v| = d)
    ball = poincare()
    y = torch.tensor([[0.5, 0.0], [-0.3, 0.6], [0.0, -0.9]], dtype=D64)
    v = log_map(ball, torch.zeros_like(y), y)
    r = y.norm(dim=1, keepdim=True)
    torch.testing.assert_close(v, torch.atanh(r) * y / r, rtol=1e-6, atol=0)


def test_log_map_single_code_and_failure():
    metric = poincare()
    a, b = torch.tensor([-0.5, 0.3], dtype=D64), torch.tensor([0.6, 0.2], dtype=D64)
    v = log_map(metric, a, b)
    assert v.shape == (2,)
    torch.testing.assert_close(metric.norm(a[None], v[None])[0], hyperbolic_distance(a, b), rtol=1e-6, atol=0)
    one = Collocation(max_iter=1, energy_max_iter=1, piecewise=False)
    with pytest.raises(GeodesicConvergenceError, match="not certified") as info:
        log_map(metric, a[None], b[None], solver=one)
    assert not bool(info.value.result.converged.any())
    v2, res = log_map(metric, a[None], b[None], solver=one, on_failure="ignore", return_result=True)
    assert not bool(res.converged.any()) and v2.shape == (1, 2)
    with pytest.warns(RuntimeWarning, match="not certified"):
        log_map(metric, a[None], b[None], solver=one, on_failure="warn")
    with pytest.raises(ValueError, match="on_failure"):
        log_map(metric, torch.zeros(1, 2, dtype=D64), torch.ones(1, 2, dtype=D64), on_failure="return")


def test_distance_matrix_poincare():
    ball = poincare()
    A = torch.tensor([[0.1, 0.2], [-0.5, 0.3], [0.4, -0.6]], dtype=D64)
    B = torch.tensor([[0.3, 0.3], [-0.2, -0.7]], dtype=D64)
    D = distance_matrix(ball, A)
    exact = hyperbolic_distance(A[:, None], A[None])
    assert D.shape == (3, 3) and D.n_failed == 0
    torch.testing.assert_close(D.distances, exact, rtol=1e-6, atol=1e-12)
    assert torch.equal(D.distances, D.distances.T) and bool((torch.diagonal(D.distances) == 0).all())
    DB = distance_matrix(ball, A, B, chunk_size=3)
    torch.testing.assert_close(DB.distances, hyperbolic_distance(A[:, None], B[None]), rtol=1e-6, atol=0)
    assert bool(DB.converged.all())
    import numpy as np

    assert np.asarray(DB).shape == (3, 2)


def test_distance_matrix_flags_failures():
    metric = poincare()
    A = torch.tensor([[-0.5, 0.3], [0.6, 0.2], [0.1, -0.7]], dtype=D64)
    one = Collocation(max_iter=1, energy_max_iter=1, piecewise=False)
    with pytest.warns(RuntimeWarning, match="not certified") as rec:
        D = distance_matrix(metric, A, solver=one)
    assert D.n_failed > 0
    # the warning's count, .n_failed and the status of the solved pairs agree
    assert f"{D.n_failed} of 3 geodesics" in str(rec[0].message)
    iu = torch.triu_indices(3, 3, 1)
    assert int((D.status[iu[0], iu[1]] != 0).sum()) == D.n_failed
    # failed entries are upper bounds never above the straight line's length
    t = torch.linspace(0, 1, 2049, dtype=D64)
    lines = A[iu[0], None] + t[None, :, None] * (A[iu[1]] - A[iu[0]])[:, None]
    assert bool((D.distances[iu[0], iu[1]] <= metric.length(lines) * (1 + 1e-6)).all())
    assert bool((D.distances[iu[0], iu[1]] >= hyperbolic_distance(A[iu[0]], A[iu[1]]) * (1 - 1e-6)).all())
    assert bool(torch.diagonal(D.converged).all())
    assert torch.equal(D.converged, D.converged.T)
    assert torch.isfinite(D.distances).all()
    with pytest.raises(GeodesicConvergenceError):
        distance_matrix(metric, A, solver=one, on_failure="raise")


def test_distance_matrix_bad_input():
    ball = poincare()
    with pytest.raises(ValueError, match="latent dimension"):
        distance_matrix(ball, torch.zeros(3, 2, dtype=D64), torch.zeros(3, 3, dtype=D64))
    with pytest.raises(ValueError, match="NaN"):
        distance_matrix(ball, torch.tensor([[0.0, math.nan]], dtype=D64))
    with pytest.raises(ValueError, match="chunk_size"):
        distance_matrix(ball, torch.zeros(3, 2, dtype=D64), chunk_size=0)


@pytest.fixture(autouse=True)
def _closed_forms_without_time_budget(no_default_budget):
    """See tests/conftest.py: these tests check results, the budget has tests of its own."""
