"""Piecewise Gauss collocation on adaptive meshes (:mod:`latentgeo.geodesics.piecewise`): closed
forms on the sphere, an independent reference on a sharp RBF-variance ring, the mesh it adapts,
the time budget and the options."""

import math
import time

import pytest
import torch

import latentgeo as lg
from latentgeo.geodesics import Collocation, connecting_geodesic
from latentgeo.geodesics.piecewise import collocate_piecewise, path_series
from latentgeo.geodesics.spectral import _line_series, lgl_nodes, nodes_to_series

from test_geodesics_trained import Z0, Z1, _scipy_length, ring_metric

D64 = torch.float64


def stereo(z):
    s = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z, s - 1], -1) / (1 + s)


def _angle(a, b):
    return torch.arccos((stereo(a) * stereo(b)).sum(-1).clamp(-1, 1))


def test_great_circles_closed_form():
    """From straight lines, on 16 segments: lengths are the great-circle angles (or 2π minus them,
    the other arc: both are geodesics), the curves lie in the great circles' planes."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(12, 2, generator=g, dtype=D64)
    z1 = torch.randn(12, 2, generator=g, dtype=D64)
    r = collocate_piecewise(metric, z0, z1, _line_series(z0, z1, 2), tol=1e-8)
    assert bool(r.converged.all()), r.reasons
    ang = _angle(z0, z1)
    err = torch.minimum((r.length / ang - 1).abs(), (r.length / (2 * math.pi - ang) - 1).abs())
    assert float(err.max()) < 1e-10
    from latentgeo.geodesics.ivp import hermite5

    X = stereo(hermite5(*r.knots, torch.linspace(0, 1, 41, dtype=D64)))
    nrm = torch.cross(stereo(z0), stereo(z1), dim=-1)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    assert float((X * nrm[:, None]).sum(-1).abs().max()) < 1e-8
    # the knots are in metric arclength: points at equal times are equally spaced on the sphere
    d = torch.arccos((X[:, 1:] * X[:, :-1]).sum(-1).clamp(-1, 1))
    assert float((d / (r.length[:, None] / 40) - 1).abs().max()) < 1e-6


def test_pipeline_resolves_a_long_arc_the_global_polynomial_cannot():
    """Four global collocation nodes cannot resolve a 160° arc (test_connecting); the piecewise
    stage certifies it with the exact length, initial velocity and curve."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z0 = torch.tensor([[-1.3, 0.25]], dtype=D64)
    z1 = torch.tensor([[1.2, 0.45]], dtype=D64)
    res = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=4, max_nodes=4), budget=None, recheck=True)
    assert bool(res.converged[0]), res.message
    assert res.method == ["piecewise collocation"]
    torch.testing.assert_close(res.length, _angle(z0, z1), rtol=1e-8, atol=0)
    ivp = lg.geodesics.exp_map(metric, z0, res.initial_velocity, rtol=1e-11, atol=1e-13)
    assert float((ivp.z1 - z1).norm()) < 1e-6
    c = stereo(res.curve(torch.linspace(0, 1, 33, dtype=D64))[0])
    nrm = torch.cross(stereo(z0), stereo(z1), dim=-1)[0]
    assert float((c @ nrm).abs().max()) < 1e-8 * float(nrm.norm())
    # a solver without the stage says it could not
    off = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=4, max_nodes=4, piecewise=False), budget=None)
    assert not bool(off.converged[0])


def test_sharp_ring_agrees_with_scipy_and_refines_where_the_ring_is():
    """On the RBF ring (σ from 0.1 to 10 over a width of 0.05) eight global nodes fail; the piecewise
    stage certifies both pairs with lengths that agree with scipy's solve_bvp (its own mesh
    refinement) and a mesh that is finer at the ring than away from it."""
    metric = ring_metric()
    weak = Collocation(nodes=8, max_nodes=8, degree=8)
    res = connecting_geodesic(metric, Z0, Z1, solver=weak, budget=None, tol=1e-6)
    assert bool(res.converged.all()), res.message
    assert res.method == ["piecewise collocation"] * 2
    for k in range(2):
        ref = _scipy_length(metric, res, k)
        assert abs(float(res.length[k]) / ref - 1) < 1e-5
    # the reported curve has the reported length (dense chord sum of the Hermite dense output)
    t = torch.linspace(0, 1, 4097, dtype=D64)
    torch.testing.assert_close(metric.length(res.curve(t)), res.length, rtol=1e-5, atol=0)
    assert bool((res.stats["nodes"] > 16 * 4).all())  # (segments × stages: the first mesh was refined)
    # from the straight line (through the disc) the second pair converges to another geodesic, 13x
    # longer: a critical point of the energy, not a shortest path (the pipeline only reports a
    # piecewise solution no longer than the best curve and the line)
    line = collocate_piecewise(metric, Z0[1:], Z1[1:], _line_series(Z0[1:], Z1[1:], 2), tol=1e-6)
    assert bool(line.converged[0]) and float(line.length[0]) > 5 * float(res.length[1])
    tl = torch.linspace(0, 1, 4097, dtype=D64)
    assert float(res.length[1]) <= float(metric.length(Z0[1:, None] + tl[None, :, None] * (Z1 - Z0)[1:, None])[0])
    # started from the reported curves, the stage finds them again on meshes refined at the ring
    start = nodes_to_series(res.curve(lgl_nodes(32, D64)))
    pr = collocate_piecewise(metric, Z0, Z1, start, tol=1e-6)
    assert bool(pr.converged.all()) and bool((pr.segments > 16).all())
    torch.testing.assert_close(pr.length, res.length, rtol=1e-7, atol=0)
    # the mesh adapted: the curve runs at constant Euclidean speed in the mesh's parameter, so the
    # Euclidean steps between mesh points (every stages + 2 = 6th knot) are the segment durations
    # up to a factor; a uniform refinement would make them all equal
    for k in range(2):
        S = int(pr.segments[k])
        m = pr.knots[1][k, ::6][: S + 1]
        step = (m[1:] - m[:-1]).norm(dim=-1)
        assert float(step.max()) > 3 * float(step.min())


def test_refinement_stops_after_newton_fails_on_two_meshes_in_a_row():
    """One Newton iteration a mesh cannot solve the ring pairs from the straight line: the first
    mesh is refined once, and when Newton fails there too the pair stops with that reason instead
    of climbing to ``max_segments``."""
    metric = ring_metric()
    r = collocate_piecewise(metric, Z0, Z1, _line_series(Z0, Z1, 2), tol=1e-6, max_iter=1, max_segments=256)
    assert not bool(r.converged.any())
    for k in range(2):
        assert "previous mesh either" in r.reasons[k], r.reasons[k]
        assert 16 < int(r.segments[k]) < 256


def test_rejected_newton_steps_shrink_to_the_parabola_minimiser():
    """Along a Newton direction ``‖F(t)‖² = f0 (1 − t)² + c t²`` (slope ``−2 f0`` at 0): the
    parabola through ``f0`` and the rejected ``f(L)`` is exact, so the next length is its
    minimiser ``f0 / (f0 + c)``, within ``[0.1, 0.5]·L``; a non-finite trial halves the step."""
    from latentgeo.geodesics.piecewise import _shorter_step

    f0 = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=D64)
    c = torch.tensor([3.0, 0.5, 100.0, 6.0], dtype=D64)
    L = torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=D64)
    fl = f0 * (1 - L) ** 2 + c * L**2
    got = _shorter_step(f0, fl, L)
    exact = f0 / (f0 + c)
    torch.testing.assert_close(got, torch.minimum(torch.maximum(exact, 0.1 * L), 0.5 * L), rtol=1e-12, atol=0)
    assert abs(float(got[0]) - 0.25) < 1e-12  # (inside the bounds: the exact minimiser)
    assert float(got[1]) == 0.5 and float(got[2]) == 0.1  # (clamped above and below)
    nan = _shorter_step(f0[:1], torch.tensor([float("nan")], dtype=D64), L[:1])
    assert float(nan[0]) == 0.5


def test_first_pass_resolution_hands_unresolved_pairs_to_the_piecewise_stage():
    """A 100° arc needs 12 global nodes: the default first pass (up to max_nodes // 2 = 16) certifies
    it by collocation; ``first_max_nodes=8`` stops the first pass at 8 nodes and the piecewise
    stage certifies the same great circle. Out-of-range values are rejected."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z0 = torch.tensor([[-0.8, 0.1]], dtype=D64)
    z1 = torch.tensor([[0.9, 0.3]], dtype=D64)
    wide = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=8, max_nodes=32), budget=None)
    one = connecting_geodesic(metric, z0, z1, solver=Collocation(nodes=8, max_nodes=32, first_max_nodes=8), budget=None)
    assert wide.method == ["collocation"] and int(wide.stats["nodes"][0]) > 8
    assert one.method == ["piecewise collocation"]
    torch.testing.assert_close(one.length, _angle(z0, z1), rtol=1e-10, atol=0)
    torch.testing.assert_close(wide.length, _angle(z0, z1), rtol=1e-10, atol=0)
    for bad in (4, 64):
        with pytest.raises(ValueError, match="first_max_nodes"):
            Collocation(nodes=8, max_nodes=32, first_max_nodes=bad)
    with pytest.raises(TypeError):
        Collocation(first_max_nodes=16.5)


def test_warm_start_from_piecewise_solutions():
    """A warm start (``init=`` a result) re-solves the pairs its result certified by piecewise
    collocation from their moved paths (:func:`path_series`), without the global stages: the same
    certified lengths as a cold solve of the moved pairs, at less cost; and the path series of a
    curve is that path."""
    metric = ring_metric()
    weak = Collocation(nodes=8, max_nodes=8, degree=8)
    res = connecting_geodesic(metric, Z0, Z1, solver=weak, budget=None, tol=1e-6)
    assert res.method == ["piecewise collocation"] * 2
    m0, m1 = Z0 + 0.02, Z1 - 0.015
    cold = connecting_geodesic(metric, m0, m1, solver=weak, budget=None, tol=1e-6)
    warm = connecting_geodesic(metric, m0, m1, solver=weak, budget=None, tol=1e-6, init=res)
    assert bool(cold.converged.all()) and bool(warm.converged.all()), warm.message
    assert warm.method == ["piecewise collocation"] * 2
    torch.testing.assert_close(warm.length, cold.length, rtol=1e-7, atol=0)
    assert bool((warm.stats["energy_iterations"] == 0).all())  # (no global stage ran)
    assert bool((warm.stats["evaluations"] < cold.stats["evaluations"]).all())
    assert bool((warm.stats["iterations"] < cold.stats["iterations"]).all())
    # the fitted path passes through the curve's points (in another parametrisation)
    t = torch.linspace(0, 1, 513, dtype=D64)
    pts = res.curve(t)
    ser = path_series(pts)
    from latentgeo.geodesics.spectral import _eval_series

    fit = _eval_series(ser, torch.linspace(0, 1, 2001, dtype=D64))
    gap = torch.cdist(pts, fit).amin(-1).amax(-1) / metric_free_length(pts)
    assert float(gap.max()) < 1e-3
    torch.testing.assert_close(fit[:, 0], Z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(fit[:, -1], Z1, rtol=0, atol=1e-12)


def metric_free_length(pts):
    return (pts[:, 1:] - pts[:, :-1]).norm(dim=-1).sum(1)


def test_bidiagonal_solve_where_the_forward_recursion_blows_up():
    """The mesh-state corrections from the whole block-bidiagonal system satisfy every continuity
    condition and both boundary conditions, also for a linearised flow that grows by e^8 a
    segment (where products of the segment matrices, the condensed recursion, overflow float64's
    digits)."""
    from latentgeo.geodesics.piecewise import _bidiagonal_solve

    g = torch.Generator().manual_seed(0)
    k, S, d = 2, 24, 3
    Q, _ = torch.linalg.qr(torch.randn(2 * d, 2 * d, generator=g, dtype=D64))
    grow = torch.cat([torch.full((d,), math.e ** 8), torch.full((d,), math.e ** -8)]).to(D64)
    G = (Q * grow) @ Q.T + 0.01 * torch.randn(k, S, 2 * d, 2 * d, generator=g, dtype=D64)
    gv = torch.randn(k, S, 2 * d, generator=g, dtype=D64)
    end = torch.randn(k, d, generator=g, dtype=D64)
    dY, ok = _bidiagonal_solve(G, gv, end)
    assert bool(ok.all())
    res = dY[:, 1:] - (G @ dY[:, :-1, :, None]).squeeze(-1) - gv
    scale = (G.abs().amax((-1, -2)) * dY[:, :-1].abs().amax(-1))
    assert float((res.abs().amax(-1) / scale).max()) < 1e-10
    assert float(dY[:, 0, :d].abs().max()) < 1e-12
    torch.testing.assert_close(dY[:, -1, :d], end, rtol=1e-9, atol=1e-9)
    # the forward recursion's fundamental matrix is beyond float64 here (e^192)
    Phi = torch.eye(2 * d, dtype=D64)[:, d:]
    for s_ in range(S):
        Phi = G[0, s_] @ Phi
    assert float(Phi.abs().max()) > 1e60


def test_budget_and_options():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    z0 = torch.tensor([[-1.3, 0.25]], dtype=D64)
    z1 = torch.tensor([[1.2, 0.45]], dtype=D64)
    r = collocate_piecewise(metric, z0, z1, _line_series(z0, z1, 2), tol=1e-8, deadline=time.perf_counter() - 1)
    assert bool(r.budget[0]) and not bool(r.converged[0])
    assert r.reasons[0] == "time budget exhausted before piecewise collocation on 16 segments"
    assert int(r.evaluations[0]) == 0 and r.knots[1].shape == (1, 2, 2)
    # a Jacobian evaluation predicted (from the last measured rate) to end after the deadline is
    # not started
    from latentgeo.geodesics.piecewise import _overruns

    now = time.perf_counter()
    assert _overruns(now + 0.5, {"jac": 1e-3}, 1000) and not _overruns(now + 5.0, {"jac": 1e-3}, 1000)
    assert not _overruns(None, {"jac": 1.0}, 10**6) and not _overruns(now + 5.0, {}, 10**6)
    with pytest.raises(ValueError, match="stages"):
        Collocation(stages=1)
    with pytest.raises(ValueError, match="max_segments"):
        Collocation(max_segments=8)
    with pytest.raises(TypeError, match="piecewise must be a bool"):
        Collocation(piecewise="yes")


def test_refined_meshes_start_from_interpolated_jacobians(monkeypatch):
    """A refined mesh's first Newton step uses the previous mesh's Jacobian blocks interpolated
    along the curve (no fresh Jacobian, ``d + 1`` jets a stage point): on the RBF ring they agree
    with freshly evaluated ones to the interpolation's accuracy; with the interpolation replaced by
    zeros Newton falls back to fresh Jacobians and certifies the same lengths at a higher cost."""
    from latentgeo.geodesics import piecewise as PW
    from latentgeo.geodesics.ode import acceleration_fn

    metric = ring_metric()
    res = connecting_geodesic(metric, Z0, Z1, solver=Collocation(nodes=8, max_nodes=8, degree=8), budget=None)
    start = nodes_to_series(res.curve(lgl_nodes(32, D64)))
    K = PW._consts(4, D64, "cpu")
    acc, mfn = acceleration_fn(metric), metric.tensor_fn()
    B = PW._from_series(Z0, Z1, start, 32, K)
    conv, _, _, _, _, _, J = PW._newton(metric, acc, mfn, Z0, Z1, B, K, 1e-6, 40, None)
    assert bool(conv.all())
    ck = PW._check(metric, acc, mfn, Z0, Z1, B, K)
    nb = PW._remesh(B, ck["eta"], 96, K)
    Jz, Jv = PW._interpolate_jacobians(B, J, nb, K)
    ev = PW._system(metric, acc, mfn, nb, Z1, K, jac=True)
    for got, ref in ((Jz, ev["Jz"]), (Jv, ev["Jv"])):
        assert got.shape == ref.shape
        err = (got - ref).flatten(2).norm(dim=-1) / ref.flatten(2).norm(dim=-1).clamp_min(1e-300)
        assert float(err.median()) < 1e-2, float(err.median())
    # the pipeline of meshes: same certified lengths, fewer evaluations than with useless blocks
    r = collocate_piecewise(metric, Z0, Z1, start, tol=1e-6)
    assert bool(r.converged.all()) and bool((r.segments > 16).all())
    monkeypatch.setattr(PW, "_interpolate_jacobians", lambda old, J, new, K: tuple(
        torch.zeros(new.A.shape + (new.A.shape[-1],), dtype=D64) for _ in J))
    r0 = collocate_piecewise(metric, Z0, Z1, start, tol=1e-6)
    assert bool(r0.converged.all())
    torch.testing.assert_close(r.length, r0.length, rtol=1e-6, atol=0)
    assert int(r.evaluations.sum()) < int(r0.evaluations.sum())


def test_stalled_line_search_is_retried_with_damped_stage_blocks(monkeypatch):
    """Newton with damped stage blocks and full steps (the retry of a stalled line search) solves
    the collocation system where the line search does (the ring's second pair, from the straight
    line, 16 segments). With the line search made to stall at its first rejected step,
    that pair stalls on the first mesh; the retry carries it on to finer meshes."""
    from latentgeo.geodesics import piecewise as PW
    from latentgeo.geodesics.ode import acceleration_fn

    metric = ring_metric()
    a, b = Z0[1:], Z1[1:]
    start = _line_series(a, b, 2)
    K = PW._consts(4, D64, "cpu")
    acc, mfn = acceleration_fn(metric), metric.tensor_fn()
    runs = []
    for damping in (None, 0.0):
        B = PW._from_series(a, b, start, 16, K)
        conv, stalled, _, it, _, merit, _ = PW._newton(metric, acc, mfn, a, b, B, K, 1e-6, 40, None, damping=damping)
        assert bool(conv.all()) and not bool(stalled.any()), (damping, merit)
        runs.append(B)
    for B in runs:  # (both roots of the discrete system; they need not be the same one)
        assert float(PW._system(metric, acc, mfn, B, b, K, jac=False)["merit"].max()) <= 1e-9
    monkeypatch.setattr(PW, "_LAMBDA_MIN", 0.9)
    off = collocate_piecewise(metric, a, b, start, tol=1e-6, stall_retry=False)
    assert "stalled on 16 segments" in off.reasons[0], off.reasons
    on = collocate_piecewise(metric, a, b, start, tol=1e-6)
    assert int(on.segments[0]) > 16, on.reasons
    with pytest.raises(TypeError, match="stall_retry"):
        Collocation(stall_retry=1)
