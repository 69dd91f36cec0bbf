"""The hyperbolic latent (wrapped normal, TC/WHC flows), Euclidean posterior flows, and the CLI."""

import json
import math

import pytest
import torch

from latentgeo.cli import main
from latentgeo.datasets import load_dataset
from latentgeo.distributions import lorentz as L
from latentgeo.models import VAE
from latentgeo.models.latents import EuclideanLatent, HyperbolicLatent, get_latent
from latentgeo.training import elbo_estimate, iwae_log_likelihood, train_vae


@pytest.fixture(scope="module")
def tree():
    return load_dataset("tree", depth=3, dim=20)  # 15 nodes x 5 noisy siblings = 75 items


def _train(ds, flow=None, epochs=30, latent="hyperbolic"):
    kw = {"flow": flow} if flow else {}
    vae = VAE(ds.dim, 2, latent=latent, latent_kwargs=kw, hidden=(32,), random_state=0)
    before = float(-elbo_estimate(vae, ds.data, n_samples=8).mean())
    hist = train_vae(vae, ds, epochs=epochs, batch_size=32, lr=3e-3, variance="constant", progress=False,
                     random_state=0)
    return vae, hist, before


@pytest.fixture(scope="module")
def trained(tree):
    return _train(tree, None)


def test_registered_and_shapes():
    lat = get_latent("hyperbolic", 3)
    assert isinstance(lat, HyperbolicLatent) and lat.code_dim == 4 and lat.n_params == 6
    q = lat.posterior(torch.randn(7, lat.n_params))
    z = lat.rsample(q, 5)
    assert z.shape == (5, 7, 4)
    assert float(((L.lorentz_inner(z, z) + 1).abs() / (z * z).sum(-1)).max()) < 1e-5  # float32
    assert lat.mean(q).shape == (7, 4)
    assert lat.kl(q, z).shape == (7,)
    assert list(lat.state_dict()) == []  # the geoopt manifold is not part of the state


def test_training_lowers_the_loss_and_iwae_bounds(trained, tree):
    vae, hist, before = trained
    losses = hist.column("train_loss", "mean")
    assert losses[-1] < losses[0] - 5, losses
    after = float(-elbo_estimate(vae, tree.data, n_samples=8).mean())
    assert after < before - 5, (before, after)
    x = tree.data[:60]
    elbo = elbo_estimate(vae, x, n_samples=100, random_state=1).double()
    iw = iwae_log_likelihood(vae, x, k=50, random_state=2).double()
    assert torch.isfinite(iw).all() and torch.isfinite(elbo).all()
    assert float(iw.mean()) >= float(elbo.mean())
    # codes lie on the hyperboloid
    codes = vae.encode_mean(x)
    assert codes.shape == (60, 3)
    assert torch.allclose(L.lorentz_inner(codes, codes), -torch.ones(60), atol=1e-3)


def test_mc_kl_reuses_the_sample_and_matches_the_log_map_density(trained, tree):
    vae, _, _ = trained
    lat = vae.latent
    with torch.no_grad():
        q = lat.posterior(vae.encoder(tree.data[:10]).double())
        z = lat.rsample(q, 2000)
        kl_cached = lat.kl(q, z)
        kl_logmap = (q.log_prob(z.clone()) - lat.log_prior(z)).mean(0)
    assert torch.allclose(kl_cached, kl_logmap, atol=1e-8)
    assert bool((kl_cached > 0).all())


@pytest.mark.parametrize("flow", ["tc", "whc"])
def test_flow_posteriors_train_and_round_trip(flow, tree, tmp_path):
    vae, hist, before = _train(tree, flow, epochs=12)
    losses = hist.column("train_loss", "mean")
    assert losses[-1] < losses[0] - 3
    # the couplings' output layers start at zero (identity flow); training moved them
    heads = [p for n, p in vae.named_parameters() if n.startswith("latent.flow") and n.endswith("net.2.weight")]
    assert len(heads) == 4 and all(float(p.detach().abs().max()) > 1e-3 for p in heads)
    iw = iwae_log_likelihood(vae, tree.data[:30], k=20, random_state=0)
    assert torch.isfinite(iw).all()
    path = tmp_path / f"{flow}.safetensors"
    vae.save(path)
    back = VAE.load(path)
    assert back.config == vae.config and back.latent.flow_kind == flow
    torch.testing.assert_close(back.encode_mean(tree.data[:20]), vae.encode_mean(tree.data[:20]))
    torch.testing.assert_close(iwae_log_likelihood(back, tree.data[:30], k=20, random_state=0), iw)


def test_checkpoint_round_trip_without_flow(trained, tree, tmp_path):
    vae, _, _ = trained
    vae.save(tmp_path / "m.safetensors")
    back = VAE.load(tmp_path / "m.safetensors")
    assert back.config["latent"] == "hyperbolic" and back.config["latent_kwargs"]["curvature"] == 1.0
    torch.testing.assert_close(back.encode_mean(tree.data), vae.encode_mean(tree.data))


@pytest.mark.parametrize("flow", ["realnvp", "nsf", "planar", "radial"])
def test_euclidean_posterior_flows(flow, tree, tmp_path):
    vae, hist, _ = _train(tree, flow, epochs=6, latent="euclidean")
    assert math.isfinite(hist.column("train_loss", "mean")[-1])
    x = tree.data[:20]
    iw = iwae_log_likelihood(vae, x, k=10, random_state=0)
    assert torch.isfinite(iw).all()
    q = vae.latent.posterior(vae.encoder(x))
    z = vae.latent.rsample(q, 3)
    torch.testing.assert_close(q.log_prob(z.clone()), q.log_prob(z), atol=1e-4, rtol=1e-4)  # inverse path
    vae.save(tmp_path / "e.safetensors")
    back = VAE.load(tmp_path / "e.safetensors")
    assert back.config == vae.config
    torch.testing.assert_close(back.encode_mean(x), vae.encode_mean(x))


def test_euclidean_latent_without_flow_is_unchanged():
    lat = EuclideanLatent(2)
    assert lat.kwargs() == {"min_scale": 1e-4} and lat.n_params == 4 and list(lat.state_dict()) == []
    old = {"class": "VAE", "data_dim": 5, "latent_dim": 2, "latent": "euclidean",
           "latent_kwargs": {"min_scale": 1e-4}, "likelihood": "gaussian", "hidden": [8],
           "activation": "tanh", "item_shape": [5], "min_std": 1e-3, "variance": "constant", "rbf": None,
           "dtype": "float32", "metadata": {}}
    vae = VAE.from_config(old)
    assert vae.config["latent_kwargs"] == {"min_scale": 1e-4}


def test_bad_latent_options():
    with pytest.raises(ValueError, match="flow"):
        HyperbolicLatent(2, flow="planar")
    with pytest.raises(ValueError, match="flow"):
        EuclideanLatent(2, flow="whc")
    with pytest.raises(ValueError, match="latent dimension"):
        HyperbolicLatent(1, flow="tc")
    with pytest.raises(ValueError, match="curvature"):
        HyperbolicLatent(2, curvature=-1.0)


def test_cli_train_hyperbolic_with_flow(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "tree", "--out", str(out), "--latent", "hyperbolic", "--flow", "whc",
            "--epochs", "2", "--hidden", "16", "--variance", "constant", "--quiet"]
    assert main(argv) == 0
    back = VAE.load(out / "model.safetensors")
    assert back.config["latent"] == "hyperbolic" and back.config["latent_kwargs"]["flow"] == "whc"
    assert len((out / "train_log.jsonl").read_text().splitlines()) >= 2
    json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    # a flow that does not fit the latent is refused with exit code 2
    assert main(["train", "--data", "tree", "--out", str(tmp_path / "bad"), "--latent", "euclidean",
                 "--flow", "tc", "--epochs", "1", "--quiet"]) == 2
    assert "--flow tc does not apply to --latent euclidean" in capsys.readouterr().err
    # (reports of hyperbolic latents run in the Poincaré ball: tests/test_report_manifolds.py)


def test_cli_train_euclidean_planar(tmp_path):
    out = tmp_path / "e"
    assert main(["train", "--data", "tree", "--out", str(out), "--flow", "planar", "--epochs", "2",
                 "--hidden", "16", "--variance", "constant", "--quiet"]) == 0
    assert VAE.load(out / "model.safetensors").config["latent_kwargs"]["flow"] == "planar"
