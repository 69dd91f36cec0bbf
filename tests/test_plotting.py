"""Plots draw what they claim: image arrays equal the metric on the grid, in the right orientation."""

import doctest
import json
import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

import latentgeo as lg  # noqa: E402
from latentgeo.plotting import (  # noqa: E402
    default_extent,
    latent_grid,
    plot_curves,
    plot_image_grid,
    plot_magnification,
    plot_training_curves,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _anisotropic_field():
    """M(z) = diag(exp(z1), exp(2 z2)): √det M = exp(z1/2 + z2), not symmetric in (z1, z2)."""

    def fn(z):
        return torch.diag_embed(torch.stack([z[:, 0].exp(), (2 * z[:, 1]).exp()], -1))

    return lg.MetricField(fn, latent_dim=2)


def _stereographic_metric(dtype=torch.float64):
    """Inverse stereographic projection R² → S²: M = 4/(1+|z|²)² I, √det M = 4/(1+|z|²)²."""

    def g(z):
        r2 = (z * z).sum(1, keepdim=True)
        return torch.cat([2 * z, r2 - 1], 1) / (1 + r2)

    return lg.PullbackMetric(lg.DeterministicDecoder(g, latent_dim=2))


def test_magnification_image_equals_metric_on_grid_and_closed_form():
    metric = _anisotropic_field()
    extent = (-1.0, 2.0, -0.5, 1.5)
    ax = plot_magnification(metric, extent=extent, resolution=23)
    im = ax.images[0]
    arr = np.ma.getdata(im.get_array())
    z, xs, ys = latent_grid(extent, 23)
    ref = metric.magnification(z).numpy().reshape(23, 23)
    np.testing.assert_allclose(arr, ref, rtol=1e-6)
    # independent closed form and orientation: arr[i, j] is at (xs[j], ys[i])
    closed = np.exp(xs[None, :] / 2 + ys[:, None])
    np.testing.assert_allclose(arr, closed, rtol=1e-5)
    assert tuple(im.get_extent()) == extent
    assert im.origin == "lower"
    assert isinstance(im.norm, LogNorm)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    # a colour bar was added to the figure
    assert len(ax.figure.axes) == 2


def test_magnification_pullback_float64_matches_stereographic_closed_form():
    metric = _stereographic_metric()
    extent = (-2.0, 2.0, -1.0, 3.0)
    ax = plot_magnification(metric, extent=extent, resolution=17, log=False, chunk_size=50, dtype=torch.float64)  # several chunks
    arr = np.ma.getdata(ax.images[0].get_array())
    z, xs, ys = latent_grid(extent, 17, dtype=torch.float64)
    r2 = xs[None, :] ** 2 + ys[:, None] ** 2
    np.testing.assert_allclose(arr, 4 / (1 + r2) ** 2, rtol=1e-10)
    assert not isinstance(ax.images[0].norm, LogNorm)


def test_default_extent_contains_codes_and_labels_legend():
    torch.manual_seed(0)
    codes = torch.randn(200, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    labels = torch.arange(200) % 4
    metric = _anisotropic_field()
    ax = plot_magnification(metric, codes=codes, labels=labels, resolution=20)
    x0, x1, y0, y1 = ax.images[0].get_extent()
    c = codes.numpy()
    assert x0 < c[:, 0].min() and c[:, 0].max() < x1
    assert y0 < c[:, 1].min() and c[:, 1].max() < y1
    # padding is the margin (10 %) of the span on each side
    span = c.max(0) - c.min(0)
    np.testing.assert_allclose([x0, x1], [c[:, 0].min() - 0.1 * span[0], c[:, 0].max() + 0.1 * span[0]], rtol=1e-6)
    assert default_extent(codes, margin=0.1) == pytest.approx((x0, x1, y0, y1))
    # one scatter (PathCollection) per class, with legend entries "0".."3"
    assert len(ax.collections) == 4
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["0", "1", "2", "3"]
    offsets = np.concatenate([col.get_offsets() for col in ax.collections])
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(c[:, 0]), rtol=1e-6)


def test_default_extent_degenerate_codes_and_min_aspect():
    ext = default_extent(np.array([[1.0, 2.0], [1.0, 2.0]]))
    assert ext[0] < 1.0 < ext[1] and ext[2] < 2.0 < ext[3]
    codes = np.array([[0.0, 0.0], [10.0, 1.0]])
    x0, x1, y0, y1 = default_extent(codes, margin=0.0, min_aspect=0.5)
    assert (x0, x1) == (0.0, 10.0) and (y0, y1) == pytest.approx((-2.0, 3.0))  # widened about the centre
    with pytest.raises(ValueError, match="min_aspect"):
        default_extent(codes, min_aspect=2.0)


def test_magnification_bad_inputs():
    metric = _anisotropic_field()
    with pytest.raises(ValueError, match="extent"):
        plot_magnification(metric)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_magnification(metric, codes=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        plot_magnification(metric, codes=torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="xmin < xmax"):
        plot_magnification(metric, extent=(1, 0, 0, 1))
    with pytest.raises(ValueError, match="resolution"):
        plot_magnification(metric, extent=(0, 1, 0, 1), resolution=1)
    with pytest.raises(ValueError, match="labels"):
        plot_magnification(metric, codes=torch.zeros(5, 2), labels=[0, 1])
    m3 = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z * 2, latent_dim=3))
    with pytest.raises(ValueError, match="2-D latent"):
        plot_magnification(m3, extent=(0, 1, 0, 1))


def test_image_grid_tiles_decode_the_right_latent_points():
    n, h, w = 5, 3, 4
    extent = (-1.0, 1.0, 10.0, 20.0)

    def decode(z):
        # every pixel encodes the code (z1 + z2/100), except a marker in the image's top row
        base = (z[:, 0] + z[:, 1] / 100.0)[:, None, None].expand(-1, h, w).clone()
        base[:, 0, :] = 5.0
        return base

    ax = plot_image_grid(decode, extent, n=n, clip=None, gap=1)
    im = ax.images[0]
    mos = np.ma.getdata(im.get_array())
    assert mos.shape == (n * (h + 1) + 1, n * (w + 1) + 1)
    assert tuple(im.get_extent()) == extent and im.origin == "lower"
    xs = -1.0 + (np.arange(n) + 0.5) * 2.0 / n
    ys = 10.0 + (np.arange(n) + 0.5) * 10.0 / n
    for i in range(n):
        for j in range(n):
            tile = mos[1 + i * (h + 1) : 1 + i * (h + 1) + h, 1 + j * (w + 1) : 1 + j * (w + 1) + w]
            # origin="lower": the image's top row is the tile's last array row
            np.testing.assert_allclose(tile[-1], 5.0)
            np.testing.assert_allclose(tile[:-1], xs[j] + ys[i] / 100.0, rtol=1e-6)
    # gaps are masked (drawn in the background colour)
    assert np.isnan(mos[0, 0])


def test_image_grid_accepts_a_decoder_and_infers_square_images():
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Sigmoid())
    dec = lg.BernoulliDecoder(probs=net, latent_dim=2)
    ax = plot_image_grid(dec, (-1, 1, -1, 1), n=3)
    mos = np.ma.getdata(ax.images[0].get_array())
    assert mos.shape == (3 * 5 + 1, 3 * 5 + 1)
    # the bottom-left tile is the decoder's mean at the bottom-left cell centre
    z = torch.tensor([[-2 / 3, -2 / 3]])
    ref = net(z).detach().numpy().reshape(4, 4)[::-1]
    np.testing.assert_allclose(mos[1:5, 1:5], ref, rtol=1e-6)
    with pytest.raises(ValueError, match="item_shape"):
        plot_image_grid(lambda z: torch.zeros(z.shape[0], 7), (0, 1, 0, 1), n=2)
    with pytest.raises(ValueError, match="items for"):
        plot_image_grid(lambda z: torch.zeros(3, 4), (0, 1, 0, 1), n=2)


def _history():
    hist = []
    for e in range(1, 13):
        phase = "mean" if e <= 8 else "variance"
        hist.append({"epoch": e, "phase": phase, "train_loss": 100.0 / e, "val_loss": 110.0 / e + (1 if e > 8 else 0)})
    return hist


def test_training_curves_draw_the_history(tmp_path):
    hist = _history()
    ax = plot_training_curves(hist)
    train = [ln for ln in ax.lines if ln.get_color() == ax.lines[0].get_color() and len(ln.get_xdata()) > 0]
    xs = np.concatenate([ln.get_xdata() for ln in train if ln.get_linestyle() == "-"])
    ys = np.concatenate([ln.get_ydata() for ln in train if ln.get_linestyle() == "-"])
    np.testing.assert_allclose(np.sort(xs), np.arange(1, 13))
    np.testing.assert_allclose(np.sort(ys), np.sort([r["train_loss"] for r in hist]))
    # one dashed vertical line at the phase change, between epochs 8 and 9
    vlines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(8.5)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["train loss", "val loss"]
    # the same from a JSON-lines log
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in hist) + "\n")
    ax2 = plot_training_curves(log)
    assert len(ax2.lines) == len(ax.lines)
    log.write_text('{"epoch": 1, "train_loss": 3}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        plot_training_curves(log)
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves([])
    with pytest.raises(ValueError, match="none of the keys"):
        plot_training_curves([{"epoch": 1, "loss": 2.0}])


def test_plot_curves_over_a_map_keeps_limits():
    metric = _anisotropic_field()
    ax = plot_magnification(metric, extent=(0, 1, 0, 1), resolution=5)
    t = torch.linspace(0, 1, 11)
    curves = torch.stack([torch.stack([t, t], 1), torch.stack([t, 3 * t], 1)])  # second leaves the map
    plot_curves(curves, ax=ax, color="white", label="straight")
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
    lines = ax.lines[-2:]
    np.testing.assert_allclose(lines[1].get_ydata(), 3 * t.numpy(), rtol=1e-6)
    assert lines[0].get_label() == "straight" and lines[1].get_label().startswith("_")
    # endpoints marked: 4 points
    assert ax.collections[-1].get_offsets().shape == (4, 2)
    # a single (T, 2) curve and a list of curves of different lengths
    ax2 = plot_curves(np.array([[0.0, 0.0], [1.0, 2.0]]))
    assert len(ax2.lines) == 1
    ax3 = plot_curves([np.zeros((3, 2)), np.ones((5, 2))], endpoints=False)
    assert [len(ln.get_xdata()) for ln in ax3.lines] == [3, 5]
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        plot_curves(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="NaN"):
        plot_curves(torch.tensor([[0.0, 0.0], [math.inf, 1.0]]))


def test_plotting_docstring_examples():
    import latentgeo.plotting as mod

    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_quickstart_notebook_runs_against_the_api():
    """notebooks/01_quickstart.py (a jupytext percent script) executes, and its claims hold."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    path = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.py"
    src = path.read_text()
    assert "# %%" in src
    ns: dict = {"__name__": "__notebook__"}
    exec(compile(src, path.name, "exec"), ns)
    # the notebook's claims: certified geodesics are no longer than the straight lines, the report is written
    geo, straight = ns["geo"], ns["straight"]
    assert bool(geo.converged.any())
    assert bool((geo.length[geo.converged] <= straight[geo.converged] * (1 + 1e-6)).all())
    assert (Path(ns["out"]) / "index.html").is_file()


def test_decoded_strip_shows_each_point_in_order():
    from latentgeo.plotting import plot_decoded_strip

    pts = torch.tensor([[0.0, 0.0], [1.0, 0.5], [2.0, 1.0], [3.0, 1.5]])

    def decode(z):  # 2x3 images filled with z1/10, top-left pixel = z2/10
        img = (z[:, 0] / 10)[:, None, None].expand(-1, 2, 3).clone()
        img[:, 0, 0] = z[:, 1] / 10
        return img

    ax = plot_decoded_strip(decode, pts, label="geodesic")
    strip = np.ma.getdata(ax.images[0].get_array())
    assert strip.shape == (2 + 2, 4 * 4 + 1)
    for k in range(4):
        tile = strip[1:3, 1 + 4 * k : 4 + 4 * k]
        np.testing.assert_allclose(tile[0, 0], pts[k, 1].item() / 10, rtol=1e-6)
        np.testing.assert_allclose(tile.ravel()[1:], pts[k, 0].item() / 10, rtol=1e-6)
    assert ax.get_ylabel() == "geodesic" and [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="items for"):
        plot_decoded_strip(lambda z: torch.zeros(2, 4), pts)
