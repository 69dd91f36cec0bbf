"""Decoder wrappers: embeddings, distributions, shapes."""

import math

import pytest
import torch

import latentgeo as lg

f64 = torch.float64


def test_embeddings_match_their_formulas():
    z = torch.randn(5, 2, dtype=f64)
    logits = torch.randn(5, 3, dtype=f64) * 4
    bern = lg.BernoulliDecoder(logits=lambda z: logits)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(bern.coordinates(z), 2 * torch.asin(torch.sqrt(p)))
    torch.testing.assert_close(bern.coordinates(z, "mean"), p)
    cl = torch.randn(5, 4, 3, dtype=f64)
    cat = lg.CategoricalDecoder(logits=lambda z: cl)
    torch.testing.assert_close(cat.coordinates(z), (2 * torch.softmax(cl, -1).sqrt()).reshape(5, -1))
    # the embedding of each categorical lies on a sphere of radius 2
    torch.testing.assert_close(cat.coordinates(z).reshape(5, 4, 3).pow(2).sum(-1), torch.full((5, 4), 4.0, dtype=f64))
    gauss = lg.GaussianDecoder(mean=lambda z: z.repeat(1, 2), std=lambda z: torch.ones(5, 4, dtype=f64))
    assert gauss.coordinates(z).shape == (5, 8)
    assert gauss.coordinates(z, "mean").shape == (5, 4)


def test_saturated_bernoulli_embedding_is_finite_and_differentiable():
    l = torch.tensor([[-60.0, -30.0, 0.0, 30.0, 60.0]], dtype=f64, requires_grad=True)
    dec = lg.BernoulliDecoder(logits=lambda z: l)
    g = dec.coordinates(torch.zeros(1, 1, dtype=f64))
    (grad,) = torch.autograd.grad(g.sum(), l)
    assert torch.isfinite(g).all() and torch.isfinite(grad).all()
    # d/dl 2 arcsin sqrt(sigmoid(l)) = sqrt(p (1 - p)) = 1 / (2 cosh(l/2))
    torch.testing.assert_close(grad, 1 / (2 * torch.cosh(l.detach() / 2)))
    assert abs(g[0, 2].item() - math.pi / 2) < 1e-15


def test_image_outputs_are_flattened_and_distributions():
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Unflatten(1, (1, 8, 8)))
    dec = lg.BernoulliDecoder(logits=net)
    z = torch.randn(3, 2)
    assert dec.coordinates(z).shape == (3, 64)
    dist = dec.distribution(z)
    assert dist.batch_shape == (3,)
    gdec = lg.GaussianDecoder(mean=net, std=lambda z: torch.full((z.shape[0], 1, 8, 8), 0.5))
    d = gdec(z)
    assert isinstance(d, torch.distributions.Independent) and d.event_shape == (64,)
    G = lg.PullbackMetric(gdec).tensor(z)
    assert G.shape == (3, 2, 2)


def test_mismatched_heads_and_probs_validation():
    dec = lg.GaussianDecoder(mean=lambda z: z, std=lambda z: torch.ones(z.shape[0], 3))
    with pytest.raises(ValueError, match="mean has 2 outputs per code but std has 3"):
        lg.PullbackMetric(dec).tensor(torch.zeros(2, 2))
    pdec = lg.BernoulliDecoder(probs=lambda z: torch.cat([torch.sigmoid(z), torch.ones(z.shape[0], 1)], 1))
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        lg.PullbackMetric(pdec).tensor(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"shape \(N, \.\.\., C\)"):
        lg.PullbackMetric(lg.CategoricalDecoder(logits=lambda z: z[:, 0])).tensor(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        lg.DeterministicDecoder(lambda z: z, latent_dim=0)
