"""Geodesic k-means and Fréchet means against closed forms and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

import latentgeo as lg
from latentgeo.clustering.frechet import KARCHER_TRIALS

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sphere(z):
    s = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z, 1 - s], -1) / (1 + s)


def _chart(p):
    """Stereographic projection from the south pole (inverse of _sphere)."""
    return p[..., :2] / (1 + p[..., 2:3])


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=D64)
    return torch.cat([torch.randn(25, 2, generator=g, dtype=D64) * 0.5 + c for c in centres])


def test_linear_decoder_equals_sklearn_kmeans():
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D64)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    X = _blobs()
    km = lg.GeodesicKMeans(metric, n_clusters=3, random_state=0, tol=1e-10, max_iter=50).fit(X)
    sk = KMeans(3, n_init=10, random_state=0, tol=1e-12).fit((X @ A.T).numpy())
    assert adjusted_rand_score(sk.labels_, km.labels_) == 1.0
    assert abs(km.inertia_ - sk.inertia_) <= 1e-6 * sk.inertia_
    assert km.distance_converged_.all()
    # centres map to sklearn's centres (up to the permutation of labels)
    mapped = (km.cluster_centers_ @ A.T).numpy()
    for j in range(3):
        sj = sk.cluster_centers_[np.bincount(sk.labels_[km.labels_ == j]).argmax()]
        assert np.abs(mapped[j] - sj).max() < 1e-6
    # predict / transform agree with the fit
    assert (km.predict(X) == km.labels_).all()
    T = km.transform(X[:7])
    ref = torch.cdist(X[:7] @ A.T, km.cluster_centers_ @ A.T)
    assert (T - ref).abs().max() < 1e-6


def _cap_points(centre, theta, n_dirs=4, rotate=0.3):
    """Points at angle theta around a unit vector `centre`, in symmetric directions."""
    c = centre / centre.norm()
    a = torch.tensor([1.0, 0.0, 0.0], dtype=D64)
    e1 = a - (a @ c) * c
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(c, e1)
    phis = rotate + torch.arange(n_dirs, dtype=D64) * (2 * math.pi / n_dirs)
    return math.cos(theta) * c + math.sin(theta) * (torch.cos(phis)[:, None] * e1 + torch.sin(phis)[:, None] * e2)


def test_frechet_mean_of_symmetric_points_on_the_sphere():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    c = torch.tensor([0.3, -0.4, 0.7], dtype=D64)
    pts = _chart(_cap_points(c, 0.5))
    res = lg.frechet_mean(metric, pts, tol=1e-6)
    assert res.converged and res.status == lg.clustering.FrechetStatus.SUCCESS
    target = _chart(c / c.norm())
    assert (res.mean - target).abs().max() < 1e-5
    # every point is at angle 0.5 from the mean: the distances are the great-circle angle
    assert (res.distances - 0.5).abs().max() < 1e-5
    assert res.grad_norm <= 1e-6 * math.sqrt(2 * res.value) + 1e-12
    # weights: all the weight on one point moves the mean there
    w = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=D64)
    assert (lg.frechet_mean(metric, pts, w).mean - pts[0]).abs().max() < 1e-5
    assert "FrechetMeanResult" in repr(res)
    # geodesic_options dtype=float32 (tol 1e-4): the same mean to float32 accuracy, in the points' dtype
    r32 = lg.frechet_mean(metric, pts, tol=1e-4, geodesic_options={"dtype": torch.float32, "tol": 1e-4})
    assert r32.converged and r32.mean.dtype == D64
    assert (r32.mean - target).abs().max() < 1e-4 and (r32.distances - 0.5).abs().max() < 1e-4
    with pytest.raises(ValueError, match="needs tol >= 0.0001"):
        lg.frechet_mean(metric, pts, geodesic_options={"dtype": torch.float32})


def test_iteration_velocities_of_uncertified_pairs_are_the_slopes_of_their_curves(monkeypatch):
    """Inside the iterations an uncertified pair's Karcher velocity is ``curve_log`` of the curve the
    solver returned (the slope of that upper bound), a certified pair's its log map; the final
    assignment reports the solver's initial velocities."""
    from latentgeo.clustering.frechet import curve_log

    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    X = torch.randn(10, 2, dtype=D64, generator=torch.Generator().manual_seed(3)) * 0.5
    weak = lg.Collocation(nodes=4, max_nodes=4, degree=4, max_iter=1, energy_max_iter=1, piecewise=False)
    km = _prepared(metric, X, iteration_options={"solver": weak, "tol": 1e-12},
                   geodesic_options={"solver": weak, "tol": 1e-12, "graph": None})
    seen = []
    solve = km._solve
    monkeypatch.setattr(km, "_solve", lambda *a: seen.append(solve(*a)) or seen[-1])
    C = torch.tensor([[0.0, 0.0]], dtype=D64)
    ci = torch.zeros(10, dtype=torch.long)
    d, c, v = km._pairs(C, X, ci, torch.arange(10))
    res = seen[-1]
    bad = ~res.converged
    assert bool(bad.any())
    torch.testing.assert_close(v[bad], curve_log(metric, res[bad], C[ci][bad]))
    torch.testing.assert_close(v[~bad], res.initial_velocity[~bad])
    _, _, v_final = km._pairs(C, X, ci, torch.arange(10), final=True, store=False)
    torch.testing.assert_close(v_final, seen[-1].initial_velocity)


def test_fit_stops_when_an_iteration_barely_lowers_the_inertia_though_labels_still_change(monkeypatch):
    """The whole-iteration rule: one point's label flips every iteration (so the no-change rules never
    apply), and each centre update lowers the inertia by 1e-6 relative, far below ``tol``. The fit
    stops at the third iteration (the first whose whole-iteration decrease can be measured), not at
    ``max_iter``; the final assignment re-assigns the flipped point."""
    metric, A = _linear_metric()
    g = torch.Generator().manual_seed(2)
    X = torch.cat([torch.randn(15, 2, generator=g, dtype=D64) * 0.3 + c for c in (-2.0, 2.0)])
    km = lg.GeodesicKMeans(metric, n_clusters=2, random_state=0, tol=1e-3, max_iter=20)
    assign, flips = km._assign, []

    def flipping(X, C, labels, final=False, known=None):
        lab, d, c, v = assign(X, C, labels, final=final, known=known)
        if not final:
            lab = lab.clone()
            lab[0] = len(flips) % 2  # one point alternates between the clusters
            flips.append(1)
        return lab, d, c, v

    def tiny_step(X, C, labels, dist, conv, vel):
        return C.clone(), torch.full((C.shape[0],), 1.0, dtype=X.dtype), (dist * (1 - 1e-6) ** 0.5, conv, vel)

    monkeypatch.setattr(km, "_assign", flipping)
    monkeypatch.setattr(km, "_karcher", tiny_step)
    km.fit(X)
    assert km.n_iter_ == 3 and len(flips) == 3
    assert sorted(np.bincount(km.labels_).tolist()) == [15, 15]


def test_curve_log_is_the_log_map_of_a_geodesic_and_the_slope_of_a_bent_curves_length():
    """``curve_log``: for a certified great circle it is the log map (the geodesic's initial
    velocity); for a curve that is not a geodesic it is ``−L M⁻¹ ∇L`` of the curve's length as its
    start moves (checked by central differences), which its initial velocity is not."""
    from latentgeo.clustering.frechet import curve_log

    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    a = torch.tensor([[0.1, -0.2], [0.4, 0.3]], dtype=D64)
    b = torch.tensor([[0.6, 0.5], [-0.5, 0.2]], dtype=D64)
    geo = lg.connecting_geodesic(metric, a, b, tol=1e-8, progress=False)
    assert bool(geo.converged.all())
    torch.testing.assert_close(curve_log(metric, geo, a), geo.initial_velocity, rtol=1e-4, atol=1e-6)
    # a bent curve: the geodesic pushed sideways by a bump that vanishes at both ends
    t = torch.linspace(0, 1, 33, dtype=D64)
    bent = geo.curve(t) + (4 * t * (1 - t))[None, :, None] * torch.tensor([[0.15, -0.1]], dtype=D64)[:, None]
    res = lg.GeodesicResult(z0=a, z1=b, length=metric.length(bent), status=torch.ones(2, dtype=torch.long),
                            discrete_curve=bent, _polyline=torch.ones(2, dtype=torch.bool), reasons=["bent"] * 2,
                            init=["bent"] * 2, method=["", ""])
    v = curve_log(metric, res, a)
    tt = torch.linspace(0, 1, 65, dtype=D64)
    cur = res.curve(tt)

    def length(shift):
        c = cur + (1 - tt)[None, :, None] * shift[:, None]
        L1 = metric.length(c)
        return L1 + (L1 - metric.length(c[:, ::2])) / 3

    M = metric.tensor(a)
    L = length(torch.zeros_like(a))
    for e in torch.eye(2, dtype=D64):
        h = 1e-5 * e.expand_as(a)
        slope = (length(h) - length(-h)) / 2e-5  # dL along the unit direction e
        # ∇L = −M v / L, so dL/dε along e is −eᵀ M v / L
        torch.testing.assert_close(slope, -(M @ v[..., None])[..., 0] @ e / L, rtol=1e-5, atol=1e-8)
    # not the curve's own initial velocity (scaled to the length, as a log map would be)
    u = (cur[:, 1] - cur[:, 0]) / tt[1]
    u = u * (L / torch.sqrt(torch.einsum("ni,nij,nj->n", u, M, u)))[:, None]
    assert (v - u).norm(dim=-1).max() > 0.05


def test_frechet_mean_warm_starts_its_trial_log_maps(monkeypatch):
    """Every solve after the first starts from the previous log maps' curves, and the trials keep a
    pair's moved curve instead of the whole pipeline where the stored curve does not carry it."""
    import latentgeo.geodesics as geo

    calls = []
    solve = geo.connecting_geodesic

    def spy(*args, **kw):
        calls.append((kw.get("init"), kw["solver"].warm_fallback if kw.get("solver") is not None else None))
        return solve(*args, **kw)

    monkeypatch.setattr(geo, "connecting_geodesic", spy)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    c = torch.tensor([0.3, -0.4, 0.7], dtype=D64)
    pts = _chart(_cap_points(c, 0.5))
    res = lg.frechet_mean(metric, pts, init=_chart(c / c.norm()) + 0.1, tol=1e-6)
    assert res.status == lg.clustering.FrechetStatus.SUCCESS
    assert len(calls) >= 3 and calls[0][0] is None
    assert all(isinstance(init, lg.GeodesicResult) and fb == "keep" for init, fb in calls[1:])
    assert res.stats["geodesics"] == len(calls) * len(pts)


def test_frechet_mean_options_that_would_break_its_warm_starts_are_rejected():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    pts = torch.tensor([[0.1, 0.2], [0.3, -0.1]], dtype=D64)
    with pytest.raises(ValueError, match="may not set 'init'"):
        lg.frechet_mean(metric, pts, geodesic_options={"init": "graph"})


def test_geodesic_result_concat_keeps_every_pair():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    a = torch.tensor([[0.1, -0.2], [0.4, 0.3], [0.0, 0.5]], dtype=D64)
    b = torch.tensor([[0.6, 0.5], [-0.5, 0.2], [0.2, -0.4]], dtype=D64)
    r = lg.connecting_geodesic(metric, a, b, progress=False)
    both = lg.GeodesicResult.concat([r[2:], r[:2]])
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(both.length, r.length[order])
    t = torch.linspace(0, 1, 7, dtype=D64)
    torch.testing.assert_close(both.curve(t), r.curve(t)[order])
    assert both.reasons == [r.reasons[i] for i in order.tolist()]
    with pytest.raises(TypeError, match="non-empty sequence"):
        lg.GeodesicResult.concat([])


def test_inertia_never_increases_on_the_sphere():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    g = torch.Generator().manual_seed(1)
    caps = [torch.tensor(v, dtype=D64) for v in ([0.0, 0.0, 1.0], [0.9, 0.0, 0.4], [-0.3, 0.8, 0.5])]
    pts = torch.cat([_cap_points(c, 0.35, 8, rotate=float(torch.rand(1, generator=g))) for c in caps])
    X = _chart(pts)
    km = lg.GeodesicKMeans(metric, n_clusters=3, init="random", random_state=3, max_iter=15, tol=1e-6).fit(X)
    h = km.inertia_history_
    assert all(b <= a * (1 + 1e-9) for a, b in zip(h, h[1:])), h
    assert sorted(np.bincount(km.labels_).tolist()) == [8, 8, 8]


def test_carried_lower_bounds_stay_below_the_great_circle_distances_as_the_centres_move():
    """Elkan bounds: a distance certified from a centre, less the length of each Karcher step the
    centre took since, never exceeds the distance to where the centre ends up."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    g = torch.Generator().manual_seed(4)
    caps = [torch.tensor(v, dtype=D64) for v in ([0.0, 0.0, 1.0], [0.9, 0.0, 0.4], [-0.3, 0.8, 0.5])]
    pts = torch.cat([_cap_points(c, t, 6, rotate=float(torch.rand(1, generator=g))) for c in caps for t in (0.2, 0.5)])
    X = _chart(pts)
    km = lg.GeodesicKMeans(metric, n_clusters=3, init="random", random_state=1, max_iter=6, tol=1e-9,
                           dtype=torch.float64).fit(X)
    assert km.n_iter_ >= 2 and bool((km._lower > 0).any())
    theta = torch.arccos((pts[:, None] * _sphere(km.cluster_centers_)[None]).sum(-1).clamp(-1, 1))
    assert bool((km._lower <= theta * (1 + 1e-9) + 1e-12).all()), float((km._lower - theta).max())


def test_working_dtype_auto_is_float32_at_the_default_tolerances_and_float64_below_1e_3():
    """``dtype="auto"``: float32 solves at the defaults' tol 1e-2 (the distances still great
    circles to 1e-4, returned in the codes' float64), float64 once a tolerance is below 1e-3."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    g = torch.Generator().manual_seed(1)
    caps = [torch.tensor(v, dtype=D64) for v in ([0.0, 0.0, 1.0], [0.9, 0.0, 0.4], [-0.3, 0.8, 0.5])]
    pts = torch.cat([_cap_points(c, 0.3, 6, rotate=float(torch.rand(1, generator=g))) for c in caps])
    X = _chart(pts)
    seen = []
    solve = lg.GeodesicKMeans._solve

    def spy(self, z0, z1, init, opts):
        seen.append((z0.dtype, opts["dtype"]))
        return solve(self, z0, z1, init, opts)

    lg.GeodesicKMeans._solve = spy
    try:
        km = lg.GeodesicKMeans(metric, n_clusters=3, random_state=0).fit(X)
        assert seen and set(seen) == {(torch.float32, torch.float32)}
        seen.clear()
        km64 = lg.GeodesicKMeans(metric, n_clusters=3, random_state=0,
                                 geodesic_options={"tol": 1e-4}).fit(X)
        assert seen and set(seen) == {(torch.float64, torch.float64)}
    finally:
        lg.GeodesicKMeans._solve = solve
    assert km.distances_.dtype == D64 and km.cluster_centers_.dtype == D64
    assert km.distance_converged_.all() and sorted(np.bincount(km.labels_).tolist()) == [6, 6, 6]
    assert km.labels_certified_.all()  # (well-separated caps, certified distances)
    C = _sphere(km.cluster_centers_)
    own = great_circle_to(pts, C[torch.as_tensor(km.labels_)])
    torch.testing.assert_close(km.distances_, own, rtol=1e-4, atol=1e-6)
    assert np.array_equal(km.labels_, km64.labels_)
    assert abs(km.inertia_ - km64.inertia_) <= 1e-4 * km64.inertia_


def great_circle_to(p, q):
    return 2 * torch.asin((p - q).norm(dim=-1).clamp(max=2) / 2)


def test_labels_certified_needs_the_own_distance_below_a_lower_bound_of_every_other():
    """``labels_certified_``: own distance (certified or an upper bound) strictly below every other
    centre's lower bound: a certified distance (less tol²), the chord, or the triangle bound."""
    km = lg.GeodesicKMeans(lg.PullbackMetric(lg.DeterministicDecoder(_sphere)), 2)
    km._opts = {"tol": 1e-2}
    inf = math.inf
    D = torch.tensor([[1.0, inf], [1.0, 1.2], [1.0, 1.5], [1.0, 1.0 + 1e-6], [1.0, inf]], dtype=D64)
    CV = torch.tensor([[True, False], [False, False], [False, True], [True, True], [True, False]])
    low = torch.tensor([[0.0, 2.0], [0.0, 0.5], [0.0, 0.5], [0.0, 0.5], [0.0, 0.9]], dtype=D64)
    lab = torch.zeros(5, dtype=torch.long)
    got = km._labels_proven(D, CV, lab, low, None, None)
    assert got.tolist() == [True, False, True, False, False]
    # no embedding: the triangle bound d(c_a, c_j) − d(x, c_a) with a certified centre distance only
    cc = torch.tensor([[0.0, 3.0], [3.0, 0.0]], dtype=D64)
    D2 = torch.tensor([[1.0, inf], [1.6, inf]], dtype=D64)
    CV2 = torch.tensor([[False, False], [False, False]])
    lab2 = torch.zeros(2, dtype=torch.long)
    assert km._labels_proven(D2, CV2, lab2, None, cc, torch.ones(2, 2, dtype=torch.bool)).tolist() == [True, False]
    assert km._labels_proven(D2, CV2, lab2, None, cc, torch.zeros(2, 2, dtype=torch.bool)).tolist() == [False, False]


def _ridge_metric():
    """A linear mean and a std that jumps on the line z₁ = 0: a high-variance gap."""
    def mean(z):
        return torch.cat([z, 0.0 * z[:, :1]], 1)

    def std(z):
        return 0.05 + 2.0 * torch.exp(-((z[:, :1] / 0.1) ** 2)).expand(-1, 3)

    return lg.PullbackMetric(lg.GaussianDecoder(mean=mean, std=std))


def test_variance_gap_splits_geodesically_not_euclidean():
    g = torch.Generator().manual_seed(0)
    n = 12
    left = torch.stack([-0.3 + 0.1 * torch.rand(n, generator=g, dtype=D64), 4 * torch.rand(n, generator=g, dtype=D64) - 2], 1)
    right = torch.stack([0.2 + 0.1 * torch.rand(n, generator=g, dtype=D64), 4 * torch.rand(n, generator=g, dtype=D64) - 2], 1)
    X = torch.cat([left, right])
    truth = np.repeat([0, 1], n)
    eu = KMeans(2, n_init=10, random_state=0).fit(X.numpy())
    assert adjusted_rand_score(truth, eu.labels_) < 0.2  # Euclidean k-means cuts across the long axis
    km = lg.GeodesicKMeans(_ridge_metric(), n_clusters=2, random_state=0, max_iter=5).fit(X)
    assert adjusted_rand_score(truth, km.labels_) == 1.0
    # the graph-only variant (k-medoids on kNN-graph distances, no ODE solves) splits it too
    gr = lg.GeodesicKMeans(_ridge_metric(), n_clusters=2, algorithm="graph", centroid="medoid", random_state=0).fit(X)
    assert adjusted_rand_score(truth, gr.labels_) == 1.0
    assert not gr.distance_converged_.any()


def test_graph_algorithm_distances_are_upper_bounds():
    # under a linear decoder the geodesic distance is ‖A(x − c)‖: graph distances may only exceed it
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D64)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    X = _blobs()
    km = lg.GeodesicKMeans(metric, n_clusters=3, algorithm="graph", centroid="medoid", random_state=0).fit(X)
    D = km.transform(X)
    exact = ((X[:, None] - km.cluster_centers_[None]) @ A.T).norm(dim=-1)
    assert bool((D >= exact * (1 - 1e-9)).all())
    assert float((D / exact.clamp_min(1e-12))[exact > 1e-9].median()) < 1.15  # and close to it (a kNN path is typically 5-15 % longer)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    torch.testing.assert_close(km.distances_, D[torch.arange(len(X)), torch.as_tensor(km.labels_)])
    assert km.inertia_ == pytest.approx(float((km.distances_ ** 2).sum()))


def test_estimator_conventions_and_errors():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    km = lg.GeodesicKMeans(metric, n_clusters=2, random_state=0)
    assert km.get_params()["n_clusters"] == 2
    assert clone(km).set_params(n_clusters=3).n_clusters == 3
    X = _blobs()[:20] * 0.3
    with pytest.raises(NotFittedError):
        km.predict(X)
    with pytest.raises(ValueError, match="n_clusters=30 is larger"):
        lg.GeodesicKMeans(metric, n_clusters=30).fit(X)
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        km.fit(bad)
    with pytest.raises(ValueError, match="shape"):
        km.fit(X[:, 0])
    with pytest.raises(ValueError, match="centroid"):
        lg.GeodesicKMeans(metric, n_clusters=2, centroid="mean").fit(X)
    with pytest.raises(TypeError, match="Metric"):
        lg.GeodesicKMeans("euclidean", n_clusters=2).fit(X)
    with pytest.raises(ValueError, match="algorithm"):
        lg.GeodesicKMeans(metric, n_clusters=2, algorithm="exact").fit(X)
    with pytest.raises(ValueError, match="centroid='medoid'"):
        lg.GeodesicKMeans(metric, n_clusters=2, algorithm="graph").fit(X)
    with pytest.raises(ValueError, match="init"):
        lg.GeodesicKMeans(metric, n_clusters=2, geodesic_options={"init": "graph"}).fit(X)
    with pytest.raises(ValueError, match=r"GeodesicKMeans\(dtype=...\)"):
        lg.GeodesicKMeans(metric, n_clusters=2, geodesic_options={"dtype": torch.float32}).fit(X)
    with pytest.raises(ValueError, match="needs tol >= 0.0001"):
        lg.GeodesicKMeans(metric, n_clusters=2, dtype=torch.float32, geodesic_options={"tol": 1e-6}).fit(X)
    with pytest.raises(ValueError, match="torch.float64 or torch.float32"):
        lg.GeodesicKMeans(metric, n_clusters=2, dtype="half").fit(X)
    # numpy input and the medoid variant
    labels = lg.GeodesicKMeans(metric, n_clusters=2, centroid="medoid", random_state=0).fit_predict(X.numpy())
    assert labels.shape == (20,) and set(labels.tolist()) == {0, 1}


def test_chord_lower_bounds_and_the_continued_first_assignment_on_the_sphere():
    """The pruning bound ‖g(x) − g(c)‖ is the chord 2 sin(θ/2) of the great-circle distance θ
    (never above it), and the first assignment, solved outward along the graph's shortest-path
    trees with warm starts, gives great-circle distances."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere))
    g = torch.Generator().manual_seed(2)
    caps = [torch.tensor(v, dtype=D64) for v in ([0.0, 0.0, 1.0], [0.9, 0.0, 0.4], [-0.3, 0.8, 0.5])]
    pts = torch.cat([_cap_points(c, t, 8, rotate=float(torch.rand(1, generator=g))) for c in caps for t in (0.15, 0.3)])
    X = _chart(pts)
    km = lg.GeodesicKMeans(metric, n_clusters=3, random_state=0, max_iter=1, dtype=torch.float64)
    km.fit(X)
    C = km.cluster_centers_
    low = km._chord_bounds(X, C)
    theta = torch.arccos((pts[:, None] * _sphere(C)[None]).sum(-1).clamp(-1, 1))
    chord = 2 * torch.sin(theta / 2)
    torch.testing.assert_close(low, chord, rtol=1e-8, atol=1e-12)
    assert bool((low <= theta).all())
    # in float32 (dtype="auto" at the default tolerances) the bound is shrunk by the embeddings'
    # rounding: still below the chord, by at most 64·eps·(‖g(x)‖ + ‖g(c)‖)
    km32 = lg.GeodesicKMeans(metric, n_clusters=3, random_state=0, dtype=torch.float32)
    km32._dtype, km32._mw = torch.float32, None
    low32 = km32._chord_bounds(X, C)
    assert low32.dtype == X.dtype and bool((low32 <= chord).all())
    assert float((chord - low32).max()) <= 3 * 64 * torch.finfo(torch.float32).eps
    # the fit's own distances (certified) are great-circle distances to its centres
    own = theta[torch.arange(len(X)), torch.as_tensor(km.labels_)]
    assert km.distance_converged_.all()
    torch.testing.assert_close(torch.as_tensor(km.distances_), own, rtol=1e-4, atol=1e-8)
    assert sorted(np.bincount(km.labels_).tolist()) == [16, 16, 16]
    # the chord bounds prune: fewer open pairs than all (point, other centre) pairs
    assert km.n_open_pairs_ < 2 * len(X)
    # the continuation itself: from medoid centres, every member's geodesic is certified
    km2 = lg.GeodesicKMeans(metric, n_clusters=3, random_state=0)
    km2._mw, km2._dtype, km2._n_geo, km2._n_open, km2._warm = None, torch.float64, 0, 0, {}
    km2._working(X)
    km2._graph = lg.geodesics.LatentGraph(metric, X, k=16)
    km2._opts, km2._opts_iter = km2._options(True), km2._options(False)
    labels = torch.as_tensor(km.labels_)
    med = torch.tensor([int(torch.nonzero(labels == j)[0]) for j in range(3)])
    d, c, _ = km2._continued(X[med], X, labels, med)
    ref = 2 * torch.asin((pts - pts[med][labels]).norm(dim=-1) / 2)
    assert bool(c.all())
    torch.testing.assert_close(d, ref, rtol=2e-3, atol=1e-8)  # (iteration tolerance 1e-3)
    assert km2._n_geo >= len(X) - 3


def _linear_metric():
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D64)
    return lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T)), A


def _prepared(metric, X, **kw):
    km = lg.GeodesicKMeans(metric, n_clusters=1, random_state=0, **kw)
    km._mw, km._dtype, km._n_geo, km._n_open, km._warm = None, torch.float64, 0, 0, {}
    km._rejected, km._n_karcher_repeats = {}, 0
    km._working(X)
    km._graph = lg.geodesics.LatentGraph(metric, X, k=8)
    km._opts, km._opts_iter = km._options(True), km._options(False)
    return km


def test_karcher_step_is_exact_under_a_linear_decoder_and_the_parabola_step_when_too_long():
    """Under a linear decoder Log_c(x) = x − c and the Fréchet function is a quadratic: the
    Karcher step τ = 1 lands on the mean. With a gradient 3× too long the τ = 1 candidate is
    rejected and the second candidate is the minimiser of the parabola through f(0), the model
    slope −2n‖g‖² and f(1): τ = 3/7, so the centre moves by (9/7)(x̄ − c)."""
    metric, A = _linear_metric()
    g = torch.Generator().manual_seed(5)
    X = torch.randn(12, 2, generator=g, dtype=D64)
    c = torch.tensor([[1.5, -1.0]], dtype=D64)
    km = _prepared(metric, X)
    labels = torch.zeros(12, dtype=torch.long)
    dist = ((X - c) @ A.T).norm(dim=1)
    conv = torch.ones(12, dtype=torch.bool)
    C1, moved, (d1, c1, _) = km._karcher(X, c, labels, dist, conv, X - c)
    torch.testing.assert_close(C1[0], X.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d1, ((X - X.mean(0)) @ A.T).norm(dim=1), rtol=1e-6, atol=1e-7)
    C3, _, _ = km._karcher(X, c, labels, dist, conv, 3.0 * (X - c))
    torch.testing.assert_close(C3[0], c[0] + (9.0 / 7.0) * (X.mean(0) - c[0]), rtol=1e-6, atol=1e-7)


def test_karcher_step_rejected_from_the_same_state_is_not_tried_again():
    """Distances given below the true ones make every candidate worse: all trials are rejected and
    the centre stays. From exactly that state again (same centre, members, distances) the step is
    skipped without a solve; from a changed state it is tried again."""
    metric, A = _linear_metric()
    g = torch.Generator().manual_seed(5)
    X = torch.randn(12, 2, generator=g, dtype=D64)
    c = torch.tensor([[1.5, -1.0]], dtype=D64)
    km = _prepared(metric, X)
    calls = []
    pairs = km._pairs
    km._pairs = lambda *a, **k: calls.append(1) or pairs(*a, **k)
    labels = torch.zeros(12, dtype=torch.long)
    low = 0.5 * ((X - c) @ A.T).norm(dim=1)
    conv = torch.ones(12, dtype=torch.bool)
    C1, moved, _ = km._karcher(X, c, labels, low, conv, X - c)
    assert len(calls) == KARCHER_TRIALS and float(moved[0]) == 0.0 and torch.equal(C1, c)
    C2, moved, _ = km._karcher(X, c, labels, low, conv, X - c)
    assert len(calls) == KARCHER_TRIALS and km._n_karcher_repeats == 1 and torch.equal(C2, c)
    km._karcher(X, c, labels, 0.9 * low, conv, X - c)
    assert len(calls) == 2 * KARCHER_TRIALS


def _one_centre_case():
    """20 codes, one centre under the linear decoder: metric, codes, prepared estimator, centre,
    labels and the exact distances."""
    metric, A = _linear_metric()
    X = _blobs(1)[:20]
    C = X[:1].clone() + 0.1
    return metric, X, _prepared(metric, X), C, torch.zeros(len(X), dtype=torch.long), ((X - C) @ A.T).norm(dim=1)


def test_final_assignment_keeps_certified_distances_and_resolves_the_rest():
    """The last Karcher check's certified distances are kept when the iterations' tolerance is at
    least as strict as the final one; the others are solved again; a stricter final tolerance
    solves all again."""
    metric, X, km, C, labels, true = _one_centre_case()
    conv = torch.ones(len(X), dtype=torch.bool)
    conv[[3, 7]] = False
    known = (true + 0.5 * (~conv).to(D64), conv, X - C)  # the two unconverged entries are bounds
    d, c, v = km._final_known(X, C, labels, known)
    assert km._n_geo == 2
    assert bool(c.all())
    torch.testing.assert_close(d, true, rtol=1e-6, atol=1e-8)
    strict = _prepared(metric, X, geodesic_options={"tol": 1e-6})
    assert strict._final_known(X, C, labels, known) is None


def test_final_assignment_resolves_kept_distances_longer_than_the_graph_path():
    """A kept (certified) distance longer than the graph path is not the shortest known: solved again."""
    metric, X, km, C, labels, true = _one_centre_case()
    known = (true * torch.where(torch.arange(len(X)) == 5, 1.5, 1.0).to(D64), torch.ones(len(X), dtype=torch.bool), X - C)
    d, c, _ = km._final_known(X, C, labels, known)
    assert km._n_geo == 1
    torch.testing.assert_close(d, true, rtol=1e-6, atol=1e-8)


def test_final_resolve_longer_than_the_kept_curve_keeps_the_shorter_length_uncertified():
    """A kept length is that of a real curve from the same centre: when the re-solve comes out
    longer, the pair keeps the shorter length (and its velocity) and is not certified. (The kept
    value is set below the true distance here so that the re-solve, exact under a linear decoder,
    is longer.)"""
    metric, X, km, C, labels, true = _one_centre_case()
    conv = torch.ones(len(X), dtype=torch.bool)
    conv[4] = False
    vel = X - C
    vel[4] = 0.25 * vel[4]  # the kept curve's (different) initial velocity
    known = (true * torch.where(torch.arange(len(X)) == 4, 0.9, 1.0).to(D64), conv, vel)
    d, c, v = km._final_known(X, C, labels, known)
    assert km._n_geo == 1
    torch.testing.assert_close(d[4], 0.9 * true[4])
    assert not bool(c[4]) and bool(c[torch.arange(len(X)) != 4].all())
    torch.testing.assert_close(v[4], vel[4])
    torch.testing.assert_close(d[torch.arange(len(X)) != 4], true[torch.arange(len(X)) != 4], rtol=1e-6, atol=1e-8)
