"""`latentgeo analyze` and report.Subject: any decoder at any codes, the VAE optional."""

import json
import pickle
import textwrap

import numpy as np
import pytest
import torch

import latentgeo as lg
from latentgeo.cli import main
from latentgeo.report import ReportError, Subject, write_report

# small, fast settings for the geometric sections (the defaults target a real report)
FAST = ["--resolution", "24", "--report-option", "geodesic_grid=15", "--report-option", "geodesic_max_nodes=48",
        "--report-option", "geodesic_max_iter=8", "--report-option", "geodesic_tol=1e-4",
        "--report-option", "geodesic_classes=3", "--report-option", "grid_n=6", "--report-option", "walks_walkers=4",
        "--report-option", "walks_steps=15", "--quiet"]
FAST_OPTS = dict(resolution=24, geodesic_grid=15, geodesic_max_nodes=48, geodesic_max_iter=8, geodesic_tol=1e-4,
                 geodesic_classes=3, grid_n=6, walks_walkers=4, walks_steps=15)

FACTORIES = textwrap.dedent('''
    import torch

    def _net(out=16):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(2, 24), torch.nn.Tanh(), torch.nn.Linear(24, out)).double().eval()

    class MeanStd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = _net()
        def forward(self, z):
            return self.mean(z), 0.05 + 0.1 * z.pow(2).sum(1, keepdim=True).expand(-1, 16)

    def gaussian():
        return MeanStd()

    def mean_net():
        return _net()

    def wrapped():
        import latentgeo as lg
        return lg.DeterministicDecoder(_net())

    def not_a_decoder():
        return "a decoder"

    def returns_dict():
        return lambda z: {"mean": z}

    def broken():
        raise RuntimeError("factory exploded")

    NOT_CALLABLE = 3
''')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze_in")
    (d / "my_decoders.py").write_text(FACTORIES)
    (d / "bad_import.py").write_text("import no_such_package_xyz\n")
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.8]], dtype=torch.float64)
    labels = torch.arange(90) % 3
    codes = centres[labels] + 0.3 * torch.randn(90, 2, generator=g, dtype=torch.float64)
    np.save(d / "codes.npy", codes.numpy())
    np.save(d / "labels.npy", labels.numpy())
    np.save(d / "labels_short.npy", labels.numpy()[:50])
    np.save(d / "codes3.npy", np.random.default_rng(0).normal(size=(90, 3)))
    np.save(d / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    torch.save(codes, d / "codes.pt")
    torch.save({"codes": codes}, d / "dict.pt")
    with open(d / "pickled.pt", "wb") as fh:
        pickle.dump(_Evil(), fh)
    return d, codes, labels


class _Evil:
    def __reduce__(self):  # would run code if unpickled
        return (print, ("unpickled!",))


def _mean_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 24), torch.nn.Tanh(), torch.nn.Linear(24, 16)).double().eval()


def test_analyze_gaussian_module(files, tmp_path, capsys, monkeypatch):
    d, codes, labels = files
    monkeypatch.chdir(d)  # package.module:factory is imported from the current folder, as `python -m` does
    out = tmp_path / "rep"
    rc = main(["analyze", "--decoder", "my_decoders:gaussian", "--codes", "codes.npy", "--labels", "labels.npy",
               "--out", str(out), *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "index.html" in cap.out
    s = json.loads((out / "summary.json").read_text())
    for f in ("magnification.png", "geodesics.png", "index.html", "summary.json"):
        assert (out / f).is_file() and f in s["files"], f
    assert s["dataset"]["n_items"] == 90 and s["dataset"]["n_classes"] == 3 and s["dataset"]["latent_dim"] == 2
    assert s["dataset"]["decoder"] == "GaussianDecoder"
    for sec in ("model", "training", "checkpoint", "iwae", "training_curves"):
        assert "skipped" in s[sec], sec
    assert not (out / "model.safetensors").exists()
    # the numbers are the metric's: the expected metric of the (mean, std) module, computed here independently
    import importlib.util

    spec = importlib.util.spec_from_file_location("_dec_ref", d / "my_decoders.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.gaussian()
    with torch.no_grad():
        z = codes.requires_grad_(False)
        jac = torch.func.vmap(torch.func.jacrev(lambda x: torch.cat(net(x[None]), 1)[0]))(z)  # (N, 32, 2)
        ref = torch.linalg.det(jac.transpose(1, 2) @ jac).sqrt().numpy()
    assert s["magnification"]["on_data"]["median"] == pytest.approx(float(np.median(ref)), rel=1e-6)
    walks = s["walks"]["methods"]  # every walk ran on the user's decoder; MMALA needs an encoder posterior
    assert {"euclidean", "lso", "brownian", "geodesic"} <= set(walks) and "skipped" in walks["mmala"]
    assert all(0 <= walks[m]["within_support"] <= 1 for m in ("euclidean", "lso", "brownian", "geodesic"))
    assert (out / "walks.png").is_file()
    geo = s["geodesics"]
    assert geo["n_pairs"] == 3 and geo["n_converged"] >= 1
    assert all(r <= 1 + 1e-3 for r, c in zip(geo["length_ratio"], geo["converged"]) if c)  # shorter than the line


def test_analyze_rbf_variance_from_file_factory(files, tmp_path, capsys):
    d, codes, labels = files
    data = _mean_net()(codes).detach() + 0.02 * torch.randn(90, 16, generator=torch.Generator().manual_seed(1),
                                                            dtype=torch.float64)
    torch.save(data.reshape(90, 4, 4), tmp_path / "data.pt")
    out = tmp_path / "rep"
    rc = main(["analyze", "--decoder", f"{d / 'my_decoders.py'}:mean_net", "--codes", str(d / "codes.pt"),
               "--data", str(tmp_path / "data.pt"), "--rbf-variance", "--rbf-centers", "6", "--out", str(out),
               "--skip", "geodesics", *FAST])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"]["item_shape"] == [4, 4] and s["dataset"]["data_dim"] == 16
    assert (out / "decoded_grid.png").is_file()
    ref = lg.fit_rbf_variance(_mean_net(), codes, data, n_centers=6, random_state=0)
    on = lg.PullbackMetric(ref).magnification(codes).detach().numpy()
    assert s["magnification"]["on_data"]["median"] == pytest.approx(float(np.median(on)), rel=1e-5)
    # the RBF variance grows off the data: the map is brighter near the codes than on them
    assert s["magnification"]["near_on_median_ratio"] > 1.5


@pytest.mark.parametrize("args, needle", [
    (["--decoder", "no_such_module_xyz:f"], "importing 'no_such_module_xyz' failed: ModuleNotFoundError"),
    (["--decoder", "bad_import:f"], "importing 'bad_import' failed"),
    (["--decoder", "my_decoders"], "MODULE:FACTORY"),
    (["--decoder", "my_decoders:nope"], "has no attribute 'nope'"),
    (["--decoder", "my_decoders:NOT_CALLABLE"], "not a callable factory"),
    (["--decoder", "my_decoders:broken"], "factory exploded"),
    (["--decoder", "my_decoders:not_a_decoder"], "the factory returned a str"),
    (["--decoder", "my_decoders:returns_dict"], "returned a dict"),
    (["--decoder", "my_decoders:wrapped", "--rbf-variance", "--data", "codes.npy"], "complete decoder"),
    (["--decoder", "my_decoders:mean_net", "--rbf-variance"], "needs --data"),
    (["--decoder", "my_decoders:gaussian", "--codes", "codes3.npy"], "cannot decode codes of width 3"),
    (["--decoder", "my_decoders:wrapped", "--codes", "codes3.npy"], "cannot decode codes of width 3"),
    (["--decoder", "my_decoders:gaussian", "--labels", "labels_short.npy"], "expected 90 labels"),
    (["--decoder", "my_decoders:gaussian", "--codes", "labels.npy"], "shape (N, d)"),
    (["--decoder", "my_decoders:gaussian", "--codes", "objects.npy"], "not a plain numeric .npy"),
    (["--decoder", "my_decoders:gaussian", "--codes", "dict.pt"], "holds a dict; expected one tensor"),
    (["--decoder", "my_decoders:gaussian", "--codes", "pickled.pt"], "cannot load"),
    (["--decoder", "my_decoders:gaussian", "--codes", "missing.npy"], "no file missing.npy"),
    (["--decoder", "my_decoders:gaussian", "--codes", "my_decoders.py"], "must be a .npy or .pt"),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_analyze_bad_input_exit_2_one_line(files, tmp_path, capsys, monkeypatch, args, needle):
    d, _, _ = files
    monkeypatch.chdir(d)
    argv = ["analyze", "--codes", "codes.npy", "--out", str(tmp_path / "rep"), "--quiet", *args]
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2
    err = cap.err.strip()
    assert needle in err, err
    assert err.startswith("latentgeo analyze: error:") and "\n" not in err and "Traceback" not in err
    assert "unpickled!" not in cap.out + cap.err
    assert not (tmp_path / "rep" / "summary.json").exists()


# -- the Python side: Subject -----------------------------------------------------------------


def test_subject_from_model_gives_the_model_report(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    ds = lg.Dataset(torch.tensor(x[:120] / 16.0, dtype=torch.float32), torch.tensor(y[:120]), (8, 8), "digits", {})
    model = lg.VAE(64, 2, hidden=(16,), random_state=0).eval()  # untrained: the report's numbers need no training
    secs = ["dataset", "model", "magnification", "decoded_grid", "iwae"]
    opts = dict(sections=secs, checkpoint_name=None, iwae_points=20, iwae_samples=4, **FAST_OPTS)
    a = write_report(model, ds, None, tmp_path / "a", **opts)
    sub = Subject.from_model(model, ds)
    assert sub.model is model and sub.name == "digits" and sub.item_shape == (8, 8)
    b = write_report(sub, None, None, tmp_path / "b", **opts)
    assert a["magnification"]["on_data"] == b["magnification"]["on_data"]
    assert a["model"] == b["model"] and a["iwae"]["log_likelihood"] == pytest.approx(b["iwae"]["log_likelihood"])
    assert b["dataset"]["n_items"] == 120 and b["dataset"]["n_classes"] == 10
    with pytest.raises(ReportError, match="dataset=None"):
        write_report(sub, ds, None, tmp_path / "c")


def test_subject_without_labels_or_data(tmp_path):
    dec = lg.DeterministicDecoder(_mean_net())
    codes = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = write_report(Subject(dec, codes, item_shape=(4, 4)), None, None, tmp_path, **FAST_OPTS)
    assert "labels" in s["geodesics"]["skipped"] and "skipped" in s["iwae"]
    assert s["decoded_grid"]["n"] == 6 and (tmp_path / "decoded_grid.png").is_file()  # a deterministic decoder's images
    net = _mean_net()
    jac = torch.func.vmap(torch.func.jacrev(lambda z: net(z[None])[0]))(codes)
    ref = torch.linalg.det(jac.transpose(1, 2) @ jac).sqrt().detach().numpy()
    assert s["magnification"]["on_data"]["median"] == pytest.approx(float(np.median(ref)), rel=1e-6)


def test_subject_validation():
    dec = lg.DeterministicDecoder(_mean_net(), latent_dim=2)
    codes = torch.zeros(10, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="latentgeo Decoder"):
        Subject(_mean_net(), codes)
    with pytest.raises(ValueError, match="codes"):
        Subject(dec, torch.zeros(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        Subject(dec, codes, labels=np.zeros(9, int))
    with pytest.raises(ValueError, match="integer class labels"):
        Subject(dec, codes, labels=np.full(10, 0.5))
    with pytest.raises(ValueError, match="one row per code"):
        Subject(dec, codes, data=torch.zeros(9, 16))
    with pytest.raises(ValueError, match="dtype"):
        Subject(dec, codes.float())
    with pytest.raises(ValueError, match="item_shape"):
        Subject(dec, codes, data=torch.zeros(10, 16), item_shape=(3, 3))
    s = Subject(dec, np.zeros((10, 2)))  # arrays take the decoder's dtype
    assert s.codes.dtype == torch.float64 and "10 codes in 2-D" in repr(s)


# -- latentgeo cluster ---------------------------------------------------------------------------


def test_cluster_writes_labels_of_the_blobs(files, tmp_path, capsys, monkeypatch):
    from sklearn.metrics import adjusted_rand_score

    d, codes, labels = files
    monkeypatch.chdir(d)
    out, centers = tmp_path / "labels.npy", tmp_path / "centers.npy"
    rc = main(["cluster", "--decoder", "my_decoders:wrapped", "--codes", "codes.npy", "--k", "3", "--out", str(out),
               "--centers", str(centers), "--centroid", "medoid", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    got = np.load(out, allow_pickle=False)
    assert got.shape == (90,) and got.dtype == np.int64
    assert adjusted_rand_score(labels.numpy(), got) == 1.0  # three well-separated blobs
    c = np.load(centers, allow_pickle=False)
    assert c.shape == (3, 2)
    # medoids are codes
    assert all(np.isclose(codes.numpy(), row).all(1).any() for row in c)
    assert "3 clusters of sizes" in cap.out
    # the graph algorithm (no ODE solves) finds the same blobs
    out2 = tmp_path / "labels_graph.npy"
    rc = main(["cluster", "--decoder", "my_decoders:wrapped", "--codes", "codes.npy", "--k", "3", "--out", str(out2),
               "--algorithm", "graph", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert adjusted_rand_score(labels.numpy(), np.load(out2, allow_pickle=False)) == 1.0


@pytest.mark.parametrize("args, needle", [
    (["--k", "91"], "exceeds the number of codes (90)"),
    (["--k", "2", "--out", "labels.txt"], "--out must be a .npy file"),
    (["--k", "2", "--codes", "codes3.npy"], "cannot decode codes of width 3"),
])
def test_cluster_bad_input_exit_2(files, tmp_path, capsys, monkeypatch, args, needle):
    d, _, _ = files
    monkeypatch.chdir(d)
    argv = ["cluster", "--decoder", "my_decoders:wrapped", "--codes", "codes.npy", "--out", str(tmp_path / "l.npy"),
            "--quiet", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("latentgeo cluster: error:") and "\n" not in err
    assert not (tmp_path / "l.npy").exists()
