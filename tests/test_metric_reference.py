"""Independent references for the pullback-metric core (issue 2).

Every batched ``PullbackMetric.tensor`` result is compared with a per-point
``torch.autograd.functional.jacobian`` loop and the metric formulas written out here:

* expected metric ``JμᵀJμ + JσᵀJσ`` (Arvanitidis et al. 2018, Thm 1), μ and σ terms separately;
* Bernoulli Fisher–Rao ``J_pᵀ diag(1/(p(1−p))) J_p`` and categorical ``J_πᵀ diag(1/π) J_π``
  (Arvanitidis et al. 2022), and at saturated logits their logit-coordinate forms
  ``J_lᵀ diag(p(1−p)) J_l`` and ``Σ_groups J_lᵀ (diag π − ππᵀ) J_l`` (exact there);
* Gaussian Fisher–Rao ``Jμᵀ diag(1/σ²) Jμ + 2 Jσᵀ diag(1/σ²) Jσ``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from latentgeo.decoders import BernoulliDecoder, CategoricalDecoder, DeterministicDecoder, GaussianDecoder
from latentgeo.metric import PullbackMetric

F64 = torch.float64
TOL = 1e-10


def mlp(d_in, d_out, hidden=16, seed=0, dtype=F64, act=nn.Tanh):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, d_out))
    return net.to(dtype).eval()


def per_point_jacobian(f, z):
    """``(N, K, d)`` by a Python loop of ``torch.autograd.functional.jacobian`` (the naive reference)."""
    return torch.stack([torch.autograd.functional.jacobian(lambda x: f(x[None]).reshape(-1), zi) for zi in z])


_CACHE: dict = {}


def cached(key, make):
    """Reference values shared by the parametrisations of one test (networks are rebuilt from seeds)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def gram(j, w=None):
    """``Jᵀ diag(w) J`` per row, ``j`` (N, K, d), ``w`` (N, K)."""
    return j.transpose(1, 2) @ (j if w is None else w[..., None] * j)


def assert_close(a, b, rtol=TOL, atol=None):
    """Max-norm comparison relative to the size of the reference (absolute floor ``rtol·max|b|``)."""
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    bound = rtol * max(scale, 1.0) if atol is None else atol
    assert err <= bound, f"max abs error {err:.3e} > {bound:.3e} (max |ref| = {scale:.3e})"


def gaussian_parts(d=3, D=7, seed=0, dtype=F64):
    mean = mlp(d, D, seed=seed, dtype=dtype)
    std_net = mlp(d, D, seed=seed + 1, dtype=dtype)

    def std(z):
        return nn.functional.softplus(std_net(z)) + 0.05

    return mean, std


MODES = ["forward", "reverse", "auto"]
CHUNKS = [None, 3]


# ------------------------------------------------------------------------- expected metric
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_expected_metric_mu_and_sigma_terms_match_per_point_autograd(mode, chunk_size):
    mean, std = gaussian_parts()
    z = torch.randn(10, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    dec = GaussianDecoder(mean=mean, std=std)
    g_exp = PullbackMetric(dec, kind="expected", mode=mode, chunk_size=chunk_size).tensor(z)
    g_mu = PullbackMetric(dec, kind="mean", mode=mode, chunk_size=chunk_size).tensor(z)
    ref_mu, ref_sigma = cached("expected", lambda: (gram(per_point_jacobian(mean, z)), gram(per_point_jacobian(std, z))))
    assert float(ref_sigma.abs().max()) > 1e-3  # the σ term is not negligible here
    assert_close(g_mu, ref_mu)
    assert_close(g_exp - g_mu, ref_sigma)
    assert_close(g_exp, ref_mu + ref_sigma)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_wide_latent_narrow_output_all_modes(mode, chunk_size):
    """d > K: ``auto`` switches to reverse mode once K is known (mixed modes across chunks)."""
    f = mlp(6, 2, seed=3)
    z = torch.randn(10, 6, dtype=F64, generator=torch.Generator().manual_seed(6))
    g = PullbackMetric(DeterministicDecoder(f), mode=mode, chunk_size=chunk_size).tensor(z)
    assert_close(g, cached("wide", lambda: gram(per_point_jacobian(f, z))))
    # rank ≤ K = 2 < d: the determinant vanishes
    assert torch.linalg.matrix_rank(g[0]).item() == 2


def test_model_returning_mean_and_std_pair_matches_two_callables():
    mean, std = gaussian_parts(seed=4)
    z = torch.randn(10, 3, dtype=F64)
    g_two = PullbackMetric(GaussianDecoder(mean=mean, std=std)).tensor(z)
    g_one = PullbackMetric(GaussianDecoder(model=lambda x: (mean(x), std(x)))).tensor(z)
    assert_close(g_one, g_two, atol=1e-13)


# ------------------------------------------------------------------------- Bernoulli Fisher
@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_bernoulli_fisher_equals_formula_on_p(mode, chunk_size):
    logits = mlp(2, 9, seed=7)
    z = torch.randn(10, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    g = PullbackMetric(BernoulliDecoder(logits=logits), mode=mode, chunk_size=chunk_size).tensor(z)
    p = torch.sigmoid(logits(z))
    jp = cached("bernoulli", lambda: per_point_jacobian(lambda x: torch.sigmoid(logits(x)), z))
    assert_close(g, gram(jp, 1.0 / (p * (1 - p))))
    # the probs= parametrisation gives the same metric
    g_probs = PullbackMetric(BernoulliDecoder(probs=lambda x: torch.sigmoid(logits(x))), mode=mode).tensor(z)
    assert_close(g_probs, g, rtol=1e-9)


def _linear_logits(w, as_module):
    """``z ↦ z wᵀ`` as a plain function (generic vmap-jvp path) or an ``nn.Linear`` (traced path)."""
    if not as_module:
        return lambda z: z @ w.T
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False).to(w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin.eval()


@pytest.mark.parametrize("as_module", [False, True])
@pytest.mark.parametrize("scale", [30.0, 40.0])
def test_bernoulli_fisher_saturated_logits_stays_finite_and_exact(scale, as_module):
    """All pixels saturated: |l| ≈ 30 (p(1−p) ≈ 1e-13) and ≈ 40 (σ(l) rounds to 1.0 in float64)."""
    w = scale * torch.tensor([[1.0, -0.02], [-1.02, 0.01], [0.97, 0.03], [-1.0, -0.01]], dtype=F64)
    logits = _linear_logits(w, as_module)

    z = torch.tensor([[1.0, 0.0], [1.01, 0.2], [0.99, -0.1]], dtype=F64)
    for mode in ("forward", "reverse"):
        g = PullbackMetric(BernoulliDecoder(logits=logits), mode=mode).tensor(z)
        assert torch.isfinite(g).all()
        l = logits(z).detach()
        v = torch.sigmoid(l) * torch.sigmoid(-l)  # p(1−p) without cancellation
        ref = gram(w.expand(3, 4, 2), v)  # J_lᵀ diag(p(1−p)) J_l, exact in logit coordinates
        assert float(ref.abs().max()) < 1e-9  # really saturated
        assert_close(g, ref, atol=1e-8 * float(ref.abs().max()))  # relative to the tiny metric itself
        assert (torch.linalg.eigvalsh(g) > 0).all()


# ------------------------------------------------------------------------- categorical Fisher
def _cat_logits(seed=9):
    net = mlp(2, 12, seed=seed)
    return lambda z: net(z).reshape(z.shape[0], 4, 3)  # 4 independent categoricals, 3 classes


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_categorical_fisher_equals_formula_on_pi(mode, chunk_size):
    logits = _cat_logits()
    z = torch.randn(10, 2, dtype=F64, generator=torch.Generator().manual_seed(10))
    g = PullbackMetric(CategoricalDecoder(logits=logits), mode=mode, chunk_size=chunk_size).tensor(z)

    def pi(x):
        return torch.softmax(logits(x), dim=-1).reshape(x.shape[0], -1)

    jpi = cached("categorical", lambda: per_point_jacobian(pi, z))  # (N, 12, 2), softmax over the LAST axis
    assert_close(g, gram(jpi, 1.0 / pi(z)))
    # a softmax over the wrong axis gives a different metric (the test can tell)
    pi_wrong = lambda x: torch.softmax(logits(x), dim=1).reshape(x.shape[0], -1)  # noqa: E731
    wrong = cached("categorical-wrong", lambda: gram(per_point_jacobian(pi_wrong, z), 1.0 / pi_wrong(z)))
    assert float((wrong - g).detach().abs().max()) > 1e-3


class _Reshape(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], 4, 3)


@pytest.mark.parametrize("as_module", [False, True])
@pytest.mark.parametrize("scale", [30.0, 1000.0])
def test_categorical_fisher_saturated_logits_stays_finite_and_exact(scale, as_module):
    """Logit gaps ≈ 30-60 (π ≈ e^-60) and ≈ 1000 (softmax underflows to exactly 0 in float64)."""
    torch.manual_seed(11)
    w = scale * torch.randn(12, 2, dtype=F64)
    if as_module:
        logits = nn.Sequential(_linear_logits(w, True), _Reshape())
    else:

        def logits(z):
            return (z @ w.T).reshape(z.shape[0], 4, 3)

    z = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(12))
    assert float(logits(z).detach().abs().max()) > 0.8 * scale
    g = PullbackMetric(CategoricalDecoder(logits=logits)).tensor(z)
    assert torch.isfinite(g).all()
    pi = torch.softmax(logits(z).detach(), -1)  # (N, 4, 3)
    # J_lᵀ (diag π − ππᵀ) J_l per group is the covariance of the rows j_c of J_l under π:
    # Σ_c π_c (j_c − j̄)(j_c − j̄)ᵀ, a form without the cancellation in 1 − π_dominant
    jl = w.reshape(4, 3, 2)
    jbar = torch.einsum("ngc,gci->ngi", pi, jl)
    dev = jl[None] - jbar[:, :, None, :]  # (N, 4, 3, 2)
    ref = torch.einsum("ngc,ngci,ngcj->nij", pi, dev, dev)
    scale_ref = ref.abs().amax((1, 2), keepdim=True)
    # each point relative to its own metric's size (all tiny when saturated)
    assert float(((g.detach() - ref).abs() / scale_ref.clamp_min(1e-300)).max()) < 1e-8 or float(scale_ref.max()) == 0.0


# ------------------------------------------------------------------------- Gaussian Fisher
@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_gaussian_fisher_equals_formula(mode, chunk_size):
    mean, std = gaussian_parts(seed=13)
    z = torch.randn(10, 3, dtype=F64, generator=torch.Generator().manual_seed(14))
    g = PullbackMetric(GaussianDecoder(mean=mean, std=std), kind="fisher", mode=mode, chunk_size=chunk_size).tensor(z)
    jm, js = cached("fisher", lambda: (per_point_jacobian(mean, z), per_point_jacobian(std, z)))
    prec = std(z).pow(-2)
    assert_close(g, gram(jm, prec) + 2.0 * gram(js, prec))


def _midpoint_length(metric, curve):
    mid = 0.5 * (curve[1:] + curve[:-1])
    delta = curve[1:] - curve[:-1]
    g = metric.tensor(mid)
    return torch.einsum("ti,tij,tj->t", delta, g, delta).sqrt().sum()


def test_gaussian_fisher_length_of_short_curve_matches_tensor_midpoint_rule():
    mean, std = gaussian_parts(seed=15)
    metric = PullbackMetric(GaussianDecoder(mean=mean, std=std), kind="fisher")
    a = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    b = torch.tensor([0.3, 0.1, 0.2], dtype=F64)

    def curve(t_count):
        t = torch.linspace(0, 1, t_count, dtype=F64)[:, None]
        return a + t * (b - a) + 0.1 * torch.sin(torch.pi * t) * torch.tensor([1.0, -1.0, 0.5], dtype=F64)

    errs = []
    for T in (41, 81):
        c = curve(T)
        lf = metric.length(c).detach()
        lm = _midpoint_length(metric, c).detach()
        assert lf.shape == () and lf > 0
        errs.append(abs(float(lf - lm)) / float(lm))
    assert errs[1] < 1e-5
    # both are consistent discretisations of the same integral: their gap shrinks ~4x per halving
    assert errs[1] < 0.4 * errs[0]
    # the energy follows the (T−1)·Σ dist² convention: length² ≤ energy, near equality for a smooth curve
    c = curve(81)
    assert float(metric.length(c).detach()) ** 2 <= float(metric.energy(c).detach()) * (1 + 1e-12)


# ------------------------------------------------------------------------- images, dtype
def test_image_shaped_outputs_are_flattened_consistently():
    net_mu, net_sd = mlp(2, 64, seed=16), mlp(2, 64, seed=17)
    z = torch.randn(10, 2, dtype=F64, generator=torch.Generator().manual_seed(18))

    def mu_img(x):
        return net_mu(x).reshape(x.shape[0], 1, 8, 8)

    def sd_img(x):
        return (nn.functional.softplus(net_sd(x)) + 0.1).reshape(x.shape[0], 1, 8, 8)

    g_img = PullbackMetric(GaussianDecoder(mean=mu_img, std=sd_img), kind="fisher").tensor(z)
    jm, js = per_point_jacobian(mu_img, z), per_point_jacobian(sd_img, z)  # flattened row-major
    prec = sd_img(z).reshape(10, -1).pow(-2)
    assert_close(g_img, gram(jm, prec) + 2.0 * gram(js, prec))
    g_bern = PullbackMetric(BernoulliDecoder(logits=mu_img)).tensor(z)
    p = torch.sigmoid(net_mu(z))
    assert_close(g_bern, gram(per_point_jacobian(lambda x: torch.sigmoid(net_mu(x)), z), 1 / (p * (1 - p))))


def test_float32_follows_input_and_agrees_with_float64():
    mean64, std64 = gaussian_parts(seed=19)
    mean32 = mlp(3, 7, seed=19, dtype=torch.float32)
    std_net32 = mlp(3, 7, seed=20, dtype=torch.float32)
    z64 = torch.randn(10, 3, dtype=F64, generator=torch.Generator().manual_seed(21))
    dec32 = GaussianDecoder(mean=mean32, std=lambda x: nn.functional.softplus(std_net32(x)) + 0.05)
    for mode in ("forward", "reverse"):
        g32 = PullbackMetric(dec32, mode=mode, chunk_size=3).tensor(z64.float())
        assert g32.dtype == torch.float32 and g32.device == z64.device
        g64 = PullbackMetric(GaussianDecoder(mean=mean64, std=std64), mode=mode).tensor(z64)
        assert_close(g32.double(), g64, rtol=1e-5)
    # a dtype mismatch between codes and decoder is refused with a message, not a torch error
    with pytest.raises(ValueError, match="dtype"):
        PullbackMetric(dec32).tensor(z64)


def test_magnification_and_log_volume_from_reference_tensor():
    f = mlp(2, 5, seed=22)
    z = torch.randn(7, 2, dtype=F64)
    m = PullbackMetric(DeterministicDecoder(f))
    ref = gram(per_point_jacobian(f, z))
    assert_close(m.magnification(z), torch.linalg.det(ref).sqrt())
    assert_close(m.log_volume(z), 0.5 * torch.logdet(ref))


# ------------------------------------------------------------------------- trying to break it
class _TanhNoVmap(torch.autograd.Function):
    """A custom op with forward-mode and backward formulas but no vmap rule."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * (1 - y * y)


def test_non_vmappable_decoder_uses_loop_path_with_warning():
    lin = nn.Linear(3, 6).to(F64)

    def f(z):
        if z.abs().max().item() > 1e6:  # .item() in the decoder (a sanity check)
            raise RuntimeError("unreachable")
        h = lin(z)
        h.mul_(2.0)  # in-place on an intermediate
        return _TanhNoVmap.apply(h)

    z = torch.randn(10, 3, dtype=F64)
    ref = gram(per_point_jacobian(lambda x: torch.tanh(2.0 * lin(x)), z))
    with pytest.warns(RuntimeWarning, match="vectoris"):
        g = PullbackMetric(DeterministicDecoder(f), mode="forward", chunk_size=4).tensor(z)
    assert_close(g, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # reverse mode vectorises fine here
        g_rev = PullbackMetric(DeterministicDecoder(f), mode="reverse").tensor(z)
    assert_close(g_rev, ref)


class _NoVmapModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 6)

    def forward(self, z):
        return _TanhNoVmap.apply(2.0 * self.lin(z))


def test_non_vmappable_module_decoder_matches_reference():
    """An ``nn.Module`` holding an op without a vmap rule (traced fast path, or fallback with a warning)."""
    torch.manual_seed(26)
    mod = _NoVmapModule().to(F64).eval()
    z = torch.randn(10, 3, dtype=F64)
    ref = gram(per_point_jacobian(lambda x: torch.tanh(2.0 * mod.lin(x)), z))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loop-path warning, if that path is taken
        for mode in ("forward", "reverse"):
            assert_close(PullbackMetric(DeterministicDecoder(mod), mode=mode, chunk_size=4).tensor(z), ref)


def test_requires_grad_parameters_and_gradient_through_metric():
    """Trained decoders have ``requires_grad`` parameters; the metric is differentiable in ``z``."""
    f = mlp(2, 5, seed=23)
    z = torch.randn(4, 2, dtype=F64, requires_grad=True)
    m = PullbackMetric(DeterministicDecoder(f))
    g = m.tensor(z)
    assert_close(g.detach(), gram(per_point_jacobian(f, z.detach())))
    (grad,) = torch.autograd.grad(m.log_volume(z).sum(), z)
    eps = 1e-6
    fd = torch.zeros_like(grad)
    for i in range(2):
        dz = torch.zeros(4, 2, dtype=F64)
        dz[:, i] = eps
        with torch.no_grad():
            fd[:, i] = (m.log_volume(z + dz) - m.log_volume(z - dz)) / (2 * eps)
    assert_close(grad, fd, atol=1e-6)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_codes_created_under_inference_mode(mode):
    f = mlp(2, 5, seed=24)
    with torch.inference_mode():  # e.g. codes from encoder(x) evaluated in inference mode
        z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(25))
    g = PullbackMetric(DeterministicDecoder(f), mode=mode).tensor(z)
    assert_close(g, gram(per_point_jacobian(f, z.clone())))
