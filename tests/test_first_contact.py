"""First contact (issue 10): every public entry point refuses bad input clearly.

Property tests (hypothesis) over the public API: random shapes, dtypes (bool, int, float16,
float32, float64, complex), containers (tensor, numpy, list), NaN/inf placements, empty
batches, single points, huge and tiny magnitudes, unknown options. The contract each call is
held to: it either returns a finite result of the documented shape and of the model's dtype,
or raises ``ValueError``/``TypeError`` whose message names the argument — never a
torch-internal ``RuntimeError``, a NaN result, or a silent change of precision.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import latentgeo as lg  # noqa: E402
from latentgeo import _validation as V  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

DTYPES = [torch.bool, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64, torch.complex64]
MAGNITUDES = [0.0, 1e-30, 1e-8, 0.5, 3.0, 1e4, 1e30]


@st.composite
def latent_input(draw, d_choices=(0, 1, 2, 3, 4)):
    """``(value, meta)``: a candidate batch of latent codes and what it is."""
    rank = draw(st.sampled_from([1, 2, 2, 2, 3]))
    n = draw(st.sampled_from([0, 1, 1, 2, 5]))
    d = draw(st.sampled_from(d_choices))
    shape = {1: (d,), 2: (n, d), 3: (n, d, 2)}[rank]
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from(MAGNITUDES))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    poison = draw(st.sampled_from([None, None, None, math.nan, math.inf, -math.inf]))
    if poison is not None and base.numel():
        flat = base.reshape(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = poison
    if not base.numel() or not dtype.is_floating_point:
        poison = None
    if dtype == torch.bool:
        t = base > 0
    elif dtype.is_complex:
        t = base.to(dtype) * (1 + 1j)
    elif not dtype.is_floating_point:
        t = base.clamp(-1e6, 1e6).nan_to_num(0.0, 0.0, 0.0).round().to(dtype)
        poison = None
    else:
        t = base.to(dtype)
    container = draw(st.sampled_from(["tensor", "tensor", "numpy", "list"]))
    value = t if container == "tensor" else (t.numpy() if container == "numpy" else t.tolist())
    return value, {"shape": shape, "dtype": dtype, "container": container, "poison": poison, "scale": scale}


def _assert_named(exc: BaseException, *names: str) -> None:
    msg = str(exc)
    assert any(n in msg for n in names), f"{type(exc).__name__} does not name {names}: {msg}"
    assert "mat1 and mat2" not in msg or "refused" in msg, msg


def _valid_rows(meta, d, allow_single=True):
    shape = meta["shape"]
    if len(shape) == 1:
        return allow_single and shape[0] == d
    return len(shape) == 2 and shape[0] > 0 and shape[1] == d


def _mlp(d, k, dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, k)).to(dtype)


def _gaussian(dtype, latent_dim=None, d=2):
    mean = _mlp(d, 3, dtype)
    torch.manual_seed(1)
    std_net = nn.Sequential(nn.Linear(d, 3), nn.Softplus()).to(dtype)
    return lg.GaussianDecoder(mean, lambda z: std_net(z) + 0.1, latent_dim=latent_dim)


# ---------------------------------------------------------------------------------------
# the validation layer itself
# ---------------------------------------------------------------------------------------
@SETTINGS
@given(latent_input(), st.sampled_from([None, torch.float32, torch.float64]))
def test_as_latent_batch_contract(inp, dtype):
    value, meta = inp
    try:
        z, single = V.as_latent_batch(value, 2, name="codes", dtype=dtype)
    except (ValueError, TypeError) as exc:
        _assert_named(exc, "codes")
        if meta["dtype"].is_complex:
            assert isinstance(exc, TypeError) and "complex" in str(exc)
        return
    assert not meta["dtype"].is_complex
    assert _valid_rows(meta, 2) and meta["poison"] is None
    assert z.dim() == 2 and z.shape[1] == 2 and bool(torch.isfinite(z).all())
    assert single == (len(meta["shape"]) == 1)
    if meta["dtype"].is_floating_point and meta["container"] == "tensor":
        assert z.dtype == meta["dtype"]  # a floating tensor is never converted silently
    elif dtype is not None:
        assert z.dtype == dtype  # lists, numpy, integers: the model's dtype
    if meta["container"] == "tensor" and meta["dtype"].is_floating_point:
        assert torch.equal(z.reshape(-1), torch.as_tensor(value).reshape(-1))


def test_as_latent_batch_names_the_given_dtype():
    with pytest.raises(TypeError, match="complex64"):
        V.as_latent_batch(torch.zeros(2, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex"):
        V.as_latent_batch(np.zeros((2, 2), dtype=np.complex128))
    with pytest.raises(TypeError, match="str"):
        V.as_latent_batch("codes")
    with pytest.raises(TypeError, match="<U1|dtype"):
        V.as_latent_batch([["a", "b"]])
    z, _ = V.as_latent_batch(np.zeros((2, 2)))  # numpy float64 keeps float64
    assert z.dtype == torch.float64
    z, _ = V.as_latent_batch([[1, 2]], dtype=torch.float64)
    assert z.dtype == torch.float64 and z.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    "fn, exc, words",
    [
        (lambda: V.check_int(True, "k"), TypeError, "k must be an integer"),
        (lambda: V.check_int(2.5, "k"), TypeError, "k must be an integer"),
        (lambda: V.check_int(0, "k", minimum=1), ValueError, "k must be >= 1, got 0"),
        (lambda: V.check_real("1", "tol"), TypeError, "tol must be a real number"),
        (lambda: V.check_real(math.nan, "tol"), ValueError, "tol must be finite"),
        (lambda: V.check_real(0.0, "tol", 0.0, strict_min=True), ValueError, "tol must be > 0.0"),
        (lambda: V.check_bool(1, "progress"), TypeError, "progress must be True or False"),
        (lambda: V.check_choice("fast", "method", ("a", "b")), ValueError, "unknown method 'fast'"),
        (lambda: V.check_on_failure("skip"), ValueError, "unknown on_failure 'skip'"),
    ],
)
def test_scalar_checks_name_argument_expected_and_given(fn, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(".", r"\.")):
        fn()


def test_infer_latent_dim_only_when_certain():
    assert V.infer_latent_dim([nn.Sequential(nn.Linear(3, 4), nn.Tanh())]) == 3
    assert V.infer_latent_dim([nn.Sequential(nn.Sequential(nn.Linear(5, 4)), nn.Tanh()), nn.Linear(5, 2)]) == 5
    assert V.infer_latent_dim([nn.Linear(5, 2), nn.Linear(4, 2)]) is None  # disagree
    assert V.infer_latent_dim([nn.Sequential(nn.Tanh(), nn.Linear(3, 4))]) is None  # not certain
    assert V.infer_latent_dim([]) is None


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
METRICS = {
    "gaussian64": lambda: lg.PullbackMetric(_gaussian(torch.float64)),
    "gaussian32-latent_dim": lambda: lg.PullbackMetric(_gaussian(torch.float32, latent_dim=2)),
    "function-decoder": lambda: lg.PullbackMetric(lg.DeterministicDecoder(lambda z, f=_mlp(2, 3, torch.float64): f(z))),
    "bernoulli-fisher": lambda: lg.PullbackMetric(lg.BernoulliDecoder(_mlp(2, 4, torch.float64)), kind="fisher"),
}


def _model_dtype(metric):
    return V.model_dtype(metric) or torch.get_default_dtype()


@SETTINGS
@given(st.sampled_from(sorted(METRICS)), latent_input(), st.sampled_from(["tensor", "magnification", "log_volume", "norm"]))
def test_metric_entry_points_contract(which, inp, method):
    metric = METRICS[which]()
    value, meta = inp
    dtype = _model_dtype(metric)
    try:
        if method == "norm":
            out = metric.norm(value, value)
        else:
            out = getattr(metric, method)(value)
    except (ValueError, TypeError) as exc:
        _assert_named(exc, "z", "u", "v", "decoder")
        if meta["dtype"].is_complex:
            assert isinstance(exc, TypeError)
        elif meta["poison"] is not None and _valid_rows(meta, 2):
            assert "NaN" in str(exc) or "inf" in str(exc)
        elif _valid_rows(meta, 2) and meta["container"] == "tensor" and meta["dtype"].is_floating_point \
                and meta["dtype"] != dtype:
            assert "dtype" in str(exc) and str(meta["dtype"]) in str(exc)  # names what the user passed
        elif _valid_rows(meta, 2) and meta["scale"] < 1e20:
            pytest.fail(f"refused valid input {meta}: {exc}")
        return
    assert _valid_rows(meta, 2) and meta["poison"] is None and not meta["dtype"].is_complex
    n = 1 if len(meta["shape"]) == 1 else meta["shape"][0]
    want = {"tensor": (n, 2, 2), "magnification": (n,), "log_volume": (n,), "norm": (n,)}[method]
    if len(meta["shape"]) == 1:
        want = want[1:]
    assert tuple(out.shape) == want
    assert out.dtype == dtype, (out.dtype, dtype, meta)
    if method == "log_volume":
        assert not bool(torch.isnan(out).any())  # -inf marks a singular metric; NaN never
    else:
        assert bool(torch.isfinite(out).all()), (out, meta)


@pytest.mark.parametrize("make", [
    lambda: lg.PullbackMetric(lg.DeterministicDecoder(lambda z, f=_mlp(2, 3, torch.float32): f(z))),
    lambda: lg.PullbackMetric(lg.DeterministicDecoder(_mlp(2, 3, torch.float32))),
    lambda: lg.PullbackMetric(lg.GaussianDecoder(model=lambda z, f=_mlp(2, 6, torch.float32): (f(z)[:, :3], f(z)[:, 3:].exp()))),
])
def test_wrong_latent_width_is_named_not_mat1_mat2(make):
    metric = make()
    with pytest.raises(ValueError, match=r"z .*(shape \(3, 4\)|latent dimension 4)") as info:
        metric.tensor(torch.zeros(3, 4))
    assert "expects 2" in str(info.value) or "refused" in str(info.value)


def test_integer_and_list_codes_take_the_decoders_dtype():
    m64 = METRICS["gaussian64"]()
    assert m64.tensor(torch.zeros(3, 2, dtype=torch.int64)).dtype == torch.float64
    assert m64.tensor([[0.0, 1.0]]).dtype == torch.float64
    assert m64.tensor(np.zeros((2, 2), dtype=np.float32)).dtype == torch.float64  # numpy: converted to the model's
    with pytest.raises(ValueError, match="torch.float32.*float64"):
        m64.tensor(torch.zeros(3, 2))  # a float32 tensor is not silently widened
    m32 = METRICS["gaussian32-latent_dim"]()
    with pytest.raises(ValueError, match="torch.float16"):
        m32.tensor(torch.zeros(3, 2, dtype=torch.float16))
    # a conversion that would change the value of an integer code is not hidden either
    ref = m64.tensor(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    assert torch.equal(m64.tensor(torch.tensor([[1, -2]])), ref)


@FEW
@given(latent_input(), st.sampled_from([torch.float32, torch.float64]))
def test_metric_field_contract(inp, dtype):
    field = lg.MetricField(lambda z: (1 + (z * z).sum(-1))[:, None, None] * torch.eye(2, dtype=z.dtype), latent_dim=2)
    value, meta = inp
    try:
        out = field.tensor(value)
    except (ValueError, TypeError) as exc:
        _assert_named(exc, "z", "metric")
        return
    assert _valid_rows(meta, 2) and meta["poison"] is None
    assert out.shape[-2:] == (2, 2)
    assert bool(torch.isfinite(out).all()) or meta["scale"] >= 1e20


def test_reprs_say_what_objects_are():
    dec = _gaussian(torch.float64)
    r = repr(dec)
    assert r.startswith("GaussianDecoder(") and "latent_dim=2" in r and "float64" in r and "object at 0x" not in r
    r = repr(lg.DeterministicDecoder(lambda z: z, latent_dim=3))
    assert r.startswith("DeterministicDecoder(") and "latent_dim=3" in r
    assert "PullbackMetric(GaussianDecoder" in repr(lg.PullbackMetric(dec))
    vae = lg.VAE(4, 2, hidden=(4,), random_state=0)
    tr = lg.Trainer(vae, lg.TrainConfig(epochs=1, progress=False))
    assert "object at 0x" not in repr(tr) and repr(tr).startswith("Trainer(")
    for obj in (lg.TrainConfig(), lg.load_dataset("moons", n_samples=20), vae):
        assert "object at 0x" not in repr(obj)


# ---------------------------------------------------------------------------------------
# models, training, datasets, checkpoints
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae():
    return lg.VAE(4, 2, hidden=(8,), random_state=0).eval()


@FEW
@given(latent_input(d_choices=(3, 4, 5)))
def test_encode_mean_and_iwae_contract(vae, inp):
    value, meta = inp
    for name, call in (("encode_mean", lambda: vae.encode_mean(value)),
                       ("iwae", lambda: lg.iwae_log_likelihood(vae, value, k=2, random_state=0))):
        try:
            out = call()
        except (ValueError, TypeError) as exc:
            _assert_named(exc, "x", "data")
            continue
        assert _valid_rows(meta, 4) and meta["poison"] is None and not meta["dtype"].is_complex, (name, meta)
        n = 1 if len(meta["shape"]) == 1 else meta["shape"][0]
        if name == "iwae":
            assert out.shape == (n,) and not bool(torch.isnan(out).any())
        else:
            assert out.shape[-1] == 2 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"k": 0}, ValueError, "k"),
    ({"k": 2.5}, (TypeError, ValueError), "k"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"random_state": "a"}, (TypeError, ValueError), "random_state"),
])
def test_iwae_refuses_bad_options(vae, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        lg.iwae_log_likelihood(vae, torch.rand(3, 4), **kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"epochs": -1}, "epochs"),
    ({"epochs": 1.5}, "epochs"),
    ({"batch_size": -1}, "batch_size"),
    ({"lr": math.nan}, "lr"),
    ({"lr": -1.0}, "lr"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"variance": "wide"}, "variance"),
    ({"progress": "yes"}, "progress"),
    ({"patience": 0}, "patience"),
    ({"num_threads": 0}, "num_threads"),
])
def test_train_vae_refuses_bad_options(kwargs, words):
    vae = lg.VAE(4, 2, hidden=(4,), random_state=0)
    with pytest.raises((ValueError, TypeError), match=words):
        lg.train_vae(vae, torch.rand(20, 4), **{"epochs": 1, "progress": False, **kwargs})
    with pytest.raises((ValueError, TypeError), match="unknown training options"):
        lg.Trainer(vae, lg.TrainConfig(progress=False), epoch=3)


@pytest.mark.parametrize("data, words", [
    (torch.rand(20, 5), "5"),
    (torch.full((20, 4), math.nan), "NaN"),
    (torch.rand(0, 4), "empty|0"),
    ("digits", "data"),
    (torch.rand(20, 4, dtype=torch.complex64), "complex|dtype"),
])
def test_train_vae_refuses_bad_data(data, words):
    vae = lg.VAE(4, 2, hidden=(4,), random_state=0)
    with pytest.raises((ValueError, TypeError), match=words):
        lg.train_vae(vae, data, epochs=1, progress=False)


@pytest.mark.parametrize("make, words", [
    (lambda: lg.VAE(0, 2), "data_dim"),
    (lambda: lg.VAE(4, 0), "latent_dim"),
    (lambda: lg.VAE(4, 2, latent="sphere-ish"), "latent"),
    (lambda: lg.VAE(4, 2, likelihood="poisson"), "likelihood"),
    (lambda: lg.VAE(4, 2, hidden=(0,)), "hidden"),
    (lambda: lg.VAE(4, 2, activation="swish2"), "activation"),
    (lambda: lg.load_dataset("mnist"), "mnist"),
    (lambda: lg.load_dataset("moons", n_samples=0), "n_samples"),
    (lambda: lg.load_dataset("moons", colour="red"), "colour"),
])
def test_constructors_refuse_bad_arguments(make, words):
    with pytest.raises((ValueError, TypeError), match=words):
        make()


def test_checkpoint_bytes_are_deterministic_and_mode_follows_umask(tmp_path):
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import torch, sys; from latentgeo.checkpoint import save_checkpoint;"
        "save_checkpoint(sys.argv[1], {'w': torch.arange(6.).reshape(2, 3), 'b': torch.ones(3)},"
        " {'class': 'Demo', 'b': 1, 'a': [1, 2], 'z': {'y': 1, 'x': 2}})"
    )
    digests = set()
    for i in range(3):  # separate processes: safetensors' hash-map order differs between them
        f = tmp_path / f"c{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(f)], check=True, env={**os.environ, "PYTHONHASHSEED": str(i)})
        digests.add(hashlib.sha256(f.read_bytes()).hexdigest())
        assert lg.load_checkpoint(f)[1]["z"] == {"y": 1, "x": 2}
    assert len(digests) == 1
    old = os.umask(0o027)
    try:
        f = tmp_path / "m.safetensors"
        lg.save_checkpoint(f, {"w": torch.ones(1)}, {})
        assert (f.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    os.chmod(f, 0o604)
    lg.save_checkpoint(f, {"w": torch.zeros(1)}, {})  # a replaced file keeps its mode
    assert (f.stat().st_mode & 0o777) == 0o604


@pytest.mark.parametrize("state, config, words", [
    ({"w": [1, 2]}, {}, "state_dict"),
    ({"": torch.ones(1)}, {}, "keys"),
    ({"w": torch.ones(1)}, {"x": math.nan}, "JSON"),
    ({"w": torch.ones(1)}, ["not", "a", "dict"], "config"),
])
def test_save_checkpoint_refuses_bad_input_and_writes_nothing(tmp_path, state, config, words):
    with pytest.raises(ValueError, match=words):
        lg.save_checkpoint(tmp_path / "c.safetensors", state, config)
    assert list(tmp_path.iterdir()) == []


def test_report_folder_is_complete_or_absent(tmp_path):
    from latentgeo.report import ReportSection

    def broken(ctx):
        fig, ax = ctx.new_figure()
        ctx.save_figure(fig, "first.png")
        raise RuntimeError("section broke midway")

    vae = lg.VAE(4, 2, hidden=(4,), random_state=0)
    ds = lg.load_dataset("moons", n_samples=30, dim=4)
    out = tmp_path / "rep"
    with pytest.raises(Exception, match="broke midway"):
        lg.write_report(vae, ds, None, out, sections=[ReportSection("broken", broken, order=1)])
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(Exception, match="broke midway"):
        lg.write_report(vae, ds, None, out, sections=[ReportSection("broken", broken, order=1)])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    import os

    old = os.umask(0o022)
    try:
        lg.write_report(vae, ds, None, out, sections=["dataset", "magnification"], resolution=8)
    finally:
        os.umask(old)
    files = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert files["summary.json"] == 0o644 and files["magnification.png"] == 0o644, files
    assert not any(n.startswith(".report-partial") for n in files)


@pytest.mark.parametrize("scale", [0.3, 1.3, 5.0])
@pytest.mark.parametrize("with_legend", [True, False])
def test_log_colour_bar_tick_labels_do_not_overlap(scale, with_legend):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from latentgeo.plotting import plot_magnification

    # √det M = exp(scale · ln10 · |z|²/8) on [-2, 2]²: spans `scale` decades
    c = scale * math.log(10) / 8
    field = lg.MetricField(lambda z: torch.exp(c * (z * z).sum(-1))[:, None, None] * torch.eye(2, dtype=z.dtype), 2)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(4, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    codes = torch.tensor([[-2.0, -2.0], [2.0, 2.0], [0.0, 0.0]])
    plot_magnification(field, codes=codes, labels=np.array([0, 1, 1]) if with_legend else None, ax=ax,
                       resolution=20, margin=0.0)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    cax = [a for a in fig.axes if a is not ax][0]
    horizontal = with_legend
    labels = [t for t in (cax.get_xticklabels(which="both") if horizontal else cax.get_yticklabels(which="both"))
              if t.get_text() and t.get_visible()]
    assert len(labels) >= 2, [t.get_text() for t in labels]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0 if horizontal else b.y0)
    for a, b in zip(boxes, boxes[1:]):
        assert (a.x1 <= b.x0) if horizontal else (a.y1 <= b.y0), [t.get_text() for t in labels]


def test_rbf_variance_magnification_is_a_ring_not_a_bright_outside():
    """What the docs now say: moderate on the data, largest just outside it, small far away
    (σ levels off, so Jσ → 0 and the expected metric falls back to the mean-only one)."""
    torch.manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    codes = centres[torch.arange(150) % 3] + 0.4 * torch.randn(150, 2)
    mean_net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8)).eval().requires_grad_(False)
    data = mean_net(codes) + 0.05 * torch.randn(150, 8)
    dec = lg.fit_rbf_variance(mean_net, codes, data, n_centers=9, n_iter=200, random_state=0)
    g = torch.linspace(-12, 12, 61)
    Z = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    r = torch.cdist(Z, codes).min(1).values
    mag = lg.PullbackMetric(dec).magnification(Z)
    mag_mean = lg.PullbackMetric(dec, kind="mean").magnification(Z)
    on, ring, far = (mag[(r >= lo) & (r < hi)].median() for lo, hi in ((0, 0.3), (0.5, 1.0), (6, 20)))
    assert ring > 3 * on and ring > 30 * far, (on, ring, far)
    k = r >= 6
    assert torch.allclose(mag[k], mag_mean[k], rtol=0.05)  # far away σ adds (almost) nothing
