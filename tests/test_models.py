"""VAE model: shapes, closed-form terms, analysis decoder vs autograd Jacobians, pluggable latents, errors."""


import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import latentgeo as lg
from latentgeo.models import VAE, EuclideanLatent, Latent, register_latent
from latentgeo.models.latents import LATENTS


def _x(n=7, d=12, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_item_shape():
    vae = VAE(12, 3, hidden=(8, 6), item_shape=(3, 4), random_state=0)
    x = _x()
    q = vae.encode(x)
    assert q.batch_shape == (7,) and q.event_shape == (3,)
    assert vae.encode_mean(x.reshape(7, 3, 4)).shape == (7, 3)
    mu, sd = vae.decode(torch.zeros(5, 3))
    assert mu.shape == sd.shape == (5, 12) and bool((sd > 0).all())
    assert vae.elbo(x, n_samples=4).shape == (7,)
    # encoder widths from the data side, decoder mirrored
    assert [m.out_features for m in vae.encoder.net if isinstance(m, torch.nn.Linear)] == [8, 6, 6]
    assert [m.out_features for m in vae.likelihood.mean_net.net if isinstance(m, torch.nn.Linear)] == [6, 8, 12]


def test_seeded_init_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b, c = VAE(12, 2, random_state=5), VAE(12, 2, random_state=5), VAE(12, 2, random_state=6)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    assert not torch.equal(a.encoder.net[0].weight, c.encoder.net[0].weight)


def test_euclidean_kl_closed_form_and_elbo_decomposition():
    vae = VAE(12, 3, hidden=(8,), random_state=0).double()
    x = _x().double()
    q = vae.encode(x)
    prior = Independent(Normal(torch.zeros(7, 3, dtype=x.dtype), torch.ones(7, 3, dtype=x.dtype)), 1)
    torch.testing.assert_close(vae.latent.kl(q), kl_divergence(q, prior))
    # ELBO = E_q log N(x; mu(z), sd(z)) - KL, with the same noise
    torch.manual_seed(0)
    elbo = vae.elbo(x, n_samples=3)
    torch.manual_seed(0)
    z = q.rsample((3,))
    mu, sd = vae.decode(z.reshape(-1, 3))
    ll = Independent(Normal(mu, sd), 1).log_prob(x.repeat(3, 1)).reshape(3, 7).mean(0)
    torch.testing.assert_close(elbo, ll - kl_divergence(q, prior))
    # beta scales only the KL
    torch.manual_seed(0)
    torch.testing.assert_close(vae.elbo(x, beta=0.25, n_samples=3), ll - 0.25 * kl_divergence(q, prior))


def test_bernoulli_likelihood_matches_torch():
    vae = VAE(12, 2, likelihood="bernoulli", hidden=(8,), random_state=0).double()
    x = (_x() > 0.5).double()
    torch.manual_seed(1)
    elbo = vae.elbo(x)
    torch.manual_seed(1)
    q = vae.encode(x)
    z = q.rsample((1,))[0]
    ll = Independent(Bernoulli(logits=vae.decode(z)), 1).log_prob(x)
    torch.testing.assert_close(elbo, ll - vae.latent.kl(q))
    dec = vae.decoder_for_analysis()
    assert isinstance(dec, lg.BernoulliDecoder)
    with pytest.raises(ValueError, match="[0, 1]"):
        vae.elbo(x * 2)


def _expected_metric_reference(mean_fn, std_fn, z):
    out = []
    for zi in z:
        jm = torch.autograd.functional.jacobian(lambda v: mean_fn(v[None])[0], zi)
        js = torch.autograd.functional.jacobian(lambda v: std_fn(v[None])[0], zi)
        out.append(jm.T @ jm + js.T @ js)
    return torch.stack(out)


@pytest.mark.parametrize("variance", ["constant", "learned", "rbf"])
def test_decoder_for_analysis_metric_matches_autograd(variance):
    torch.manual_seed(0)
    vae = VAE(12, 2, hidden=(10,), random_state=0).double()
    x = _x(60).double()
    if variance == "rbf":
        vae.fit_rbf_variance(x, n_centers=5, n_iter=20)
        assert vae.variance == "rbf"
    else:
        with torch.no_grad():  # make the learned std head non-trivial
            vae.likelihood.std_net.last.weight.normal_()
        vae.set_variance(variance)
    dec = vae.decoder_for_analysis(kind="expected")
    assert isinstance(dec, lg.GaussianDecoder)
    z = torch.randn(4, 2, dtype=torch.float64)
    mu, sd = dec.mean_std(z)
    mu2, sd2 = vae.decode(z)
    assert torch.equal(mu, mu2) and torch.equal(sd, sd2)
    ref = _expected_metric_reference(vae.likelihood.mean_net, lambda v: vae.likelihood.std(v), z)
    G = lg.PullbackMetric(dec, kind="expected").tensor(z)
    torch.testing.assert_close(G.detach(), ref, rtol=1e-8, atol=1e-10)
    if variance == "constant":  # a constant std adds nothing to the metric
        jm = _expected_metric_reference(vae.likelihood.mean_net, lambda v: torch.zeros(1, 1, dtype=v.dtype), z)
        torch.testing.assert_close(G.detach(), jm, rtol=1e-8, atol=1e-10)
    if variance == "rbf":
        torch.testing.assert_close(sd, vae.likelihood.rbf(z))
        const = vae.decoder_for_analysis(variance="constant").mean_std(z)[1]
        assert torch.equal(const, vae.likelihood.const_std().expand(4, 12)) and vae.variance == "rbf"


def test_rbf_requires_fit_and_gaussian():
    vae = VAE(12, 2, random_state=0)
    with pytest.raises(ValueError, match="fit_rbf_variance"):
        vae.set_variance("rbf")
    with pytest.raises(ValueError, match="unknown variance"):
        vae.set_variance("huge")
    with pytest.raises(ValueError, match="Gaussian"):
        VAE(12, 2, likelihood="bernoulli").fit_rbf_variance(_x())
    with pytest.raises(ValueError, match="does not support metric kind"):
        vae.decoder_for_analysis(kind="bogus")


def test_config_round_trip():
    vae = VAE(12, 3, hidden=(9, 5), activation="softplus", item_shape=(3, 4), min_std=0.01, random_state=0)
    vae.metadata["dataset"] = {"name": "x"}
    import json

    cfg = json.loads(json.dumps(vae.config))
    clone = VAE.from_config(cfg)
    assert clone.config == vae.config
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}
    with pytest.raises(ValueError, match="unknown VAE config keys"):
        VAE.from_config({**cfg, "widht": 3})
    with pytest.raises(ValueError, match="not a VAE"):
        VAE.from_config({**cfg, "class": "GAN"})


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(latent="sphere9"), "unknown latent"),
        (dict(likelihood="poisson"), "unknown likelihood"),
        (dict(activation="swish2"), "unknown activation"),
        (dict(hidden=(8, 0)), "hidden"),
        (dict(hidden="abc"), "hidden"),
        (dict(item_shape=(5, 5)), "item_shape"),
        (dict(min_std=0.0), "min_std"),
        (dict(random_state=1.5), "random_state"),
    ],
)
def test_bad_constructor_args(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        VAE(12, 2, **kwargs)
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(12, 0)


def test_bad_inputs():
    vae = VAE(12, 2, random_state=0)
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        vae.encode(torch.rand(3, 11))
    with pytest.raises(ValueError, match="NaN"):
        vae.encode(torch.full((2, 12), float("nan")))
    with pytest.raises(ValueError, match="dtype"):
        vae.encode(torch.rand(2, 12, dtype=torch.float64))
    # lists are converted to the model's dtype (CONTRIBUTING: non-tensor input takes the model's dtype)
    assert torch.equal(vae.encode_mean([[0.0] * 12]), vae.encode_mean(torch.zeros(1, 12)))
    with pytest.raises(TypeError, match="x must be a tensor"):
        vae.encode("digits")
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        vae.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="n_samples"):
        vae.elbo(torch.rand(2, 12), n_samples=0)
    with pytest.raises(ValueError, match="beta"):
        vae.elbo(torch.rand(2, 12), beta=float("nan"))


class _MCLatent(EuclideanLatent):
    """The Euclidean latent without its closed-form KL: exercises the Monte-Carlo path."""

    def kl(self, q, z=None):
        return Latent.kl(self, q, z)

    def prior_like(self, q):
        raise NotImplementedError


def test_pluggable_latent_monte_carlo_kl():
    register_latent("_test_mc", _MCLatent)
    try:
        vae = VAE(12, 2, latent="_test_mc", hidden=(8,), random_state=0).double()
        assert vae.config["latent"] == "_test_mc"
        x = _x().double()
        q = vae.encode(x)
        torch.manual_seed(0)
        z = vae.latent.rsample(q, 20000)
        mc = vae.latent.kl(q, z)
        exact = EuclideanLatent.kl(vae.latent, q)
        torch.testing.assert_close(mc, exact, rtol=0.05, atol=0.02)
        with pytest.raises(ValueError, match="no closed-form KL"):
            vae.latent.kl(q)
        assert vae.elbo(x, n_samples=2).shape == (7,)
    finally:
        LATENTS.pop("_test_mc")
    with pytest.raises(ValueError, match="Latent subclass"):
        register_latent("bad", dict)
