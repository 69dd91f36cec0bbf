"""Tests of latentgeo._autodiff.jacobian_columns (the fx interpreter, first order) against torch.func / torch.autograd references (float64)."""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap

import latentgeo._autodiff._first_order as first_order
import latentgeo._autodiff._trace as trace
from latentgeo._autodiff import jacobian_columns as traced_jvp_columns
from latentgeo._autodiff import unsupported_reason

TOL = 1e-12
D = torch.float64


def _z(n=9, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=D)


def _leaves(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _ref_columns(f, z):
    """Generic reference: vmap over the d tangents e_i (broadcast over rows) of torch.func.jvp."""
    n, d = z.shape
    tangents = torch.eye(d, dtype=z.dtype)[:, None, :].expand(d, n, d)
    return vmap(lambda t: jvp(f, (z,), (t,)), out_dims=(None, 0))(tangents)


def _autograd_columns(f, z):
    """Independent reference: per-row Jacobians from torch.autograd.functional.jacobian, as (d, N, K) columns."""
    cols = []
    for zi in z:
        jac = torch.autograd.functional.jacobian(lambda x: torch.cat([o.reshape(-1) for o in _leaves(f(x[None]))]), zi)
        cols.append(jac.T)  # (d, K_total)
    return torch.stack(cols, 1)


def _check(f, z, autograd_too=False):
    res = traced_jvp_columns(f, z)
    assert res is not None, unsupported_reason(f)
    out, cols = res
    ref_out, ref_cols = _ref_columns(f, z)
    assert type(out) is type(ref_out if not isinstance(ref_out, tuple) else f(z))
    for o, c, ro, rc in zip(_leaves(out), _leaves(cols), _leaves(ref_out), _leaves(ref_cols)):
        assert o.dtype == D and c.dtype == D
        assert c.shape == (z.shape[1],) + o.shape
        torch.testing.assert_close(o, ro, rtol=0, atol=TOL)
        torch.testing.assert_close(c, rc, rtol=0, atol=TOL)
    if autograd_too:
        flat = torch.cat([c.reshape(c.shape[0], c.shape[1], -1) for c in _leaves(cols)], -1)
        torch.testing.assert_close(flat, _autograd_columns(f, z), rtol=0, atol=TOL)
    return out, cols


def _mlp(act, d=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 5)).to(D).eval()


ACTIVATIONS = [
    nn.Tanh(), nn.Sigmoid(), nn.ReLU(), nn.Softplus(), nn.Softplus(beta=2.0, threshold=1.0), nn.ELU(alpha=0.7),
    nn.LeakyReLU(0.1), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ReLU6(), nn.Mish(), nn.Softsign(),
    nn.Softmax(dim=-1),  # generic vmap(jvp) path
]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: repr(a))
def test_sequential_mlp_each_activation(act):
    net = _mlp(act)
    z = _z() * 2.0  # both signs and the softplus threshold are hit
    _check(net, z, autograd_too=isinstance(act, (nn.Tanh, nn.Softplus, nn.Softmax)))


def test_fast_rules_avoid_vmap_for_supported_layers(monkeypatch):
    calls = []
    real = first_order.vmap
    monkeypatch.setattr(first_order, "vmap", lambda *a, **k: calls.append(1) or real(*a, **k))
    z = _z()
    for act in (nn.Tanh(), nn.Sigmoid(), nn.ReLU(), nn.Softplus(), nn.ELU(), nn.LeakyReLU(), nn.GELU(), nn.SiLU()):
        _check(_mlp(act), z)
    assert calls == []  # Linear and these activations never go through the generic rule
    _check(_mlp(nn.Softmax(dim=-1)), z)
    assert len(calls) == 2  # one generic node per Softmax


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.l1(x).tanh()
        h = torch.sigmoid(self.l2(h)) + F.softplus(h, beta=2.0)
        h = F.elu(self.l3(h) - 0.3, alpha=0.5) + F.leaky_relu(h, 0.2) + torch.exp(-h) + h.relu()
        return F.linear(h, self.l1.weight.T)


def test_functions_and_methods():
    _check(Functional().to(D), _z(), autograd_too=True)


class TwoHeads(nn.Module):
    """Shared trunk, mean head and positive std head; returns a (mean, std) tuple."""

    def __init__(self, d=3, h=12, k=6, min_std=1e-3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.mu, self.sd = nn.Linear(h, k), nn.Linear(h, k)
        self.min_std = min_std

    def forward(self, z):
        h = self.trunk(z)
        return self.mu(h), F.softplus(self.sd(h)) + self.min_std


def test_two_heads_tuple():
    torch.manual_seed(1)
    net = TwoHeads().to(D)
    out, cols = _check(net, _z(), autograd_too=True)
    assert isinstance(out, tuple) and isinstance(cols, tuple) and len(cols) == 2
    assert bool((out[1] > 1e-3).all())


class Arithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("c", torch.linspace(0.5, 1.5, 3))

    def forward(self, x):
        y = x * 2 + torch.exp(-x)
        y = y + self.lin(y).tanh()  # residual connection
        y = y / (1 + torch.sigmoid(y)) - self.c  # division, broadcast constant
        y = 3.0 / (2.0 + y * y) + y**2 + x.sum(-1, keepdim=True)  # scalar ÷ tensor, pow, broadcast (N,1)
        y = y - torch.mean(y.unsqueeze(1) * self.c, dim=(1,))  # reductions over axes
        a, b = y.split([1, 2], 1)
        w = torch.cat([b, a * self.c[:1], torch.zeros_like(a) + 1.0], dim=-1)  # a constant block
        w = w.view(x.shape[0], 2, 2).transpose(1, 2)
        return [w.flatten(1)[:, 1:], torch.stack([a[:, 0], b[:, -1]], dim=-1) @ self.lin.weight[:2, :2]]


def test_arithmetic_residual_division_and_shape_ops():
    torch.manual_seed(2)
    net = Arithmetic().to(D)
    out, cols = _check(net, _z(), autograd_too=True)
    assert isinstance(out, list) and isinstance(cols, list)  # the module's output structure


def test_image_decoder_generic_convolutions():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(3, 64), nn.Unflatten(1, (1, 8, 8)), nn.ConvTranspose2d(1, 2, 3), nn.Softplus(),
        nn.Conv2d(2, 1, 3, padding=1), nn.Sigmoid(), nn.Flatten(),
    ).to(D)
    out, cols = _check(net, _z(n=4), autograd_too=True)
    assert cols.shape == (3, 4, 100)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def test_data_dependent_control_flow_returns_none():
    net = DataDependent().to(D)
    assert traced_jvp_columns(net, _z()) is None
    assert "symbolic_trace failed" in unsupported_reason(net)


class Noisy(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


def test_random_function_returns_none():
    assert traced_jvp_columns(Noisy(), _z()) is None
    assert "random" in unsupported_reason(Noisy())


def test_dropout_train_none_eval_works():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 4)).to(D)
    z = _z()
    net.train()
    assert traced_jvp_columns(net, z) is None
    assert "Dropout in training mode" in unsupported_reason(net)
    net.eval()
    _check(net, z)
    net.train()  # the cache is keyed by the mode: back to None
    assert traced_jvp_columns(net, z) is None


def test_batchnorm_train_none_eval_works():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4)).to(D)
    z = _z()
    assert traced_jvp_columns(net.train(), z) is None
    net[1].running_mean.normal_()
    _check(net.eval(), z)


def test_inplace_relu():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(inplace=True), nn.Linear(8, 4)).to(D)
    _check(net, _z())

    class Shared(nn.Module):  # the in-place op overwrites a value that is used again
        def __init__(self):
            super().__init__()
            self.lin, self.act = nn.Linear(3, 3), nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.lin(x)
            return self.act(h) + h

    assert traced_jvp_columns(Shared().to(D), _z()) is None
    assert "in-place" in unsupported_reason(Shared().to(D))


def test_cache_traces_once(monkeypatch):
    calls = []
    real = trace.symbolic_trace
    monkeypatch.setattr(trace, "symbolic_trace", lambda m: calls.append(m) or real(m))
    net = _mlp(nn.Tanh())
    z = _z()
    traced_jvp_columns(net, z)
    traced_jvp_columns(net, z[:4])
    traced_jvp_columns(net, z.float())
    assert len(calls) == 1
    bad = DataDependent().to(D)
    assert traced_jvp_columns(bad, z) is None and traced_jvp_columns(bad, z) is None
    assert len(calls) == 2  # a failed trace is cached too


def test_weights_read_live():
    net = _mlp(nn.Tanh())
    z = _z()
    _, before = traced_jvp_columns(net, z)
    with torch.no_grad():
        net[2].weight.mul_(-2.0)  # in place (an optimiser step)
    net[4].weight = nn.Parameter(torch.randn_like(net[4].weight))  # a new Parameter object
    net[0].bias.data.add_(1.0)
    _, after = _check(net, z)
    assert (after - before).abs().max() > 1e-3


def test_float32():
    net = _mlp(nn.Softplus())
    z = _z()
    out, cols = traced_jvp_columns(net.float(), z.float())
    assert out.dtype == cols.dtype == torch.float32
    ref = _ref_columns(net, z.float())[1]
    torch.testing.assert_close(cols, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", [nn.Tanh(), nn.Sigmoid(), nn.ReLU(), nn.Softplus(), nn.ELU(), nn.LeakyReLU(0.1),
                                 nn.GELU(), nn.SiLU(), nn.Hardtanh(), nn.Mish()], ids=lambda a: repr(a))
def test_autograd_through_columns(act):
    # reverse-mode autograd through the columns, also vectorised (vmap over the backward pass):
    # ∂ cols / ∂z equals the generic path's
    net = nn.Sequential(nn.Linear(3, 6), act, nn.Linear(6, 4)).to(D)
    z = _z(n=4)
    for vectorize in (False, True):
        j1 = torch.autograd.functional.jacobian(lambda x: traced_jvp_columns(net, x)[1], z, vectorize=vectorize)
        j2 = torch.autograd.functional.jacobian(lambda x: _ref_columns(net, x)[1], z, vectorize=vectorize)
        torch.testing.assert_close(j1, j2, rtol=0, atol=TOL)


def test_none_under_torch_func_transforms():
    net = _mlp(nn.Tanh())
    seen = []
    vmap(lambda x: seen.append(traced_jvp_columns(net, x)) or x)(_z()[None])
    assert seen == [None]
    assert traced_jvp_columns(net, _z()) is not None  # not cached as a failure


def test_cache_is_weak():
    net = _mlp(nn.Tanh())
    traced_jvp_columns(net, _z())
    assert net in trace._CACHE
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None  # the cache holds no strong reference to the module


def test_bad_input():
    net = _mlp(nn.Tanh())
    with pytest.raises(ValueError, match="nn.Module"):
        traced_jvp_columns(lambda x: x, _z())
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        traced_jvp_columns(net, _z()[0])
    with pytest.raises(ValueError, match="floating"):
        traced_jvp_columns(net, torch.ones(3, 3, dtype=torch.long))


class InplaceMethod(nn.Module):
    def forward(self, x):
        h = x * 2
        h.add_(1.0)
        return h


class MixedDtype(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.linspace(0.0, 1.0, 3, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(x + self.shift) * 2.0  # float32 x + float64 buffer -> float64


def test_inplace_method_returns_none_and_dtype_promotion():
    assert traced_jvp_columns(InplaceMethod(), _z()) is None
    assert "in-place" in unsupported_reason(InplaceMethod())
    z = _z().float()
    out, cols = traced_jvp_columns(MixedDtype(), z)
    ref_out, ref_cols = _ref_columns(MixedDtype(), z)
    assert out.dtype == cols.dtype == ref_cols.dtype == torch.float64
    torch.testing.assert_close(cols, ref_cols, rtol=0, atol=TOL)


def test_forward_hooks_leave_the_module_to_the_generic_path():
    net = _mlp(nn.Tanh())
    z = _z()
    _check(net, z)
    handle = net[2].register_forward_hook(lambda mod, inp, out: 2.0 * out)  # changes the function
    assert traced_jvp_columns(net, z) is None
    assert "forward hooks" in unsupported_reason(net)
    handle.remove()
    _check(net, z)


class Unaries(nn.Module):
    """Every unary with a closed-form first derivative in the interpreter, as functions and methods."""

    def __init__(self, d=3):
        super().__init__()
        self.lin = nn.Linear(d, 8)

    def forward(self, z):
        h = torch.sigmoid(self.lin(z)) + 0.5  # (positive: log, sqrt, rsqrt, reciprocal, fractional pow)
        parts = [torch.log(h), torch.sqrt(h), torch.rsqrt(h), torch.sin(h), torch.cos(h), torch.square(h),
                 torch.reciprocal(h), h ** 3, torch.pow(h, -1.5), h.pow(0.5), h.sqrt(), h.log(), h.reciprocal(),
                 h ** 0, h ** 1]
        return torch.cat(parts, -1)


def test_closed_form_unaries_without_torch_func(monkeypatch):
    """The first-order rules of known unaries use their closed-form derivatives (no torch.func.jvp:
    its set-up alone cost ~0.1 ms a call) and agree with the reference."""
    net = Unaries().to(D)
    calls = []
    real = first_order.jvp

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(first_order, "jvp", spy)
    _check(net, _z(), autograd_too=True)
    assert not calls
