"""Connecting geodesics on metrics like those of trained VAEs (issue 9): a sharp RBF-variance
ring, the time budget, plain-function decoders, float32 models and warm starts."""

import time

import numpy as np
import pytest
import torch

import latentgeo as lg
from latentgeo.geodesics import Collocation, GeodesicStatus, acceleration_fn, connecting_geodesic

D64 = torch.float64
A = torch.tensor([[1.0, 0.3], [-0.4, 1.2], [0.7, -0.5]], dtype=D64)
CENTRE = torch.tensor([0.0, 0.15], dtype=D64)


def _mean(z):
    return torch.tanh(z @ A.T)


def _std(z):
    # σ ≈ 0.1 away from a disc of radius 0.35 around CENTRE, rising to ~10 inside it over a width
    # of ~0.05: the sharp jump of an RBF variance at the edge of the data
    r = (z - CENTRE).norm(dim=-1, keepdim=True)
    return (0.1 + 10.0 * torch.sigmoid((0.35 - r) / 0.05)).expand(*z.shape[:-1], 3)


class Mean(torch.nn.Module):
    def forward(self, z):
        return _mean(z)


class Std(torch.nn.Module):
    def forward(self, z):
        return _std(z)


def ring_metric(plain=False):
    if plain:
        return lg.PullbackMetric(lg.GaussianDecoder(mean=lambda z: _mean(z), std=lambda z: _std(z), latent_dim=2))
    return lg.PullbackMetric(lg.GaussianDecoder(mean=Mean(), std=Std(), latent_dim=2))


Z0 = torch.tensor([[-1.0, 0.0], [-0.8, 0.5]], dtype=D64)
Z1 = torch.tensor([[1.0, 0.1], [0.9, -0.3]], dtype=D64)


def _scipy_length(metric, res, k):
    """Independent reference: scipy's solve_bvp (4th-order collocation, its own mesh refinement)
    on γ'' = a(γ, γ') with the generic autodiff acceleration, started from the sampled curve;
    length by 4001-point trapezoid quadrature of √(γ'ᵀ M γ')."""
    from scipy.integrate import solve_bvp

    acc = acceleration_fn(metric)
    mfn = metric.tensor_fn()
    t = np.linspace(0, 1, 129)
    with torch.no_grad():
        c = res.curve(torch.as_tensor(t))[k].numpy()
    v = np.gradient(c, t, axis=0)

    def f(tt, y):
        z = torch.as_tensor(y[:2].T.copy())
        vv = torch.as_tensor(y[2:].T.copy())
        with torch.no_grad():
            a = acc(z, vv).numpy()
        return np.vstack([y[2:], a.T])

    z0, z1 = res.z0[k].numpy(), res.z1[k].numpy()
    sol = solve_bvp(f, lambda ya, yb: np.concatenate([ya[:2] - z0, yb[:2] - z1]), t, np.vstack([c.T, v.T]),
                    tol=1e-9, max_nodes=20000)
    assert sol.status == 0, sol.message
    tt = np.linspace(0, 1, 4001)
    y = sol.sol(tt)
    z = torch.as_tensor(y[:2].T.copy())
    vv = torch.as_tensor(y[2:].T.copy())
    with torch.no_grad():
        sp = torch.einsum("ni,nij,nj->n", vv, mfn(z), vv).sqrt().numpy()
    return float(np.trapezoid(sp, tt) if hasattr(np, "trapezoid") else np.trapz(sp, tt))


def test_sharp_variance_ring_needs_refinement_and_matches_scipy():
    metric = ring_metric()
    res = connecting_geodesic(metric, Z0, Z1, budget=None)
    assert bool(res.converged.all()), res.message
    # the first resolution (32 nodes) cannot follow the curve around the ring: refined
    assert int(res.nodes.min()) > Collocation().nodes
    t = torch.linspace(0, 1, 4001, dtype=D64)
    line = metric.length(Z0[:, None] + t[None, :, None] * (Z1 - Z0)[:, None])
    assert bool((res.length < 0.9 * line).all())  # the geodesic goes round the high-σ disc
    for k in range(2):
        ref = _scipy_length(metric, res, k)
        assert abs(float(res.length[k]) - ref) / ref < 1e-5, (float(res.length[k]), ref)


def test_plain_function_decoder_agrees_with_module_twin():
    mod = connecting_geodesic(ring_metric(), Z0, Z1, budget=None)
    fun = connecting_geodesic(ring_metric(plain=True), Z0, Z1, budget=None)
    assert bool(mod.converged.all()) and bool(fun.converged.all()), (mod.message, fun.message)
    torch.testing.assert_close(fun.length, mod.length, rtol=1e-7, atol=0)
    tt = torch.linspace(0, 1, 33, dtype=D64)
    torch.testing.assert_close(fun.curve(tt), mod.curve(tt), rtol=0, atol=1e-5)


def test_budget_stops_a_hard_pair_with_its_status():
    metric = ring_metric()
    t0 = time.perf_counter()
    res = connecting_geodesic(metric, Z0[:1], Z1[:1], budget=1e-3)
    elapsed = time.perf_counter() - t0
    assert int(res.status[0]) == int(GeodesicStatus.BUDGET), res.message
    assert not bool(res.converged[0]) and "budget" in res.reasons[0]
    assert "BUDGET" in res.message and "BUDGET" in repr(res)
    assert elapsed < 5.0  # the unbounded solve above takes far longer than 1 ms; this one stops
    # its number is honest: the shortest curve found, never longer than the straight line
    t = torch.linspace(0, 1, 2049, dtype=D64)
    line = metric.length(Z0[:1, None] + t[None, :, None] * (Z1[:1] - Z0[:1])[:, None])
    assert float(res.length[0]) <= float(line[0]) * (1 + 1e-6)
    assert float(res.stats["wall_time"][0]) > 0


def test_float32_model_is_solved_in_float64():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    net64 = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    z0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0]])
    z1 = torch.tensor([[1.0, 0.8], [-0.7, -1.0]])
    r32 = connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(net)), z0, z1, tol=1e-8)
    r64 = connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(net64)), z0.double(), z1.double(), tol=1e-8)
    # tol 1e-8 is far out of float32's reach: certified only because the solve ran in float64
    assert bool(r32.converged.all()), r32.message
    assert r32.length.dtype == torch.float32 and next(net.parameters()).dtype == torch.float32
    torch.testing.assert_close(r32.length.double(), r64.length, rtol=1e-6, atol=0)


def test_warm_start_from_a_previous_result():
    metric = ring_metric()
    cold = connecting_geodesic(metric, Z0, Z1, budget=None)
    warm = connecting_geodesic(metric, Z0, Z1, init=cold, budget=None)
    assert bool(warm.converged.all()) and warm.init == ["warm", "warm"]
    torch.testing.assert_close(warm.length, cold.length, rtol=1e-6, atol=0)
    assert int(warm.stats["evaluations"].sum()) < int(cold.stats["evaluations"].sum())
    with pytest.raises(ValueError, match="start at z0"):
        connecting_geodesic(metric, Z0, Z1, init=cold.curve(torch.linspace(0, 1, 5, dtype=D64)).flip(1))


def test_graph_path_competes_with_a_certified_geodesic():
    """A certified geodesic from the straight line that is longer than the graph path is re-solved
    from the graph; the shorter certified one is reported."""
    graph_mod = pytest.importorskip("latentgeo.geodesics.graph")
    metric = ring_metric()
    g = torch.Generator().manual_seed(0)
    nodes = torch.rand(400, 2, generator=g, dtype=D64) * 2.4 - 1.2
    graph = graph_mod.LatentGraph(metric, nodes, k=10)
    res = connecting_geodesic(metric, Z0, Z1, graph=graph, budget=None)
    assert bool(res.converged.all()), res.message
    gl = graph.shortest_paths(Z0, Z1).lengths
    assert bool((res.length <= torch.as_tensor(gl, dtype=D64) * (1 + 1e-3)).all())


def test_uncertified_pair_reports_the_graph_path_when_it_is_shorter():
    """A solver too weak to certify anything still reports an honest upper bound: the shortest of its
    best curve, the straight line and the graph path; the returned curve has that length."""
    graph_mod = pytest.importorskip("latentgeo.geodesics.graph")
    metric = ring_metric()
    g = torch.Generator().manual_seed(0)
    nodes = torch.rand(400, 2, generator=g, dtype=D64) * 2.4 - 1.2
    graph = graph_mod.LatentGraph(metric, nodes, k=10)
    weak = Collocation(nodes=4, max_nodes=4, degree=4, max_iter=1, energy_max_iter=0, piecewise=False)
    res = connecting_geodesic(metric, Z0, Z1, graph=graph, solver=weak, budget=None, n_points=65)
    assert not bool(res.converged.any())
    gl = torch.as_tensor(graph.shortest_paths(Z0, Z1).lengths, dtype=D64)
    assert bool((res.length <= gl * (1 + 1e-2)).all())  # the 65-point resampled path, measured densely
    assert bool((res.length <= res.line_length * (1 + 1e-12)).all())
    t = torch.linspace(0, 1, 2049, dtype=D64)
    dense = metric.length(res.curve(t))
    torch.testing.assert_close(dense, res.length, rtol=2e-3, atol=0)


def test_only_the_shortest_start_goes_on_after_the_pick(monkeypatch):
    """The energy stage chooses the shortest of its three starts after ``_PICK_AT`` iterations and
    continues only that one: on the RBF ring (pairs across it and random pairs) the certified
    lengths are those of choosing after all 100 iterations, for fewer energy iterations and
    evaluations."""
    import latentgeo.geodesics.connecting as C

    metric = ring_metric()
    g = torch.Generator().manual_seed(0)
    z0 = torch.cat([Z0, torch.randn(6, 2, generator=g, dtype=D64)])
    z1 = torch.cat([Z1, torch.randn(6, 2, generator=g, dtype=D64)])
    assert C._PICK_AT == 20
    early = lg.connecting_geodesic(metric, z0, z1, budget=None)
    monkeypatch.setattr(C, "_PICK_AT", 100)
    late = lg.connecting_geodesic(metric, z0, z1, budget=None)
    assert bool(early.converged.all()) and bool(late.converged.all()), (early.message, late.message)
    torch.testing.assert_close(early.length, late.length, rtol=1e-10, atol=0)
    ie, il = early.stats["energy_iterations"], late.stats["energy_iterations"]
    assert bool((ie <= il).all()) and int((ie < il).sum()) >= 4, (ie, il)
    # (a pair whose starts took ≤ 20 iterations in all settled before the pick: nothing changes)
    assert bool((ie[il <= 20] == il[il <= 20]).all()) and bool((il <= 20).any())
    assert int(early.stats["evaluations"].sum()) < int(late.stats["evaluations"].sum())
