"""Ops whose derivatives torch gets wrong or lacks: LayerNorm (wrong nested jvp), cdist (no jvp).

In torch 2.13 a jvp of a jvp through ``native_layer_norm`` (``nn.LayerNorm``, ``F.layer_norm``)
and through the instance statistics of ``F.instance_norm`` is ~40 % off (its first derivatives
are right). The fx interpreter evaluates those nodes by their decomposition, so the jets, the
geodesic acceleration and the geodesics of such decoders are right. References here are
reverse-mode (``torch.func.hessian``, ``jacrev``), which torch gets right.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import hessian, jacrev, jvp

import latentgeo as lg
from latentgeo._autodiff import mixed_second_order, second_order
from latentgeo.geodesics.ode import acceleration_fn

DT = torch.float64


def test_torch_nested_jvp_through_layer_norm_is_wrong():
    """Why the decomposition is needed (if torch fixes this, the test says so)."""
    torch.manual_seed(0)
    ln = nn.LayerNorm(6).to(DT)
    x, v = torch.randn(1, 6, dtype=DT), torch.randn(1, 6, dtype=DT)
    nested = jvp(lambda y: jvp(ln, (y,), (v,))[1], (x,), (v,))[1][0]
    ref = torch.einsum("kij,i,j->k", hessian(lambda y: ln(y[None])[0])(x[0]), v[0], v[0])
    assert (nested - ref).abs().max() > 1e-2 * ref.abs().max()


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 5)
        self.w, self.c = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))

    def forward(self, z):
        h = F.layer_norm(self.a(z), (8,), self.w, self.c, 1e-4)
        g = F.instance_norm(torch.tanh(h).reshape(-1, 2, 4)).reshape(-1, 8)
        return self.b(torch.tanh(g) + h)


NETS = {
    "LayerNorm": lambda: nn.Sequential(nn.Linear(3, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 5)),
    "LayerNorm_no_affine": lambda: nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.LayerNorm(16, elementwise_affine=False),
                                                 nn.Linear(16, 5)),
    "InstanceNorm1d": lambda: nn.Sequential(nn.Linear(3, 16), nn.Unflatten(1, (2, 8)), nn.InstanceNorm1d(2, affine=True),
                                            nn.Flatten(), nn.Tanh(), nn.Linear(16, 5)),
    "functional": Functional,
}


@pytest.mark.parametrize("name", list(NETS))
def test_jets_match_reverse_mode(name):
    torch.manual_seed(1)
    net = NETS[name]().to(DT).eval()
    if name == "LayerNorm":  # non-trivial affine parameters
        with torch.no_grad():
            net[1].weight.uniform_(0.5, 1.5)
            net[1].bias.normal_()
    z, v = torch.randn(6, 3, dtype=DT), torch.randn(6, 3, dtype=DT)
    H = torch.stack([hessian(lambda y: net(y[None])[0])(zi) for zi in z])  # (n, K, d, d)
    J = torch.stack([jacrev(lambda y: net(y[None])[0])(zi) for zi in z])
    out, cols, h = second_order(net, z, v)
    assert torch.allclose(cols.permute(1, 2, 0), J, atol=1e-12)
    assert torch.allclose(h, torch.einsum("nkij,ni,nj->nk", H, v, v), atol=1e-11)
    _, _, mix = mixed_second_order(net, z, v)
    assert torch.allclose(mix.permute(1, 2, 0), torch.einsum("nkij,ni->nkj", H, v), atol=1e-11)


def test_geodesic_acceleration_of_a_layer_norm_decoder():
    """``γ'' = −M⁻¹((∂_v M) v − ½ ∇(vᵀMv))`` with ``M`` and ``∂M`` by reverse mode; before the
    decomposition the library's acceleration was off by O(1) here."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 20)).to(DT).eval().requires_grad_(False)
    m = lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2))
    z, v = torch.randn(5, 2, dtype=DT), torch.randn(5, 2, dtype=DT)
    a = acceleration_fn(m)(z, v)

    def M(x):
        J = jacrev(lambda y: net(y[None])[0])(x)
        return J.T @ J

    for i in range(5):
        dM = jacrev(M)(z[i])  # [a, b, k] = ∂_k M_ab
        t1 = torch.einsum("abk,k,b->a", dM, v[i], v[i])
        t2 = 0.5 * torch.einsum("abl,a,b->l", dM, v[i], v[i])
        ref = -torch.linalg.solve(M(z[i]), t1 - t2)
        assert torch.allclose(a[i], ref, atol=1e-12, rtol=1e-10)


def test_paths_that_nest_forward_mode_refuse_layer_norm():
    """The Fisher–Rao metric's acceleration differentiates the tensor in forward mode (no trace of
    its derivative): a clear error instead of a wrong geodesic."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 8)).to(DT).eval()
    codes = torch.randn(60, 2, dtype=DT)
    with torch.no_grad():
        data = net(codes) + 0.05 * torch.randn(60, 8, dtype=DT)
    dec = lg.fit_rbf_variance(net, codes, data, n_centers=4)
    with pytest.raises(NotImplementedError, match="LayerNorm, whose second forward-mode derivatives"):
        lg.connecting_geodesic(lg.PullbackMetric(dec, kind="fisher"), codes[:1], codes[1:2], progress=False)
    r = lg.connecting_geodesic(lg.PullbackMetric(dec), codes[:2], codes[2:4], progress=False, budget=None)  # (no wall clock)
    assert bool(r.converged.all())


class RBFStd(nn.Module):
    """An RBF std head written with ``torch.cdist`` (or, as its twin, by broadcasting)."""

    def __init__(self, cdist=True):
        super().__init__()
        self.c = nn.Parameter(torch.randn(5, 2, dtype=DT))
        self.w = nn.Parameter(torch.rand(5, 8, dtype=DT))
        self.cdist = cdist

    def forward(self, z):
        d2 = torch.cdist(z, self.c) ** 2 if self.cdist else ((z[:, None] - self.c[None]) ** 2).sum(-1)
        return (torch.exp(-d2) @ self.w + 0.01).rsqrt()


def test_cdist_rbf_head():
    """torch has no forward-mode derivative of ``_cdist_forward`` (a geodesic on such a decoder
    raised NotImplementedError): the interpreter broadcasts instead; same jets and lengths as the
    broadcasting twin."""
    torch.manual_seed(0)
    z, v = torch.randn(4, 2, dtype=DT), torch.randn(4, 2, dtype=DT)
    with pytest.raises(NotImplementedError, match="_cdist_forward"):
        jvp(lambda x: torch.cdist(x, z), (z,), (v,))
    mean = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8)).to(DT)
    std, twin = RBFStd(), RBFStd(cdist=False)
    twin.load_state_dict(std.state_dict())
    for a, b in zip(mixed_second_order(std, z, v), mixed_second_order(twin, z, v)):
        assert torch.allclose(a, b, atol=1e-12)
    lengths = []
    for s in (std, twin):
        r = lg.connecting_geodesic(lg.PullbackMetric(lg.GaussianDecoder(mean=mean, std=s, latent_dim=2)), z[:2], z[2:],
                                   progress=False, budget=None)  # (no wall clock: it ran out on a loaded machine)
        assert bool(r.converged.all())
        lengths.append(r.length)
    assert torch.allclose(lengths[0], lengths[1], rtol=1e-9)


@pytest.mark.parametrize("kind", ["expected", "fisher"])
def test_reverse_mode_through_the_metric_tensor_of_a_layer_norm_decoder(kind):
    """Autograd through ``metric.tensor_fn()`` (curve energies optimised by gradient descent, the
    energy stage of non-embedded metrics): through torch's ``vmap(jvp)`` of ``native_layer_norm``
    its double backward is wrong; outside torch.func transforms the tensor now comes from the traced
    first-order pass, and its derivatives agree with central differences."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 8)).to(DT).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    codes = torch.randn(60, 2, dtype=DT)
    with torch.no_grad():
        data = net(codes) + 0.05 * torch.randn(60, 8, dtype=DT)
    dec = lg.fit_rbf_variance(net, codes, data, n_centers=4)
    tfn = lg.PullbackMetric(dec, kind=kind).tensor_fn()
    z = torch.randn(1, 2, dtype=DT)
    ad = torch.autograd.functional.jacobian(lambda x: tfn(x[None])[0], z[0])  # (d, d, j)
    h, eye = 1e-6, torch.eye(2, dtype=DT)
    fd = torch.stack([(tfn(z + h * eye[j]) - tfn(z - h * eye[j]))[0] / (2 * h) for j in range(2)], -1)
    assert fd.abs().max() > 1e-2
    assert (ad - fd).abs().max() < 1e-6 * fd.abs().max()
