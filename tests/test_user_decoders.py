"""Decoders as users hand them over: left in training mode, wrapped by ``torch.compile``."""

import pytest
import torch
from torch import nn

import latentgeo as lg

DT = torch.float64


def _net(*mid):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), *mid, nn.Tanh(), nn.Linear(16, 6)).to(DT)


@pytest.mark.parametrize("layer,name", [(nn.Dropout(0.2), "Dropout"), (nn.BatchNorm1d(16), "BatchNorm1d")])
def test_training_mode_is_a_clear_error(layer, name):
    """Before: a RuntimeWarning, then a raw vmap / batch-norm error from inside the solver."""
    net = _net(layer)  # (modules start in training mode)
    m = lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2))
    z0, z1 = torch.zeros(1, 2, dtype=DT), torch.ones(1, 2, dtype=DT)
    with pytest.raises(ValueError, match=f"training mode.*{name} \\(1\\); call .eval"):
        lg.connecting_geodesic(m, z0, z1, progress=False)
    with pytest.raises(ValueError, match="training mode"):
        lg.exp_map(m, z0, z1)
    net.eval()
    assert bool(lg.connecting_geodesic(m, z0, z1, progress=False).converged.all())


def test_compiled_module_is_unwrapped():
    """A ``torch.compile`` d module is analysed through the module it wraps (its compiled code is
    retraced for every new batch shape: ~3 s a geodesic before, and it is never called here)."""
    net = _net()
    dec = lg.DeterministicDecoder(torch.compile(net), latent_dim=2)
    assert dec.f is net
    g = lg.GaussianDecoder(mean=torch.compile(net), std=lambda z: 0.1 + 0 * net(z), latent_dim=2)
    assert g.mean is net
    z0, z1 = torch.zeros(2, 2, dtype=DT), torch.tensor([[1.0, 0.5], [-1.0, 2.0]], dtype=DT)
    r = lg.connecting_geodesic(lg.PullbackMetric(dec), z0, z1, progress=False)
    ref = lg.connecting_geodesic(lg.PullbackMetric(lg.DeterministicDecoder(net, latent_dim=2)), z0, z1, progress=False)
    assert bool(r.converged.all()) and torch.equal(r.length, ref.length)


def test_batch_norm_in_eval_mode_is_an_affine_map():
    """Eval-mode batch norm as a closed-form affine rule (before: torch's jvp of batch_norm, whose
    forward-mode decompositions cost ~1 s to load on first use: a fresh process's first pair ran
    out of its budget). Jets against reverse mode, (N, C) and (N, C, L) inputs."""
    from torch.func import hessian

    from latentgeo._autodiff import mixed_second_order, second_order

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 12), nn.Unflatten(1, (3, 4)),
                        nn.BatchNorm1d(3), nn.Flatten(), nn.Softplus()).to(DT)
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    net.eval()
    z, v = torch.randn(5, 2, dtype=DT), torch.randn(5, 2, dtype=DT)
    H = torch.stack([hessian(lambda y: net(y[None])[0])(zi) for zi in z])
    _, _, h = second_order(net, z, v)
    assert torch.allclose(h, torch.einsum("nkij,ni,nj->nk", H, v, v), atol=1e-12)
    _, _, mix = mixed_second_order(net, z, v)
    assert torch.allclose(mix.permute(1, 2, 0), torch.einsum("nkij,ni->nkj", H, v), atol=1e-12)


def test_one_time_costs_are_not_charged_to_the_budget():
    """A metric whose first jet takes 1.2 s (as a fresh process's first jets can: traces, torch's
    forward-mode decompositions) still gets its pair certified within a 1 s budget."""
    import time

    m = lg.PullbackMetric(lg.DeterministicDecoder(_net(), latent_dim=2))
    jet, state = m.jet, {"first": True}

    def slow_once(*a, **k):
        if state["first"]:
            state["first"] = False
            time.sleep(1.2)
        return jet(*a, **k)

    m.jet = slow_once
    r = lg.connecting_geodesic(m, torch.zeros(1, 2, dtype=DT), torch.ones(1, 2, dtype=DT), progress=False, budget=1.0)
    assert not state["first"] and bool(r.converged.all())


class ReturnsNormal(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 8)

    def forward(self, z):
        h = self.lin(z)
        return torch.distributions.Normal(h, nn.functional.softplus(h) + 0.1)


@pytest.mark.parametrize("make", [lambda net: lg.GaussianDecoder(model=net, latent_dim=2),
                                  lambda net: lg.DeterministicDecoder(net, latent_dim=2)])
def test_a_network_returning_a_distribution_gets_a_hint(make):
    dec = make(ReturnsNormal().to(DT))
    with pytest.raises(ValueError, match="returns a torch.distributions.Normal, give the decoder its parameters"):
        lg.connecting_geodesic(lg.PullbackMetric(dec), torch.zeros(1, 2, dtype=DT), torch.ones(1, 2, dtype=DT),
                               progress=False)
