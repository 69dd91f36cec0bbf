"""Connecting geodesics against closed forms (linear map, sphere, Poincaré ball, variance bump)."""

import math

import pytest
import torch

import latentgeo as lg
from latentgeo.geodesics import Collocation, GeodesicStatus, Shooting, connecting_geodesic, minimize_discrete_energy


D64 = torch.float64


def stereo(z):
    """Inverse stereographic projection R² → S² ⊂ R³ (from the north pole)."""
    s = (z * z).sum(1, keepdim=True)
    return torch.cat([2 * z, s - 1], 1) / (1 + s)


def great_circle(x, y):
    return 2 * torch.asin((x - y).norm(dim=1).clamp(max=2) / 2)


def test_linear_decoder_gives_straight_lines_and_exact_lengths():
    A = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, -1.0], [3.0, -1.0, 0.0], [0.5, 0.5, 2.0]], dtype=D64)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 3, generator=g, dtype=D64)
    z1 = torch.randn(6, 3, generator=g, dtype=D64)
    res = connecting_geodesic(metric, z0, z1)
    assert bool(res.converged.all()), res.message
    exact = ((z1 - z0) @ A.T).norm(dim=1)
    torch.testing.assert_close(res.length, exact, rtol=1e-10, atol=0)
    torch.testing.assert_close(res.energy, exact**2, rtol=1e-10, atol=0)
    t = torch.linspace(0, 1, 7, dtype=D64)
    line = z0[:, None] + t[None, :, None] * (z1 - z0)[:, None]
    torch.testing.assert_close(res.curve(t), line, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.initial_velocity, z1 - z0, rtol=0, atol=1e-10)
    assert "converged=6/6" in repr(res)


def test_sphere_lengths_are_great_circle_distances():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    # random pair, a long arc (> 2.5 rad) and a pair at very different radii (0.11 vs 5)
    z0 = torch.tensor([[0.3, -0.2], [-1.3, 0.25], [0.1, 0.05]], dtype=D64)
    z1 = torch.tensor([[-0.5, 0.6], [1.2, 0.45], [4.0, 3.0]], dtype=D64)
    x0, x1 = stereo(z0), stereo(z1)
    exact = great_circle(x0, x1)
    assert float(exact.max()) > 2.5
    res = connecting_geodesic(metric, z0, z1, n_points=25)
    assert bool(res.converged.all()), res.message
    torch.testing.assert_close(res.length, exact, rtol=1e-6, atol=0)
    # geodesic points lie on the great circle: in the plane spanned by x0, x1, and on the shorter arc
    normal = torch.linalg.cross(x0, x1)
    normal = normal / normal.norm(dim=1, keepdim=True)
    t = torch.linspace(0, 1, 11, dtype=D64)
    pts = stereo(res.curve(t).reshape(-1, 2)).reshape(3, 11, 3)
    assert float((pts * normal[:, None]).sum(-1).abs().max()) < 1e-6
    # constant speed: the angle from x0 grows linearly in t
    ang = torch.acos((pts * x0[:, None]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(ang, t[None] * exact[:, None], rtol=0, atol=1e-5)


@pytest.mark.parametrize("d", [2, 3])
def test_poincare_ball_lengths(d):
    eye = torch.eye(d, dtype=D64)
    ball = lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * eye, latent_dim=d)
    g = torch.Generator().manual_seed(d)
    u = torch.randn(4, d, generator=g, dtype=D64)
    w = torch.randn(4, d, generator=g, dtype=D64)
    z0 = 0.8 * u / u.norm(dim=1, keepdim=True) * torch.tensor([0.2, 0.6, 0.9, 0.95], dtype=D64)[:, None]
    z1 = 0.8 * w / w.norm(dim=1, keepdim=True) * torch.tensor([0.7, 0.1, 0.9, 0.5], dtype=D64)[:, None]
    res = connecting_geodesic(ball, z0, z1)
    assert bool(res.converged.all()), res.message
    n0, n1 = (z0 * z0).sum(1), (z1 * z1).sum(1)
    exact = torch.acosh(1 + 2 * ((z0 - z1) ** 2).sum(1) / ((1 - n0) * (1 - n1)))
    torch.testing.assert_close(res.length, exact, rtol=1e-6, atol=0)


def bump_metric(center=(0.0, 0.0), height=8.0, width=0.3):
    c = torch.tensor(center, dtype=D64)

    def std(z):
        r2 = ((z - c) ** 2).sum(1, keepdim=True)
        return (0.05 + height * torch.exp(-r2 / (2 * width**2))).expand(-1, 2)

    return lg.PullbackMetric(lg.GaussianDecoder(mean=lambda z: z, std=std), kind="expected")


def test_pair_across_huge_variance_bends_around_it():
    metric = bump_metric()
    z0 = torch.tensor([[-1.0, 0.02]], dtype=D64)
    z1 = torch.tensor([[1.0, -0.02]], dtype=D64)
    res = connecting_geodesic(metric, z0, z1, tol=1e-5)
    assert bool(res.converged.all()), res.message
    t = torch.linspace(0, 1, 2001, dtype=D64)
    straight = metric.length(z0[:, None] + t[None, :, None] * (z1 - z0)[:, None])
    assert float(res.length) < 0.8 * float(straight)
    pts = res.curve(torch.linspace(0, 1, 201, dtype=D64))[0]
    assert float(pts.norm(dim=1).min()) > 0.4  # stays away from the bump at the origin
    # the length agrees with a fine polyline through the curve
    fine = metric.length(res.curve(t))
    torch.testing.assert_close(res.length, fine, rtol=1e-5, atol=0)


def _curvy_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)).double()
    for p in net.parameters():
        p.data.mul_(2.0)
        p.requires_grad_(False)
    return net


def test_collocation_and_shooting_agree():
    """Two independent solvers (spectral collocation; discrete energy + Dormand–Prince shooting)."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_curvy_net()))
    z0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0]], dtype=D64)
    z1 = torch.tensor([[1.0, 0.8], [-0.7, -1.0]], dtype=D64)
    rc = connecting_geodesic(metric, z0, z1, solver=Collocation(), tol=1e-8)
    rs = connecting_geodesic(metric, z0, z1, solver=Shooting(n_points=33), tol=1e-8, budget=None)
    assert bool(rc.converged.all()), rc.message
    assert bool(rs.converged.all()), rs.message
    assert rc.method == ["collocation"] * 2 and rs.method == ["shooting"] * 2
    torch.testing.assert_close(rc.length, rs.length, rtol=1e-8, atol=0)
    t = torch.linspace(0, 1, 33, dtype=D64)
    gap = (rc.curve(t) - rs.curve(t)).norm(dim=-1).max()
    bend = (rc.curve(t) - (z0[:, None] + t[None, :, None] * (z1 - z0)[:, None])).norm(dim=-1).max()
    assert float(bend) > 1e-2  # curved geodesics: the comparison is not trivial
    assert float(gap) < 1e-6
    torch.testing.assert_close(rc.initial_velocity, rs.initial_velocity, rtol=0, atol=1e-6)
    assert float(rc.rel_residual.max()) <= 1e-8 and float(rc.speed_drift.max()) <= 1e-8
    # the polyline through the sampled curve converges to the length at O(1/T²)
    disc = metric.length(rc.discrete_curve)
    assert 0 < float(((disc - rc.length) / rc.length).abs().max()) < 1e-3


def test_recheck_integrates_the_collocation_solution():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_curvy_net()))
    z0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0]], dtype=D64)
    z1 = torch.tensor([[1.0, 0.8], [-0.7, -1.0]], dtype=D64)
    res = connecting_geodesic(metric, z0, z1, recheck=True)
    assert bool(res.converged.all()), res.message
    ivp = lg.geodesics.exp_map(metric, z0, res.initial_velocity, rtol=1e-10, atol=1e-12)
    assert float((ivp.z1 - z1).norm(dim=1).max()) < 1e-5


def test_unresolved_collocation_is_reported_and_shooting_takes_over():
    """Four collocation nodes cannot resolve a 160° great-circle arc: ``method="collocation"``
    says so; with ``shooting_fallback=True`` it certifies the pair by shooting instead."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z0 = torch.tensor([[-1.3, 0.25]], dtype=D64)
    z1 = torch.tensor([[1.2, 0.45]], dtype=D64)
    exact = great_circle(stereo(z0), stereo(z1))
    only = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=4, max_nodes=4, piecewise=False))
    assert not bool(only.converged[0]) and only.method == [""]
    assert "collocation" in only.reasons[0]
    auto = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=4, max_nodes=4, piecewise=False,
                                                                  shooting_fallback=True), budget=None)
    assert bool(auto.converged[0]), auto.message
    assert auto.method == ["shooting"]
    torch.testing.assert_close(auto.length, exact, rtol=1e-6, atol=0)
    # refinement (4 -> 8 -> 16 -> 32 nodes) resolves it by collocation alone
    refined = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=4, max_nodes=32), budget=None)
    assert bool(refined.converged[0]) and int(refined.nodes[0]) > 4
    torch.testing.assert_close(refined.length, exact, rtol=1e-6, atol=0)


def test_iteration_budget_reports_non_convergence():
    metric = bump_metric()
    z0 = torch.tensor([[-1.0, 0.02]], dtype=D64)
    z1 = torch.tensor([[1.0, -0.02]], dtype=D64)
    res = connecting_geodesic(metric, z0, z1, solver=Collocation(max_iter=1, energy_max_iter=1, piecewise=False,
                                                                 shooting_fallback=True), budget=None)
    assert not bool(res.converged.any())
    assert res.reasons[0] and "not certified" in res.message
    assert "Newton" in res.reasons[0] and "converged=0/1" in repr(res)
    assert int(res.status[0]) == int(GeodesicStatus.NOT_CONVERGED)
    # the flagged pair reports the shortest curve found (not the uncertified ODE guess), measured
    # densely: an upper bound that is never above the straight line
    t = torch.linspace(0, 1, 2049, dtype=D64)
    dense = metric.length(res.curve(t))
    torch.testing.assert_close(res.length, dense, rtol=1e-4, atol=0)
    line = metric.length(z0[:, None] + t[None, :, None] * (z1 - z0)[:, None])
    assert float(res.length) <= float(line) * (1 + 1e-6)
    torch.testing.assert_close(res.curve(torch.linspace(0, 1, 5, dtype=D64)), res.discrete_curve[:, ::4])
    assert float(res.rel_residual) > 1e-6
    # an impossible tolerance for the integrator's step budget is reported too
    assert res.method == [""]
    res2 = connecting_geodesic(metric, z0, z1, solver=Shooting(max_steps=5), tol=1e-4, budget=None)
    assert not bool(res2.converged.any()) and "step attempts" in res2.reasons[0]


def test_discrete_energy_minimiser_on_linear_map_is_evenly_spaced_line():
    A = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=D64)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    z0, z1 = torch.tensor([[0.0, 0.0]], dtype=D64), torch.tensor([[1.0, 2.0]], dtype=D64)
    t = torch.linspace(0, 1, 9, dtype=D64)
    wiggly = z0[:, None] + t[None, :, None] * (z1 - z0)[:, None] + 0.3 * torch.sin(math.pi * t)[None, :, None]
    er = minimize_discrete_energy(metric, wiggly)
    assert bool(er.converged.all())
    torch.testing.assert_close(er.curve, z0[:, None] + t[None, :, None] * (z1 - z0)[:, None], rtol=0, atol=1e-9)


def test_graph_initialisation():
    graph_mod = pytest.importorskip("latentgeo.geodesics.graph")
    metric = bump_metric(height=20.0)
    g = torch.Generator().manual_seed(0)
    nodes = torch.rand(300, 2, generator=g, dtype=D64) * 3 - 1.5
    graph = graph_mod.LatentGraph(metric, nodes, k=8)
    z0 = torch.tensor([[-1.0, 0.0]], dtype=D64)
    z1 = torch.tensor([[1.0, 0.0]], dtype=D64)
    res = connecting_geodesic(metric, z0, z1, init="graph", graph=graph, tol=1e-4)
    assert bool(res.converged.all()), res.message
    assert res.init == ["graph"]
    t = torch.linspace(0, 1, 2001, dtype=D64)
    straight = metric.length(z0[:, None] + t[None, :, None] * (z1 - z0)[:, None])
    assert float(res.length) < 0.8 * float(straight)
    # with init="line" and a graph, failed pairs are retried from the graph path (and both failures reported)
    res2 = connecting_geodesic(metric, z0, z1, graph=graph, tol=1e-4,
                               solver=Collocation(max_iter=1, energy_max_iter=1, piecewise=False))
    assert not bool(res2.converged.any())
    assert "line init:" in res2.reasons[0] and "graph init" in res2.reasons[0]


def test_bad_input_raises():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo, latent_dim=2))
    z = torch.zeros(3, 2, dtype=D64)
    with pytest.raises(ValueError, match="same shape"):
        connecting_geodesic(metric, z, torch.zeros(2, 2, dtype=D64))
    with pytest.raises(ValueError, match="NaN"):
        connecting_geodesic(metric, z, torch.full((3, 2), math.nan, dtype=D64))
    with pytest.raises(ValueError, match="latent dimension"):
        connecting_geodesic(metric, torch.zeros(3, 3, dtype=D64), torch.ones(3, 3, dtype=D64))
    with pytest.raises(ValueError, match="unknown init"):
        connecting_geodesic(metric, z, z + 1, init="spline")
    with pytest.raises(ValueError, match="needs graph"):
        connecting_geodesic(metric, z, z + 1, init="graph")
    with pytest.raises(ValueError, match="tol"):
        connecting_geodesic(metric, z, z + 1, tol=0.0)
    with pytest.raises(TypeError, match="solver"):
        connecting_geodesic(metric, z, z + 1, solver="magic")
    with pytest.raises(ValueError, match="degree"):
        connecting_geodesic(metric, z, z + 1, solver=Collocation(degree=2))
    with pytest.raises(ValueError, match="max_nodes"):
        connecting_geodesic(metric, z, z + 1, solver=Collocation(nodes=32, max_nodes=16))
    for bad in (0.0, 1.0, True, "1e-8"):
        with pytest.raises(ValueError, match="energy_rtol"):
            Collocation(energy_rtol=bad)
    with pytest.raises(ValueError, match="budget"):
        connecting_geodesic(metric, z, z + 1, budget=0)


def test_float32_follows_dtype_and_matches_float64():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    for p in net.parameters():
        p.requires_grad_(False)
    net64 = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)).double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    z0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0]])
    z1 = torch.tensor([[1.0, 0.8], [-0.7, -1.0]])
    r32 = connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(net)), z0, z1, tol=1e-5)
    r64 = connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(net64)), z0.double(), z1.double())
    assert bool(r32.converged.all()) and bool(r64.converged.all())
    assert r32.length.dtype == torch.float32 and r32.curve(torch.tensor([0.5])).dtype == torch.float32
    torch.testing.assert_close(r32.length.double(), r64.length, rtol=1e-4, atol=0)


class _Stereo(torch.nn.Module):
    """``stereo`` as a module with a (float64) parameter, so its precision is the module's."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=D64), requires_grad=False)

    def forward(self, z):
        return stereo(z * self.scale)


def test_dtype_float32_solves_on_a_float32_copy_and_gives_great_circles():
    """``dtype=torch.float32``: a float64 model is solved on a float32 copy (the model untouched),
    the lengths are great-circle distances to float32/tol accuracy, outputs in the codes' dtype."""
    g = torch.Generator().manual_seed(4)
    z0 = torch.randn(12, 2, generator=g, dtype=D64) * 0.8
    z1 = torch.randn(12, 2, generator=g, dtype=D64) * 0.8
    net = _Stereo()
    metric = lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2))
    seen = []
    hook = net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    try:
        r = connecting_geodesic(metric, z0, z1, tol=1e-4, dtype=torch.float32, budget=None)
    finally:
        hook.remove()
    # every evaluation ran in float32 (on the copy: deepcopy carries the hook), the model is still float64
    assert seen and set(seen) == {torch.float32} and net.scale.dtype == D64
    assert r.length.dtype == D64 and bool(r.converged.all())
    torch.testing.assert_close(r.length, great_circle(stereo(z0), stereo(z1)), rtol=2e-5, atol=1e-6)
    m32, dt = lg.geodesics.working_metric(metric, z0, torch.float32)
    assert dt == torch.float32 and m32 is not metric
    assert lg.geodesics.working_metric(metric, z0)[0] is metric  # (already float64: no copy)


@pytest.mark.parametrize("bad, match", [(dict(dtype=torch.float32, tol=1e-6), "needs tol >= 0.0001"),
                                        (dict(dtype=torch.float16), "torch.float64 or torch.float32"),
                                        (dict(dtype="double"), "torch.float64 or torch.float32")])
def test_dtype_option_rejects_what_it_cannot_do(bad, match):
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo, latent_dim=2))
    with pytest.raises(ValueError, match=match):
        connecting_geodesic(metric, torch.zeros(1, 2, dtype=D64), torch.ones(1, 2, dtype=D64), **bad)


def test_non_minimising_geodesic_is_flagged_not_reported_as_distance():
    """Initialised the long way round the equator, the solver finds the 270° great-circle arc: a
    geodesic, but longer than the straight line, so it must not be reported as converged."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))

    class LongWay:  # duck-typed graph: initial curves along the unit circle, clockwise
        def initial_curves(self, z0, z1, n_points):
            t = torch.linspace(0, -1.5 * math.pi, n_points, dtype=torch.float64)
            return torch.stack([torch.cos(t), torch.sin(t)], 1)[None].expand(z0.shape[0], -1, -1)

    z0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    long_way = lg.connecting_geodesic(metric, z0, z1, init="graph", graph=LongWay(), solver=Shooting(), budget=None)
    assert not bool(long_way.converged[0])
    assert "not the shortest path" in long_way.reasons[0]
    # the spectral stage minimises the energy (Levenberg–Marquardt): from the same start it leaves
    # the 270° arc (a saddle of the energy) for the short one
    escaped = lg.connecting_geodesic(metric, z0, z1, init="graph", graph=LongWay())
    assert bool(escaped.converged[0]), escaped.message
    assert abs(escaped.length[0].item() - math.pi / 2) < 1e-6
    short_way = lg.connecting_geodesic(metric, z0, z1)
    assert bool(short_way.converged[0])
    assert abs(short_way.length[0].item() - math.pi / 2) < 1e-6


@pytest.fixture(autouse=True)
def _closed_forms_without_time_budget(no_default_budget):
    """See tests/conftest.py: these tests check results, the budget has tests of its own."""


def test_bulged_starts_leave_a_symmetric_saddle_for_the_shorter_way_round():
    """A tall narrow bump centred on the straight line: by symmetry the line over its top is a
    geodesic, and energy minimisation from the line stays on it. The bulged starts
    (``Collocation(starts=3)``, the default) go round the bump and certify the shorter geodesic."""
    def bump(z):
        return torch.cat([z, 3.0 * torch.exp(-(z * z).sum(-1, keepdim=True) / 0.05)], -1)

    metric = lg.PullbackMetric(lg.DeterministicDecoder(bump, latent_dim=2))
    z0 = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    over = connecting_geodesic(metric, z0, z1, solver=Collocation(starts=1), budget=None)
    around = connecting_geodesic(metric, z0, z1, budget=None)
    assert bool(around.converged.all()), around.reasons
    assert float(over.length[0]) > 7.0  # 2 + twice the height, roughly
    assert float(around.length[0]) < 0.5 * float(over.length[0])
    mid = around.curve(torch.tensor([0.5], dtype=torch.float64))[0, 0]
    assert abs(float(mid[1])) > 0.2  # it went round, not over
    with pytest.raises(ValueError, match="starts"):
        Collocation(starts=2)


def test_warm_start_from_nearby_solved_pairs_collocates_directly():
    """``init=`` a result of *nearby* pairs: its curves are moved to the new endpoints and the
    collocation-certified ones are solved by Newton at their resolution, without the energy stage
    (cheaper), and the lengths are still great-circle distances."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(8, 2, generator=g, dtype=D64) * 0.5  # (arcs below ~150°)
    z1 = torch.randn(8, 2, generator=g, dtype=D64) * 0.5
    cold = connecting_geodesic(metric, z0, z1)
    assert bool(cold.converged.all()), cold.message
    a = z0 + 0.03 * torch.randn(8, 2, generator=g, dtype=D64)
    b = z1 + 0.03 * torch.randn(8, 2, generator=g, dtype=D64)
    warm = connecting_geodesic(metric, a, b, init=cold)
    assert bool(warm.converged.all()), warm.message
    torch.testing.assert_close(warm.length, great_circle(stereo(a), stereo(b)), rtol=1e-6, atol=0)
    assert int(warm.stats["energy_iterations"].sum()) == 0  # no pair went through the energy stage
    fresh = connecting_geodesic(metric, a, b)
    assert float(warm.stats["evaluations"].sum()) < 0.5 * float(fresh.stats["evaluations"].sum())
    # a result for another number of pairs, or another latent dimension, is refused
    with pytest.raises(ValueError, match="GeodesicResult for 8 pairs"):
        connecting_geodesic(metric, a[:3], b[:3], init=cold)


def test_warm_start_that_fails_falls_back_to_the_full_pipeline():
    """A warm curve far from the new pair (endpoints moved a long way) may not converge directly;
    those pairs go through the energy stage and are still certified, and say nothing false."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z0 = torch.tensor([[0.3, -0.2], [-0.4, 0.1]], dtype=D64)
    z1 = torch.tensor([[-0.5, 0.6], [0.6, 0.3]], dtype=D64)
    cold = connecting_geodesic(metric, z0, z1)
    a = torch.tensor([[0.9, 0.8], [-0.4, 0.1]], dtype=D64)  # pair 0 reversed and moved far; pair 1 barely
    b = torch.tensor([[-0.7, -0.9], [0.62, 0.31]], dtype=D64)
    warm = connecting_geodesic(metric, a, b, init=cold)
    assert bool(warm.converged.all()), warm.message
    torch.testing.assert_close(warm.length, great_circle(stereo(a), stereo(b)), rtol=1e-6, atol=0)
    e = warm.stats["energy_iterations"]
    assert int(e[0]) > 0 and int(e[1]) == 0  # pair 0 went through the full pipeline, pair 1 directly


def test_warm_fallback_keep_leaves_uncarried_pairs_unsolved_with_their_moved_curve():
    """``Collocation(warm_fallback="keep")``: a pair whose warm curve is certified is solved directly;
    a pair without one is not solved at all (no evaluations), is reported uncertified with that
    reason, and its length is the dense length of its moved curve (or of the line, if shorter): an
    upper bound of the great-circle distance."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z0 = torch.tensor([[0.3, -0.2], [-0.4, 0.1]], dtype=D64)
    z1 = torch.tensor([[-0.5, 0.6], [0.6, 0.3]], dtype=D64)
    cold = connecting_geodesic(metric, z0, z1)
    assert bool(cold.converged.all()), cold.message
    cold.status[0] = int(lg.geodesics.GeodesicStatus.NOT_CONVERGED)  # pair 0 carries no certified curve
    a = z0 + torch.tensor([[0.02, -0.01], [0.01, 0.01]], dtype=D64)
    b = z1 + torch.tensor([[-0.01, 0.02], [0.01, -0.02]], dtype=D64)
    keep = connecting_geodesic(metric, a, b, init=cold, solver=Collocation(warm_fallback="keep"))
    solve = connecting_geodesic(metric, a, b, init=cold)
    exact = great_circle(stereo(a), stereo(b))
    assert bool(solve.converged.all()) and bool(keep.converged[1]) and not bool(keep.converged[0])
    torch.testing.assert_close(keep.length[1], exact[1], rtol=1e-6, atol=0)
    assert "warm_fallback='keep'" in keep.reasons[0]
    assert int(keep.stats["evaluations"][0]) == 0 and int(keep.stats["energy_iterations"][0]) == 0
    assert int(solve.stats["energy_iterations"][0]) > 0  # the default solves it through the pipeline
    t = torch.linspace(0, 1, 4001, dtype=D64)
    moved = cold.curve(t)[0] + (1 - t)[:, None] * (a[0] - z0[0]) + t[:, None] * (b[0] - z1[0])
    line = a[0] + t[:, None] * (b[0] - a[0])
    ref = torch.minimum(metric.length(moved[None])[0], metric.length(line[None])[0])
    torch.testing.assert_close(keep.length[0], ref, rtol=1e-5, atol=0)
    assert float(keep.length[0]) >= float(exact[0]) * (1 - 1e-9)
    with pytest.raises(ValueError, match="warm_fallback"):
        Collocation(warm_fallback="line")
    with pytest.raises(TypeError, match="keep_jacobians must be a bool"):
        Collocation(keep_jacobians="yes")
