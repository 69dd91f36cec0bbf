"""Closed-form checks of the pullback metric core and its input validation."""

import math
import warnings

import pytest
import torch

import latentgeo as lg

f64 = torch.float64


def inv_stereo(z):
    """Inverse stereographic projection R^2 -> S^2 (from the north pole)."""
    s = (z * z).sum(1, keepdim=True)
    return torch.cat([2 * z / (1 + s), (s - 1) / (1 + s)], 1)


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_linear_decoder_metric_is_AtA(mode):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 3, generator=g, dtype=f64)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T), mode=mode)
    z = torch.randn(11, 3, generator=g, dtype=f64)
    G = metric.tensor(z)
    assert G.shape == (11, 3, 3)
    torch.testing.assert_close(G, (A.T @ A).expand(11, 3, 3), rtol=0, atol=1e-13)
    vol = math.sqrt(torch.linalg.det(A.T @ A).item())
    torch.testing.assert_close(metric.magnification(z), torch.full((11,), vol, dtype=f64))
    torch.testing.assert_close(metric.log_volume(z), torch.full((11,), math.log(vol), dtype=f64))


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_inverse_stereographic_metric(mode):
    metric = lg.PullbackMetric(lg.DeterministicDecoder(inv_stereo), mode=mode)
    z = torch.randn(50, 2, dtype=f64) * 3
    s = (z * z).sum(1)
    expected = (4 / (1 + s) ** 2)[:, None, None] * torch.eye(2, dtype=f64)
    torch.testing.assert_close(metric.tensor(z), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(metric.magnification(z), 4 / (1 + s) ** 2)


def test_single_point_and_chunking_agree():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 9)).double()
    z = torch.randn(10, 3, dtype=f64)
    full = lg.PullbackMetric(lg.DeterministicDecoder(net), chunk_size=None).tensor(z)
    chunked = lg.PullbackMetric(lg.DeterministicDecoder(net), chunk_size=3).tensor(z)
    torch.testing.assert_close(full, chunked, rtol=0, atol=1e-14)
    one = lg.PullbackMetric(lg.DeterministicDecoder(net)).tensor(z[4])
    assert one.shape == (3, 3)
    torch.testing.assert_close(one, full[4])


def test_expected_metric_adds_sigma_term():
    # mean z -> Az, std z -> exp(Bz): M = AᵀA + Σ_k σ_k² b_k b_kᵀ
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 2, generator=g, dtype=f64)
    B = torch.randn(4, 2, generator=g, dtype=f64)
    dec = lg.GaussianDecoder(mean=lambda z: z @ A.T, std=lambda z: torch.exp(z @ B.T))
    z = torch.randn(5, 2, generator=g, dtype=f64)
    sd = torch.exp(z @ B.T)  # (5, 4)
    expected = A.T @ A + torch.einsum("nk,ki,kj->nij", sd**2, B, B)
    torch.testing.assert_close(lg.PullbackMetric(dec).tensor(z), expected)
    torch.testing.assert_close(lg.PullbackMetric(dec, kind="mean").tensor(z), (A.T @ A).expand(5, 2, 2))
    # single callable returning both heads
    dec2 = lg.GaussianDecoder(model=lambda z: (z @ A.T, torch.exp(z @ B.T)))
    torch.testing.assert_close(lg.PullbackMetric(dec2).tensor(z), expected)


def test_curve_length_and_energy_conventions():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(inv_stereo))
    # the unit circle maps to the equator: a half turn has length pi
    t = torch.linspace(0, math.pi, 2001, dtype=f64)
    curve = torch.stack([torch.cos(t), torch.sin(t)], 1)
    L = metric.length(curve)
    assert abs(L.item() - math.pi) < 1e-6
    # constant speed: energy = length^2
    assert abs(metric.energy(curve).item() - L.item() ** 2) < 1e-5
    batch = torch.stack([curve, 0.5 * curve])
    assert metric.length(batch).shape == (2,)


def test_richardson_length_reuses_the_decoder_points():
    """The extrapolated length (chord sums at T and (T+1)/2 points) equals two ``length`` calls, and a
    pullback metric evaluates its decoder once per point (the coarse sum reuses the fine points);
    on the equator's half turn it is closer to π than either chord sum."""
    calls = []

    def counted(z):
        calls.append(z.shape[0])
        return inv_stereo(z)

    dec = lg.GaussianDecoder(mean=lambda z: z[:, :1], std=lambda z: torch.exp(z[:, 1:2]))
    t = torch.linspace(0, math.pi, 33, dtype=f64)
    half = torch.stack([torch.cos(t), torch.sin(t)], 1)[None]
    wavy = torch.stack([torch.linspace(-1, 1, 33, dtype=f64), 0.3 * torch.sin(3 * t)], 1)[None]
    sphere = lg.PullbackMetric(lg.DeterministicDecoder(counted))
    fisher = lg.PullbackMetric(dec, kind="fisher")
    field = lg.MetricField(lambda z: (1 + (z * z).sum(-1))[:, None, None] * torch.eye(2, dtype=z.dtype))
    for metric, curve in ((sphere, half), (fisher, wavy), (field, wavy)):
        L1, L0 = metric.length(curve), metric.length(curve[:, ::2])
        calls.clear()
        est, err = metric._richardson_length(curve)
        torch.testing.assert_close(est, L1 + (L1 - L0) / 3, rtol=1e-14, atol=0)
        torch.testing.assert_close(err, (L1 - L0).abs() / 3, rtol=1e-12, atol=0)
        if metric is sphere:
            assert sum(calls) == 33  # (two length calls evaluate 33 + 17 points)
            assert abs(float(est[0]) - math.pi) < 0.1 * abs(float(L1[0]) - math.pi)


def test_metric_field_poincare_and_curves():
    def poincare(z):
        f = 2 / (1 - (z * z).sum(-1))
        return (f**2)[:, None, None] * torch.eye(z.shape[1], dtype=z.dtype)

    field = lg.MetricField(poincare, latent_dim=2)
    z = torch.tensor([[0.0, 0.0], [0.5, 0.0]], dtype=f64)
    torch.testing.assert_close(field.tensor(z)[1], (2 / 0.75) ** 2 * torch.eye(2, dtype=f64))
    # radial segment from 0 to r: closed form 2 artanh(r)
    r = 0.7
    curve = torch.linspace(0, r, 4001, dtype=f64)[:, None] * torch.tensor([[1.0, 0.0]], dtype=f64)
    assert abs(field.length(curve).item() - 2 * math.atanh(r)) < 1e-6


def test_gaussian_fisher_closed_form_distance_matches_tensor():
    # for a 1-D output with mu = z1, sigma = exp(z2) the Fisher metric is diag(1, 2)/sigma^2
    dec = lg.GaussianDecoder(mean=lambda z: z[:, :1], std=lambda z: torch.exp(z[:, 1:2]))
    metric = lg.PullbackMetric(dec, kind="fisher")
    z = torch.tensor([[0.3, -0.2]], dtype=f64)
    s2 = math.exp(-0.2) ** 2
    expected = torch.tensor([[1 / s2, 0.0], [0.0, 2.0]], dtype=f64)  # d sigma = sigma dz2
    torch.testing.assert_close(metric.tensor(z)[0], expected)
    assert not metric.is_embedded
    with pytest.raises(ValueError, match="not a Euclidean pullback"):
        metric.embedding(z)
    # closed-form segment distances: vertical line in (mu, log sigma) has length sqrt(2)*|Δ log σ|
    curve = torch.tensor([[[0.0, 0.0], [0.0, 1.5]]], dtype=f64)
    assert abs(metric.length(curve).item() - math.sqrt(2) * 1.5) < 1e-12


def test_ridge_warns_where_singular():
    # decoder that ignores z[:, 1] -> singular metric everywhere
    dec = lg.DeterministicDecoder(lambda z: torch.stack([z[:, 0], z[:, 0] ** 2], 1))
    z = torch.randn(3, 2, dtype=f64)
    plain = lg.PullbackMetric(dec).tensor(z)
    assert torch.all(lg.PullbackMetric(dec).magnification(z) == 0)
    with pytest.warns(RuntimeWarning, match=r"singular .* 3 point\(s\) \(indices 0, 1, 2\)"):
        G = lg.PullbackMetric(dec, ridge=1e-6).tensor(z)
    torch.testing.assert_close(G, plain + 1e-6 * torch.eye(2, dtype=f64))
    # a regular metric gets no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lg.PullbackMetric(lg.DeterministicDecoder(inv_stereo), ridge=1e-9).tensor(z)


def test_float32_and_dtype_follow_input():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    metric = lg.PullbackMetric(lg.DeterministicDecoder(net))
    G = metric.tensor(torch.randn(4, 2))
    assert G.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype torch.float64 but the decoder's parameters are torch.float32"):
        metric.tensor(torch.randn(4, 2, dtype=f64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - exercised only where a GPU exists
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).double()
    z = torch.randn(6, 2, dtype=f64)
    cpu = lg.PullbackMetric(lg.DeterministicDecoder(net)).tensor(z)
    gpu = lg.PullbackMetric(lg.DeterministicDecoder(net.cuda())).tensor(z.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------- bad input


def _mlp_metric(**kw):
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    return lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2), **kw)


@pytest.mark.parametrize(
    "z, match",
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), r"z contains NaN at 1 point\(s\) \(indices 0\)"),
        (torch.tensor([[0.0, 1.0], [float("inf"), 2.0]]), r"z contains inf at 1 point\(s\) \(indices 1\)"),
        (torch.zeros(4, 3), "latent dimension 3 but the decoder/metric expects 2"),
        (torch.zeros(2, 2, 2), r"shape \(N, d\)"),
        (torch.zeros(0, 2), "empty batch"),
    ],
)
def test_bad_latents_raise(z, match):
    with pytest.raises(ValueError, match=match):
        _mlp_metric().tensor(z)


def test_decoder_returning_nan_raises():
    dec = lg.DeterministicDecoder(lambda z: torch.where(z[:, :1] > 0, torch.log(-z), z))
    with pytest.raises(ValueError, match=r"decoder returned NaN/inf at 1 point\(s\) \(indices 1\)"):
        lg.PullbackMetric(dec).tensor(torch.tensor([[-1.0, -2.0], [1.0, -1.0]]))


def test_decoder_wrong_batch_size_raises():
    dec = lg.DeterministicDecoder(lambda z: z.sum(0, keepdim=True))
    with pytest.raises(ValueError, match="batch size 5"):
        lg.PullbackMetric(dec).tensor(torch.randn(5, 2))


def test_nonpositive_sigma_raises():
    dec = lg.GaussianDecoder(mean=lambda z: z, std=lambda z: z[:, :1].expand(-1, 2))
    with pytest.raises(ValueError, match=r"std must be positive; got σ <= 0 at 1 point\(s\) \(indices 1\)"):
        lg.PullbackMetric(dec).tensor(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="std must be positive"):
        lg.PullbackMetric(dec).length(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))


def test_impossible_options_raise():
    dec = lg.DeterministicDecoder(lambda z: z)
    with pytest.raises(ValueError, match="does not support metric kind 'fisher'; supported: expected, mean"):
        lg.PullbackMetric(dec, kind="fisher")
    with pytest.raises(ValueError, match="unknown Jacobian mode 'sideways'"):
        lg.PullbackMetric(dec, mode="sideways")
    with pytest.raises(ValueError, match="chunk_size"):
        lg.PullbackMetric(dec, chunk_size=0)
    with pytest.raises(ValueError, match="ridge"):
        lg.PullbackMetric(dec, ridge=-1.0)
    with pytest.raises(ValueError, match="decoder wrapper"):
        lg.PullbackMetric(lambda z: z)
    with pytest.raises(ValueError, match="needs both mean= and std="):
        lg.GaussianDecoder(mean=lambda z: z)
    with pytest.raises(ValueError, match="exactly one of logits= or probs="):
        lg.BernoulliDecoder()


def test_metric_field_bad_outputs():
    with pytest.raises(ValueError, match=r"must return shape \(3, 2, 2\)"):
        lg.MetricField(lambda z: torch.eye(2)).tensor(torch.zeros(3, 2))
    asym = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="not symmetric"):
        lg.MetricField(lambda z: asym.expand(z.shape[0], 2, 2)).tensor(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="metric tensor contains NaN"):
        lg.MetricField(lambda z: torch.full((z.shape[0], 2, 2), float("nan"))).tensor(torch.zeros(3, 2))


def test_bad_curves_raise():
    metric = _mlp_metric()
    with pytest.raises(ValueError, match="at least 2 points"):
        metric.length(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="curve contains NaN"):
        metric.energy(torch.tensor([[0.0, 0.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="latent dimension 3"):
        metric.length(torch.zeros(4, 3))


def test_training_mode_dropout_warns():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 3))
    with pytest.warns(RuntimeWarning, match="training mode"):
        lg.PullbackMetric(lg.DeterministicDecoder(net)).tensor(torch.zeros(2, 2))


# ----------------------------------------------------------------------------- fx fast path


def _net(din, dout, act=torch.nn.Tanh, seed=0, shape=None):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(din, 16), act(), torch.nn.Linear(16, dout)]
    if shape is not None:
        layers.append(torch.nn.Unflatten(1, shape))
    return torch.nn.Sequential(*layers).double()


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = _net(3, 8, torch.nn.ELU, seed=3)
        self.mu = torch.nn.Linear(8, 6).double()
        self.sd = torch.nn.Linear(8, 6).double()

    def forward(self, z):
        h = torch.tanh(self.trunk(z))
        return self.mu(h), torch.nn.functional.softplus(self.sd(h)) + 1e-2


@pytest.mark.parametrize(
    "make_decoder, kinds",
    [
        (lambda: lg.DeterministicDecoder(_net(3, 7, shape=(7, 1))), ["expected"]),
        (lambda: lg.GaussianDecoder(mean=_net(3, 5), std=torch.nn.Sequential(_net(3, 5, seed=1), torch.nn.Softplus())), ["expected", "mean", "fisher"]),
        (lambda: lg.GaussianDecoder(model=_TwoHeads()), ["expected", "mean", "fisher"]),
        (lambda: lg.BernoulliDecoder(logits=_net(3, 6, torch.nn.Sigmoid)), ["fisher", "mean"]),
        (lambda: lg.BernoulliDecoder(probs=torch.nn.Sequential(_net(3, 6), torch.nn.Sigmoid())), ["fisher", "mean"]),
        (lambda: lg.CategoricalDecoder(logits=_net(3, 12, shape=(4, 3))), ["fisher", "mean"]),
    ],
)
def test_fx_fast_path_equals_generic_path(make_decoder, kinds):
    dec = make_decoder()
    z = torch.randn(9, 3, dtype=f64)
    for kind in kinds:
        fast = lg.PullbackMetric(dec, kind=kind, fast_path=True)
        slow = lg.PullbackMetric(dec, kind=kind, fast_path=False)
        assert dec.coordinate_blocks_jvp(z, kind) is not None  # the fast path is really taken
        torch.testing.assert_close(fast.tensor(z), slow.tensor(z), rtol=1e-12, atol=1e-13)


def test_fx_fast_path_declines_untraceable_decoders():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 4).double()

        def forward(self, z):
            if z.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return torch.tanh(self.lin(z))
            return self.lin(z)

    dec = lg.DeterministicDecoder(Branchy())
    z = torch.randn(5, 2, dtype=f64) + 3
    assert dec.coordinate_blocks_jvp(z) is None
    G = lg.PullbackMetric(dec).tensor(z)
    torch.testing.assert_close(G, lg.PullbackMetric(dec, fast_path=False).tensor(z))


def test_inner_and_norm_validate_vectors():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(inv_stereo))
    z = torch.zeros(3, 2, dtype=f64)
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=f64)
    # at the origin M = 4 I, so ‖v‖ = 2 |v|
    torch.testing.assert_close(metric.norm(z, v), 2 * v.norm(dim=1))
    assert metric.inner(z[0], v[0], v[1]).shape == ()
    with pytest.raises(ValueError, match="v contains NaN"):
        metric.norm(z, torch.full((3, 2), float("nan"), dtype=f64))
    with pytest.raises(ValueError, match="same shape"):
        metric.inner(z, v[:2], v)


def test_decoder_writing_into_captured_tensor_gets_clear_error():
    lin = torch.nn.Linear(2, 3)
    running = torch.zeros(3)

    def dec(z):
        out = lin(z)
        running.add_(out.sum(0))  # in-place write of a differentiated value into a captured tensor
        return out

    with pytest.raises(ValueError, match="cannot be differentiated"):
        with pytest.warns(RuntimeWarning):
            lg.PullbackMetric(lg.DeterministicDecoder(dec)).tensor(torch.zeros(4, 2))
