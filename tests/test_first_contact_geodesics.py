"""First contact with the geodesic entry points (issue 10), through the public API as it is
on main: exp_map, connecting_geodesic, log_map, distance_matrix. Bad codes (shapes, dtypes,
NaN/inf, empty batches, wrong latent widths) are refused with a ValueError/TypeError naming
the argument; good codes give finite results of the right shape. Kept apart from
test_first_contact.py so the geodesics rewrite can adapt it at merge."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import latentgeo as lg  # noqa: E402
from latentgeo import geodesics as G  # noqa: E402

FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _metric(with_latent_dim: bool):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    f = (lambda z: net(z)) if not with_latent_dim else net
    return lg.PullbackMetric(lg.DeterministicDecoder(f, latent_dim=2 if with_latent_dim else None))


@st.composite
def codes(draw):
    shape = draw(st.sampled_from([(2,), (1, 2), (2, 2), (0, 2), (2, 3), (3,), (1, 2, 2)]))
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.int64, torch.complex128]))
    z = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))), dtype=torch.float64)
    z = z * draw(st.sampled_from([1e-12, 0.5, 2.0]))
    poison = draw(st.sampled_from([None, None, math.nan, math.inf]))
    if poison is not None and z.numel() and dtype.is_floating_point:
        z.reshape(-1)[0] = poison
    else:
        poison = None
    if dtype.is_complex:
        z = z.to(dtype)
    elif not dtype.is_floating_point:
        z = z.round().to(dtype)
    else:
        z = z.to(dtype)
    valid = len(shape) in (1, 2) and shape[-1] == 2 and (len(shape) == 1 or shape[0] > 0) and poison is None \
        and dtype != torch.complex128 and dtype != torch.float32
    return z, valid


def _named(exc, *names):
    msg = str(exc)
    assert any(n in msg for n in names), msg
    assert "mat1 and mat2" not in msg or "refused" in msg, msg


@FEW
@given(codes(), st.booleans())
def test_exp_map_contract(zv, with_dim):
    z, valid = zv
    metric = _metric(with_dim)
    try:
        res = G.exp_map(metric, z, torch.ones_like(z, dtype=torch.float64) if not z.is_complex() else z, t=0.5)
    except (ValueError, TypeError) as exc:
        _named(exc, "z", "v", "decoder")
        return
    assert valid
    end = res.z1
    assert end.shape[-1] == 2 and bool(torch.isfinite(end).all())
    assert "object at 0x" not in repr(res)


@FEW
@given(codes(), st.booleans())
def test_connecting_geodesic_contract(zv, with_dim):
    z, valid = zv
    metric = _metric(with_dim)
    try:
        res = G.connecting_geodesic(metric, z, torch.zeros_like(z) if not z.is_complex() else z, n_points=5)
    except (ValueError, TypeError) as exc:
        _named(exc, "z0", "z1", "decoder")
        return
    assert valid
    assert bool(torch.isfinite(res.length).all())
    assert "object at 0x" not in repr(res)


@pytest.mark.parametrize("with_dim", [False, True])
def test_distance_matrix_and_log_map_name_the_wrong_width(with_dim):
    metric = _metric(with_dim)
    with pytest.raises(ValueError, match=r"(A|z0) .*(latent dimension 3|shape \(3, 3\))"):
        G.distance_matrix(metric, torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"z0 .*(latent dimension 3|shape \(1, 3\)|shape \(3,\))"):
        G.log_map(metric, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="complex"):
        G.distance_matrix(metric, torch.zeros(3, 2, dtype=torch.complex128))
    with pytest.raises(ValueError, match="empty"):
        G.distance_matrix(metric, torch.zeros(0, 2, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, words", [
    ({"solver": "magic"}, "solver"),
    ({"init": "spiral"}, "init"),
    ({"tol": -1.0}, "tol"),
    ({"n_points": 1}, "n_points"),
])
def test_connecting_geodesic_refuses_unknown_options(kwargs, words):
    metric = _metric(True)
    a, b = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match=words):
        G.connecting_geodesic(metric, a, b, **kwargs)
