"""Reports of curved latents: the analysis runs in a chart, and the ``manifold`` section."""

import json
import math

import numpy as np
import pytest
import torch

from latentgeo.charts import PoincareChart, StereographicChart
from latentgeo.cli import main
from latentgeo.cli.common import subset_dataset
from latentgeo.datasets import load_dataset
from latentgeo.models import VAE
from latentgeo.report import write_report
from latentgeo.training import train_vae

#: cheap report options: small grids, few geodesics and walks
CHEAP = dict(resolution=24, grid_n=6, geodesic_classes=3, manifold_classes=3, walks_walkers=3, walks_steps=20,
             walks_methods="euclidean,lso", iwae_points=16, iwae_samples=4)
SECTIONS = ["dataset", "model", "magnification", "decoded_grid", "geodesics", "manifold", "walks"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(ds, latent, epochs):
    shape = tuple(ds.item_shape) if ds.item_shape is not None else None
    vae = VAE(ds.dim, 2, latent=latent, hidden=(32,), item_shape=shape, random_state=0)
    x = torch.as_tensor(ds.data, dtype=torch.float32).reshape(len(ds.data), -1)
    hist = train_vae(vae, x, epochs=epochs, batch_size=64, variance="learned", random_state=0, progress=False,
                     patience=None, kl_warmup_epochs=0)
    return vae, hist


@pytest.fixture(scope="module")
def sphere_report(tmp_path_factory):
    ds = subset_dataset(load_dataset("digits"), 300, 0)
    vae, hist = _train(ds, "sphere", 30)
    out = tmp_path_factory.mktemp("sphere")
    return vae, ds, out, write_report(vae, ds, hist, out, sections=SECTIONS, **CHEAP)


@pytest.fixture(scope="module")
def hyperbolic_report(tmp_path_factory):
    ds = subset_dataset(load_dataset("tree"), 300, 0)
    vae, hist = _train(ds, "hyperbolic", 25)
    out = tmp_path_factory.mktemp("hyper")
    return vae, ds, out, write_report(vae, ds, hist, out, sections=SECTIONS, **CHEAP)


def test_sphere_report_runs_in_the_stereographic_chart(sphere_report):
    vae, ds, out, s = sphere_report
    for f in ("sphere.png", "magnification.png", "geodesics.png", "decoded_grid.png", "walks.png"):
        assert (out / f).is_file() and f in s["files"], f
    assert json.loads((out / "summary.json").read_text())["chart"] == s["chart"]
    # the chart projects from the pole opposite the codes' mean direction
    assert s["chart"]["kind"] == "stereographic"
    with torch.no_grad():
        amb = vae.encode_mean(torch.as_tensor(ds.data, dtype=torch.float32).reshape(len(ds.data), -1)).double()
    mean_dir = torch.nn.functional.normalize(amb.mean(0), dim=0)
    np.testing.assert_allclose(s["chart"]["pole"], (-mean_dir).tolist(), atol=1e-6)
    # every geometric section analysed 2-D chart coordinates, not the 3-D embedding
    assert "ChartDecoder" in s["magnification"]["metric"]
    chart = StereographicChart(torch.tensor(s["chart"]["pole"], dtype=torch.float64))
    y = chart.to_chart(amb)
    ext = s["magnification"]["extent"]
    assert ext[0] < float(y[:, 0].min()) and float(y[:, 0].max()) < ext[1]
    assert s["geodesics"]["n_converged"] == 3
    assert s["walks"]["methods"]["euclidean"]["stopped"] == 0


def test_sphere_manifold_section_lengths_do_not_depend_on_the_pole(sphere_report):
    s = sphere_report[3]["manifold"]
    assert s["manifold"] == "sphere" and s["chart"] == "stereographic" and len(s["pairs"]) == 3
    L = np.array(s["geodesic_length"])
    assert np.isfinite(L).all() and (L > 0).all() and all(s["converged"])
    # the second chart's pole is a genuinely different chart, and far from codes and curves
    assert s["second_chart"]["angle_to_report_pole_deg"] >= 60
    assert s["second_chart"]["min_angle_to_codes_and_curves_deg"] > 20
    # the same curves measured with each chart's metric tensor, and the geodesics solved again
    np.testing.assert_allclose(s["same_curve_length_chart2"], s["same_curve_length_chart1"], rtol=1e-4)
    np.testing.assert_allclose(s["same_curve_length_chart1"], L, rtol=1e-3)  # midpoint rule vs solver length
    assert all(s["resolved_converged"])
    np.testing.assert_allclose(s["resolved_length_chart2"], L, rtol=1e-4)
    assert s["chart_independent"] is True
    # the class centres are unit vectors and their great-circle distances are theirs
    c = np.array(s["centres"])
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(s["great_circle_distance"][0], math.acos(float(c[0] @ c[1])), rtol=1e-9)


def test_hyperbolic_report_runs_in_the_poincare_ball(hyperbolic_report):
    vae, ds, out, s = hyperbolic_report
    for f in ("poincare.png", "magnification.png", "geodesics.png", "walks.png"):
        assert (out / f).is_file() and f in s["files"], f
    assert s["chart"]["kind"] == "poincare" and s["chart"]["curvature"] == 1.0
    x0, x1, y0, y1 = s["magnification"]["extent"]
    assert -1.0 <= x0 < x1 <= 1.0 and -1.0 <= y0 < y1 <= 1.0  # never beyond the ball
    assert s["magnification"]["on_data"]["n"] == len(ds.data)
    assert math.isfinite(s["magnification"]["on_data"]["median"])
    assert s["geodesics"]["n_converged"] == 3
    m = s["manifold"]
    assert m["manifold"] == "hyperbolic" and all(m["converged"])
    L, H = np.array(m["geodesic_length"]), np.array(m["hyperbolic_distance"])
    assert np.isfinite(L).all() and (L > 0).all() and (H > 0).all()
    assert m["max_curve_radius"] < 1.0
    # the hyperbolic distance between the centres is the hyperboloid's: acosh(−⟨a, b⟩_L)
    chart = PoincareChart(2)
    cb = torch.tensor(m["centres_ball"], dtype=torch.float64)
    a, b = chart.from_ball(cb[0]), chart.from_ball(cb[1])
    assert abs(float(torch.acosh(a[0] * b[0] - (a[1:] * b[1:]).sum())) - H[0]) < 1e-9


def test_euclidean_report_has_no_chart(tmp_path):
    ds = subset_dataset(load_dataset("tree"), 100, 0)
    vae, hist = _train(ds, "euclidean", 1)
    s = write_report(vae, ds, hist, tmp_path, sections=["manifold"], **CHEAP)
    assert "chart" not in s and "skipped" in s["manifold"]


def test_cli_train_hyperbolic_report(tmp_path):
    out = tmp_path / "run"
    fast = ["--resolution", "12", "--iwae-points", "8", "--iwae-samples", "2", "--skip", "walks", "--skip",
            "geodesics", "--skip", "decoded_grid", "--quiet"]
    assert main(["train", "--data", "tree", "--out", str(out), "--latent", "hyperbolic", "--epochs", "2",
                 "--hidden", "16", "--variance", "constant", "--max-items", "120", "--report", *fast]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["chart"]["kind"] == "poincare" and (out / "poincare.png").is_file()
    assert np.isfinite(s["manifold"]["geodesic_length"]).all()
    rep = tmp_path / "rep"
    assert main(["report", str(out / "model.safetensors"), "--out", str(rep), *fast]) == 0
    assert json.loads((rep / "summary.json").read_text())["chart"]["kind"] == "poincare"


def test_poincare_decoded_grid_masks_outside_the_disk(tmp_path):
    ds = subset_dataset(load_dataset("digits"), 150, 0)
    vae, hist = _train(ds, "hyperbolic", 3)
    # a wide margin puts the grid's corners outside the disk: clipped extent, masked tiles
    s = write_report(vae, ds, hist, tmp_path, sections=["magnification", "decoded_grid"], margin=10.0, **CHEAP)
    assert s["decoded_grid"]["extent"] == [-1.0, 1.0, -1.0, 1.0]
    assert (tmp_path / "decoded_grid.png").is_file() and (tmp_path / "magnification.png").is_file()
    assert s["magnification"]["far_from_data"] is None or math.isfinite(s["magnification"]["far_from_data"]["median"])
