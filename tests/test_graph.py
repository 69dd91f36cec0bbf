"""Graph initialisation and graph distances (latentgeo.geodesics.graph) against closed forms."""

import math

import numpy as np
import pytest
import torch

import latentgeo as lg
from latentgeo.geodesics.graph import DisconnectedGraphError, LatentGraph, resample_polylines

F64 = torch.float64
A_LIN = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)  # anisotropic (condition number 3)
A_ISO = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.2, 0.1]], dtype=F64)  # nearly isotropic


def linear_metric(A=A_LIN):
    return lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.to(z.dtype).T))


def stereo(z):
    """Inverse stereographic projection R^2 -> S^2 (metric 4/(1+|z|^2)^2 I)."""
    n2 = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z, n2 - 1], -1) / (n2 + 1)


def great_circle(a, b):
    """(N, 2), (K, 2) -> (N, K) great-circle distances of the images on the sphere."""
    x, y = stereo(a), stereo(b)
    return 2 * torch.asin(((x[:, None] - y[None]).norm(dim=-1) / 2).clamp(max=1))


def bump_metric(height=1e4, width=0.1):
    """Conformal metric with a huge bump at the origin: straight lines through 0 are bad."""

    def fn(z):
        s = 1 + height * torch.exp(-(z * z).sum(-1) / width)
        return s[:, None, None] * torch.eye(2, dtype=z.dtype)

    return lg.MetricField(fn, latent_dim=2)


def pairs(n, lo, hi, seed, min_sep):
    g = torch.Generator().manual_seed(seed)
    a = lo + (hi - lo) * torch.rand(4 * n, 2, generator=g, dtype=F64)
    b = lo + (hi - lo) * torch.rand(4 * n, 2, generator=g, dtype=F64)
    keep = (a - b).norm(dim=-1) > min_sep
    return a[keep][:n], b[keep][:n]


@pytest.fixture(scope="module")
def lin_grid():
    return LatentGraph.grid(linear_metric(), extent=[(-1, 1), (-1, 1)], resolution=41, dtype=F64)


def test_linear_grid_distances_bound_and_accuracy(lin_grid):
    a, b = pairs(60, -0.95, 0.95, 0, 0.0)
    exact = ((a[:, None] - b[None]) @ A_LIN.T).norm(dim=-1)
    D = lin_grid.distances(a, b)
    assert D.shape == (60, 60) and D.dtype == F64
    ratio = D / exact
    # graph distance = length of a real curve >= geodesic distance (flat metric: chords are exact)
    assert ratio.min() >= 1 - 1e-12
    assert ratio.max() <= 1.35  # anisotropic metric (condition 3), pairs down to a fraction of a cell
    # node-to-node distances: pure graph paths, still an upper bound
    nodes = lin_grid.nodes[::97]
    Dn = lin_grid.distances(nodes)
    ex = ((nodes[:, None] - nodes[None]) @ A_LIN.T).norm(dim=-1)
    off = ~torch.eye(len(nodes), dtype=torch.bool)
    assert (Dn[off] >= ex[off] * (1 - 1e-12)).all() and (Dn[off] <= ex[off] * 1.09).all()
    assert torch.equal(Dn, Dn.T) and (Dn.diagonal() == 0).all()


def test_isotropic_grid_within_few_percent():
    g = LatentGraph.grid(linear_metric(A_ISO), extent=[(-1, 1), (-1, 1)], resolution=41, dtype=F64)
    a, b = pairs(100, -0.95, 0.95, 0, 0.0)
    exact = ((a[:, None] - b[None]) @ A_ISO.T).norm(dim=-1)
    sep = (a[:, None] - b[None]).norm(dim=-1)
    ratio = g.distances(a, b) / exact
    assert ratio.min() >= 1 - 1e-12
    assert ratio[sep > 0.3].max() <= 1.04  # 16 directions: <= 2.8 % + attachment
    assert ratio.max() <= 1.15  # even for pairs a cell apart (straight segment is a candidate)


def test_stereographic_grid_vs_great_circle():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    # pairs in the unit disk (southern hemisphere): their great circles stay inside the grid
    g = LatentGraph.grid(metric, extent=[(-1.2, 1.2), (-1.2, 1.2)], resolution=49, dtype=F64)
    a, b = pairs(40, -0.7, 0.7, 1, 0.3)
    D = g.distances(a, b)
    gc = great_circle(a, b)
    assert (D >= gc * (1 - 1e-4)).all()  # chord sums of n_sub=4 sub-segments underestimate by <= 1e-4
    assert (D.diagonal() <= gc.diagonal() * 1.05).all()


def test_knn_graph_upper_bound_and_symmetry():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(stereo))
    nodes = torch.randn(1500, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    g = LatentGraph(metric, nodes, k=10, n_sub=16)
    assert g.k == 10 and g.n_components == 1 and g.n_bridges == 0
    D = g.distances(nodes[:200])
    gc = great_circle(nodes[:200], nodes[:200])
    off = ~torch.eye(200, dtype=torch.bool)
    assert (D[off] >= gc[off] * (1 - 1e-3)).all()  # chords of long edges far from the origin
    assert torch.equal(D, D.T) and (D.diagonal() == 0).all()
    # each node has at least its k neighbours (symmetrised kNN)
    deg = np.bincount(g.edges.reshape(-1), minlength=len(nodes))
    assert deg.min() >= 10
    # edge weights are metric lengths of the straight segments (flat-chord check on one edge)
    i, j = g.edges[0]
    seg = nodes[i] + torch.linspace(0, 1, 2001, dtype=F64)[:, None] * (nodes[j] - nodes[i])
    assert abs(metric.length(seg).item() - g.weights[0]) < 1e-4 * g.weights[0]


def test_grid_3d_linear():
    A = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.0, 0.0, 1.0], [0.1, 0.0, 0.1]], dtype=F64)
    g = LatentGraph.grid(linear_metric(A), extent=[(0, 1)] * 3, resolution=9, dtype=F64)
    assert g.nodes.shape == (729, 3) and g.radius == 1
    assert np.bincount(g.edges.reshape(-1)).max() == 26
    a, b = g.nodes[:40], g.nodes[-40:]
    ex = ((a[:, None] - b[None]) @ A.T).norm(dim=-1)
    D = g.distances(a, b)
    # 26 directions: worst case (1 + sqrt 3)/sqrt 6 = 1.115 in an isotropic metric
    assert (D >= ex * (1 - 1e-12)).all() and (D <= ex * 1.13).all()


def test_initial_curves_shape_endpoints_dtype(lin_grid):
    a, b = pairs(25, -0.9, 0.9, 3, 0.1)
    for dtype in (torch.float32, F64):
        c = lin_grid.initial_curves(a.to(dtype), b.to(dtype), n_points=17)
        assert c.shape == (25, 17, 2) and c.dtype == dtype
        assert torch.equal(c[:, 0], a.to(dtype)) and torch.equal(c[:, -1], b.to(dtype))
    single = lin_grid.initial_curves(a[0], b[0], n_points=5)
    assert single.shape == (1, 5, 2)
    # flat metric: the straight line is never beaten by a graph path, and is kept
    res = lin_grid.shortest_paths(a, b)
    assert not res.via_graph.any()
    exact = ((b - a) @ A_LIN.T).norm(dim=-1)
    torch.testing.assert_close(res.lengths, exact, rtol=1e-12, atol=0)


def test_initial_curves_go_around_a_bump():
    metric = bump_metric()
    g = LatentGraph.grid(metric, extent=[(-2, 2), (-2, 2)], resolution=33, dtype=F64)
    z0 = torch.tensor([[-1.0, 0.0], [-1.0, 0.05], [1.5, 1.5]], dtype=F64)
    z1 = torch.tensor([[1.0, 0.0], [1.0, -0.05], [1.5, 1.6]], dtype=F64)
    res = g.shortest_paths(z0, z1)
    assert res.via_graph.tolist() == [True, True, False]
    curves = g.initial_curves(z0, z1, n_points=200)
    fine = metric.length(curves)
    line = metric.length(z0[:, None] + torch.linspace(0, 1, 2001, dtype=F64)[:, None] * (z1 - z0)[:, None])
    assert (line[:2] > 50).all() and (fine[:2] < line[:2] / 10).all()  # the line crosses the bump, the graph path goes around it
    # a curve around the bump is at least the flat distance 2 and at most a half circle of radius 1 + corners
    assert (fine[:2] > 2.0).all() and (fine[:2] < math.pi + 0.5).all()
    # the resampled curve is the reported polyline: same metric length (midpoint rule, fine sampling)
    torch.testing.assert_close(fine, res.lengths, rtol=2e-2, atol=0)
    # metric spacing gives near-constant metric speed along the path
    seg = metric.segment_sq_lengths(curves[:2]).sqrt()
    assert (seg.max(1).values / seg.mean(1)).max() < 3.0
    ce = g.initial_curves(z0, z1, n_points=200, spacing="euclidean")
    step = (ce[:2, 1:] - ce[:2, :-1]).norm(dim=-1)
    assert (step.max(1).values - step.min(1).values).max() < 0.02


def test_resample_polylines_closed_form():
    poly = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [2.0, 1.0]]], dtype=F64)
    out = resample_polylines(poly, None, 7)  # total length 3 -> steps of 0.5
    expect = torch.tensor([[0, 0], [0.5, 0], [1, 0], [1.5, 0], [2, 0], [2, 0.5], [2, 1]], dtype=F64)
    torch.testing.assert_close(out[0], expect)
    # a non-Euclidean arc length: the first segment counts 3x
    out = resample_polylines(poly, torch.tensor([[0.0, 6.0, 7.0, 7.0]], dtype=F64), 8)
    torch.testing.assert_close(out[0, 3], torch.tensor([1.0, 0.0], dtype=F64))
    torch.testing.assert_close(out[0, 6], torch.tensor([2.0, 0.0], dtype=F64))


def two_clusters():
    gen = torch.Generator().manual_seed(4)
    return torch.cat([torch.randn(60, 2, generator=gen, dtype=F64) * 0.1, 5 + torch.randn(60, 2, generator=gen, dtype=F64) * 0.1])


def test_disconnected_graph_is_reported():
    metric, nodes = linear_metric(), two_clusters()
    with pytest.raises(DisconnectedGraphError, match="2 components"):
        LatentGraph(metric, nodes, k=5)
    with pytest.warns(RuntimeWarning, match="disconnected"):
        g = LatentGraph(metric, nodes, k=5, disconnected="warn")
    D = g.distances(nodes[:3], nodes[-3:])
    assert torch.isinf(D).all()
    with pytest.raises(DisconnectedGraphError, match="different components"):
        g.initial_curves(nodes[:2], nodes[-2:])
    with pytest.warns(RuntimeWarning, match="bridge"):
        gb = LatentGraph(metric, nodes, k=5, disconnected="bridge")
    assert gb.n_components == 2 and gb.n_bridges == 1
    D = gb.distances(nodes[:3], nodes[-3:])
    ex = ((nodes[:3, None] - nodes[None, -3:]) @ A_LIN.T).norm(dim=-1)
    assert torch.isfinite(D).all() and (D >= ex * (1 - 1e-12)).all()
    c = gb.initial_curves(nodes[:2], nodes[-2:], n_points=9)
    assert torch.equal(c[:, 0], nodes[:2]) and torch.equal(c[:, -1], nodes[-2:])


def test_duplicate_nodes():
    nodes = torch.cat([torch.rand(50, 2, generator=torch.Generator().manual_seed(5), dtype=F64)] * 2)
    g = LatentGraph(linear_metric(), nodes, k=10)
    D = g.distances(nodes[:10], nodes[50:60])
    assert torch.allclose(D.diagonal(), torch.zeros(10, dtype=F64))


def test_bad_input():
    metric = linear_metric()
    nodes = torch.rand(20, 2, dtype=F64)
    bad = nodes.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        LatentGraph(metric, bad, k=3)
    with pytest.raises(ValueError, match="k must be smaller"):
        LatentGraph(metric, nodes, k=20)
    with pytest.raises(ValueError, match="k must be an integer"):
        LatentGraph(metric, nodes, k=0)
    with pytest.raises(ValueError, match="n_sub"):
        LatentGraph(metric, nodes, k=3, n_sub=0)
    with pytest.raises(ValueError, match="disconnected"):
        LatentGraph(metric, nodes, k=3, disconnected="ignore")
    with pytest.raises(ValueError, match="Metric"):
        LatentGraph(lambda z: z, nodes, k=3)
    with pytest.raises(ValueError, match="shape"):
        LatentGraph(metric, nodes[:, None], k=3)
    with pytest.raises(ValueError, match="edges"):
        LatentGraph(metric, nodes, edges=np.array([[0, 25]]))
    g = LatentGraph(metric, nodes, k=5)
    with pytest.raises(ValueError, match="latent dimension"):
        g.distances(torch.rand(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="inf"):
        g.distances(torch.tensor([[0.0, float("inf")]], dtype=F64))
    with pytest.raises(ValueError, match="same shape"):
        g.initial_curves(nodes[:3], nodes[:4])
    with pytest.raises(ValueError, match="n_points"):
        g.initial_curves(nodes[:3], nodes[3:6], n_points=1)
    with pytest.raises(ValueError, match="spacing"):
        g.initial_curves(nodes[:3], nodes[3:6], spacing="chord")
    with pytest.raises(ValueError, match="extent"):
        LatentGraph.grid(metric, extent=[(1, 0), (0, 1)], resolution=5)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        LatentGraph.grid(metric, extent=[(0, 1)] * 4, resolution=5)
    with pytest.raises(ValueError, match="resolution"):
        LatentGraph.grid(metric, extent=[(0, 1)] * 2, resolution=1)
    with pytest.raises(ValueError, match="latent_dim"):
        LatentGraph.grid(metric, extent=(0, 1), resolution=5)


# -- plotting helpers and the report section's pair selection (cheap, no solver) -------------
def test_plot_geodesics_and_strips():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latentgeo.geodesics.plotting import plot_decoded_strips, plot_geodesics

    metric = bump_metric()
    t = torch.linspace(0, 1, 30, dtype=F64)[:, None]
    curves = torch.stack([t * torch.tensor([2.0, 0.0], dtype=F64) - 1, t * torch.tensor([0.0, 2.0], dtype=F64) - 1])
    ax = plot_geodesics(metric, curves, extent=(-1.5, 1.5, -1.5, 1.5), resolution=12, names=["a", "b"],
                        converged=[True, False])
    assert len(ax.images) == 1 and len(ax.lines) == 4  # two curves + two dashed straight lines
    # not certified: a solid line crossed by red × marks (never dotted/dashed like the straight lines)
    assert ax.lines[0].get_linestyle() == "-" and ax.lines[0].get_marker() in ("None", None, "")
    assert ax.lines[2].get_linestyle() == "-" and ax.lines[2].get_marker() == "x"
    assert ax.lines[2].get_markeredgecolor() == "red" and ax.lines[1].get_linestyle() == "--"
    np.testing.assert_allclose(ax.lines[1].get_xydata(), curves[0, [0, -1]].numpy())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b (NOT certified)"]
    plt.close(ax.figure)
    fig = plot_decoded_strips(lambda z: torch.sigmoid(z @ torch.ones(2, 16, dtype=F64)), curves, n_images=5,
                              row_labels=["x", "y"], failed=[False, True])
    assert len(fig.axes) == 2 and fig.axes[0].images[0].get_array().shape == (4, 5 * 5 - 1)
    # the failed row is framed in red and says so; the certified one is not
    assert fig.axes[1].get_ylabel() == "y  ✗ not certified" and fig.axes[0].get_ylabel() == "x"
    assert fig.axes[1].spines["top"].get_visible() and not fig.axes[0].spines["top"].get_visible()
    plt.close(fig)
    with pytest.raises(ValueError, match="2-D"):
        plot_geodesics(metric, torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="square"):
        plot_decoded_strips(lambda z: torch.zeros(z.shape[0], 15), curves)


def test_class_centre_pairs():
    from latentgeo.report.geodesics import class_centre_pairs

    codes = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0], [9.0, 9.0]], dtype=F64)
    labels = np.array([3, 3, 7, 7, 1])
    z0, z1, names = class_centre_pairs(codes, labels, n_classes=3)
    assert names == [(1, 3), (1, 7), (3, 7)]
    torch.testing.assert_close(z0, torch.tensor([[9.0, 9.0], [9.0, 9.0], [1.0, 0.0]], dtype=F64))
    torch.testing.assert_close(z1, torch.tensor([[1.0, 0.0], [0.0, 5.0], [0.0, 5.0]], dtype=F64))
    with pytest.raises(ValueError, match="2 classes"):
        class_centre_pairs(codes, np.zeros(5), n_classes=3)


def test_chunk_is_the_deprecated_spelling_of_chunk_size():
    import warnings as _w

    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z * 2.0))
    nodes = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = LatentGraph(metric, nodes, k=5, chunk_size=7)
    with pytest.warns(DeprecationWarning, match="chunk_size"):
        old = LatentGraph(metric, nodes, k=5, chunk=7)
    assert old.chunk_size == ref.chunk_size == 7
    with _w.catch_warnings():
        _w.simplefilter("error")
        torch.testing.assert_close(old.distances(nodes), ref.distances(nodes))
