"""The report writes what it promises, its numbers are the metric's, and sections plug in."""

import json
from dataclasses import dataclass
from typing import Optional

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import latentgeo as lg  # noqa: E402
from latentgeo.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from latentgeo.report import (  # noqa: E402
    ReportError,
    ReportSectionError,
    register_section,
    report_sections,
    unregister_section,
    write_report,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


NO_IWAE = ["dataset", "model", "training", "checkpoint", "magnification", "decoded_grid", "training_curves"]


@dataclass
class _Data:
    data: torch.Tensor
    labels: Optional[torch.Tensor]
    item_shape: tuple
    name: str
    params: dict


class _PCAModel(torch.nn.Module):
    """A hand-made 'VAE': PCA encoder, linear mean decoder, RBF std (no training stack needed)."""

    def __init__(self, data, latent_dim=2):
        super().__init__()
        mu = data.mean(0)
        _, _, vt = torch.linalg.svd(data - mu, full_matrices=False)
        self.register_buffer("mu", mu)
        self.enc = torch.nn.Parameter(vt[:latent_dim].T.clone())  # (D, d)
        codes = (data - mu) @ self.enc.detach()
        scale = codes.std(0)
        self.enc.data /= scale
        codes = codes / scale
        sol = torch.linalg.lstsq(codes, data - mu).solution  # (d, D)
        self.dec = torch.nn.Parameter(sol.clone())
        self.config = {"class": "PCAModel", "latent_dim": latent_dim}
        self._analysis = lg.fit_rbf_variance(self.mean, codes.detach(), data, n_centers=8, n_iter=100)

    def mean(self, z):
        return z @ self.dec + self.mu

    def encode_mean(self, x):
        return (x - self.mu) @ self.enc

    def decoder_for_analysis(self):
        return self._analysis

    def save(self, path):
        save_checkpoint(path, self.state_dict(), self.config)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:300] / 16.0, dtype=torch.float32)
    return _Data(x, torch.tensor(y[:300]), (8, 8), "digits", {"subset": 300})


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    return _PCAModel(digits.data).eval()


def _history():
    return [{"epoch": e, "phase": "mean" if e < 4 else "variance", "train_loss": 50.0 / e, "val_loss": 55.0 / e}
            for e in range(1, 6)]


def test_report_files_summary_and_numbers(tmp_path, digits, model):
    out = tmp_path / "rep"
    summary = write_report(model, digits, _history(), out, random_state=3, sections=NO_IWAE, resolution=40,
                           timings={"train_s": 1.5}, extra={"command": ["test"]})
    for f in ("magnification.png", "decoded_grid.png", "training_curves.png", "summary.json", "model.safetensors"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
        assert f in summary["files"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["random_state"] == 3 and summary["latentgeo_version"] == lg.__version__
    assert summary["command"] == ["test"]
    assert summary["sections"] == NO_IWAE
    assert summary["dataset"]["n_items"] == 300 and summary["dataset"]["data_dim"] == 64
    assert summary["dataset"]["n_classes"] == 10 and summary["dataset"]["item_shape"] == [8, 8]
    assert summary["model"]["latent_dim"] == 2
    assert summary["model"]["n_parameters"] == sum(p.numel() for p in model.parameters())
    tr = summary["training"]
    assert tr["epochs_run"] == 5 and tr["epochs_per_phase"] == {"mean": 3, "variance": 2}
    assert tr["final_train_loss"] == pytest.approx(10.0) and tr["best_val_loss"] == pytest.approx(11.0)
    assert summary["timings"]["train_s"] == 1.5
    assert all(summary["timings"][f"{s}_s"] >= 0 for s in NO_IWAE)

    # magnification statistics are the metric's own values at the codes
    metric = lg.PullbackMetric(model.decoder_for_analysis())
    with torch.no_grad():
        codes = model.encode_mean(digits.data)
        on = metric.magnification(codes).numpy()
    mag = summary["magnification"]
    assert mag["on_data"]["median"] == pytest.approx(float(np.median(on)), rel=1e-5)
    assert mag["on_data"]["n"] == 300
    # around the data the RBF variance makes the magnification much larger
    near = mag["near_data"]
    assert near["n"] > 0 and near["median"] > 2 * mag["on_data"]["median"]
    assert mag["near_on_median_ratio"] == pytest.approx(near["median"] / mag["on_data"]["median"])
    # the bands partition the grid
    assert sum(b["n"] for b in mag["profile"]) == 40 * 40
    assert mag["resolution"] == 40
    # the plotted extent contains every code
    x0, x1, y0, y1 = mag["extent"]
    assert x0 < codes[:, 0].min() and codes[:, 0].max() < x1 and y0 < codes[:, 1].min() and codes[:, 1].max() < y1

    # the checkpoint round-trips the model's weights
    sd, cfg = load_checkpoint(out / "model.safetensors")
    assert cfg["class"] == "PCAModel"
    torch.testing.assert_close(sd["dec"], model.dec.detach())


def test_report_pngs_are_images(tmp_path, digits, model):
    write_report(model, digits, _history(), tmp_path, sections=["magnification", "decoded_grid"], resolution=20,
                 checkpoint_name=None)
    img = matplotlib.image.imread(tmp_path / "magnification.png")
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_custom_section_hook(tmp_path, digits, model):
    calls = []

    @register_section("custom_test", order=35, description="test hook")
    def _custom(ctx):
        calls.append([s for s in ctx.summary if s in ("magnification", "decoded_grid")])
        fig, ax = ctx.magnification_figure(title="custom")
        from latentgeo.plotting import plot_curves

        plot_curves(ctx.codes[:2][None], ax=ax, color="white")
        ctx.save_figure(fig, "custom.png")
        classes, means = ctx.class_means()
        lab = torch.as_tensor(ctx.labels)
        for c, m in zip(classes, means):
            torch.testing.assert_close(m, ctx.codes[lab == c].mean(0))
        return {"n_codes": int(ctx.codes.shape[0]), "grid_shape": list(ctx.magnification_grid[0].shape),
                "n_classes": len(classes)}

    try:
        names = [s.name for s in report_sections()]
        assert names.index("magnification") < names.index("custom_test") < names.index("decoded_grid")
        with pytest.raises(ValueError, match="already registered"):
            register_section("custom_test", lambda ctx: None)
        s = write_report(model, digits, None, tmp_path, resolution=24, checkpoint_name=None,
                         sections=["magnification", "custom_test", "training"])
        # it ran after magnification and reused its cached grid
        assert calls == [["magnification"]]
        assert s["custom_test"] == {"n_codes": 300, "grid_shape": [24, 24], "n_classes": 10}
        assert "custom.png" in s["files"] and (tmp_path / "custom.png").is_file()
        assert s["training"] == {"skipped": "no training history given"}
    finally:
        unregister_section("custom_test")
    assert "custom_test" not in [s.name for s in report_sections()]


def test_failing_section_is_named(tmp_path, digits, model):
    register_section("broken_test", lambda ctx: 1 / 0)
    register_section("nondict_test", lambda ctx: [1, 2])
    try:
        with pytest.raises(ReportSectionError, match="broken_test.*ZeroDivisionError"):
            write_report(model, digits, None, tmp_path, sections=["broken_test"])
        with pytest.raises(ReportError, match="nondict_test.*expected a dict"):
            write_report(model, digits, None, tmp_path, sections=["nondict_test"])
    finally:
        unregister_section("broken_test")
        unregister_section("nondict_test")


def test_non_2d_latent_sections_say_skipped(tmp_path, digits):
    torch.manual_seed(0)
    m3 = _PCAModel(digits.data, latent_dim=3).eval()
    s = write_report(m3, digits, None, tmp_path, sections=["magnification", "decoded_grid", "model"],
                     checkpoint_name=None)
    assert "2-D" in s["magnification"]["skipped"] and "2-D" in s["decoded_grid"]["skipped"]
    assert s["model"]["latent_dim"] == 3
    assert not (tmp_path / "magnification.png").exists()


def test_report_bad_arguments(tmp_path, digits, model):
    with pytest.raises(ReportError, match="unknown report section"):
        write_report(model, digits, None, tmp_path, sections=["nope"])
    with pytest.raises(ReportError, match="resolution"):
        write_report(model, digits, None, tmp_path, resolution=1)
    with pytest.raises(ReportError, match="random_state"):
        write_report(model, digits, None, tmp_path, random_state=1.5)
    with pytest.raises(ReportError, match="dataset"):
        write_report(model, object(), None, tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ReportError, match="not a directory"):
        write_report(model, digits, None, f)
    with pytest.raises(ValueError, match="reserved"):
        register_section("files", lambda ctx: {})
    with pytest.raises(ValueError, match="identifier"):
        register_section("bad name", lambda ctx: {})


def test_max_points_subset_is_seeded(tmp_path, digits, model):
    a = write_report(model, digits, None, tmp_path / "a", sections=["dataset", "magnification"], max_points=50,
                     random_state=1, resolution=10, checkpoint_name=None)
    b = write_report(model, digits, None, tmp_path / "b", sections=["dataset", "magnification"], max_points=50,
                     random_state=1, resolution=10, checkpoint_name=None)
    assert a["dataset"]["n_analysed"] == 50 and a["magnification"]["on_data"]["n"] == 50
    assert a["magnification"]["on_data"] == b["magnification"]["on_data"]


def test_report_docstring_examples():
    import doctest

    import latentgeo.report as mod

    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_clustering_section_scores_both_labelings(tmp_path, digits, model):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    s = write_report(model, digits, None, tmp_path, random_state=0, sections=["clustering"], resolution=24,
                     clustering_k=3, clustering_max_codes=120)
    c = s["clustering"]
    assert (tmp_path / "clustering.png").stat().st_size > 0
    assert c["k"] == 3 and c["n_codes"] == 120 and c["algorithm"] == "graph"
    # the Euclidean scores are scikit-learn's KMeans on the same seeded subsample, recomputed here
    idx = np.sort(np.random.RandomState(0).choice(300, 120, replace=False))
    with torch.no_grad():
        X = model.encode_mean(digits.data)[torch.as_tensor(idx)].double().numpy()
    lab = KMeans(3, n_init=10, random_state=0).fit(X).labels_
    truth = digits.labels.numpy()[idx]
    assert c["euclidean"]["adjusted_rand"] == pytest.approx(adjusted_rand_score(truth, lab))
    assert c["euclidean"]["f_measure"] == pytest.approx(lg.clustering.f_measure(truth, lab))
    assert 0 < c["geodesic"]["f_measure"] <= 100 and c["geodesic"]["certified_distances"] == 0.0
    with pytest.raises(ReportError, match="clustering_algorithm"):
        write_report(model, digits, None, tmp_path / "bad", sections=["clustering"], resolution=16,
                     clustering_algorithm="exact")
