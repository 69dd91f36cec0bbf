"""The hyperspherical latent: training runs and learns, checkpoints round-trip, IWAE ≥ ELBO, the CLI."""

import math

import pytest
import torch

from latentgeo.cli import main
from latentgeo.datasets import load_dataset
from latentgeo.distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher
from latentgeo.models import VAE
from latentgeo.models.latents import SphericalLatent, get_latent
from latentgeo.training import iwae_log_likelihood, train_vae


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.data), generator=g)[:300]
    return ds, torch.as_tensor(ds.data)[idx].to(torch.get_default_dtype())


def test_latent_interface():
    for fam, cls in [("vmf", VonMisesFisher), ("power", PowerSpherical)]:
        lat = get_latent("sphere", 3, family=fam)
        assert isinstance(lat, SphericalLatent) and lat.code_dim == 4 and lat.n_params == 5
        q = lat.posterior(torch.randn(7, 5))
        assert isinstance(q, cls) and q.batch_shape == (7,) and q.event_shape == (4,)
        assert torch.allclose(lat.mean(q).norm(dim=-1), torch.ones(7))
        assert (q.concentration if fam == "vmf" else q.scale).min() > 1.0
        z = lat.rsample(q, 2)
        # closed-form KL = E_q[log q − log p]: compare with the Monte-Carlo estimate
        zz = q.sample((20000,), random_state=0)
        mc = (q.log_prob(zz) - lat.log_prior(zz)).mean(0)
        assert torch.allclose(lat.kl(q), mc, atol=0.05)
        assert z.shape == (2, 7, 4)
    assert torch.allclose(lat.log_prior(torch.zeros(3, 4)), HypersphericalUniform(4).log_prob(torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="family"):
        SphericalLatent(2, family="gaussian")


@pytest.mark.parametrize("family", ["vmf", "power"])
def test_training_checkpoint_iwae(family, digits, tmp_path):
    ds, x = digits
    vae = VAE(ds.dim, 2, latent="sphere", latent_kwargs={"family": family}, hidden=(32,),
              item_shape=tuple(ds.item_shape), random_state=0)
    hist = train_vae(vae, x, epochs=8, batch_size=64, variance="learned", random_state=0, progress=False,
                     patience=None, kl_warmup_epochs=0)
    losses = [r["train_loss"] for r in hist.records]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses
    # checkpoint round trip: same config, same codes, same decoder outputs
    vae.save(tmp_path / "m")
    back = VAE.load(tmp_path / "m")
    assert back.config == vae.config and back.config["latent"] == "sphere"
    assert back.latent.family == family
    codes = vae.encode_mean(x[:20])
    assert torch.equal(back.encode_mean(x[:20]), codes)
    assert torch.allclose(codes.norm(dim=-1), torch.ones(20), atol=1e-6)
    for a, b in zip(back.decode(codes), vae.decode(codes)):
        assert torch.equal(a, b)
    # IWAE bound: finite and above the ELBO on average
    with torch.no_grad():
        torch.manual_seed(0)
        elbo = torch.stack([vae.elbo(x[:100]) for _ in range(20)]).mean(0)
    iw = iwae_log_likelihood(vae, x[:100], k=64, random_state=0)
    assert torch.isfinite(iw).all() and iw.shape == (100,)
    assert float(iw.mean()) >= float(elbo.mean())
    # E[L_1] = ELBO: log q(z) from log_prob agrees with the closed-form KL used by the ELBO
    i1 = torch.stack([iwae_log_likelihood(vae, x[:100], k=1, random_state=s) for s in range(30)]).mean()
    assert abs(float(i1) - float(elbo.mean())) < 0.3, (float(i1), float(elbo.mean()))


def test_cli_train_sphere(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", "digits", "--out", str(out), "--latent", "sphere", "--family", "power",
               "--epochs", "2", "--hidden", "16", "--max-items", "120", "--variance", "learned", "--quiet"])
    assert rc == 0
    m = VAE.load(out / "model.safetensors")
    assert m.config["latent"] == "sphere" and m.latent.family == "power" and m.latent.code_dim == 3
    # --family is for the sphere only
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "bad"), "--family", "vmf",
                 "--epochs", "1", "--quiet"]) == 2
    assert "--family" in capsys.readouterr().err
