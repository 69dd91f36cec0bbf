"""The Hessian mode of the fx interpreter (``∂²f[e_i, e_j]``, ``i ≤ j``: the upper triangle of every
output's Hessian, with no velocity) and what is built on it: the decoders' Hessian-mode embedding
jets, the energy stage's curvature term (``tests/test_spectral.py``) and the Brownian drift.

References are independent of the interpreter: reverse-over-reverse ``torch.func.jacrev`` (which
also avoids torch's wrong nested forward derivative through ``native_layer_norm``), and the other
second-order modes (``∂²f[v, v] = Σ_ij v_i v_j H_ij``).
"""

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from latentgeo._autodiff import hessian_pairs, hessian_second_order, mixed_second_order, second_order
from test_autodiff_taylor import Arith, forbid_generic, Reductions, TwoHead, _embedding_cases, _leaves, _rbf, _zv

TOL = 1e-11
DT = torch.float64


def _hessian_reference(f, z):
    """Upper triangles ``(m, N, ...)`` per output leaf, by reverse over reverse on each row."""
    n, d = z.shape
    I, J = (list(x) for x in hessian_pairs(d))
    probe = f(z[:1])
    k = len(_leaves(probe))
    refs = []
    for leaf in range(k):
        def g(x, leaf=leaf):
            return _leaves(f(x[None]))[leaf][0]

        H = vmap(jacrev(jacrev(g)))(z)  # (N, *out, d, d)
        refs.append(H[..., I, J].movedim(-1, 0))
    return refs


@pytest.fixture
def no_generic(monkeypatch):
    """Fail if a node goes through the slow generic (vmap / jvp-of-jvp) path in Hessian mode."""
    forbid_generic(monkeypatch, "HESSIAN")


def _check(module, z, tol=TOL):
    res = hessian_second_order(module, z)
    assert res is not None
    out, cols, hess = res
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
    t_out, t_cols, t_h = second_order(module, z, v)
    I, J = hessian_pairs(z.shape[1])
    for a, b in zip(_leaves(out), _leaves(t_out)):
        assert torch.equal(a, b)
    for a, b in zip(_leaves(cols), _leaves(t_cols)):
        assert torch.allclose(a, b, atol=tol, rtol=0)
    for h, r, th in zip(_leaves(hess), _hessian_reference(module, z), _leaves(t_h)):
        scale = max(1.0, r.abs().max().item())
        assert h.shape == r.shape and (h - r).abs().max() < tol * scale
        assert r.abs().max() > 1e-6
        # the Taylor slot is the quadratic form: ∂²f[v, v] = Σ_{i≤j} (2 − δ_ij) v_i v_j H_ij
        w = torch.stack([(1.0 if i == j else 2.0) * v[:, i] * v[:, j] for i, j in zip(I, J)])  # (m, N)
        w = w.reshape(w.shape + (1,) * (h.dim() - 2))
        assert ((w * h).sum(0) - th).abs().max() < tol * scale
    return res


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "act",
    [nn.Tanh(), nn.ELU(alpha=1.3, inplace=True), nn.Softplus(beta=2.0, threshold=1.0), nn.Sigmoid(), nn.SiLU()],
    ids=lambda m: type(m).__name__,
)
def test_mlp_activations(act, d, no_generic):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(d, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 5)).to(DT)
    z, _ = _zv(n=6, d=d, seed=3)
    out, cols, hess = _check(net, z)
    assert hess.shape == (d * (d + 1) // 2, 6, 5)


def test_closed_forms_products_quotients_and_reductions(no_generic):
    z, _ = _zv()
    _check(_rbf(), z)  # the RBF head: pow, sum over a short axis, sqrt, reciprocal
    torch.manual_seed(9)
    _check(Reductions().to(DT), z)
    torch.manual_seed(3)
    out, cols, hess = _check(TwoHead().to(DT), _zv(d=2)[0])
    assert isinstance(hess, tuple) and hess[0].shape == (3, 6, 4)


def test_generic_nodes_varying_matmul_and_decomposed_layers():
    """Arith: a matmul of two varying operands, a quotient of varying values and softmax (the
    generic rule, vmapped over the pairs of directions); LayerNorm and ``torch.cdist`` go through
    their decompositions."""
    torch.manual_seed(5)
    z, _ = _zv()
    _check(Arith().to(DT), z.abs() + 0.5, tol=1e-10)

    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.o = nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 4)
            self.c = nn.Parameter(torch.randn(5, 3))

        def forward(self, x):
            w = ((x.unsqueeze(1) - self.c).pow(2).sum(-1)).sqrt() if getattr(self, "eager", False) else torch.cdist(x, self.c)
            return torch.cat([self.o(torch.tanh(self.ln(self.a(x)))), w], -1)

    torch.manual_seed(6)
    net = Norms().to(DT)
    res = hessian_second_order(net, z)
    net.eager = True  # the reference (torch has no reverse derivative of cdist's backward); the trace keeps cdist
    (ref,) = _hessian_reference(net, z)
    assert (res[2] - ref).abs().max() < 1e-10 * max(1.0, ref.abs().max().item())


def test_agrees_with_the_mixed_mode():
    """Slot ``(i, j)`` is the mixed mode's ``∂²f[e_i, e_j]`` with ``v = e_i``."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 12), nn.GELU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)).to(DT)
    z, _ = _zv(n=5, d=4, seed=8)
    _, _, hess = hessian_second_order(net, z)
    I, J = hessian_pairs(4)
    for k, (i, j) in enumerate(zip(I, J)):
        e = torch.zeros_like(z)
        e[:, i] = 1.0
        _, _, mix = mixed_second_order(net, z, e)
        assert (hess[k] - mix[j]).abs().max() < 1e-12


def test_ineligible_and_bad_input():
    from test_autodiff_taylor import Untraceable

    z, _ = _zv(d=2)
    assert hessian_second_order(Untraceable().to(DT), z) is None
    with pytest.raises(ValueError, match="z must"):
        hessian_second_order(nn.Linear(2, 2).to(DT), z[0])
    with pytest.raises(ValueError, match="nn.Module"):
        hessian_second_order(lambda x: x, z)


@pytest.mark.parametrize("name", list(_embedding_cases()))
def test_embedding_hessian_jet_matches_reverse_mode(name):
    """Every decoder's Hessian-mode embedding jet (Gaussian, Bernoulli, categorical through their
    outer maps; plain functions) against reverse-over-reverse derivatives of the embedding, with
    the same value and Jacobian as the Taylor-mode jet."""
    metric = _embedding_cases()[name]
    z, v = _zv(n=5, d=2, seed=12)
    r = metric.hessian_jet(z)
    assert r is not None
    g, jac, hp = r
    g0, jac0, _ = metric.decoder.embedding_jet(z, v, metric.kind)
    (ref,) = _hessian_reference(metric.embedding, z)  # (m, N, K)
    ref = ref.permute(1, 2, 0)
    assert torch.equal(g, g0) and (jac - jac0).abs().max() < TOL
    assert hp.shape == ref.shape and (hp - ref).abs().max() < TOL * max(1.0, ref.abs().max().item())
    metric.fast_path = False
    try:
        assert metric.hessian_jet(z) is None  # no fast path: callers use jet()
    finally:
        metric.fast_path = True


@pytest.mark.parametrize("d", [2, 3])
def test_brownian_drift_from_the_hessian_jet(monkeypatch, d):
    """The walks' Brownian drift from one Hessian-mode jet equals the drift from the Taylor-mode
    passes it replaces (polarisation in 2-D, one jet per direction ``l_m`` otherwise)."""
    import latentgeo as lg
    from latentgeo.walks.geometry import brownian_terms_fn

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 7)).to(DT)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(net), ridge=1e-3)
    z, _ = _zv(n=6, d=d, seed=5)
    lfac, ok, b = brownian_terms_fn(metric)(z)
    monkeypatch.setattr(type(metric), "hessian_jet", lambda self, z: None)
    lfac0, ok0, b0 = brownian_terms_fn(metric)(z)
    assert bool(ok.all()) and torch.allclose(lfac, lfac0, atol=1e-13)
    assert b.abs().max() > 1e-3 and (b - b0).abs().max() < 1e-10 * b.abs().max()


def _tensor_jacobian(net, z):
    """``∂_j M`` ``(N, d, d, d)`` of ``M = JᵀJ`` by reverse over reverse mode through the eager
    module (independent of the interpreter and of forward mode)."""
    def tensor(x):
        j = jacrev(net)(x)  # (K, d)
        return j.T @ j

    return vmap(jacrev(tensor))(z).permute(0, 3, 1, 2)  # [n, a, b, j] -> [n, j, a, b]


@pytest.mark.parametrize("d", [2, 3])
def test_metric_derivatives_and_the_mmala_divergence(d):
    """``metric_derivatives_fn``: ``M`` and ``∂_j M`` from one Hessian-mode jet against reverse mode
    through the tensor; the MMALA divergence from them equals the forward-mode one it replaces."""
    import latentgeo as lg
    from latentgeo.walks.geometry import inverse_metric_divergence, metric_derivatives_fn

    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 7)).to(DT)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(net), ridge=1e-3)
    z, _ = _zv(n=5, d=d, seed=9)
    m, dm = metric_derivatives_fn(metric)(z)
    assert torch.allclose(m, metric.tensor_fn()(z), atol=1e-13)
    ref = _tensor_jacobian(net, z)
    assert dm.shape == (5, d, d, d) and ref.abs().max() > 1e-3
    assert (dm - ref).abs().max() < 1e-11 * ref.abs().max()
    div = inverse_metric_divergence(metric.tensor_fn(), z, m, dm)
    div0 = inverse_metric_divergence(metric.tensor_fn(), z, m)
    assert (div - div0).abs().max() < 1e-11 * div0.abs().max()


def test_mmala_on_a_layer_norm_decoder():
    """MMALA refused LayerNorm decoders (its divergence nested forward mode through the decoder,
    which torch gets wrong there); with the Hessian-mode jet it runs, and its ``∂_j M`` agrees with
    reverse mode."""
    import latentgeo as lg
    from latentgeo.walks.geometry import metric_derivatives_fn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 8)).to(DT).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    metric = lg.PullbackMetric(lg.DeterministicDecoder(net))
    z, _ = _zv(n=4, d=2, seed=2)
    _, dm = metric_derivatives_fn(metric)(z)
    ref = _tensor_jacobian(net, z)
    assert (dm - ref).abs().max() < 1e-10 * ref.abs().max()
    w = lg.random_walk(metric, z, n_steps=20, step_size=1e-2, method="mmala",
                       log_prob=lambda x: -0.5 * (x * x).sum(-1), random_state=0, progress=False)
    assert w.trajectories.shape == (4, 21, 2) and bool(torch.isfinite(w.trajectories).all())
    assert int(w.accepted.sum()) > 0
