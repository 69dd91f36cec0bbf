"""Training: ELBO decreases, IWAE bounds, seeds, phases, RBF variance, logs, early stopping, resume."""

import json
import math

import pytest
import torch

from latentgeo.checkpoint import CheckpointError
from latentgeo.datasets import load_digits, split_indices
from latentgeo.models import VAE
from latentgeo.training import (
    TrainConfig,
    Trainer,
    elbo_estimate,
    iwae_log_likelihood,
    train_vae,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits().data[:400]


@pytest.fixture(scope="module")
def trained(digits):
    vae = VAE(64, 2, hidden=(32,), item_shape=(8, 8), random_state=0)
    before = float(-elbo_estimate(vae, digits, n_samples=8).mean())
    hist = train_vae(vae, digits, epochs=25, batch_size=64, lr=3e-3, variance="rbf", rbf_centers=16,
                     rbf_kwargs={"n_iter": 200}, progress=False, random_state=0)
    return vae, hist, before


def test_training_reduces_negative_elbo(trained, digits):
    vae, hist, before = trained
    vae.set_variance("constant")  # compare like with like: the phase-1 model
    after = float(-elbo_estimate(vae, digits, n_samples=8).mean())
    vae.set_variance("rbf")
    assert after < before - 15, (before, after)  # nats per digit
    losses = hist.column("train_loss", "mean")
    assert len(losses) == 25 and losses[-1] < losses[0] - 15
    vals = hist.column("val_loss")
    assert hist.best_val_loss["mean"] == min(vals)
    assert hist.best_epoch["mean"] == 1 + vals.index(min(vals))
    assert hist.n_train == 360 and hist.n_val == 40
    # the RBF variance improves the likelihood over the constant one on the data
    assert hist.rbf is not None and hist.rbf["n_centers"] == 16


def test_iwae_bounds(trained, digits):
    vae, _, _ = trained
    x = digits[:100]
    elbo = elbo_estimate(vae, x, n_samples=200, random_state=1).double()
    iw1 = iwae_log_likelihood(vae, x, k=1, random_state=2).double()
    iw5 = iwae_log_likelihood(vae, x, k=5, random_state=3).double()
    iw50 = iwae_log_likelihood(vae, x, k=50, random_state=4, chunk_size=7).double()
    assert iw50.shape == (100,)
    # E[L_1] = ELBO (up to Monte-Carlo error), and the bound tightens with K
    se = float(iw1.std() / math.sqrt(100))
    assert abs(float(iw1.mean() - elbo.mean())) < 4 * se + 0.05
    assert float(iw50.mean()) >= float(elbo.mean())
    assert float(iw1.mean()) < float(iw5.mean()) < float(iw50.mean())
    # seeded; chunking changes only which normal draws are used, not the estimate's law
    torch.testing.assert_close(iwae_log_likelihood(vae, x, k=50, random_state=4, chunk_size=7), iw50.float())
    one_pass = iwae_log_likelihood(vae, x, k=50, random_state=4, chunk_size=50).double()
    assert abs(float(one_pass.mean() - iw50.mean())) < 4 * float((one_pass - iw50).std() / 10) + 1e-6
    with pytest.raises(ValueError, match="k must"):
        iwae_log_likelihood(vae, x, k=0)


def test_rbf_std_grows_away_from_codes(trained, digits):
    vae, _, _ = trained
    codes = vae.encode_mean(digits)
    _, sd_near = vae.decode(codes)
    far = codes.abs().max() * 6 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.7, 0.7]])
    _, sd_far = vae.decode(far)
    assert float(sd_far.min()) > 3 * float(sd_near.mean())
    # far from every centre sigma -> zeta^(-1/2) = the data range (1 for digits)
    torch.testing.assert_close(sd_far, torch.ones_like(sd_far), atol=1e-3, rtol=0)
    # and monotone along a ray leaving the data
    t = torch.linspace(0, 1, 20)[:, None]
    ray = codes.mean(0) + t * (far[0] - codes.mean(0))
    s = vae.decode(ray)[1].mean(1)
    assert float(s[-1]) > float(s[0]) and bool((s[5:].diff() >= -1e-6).all())


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_identical_weights(digits):
    x = digits[:120]
    state = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        vae = VAE(64, 2, hidden=(8,), random_state=0)
        train_vae(vae, x, epochs=3, batch_size=32, variance="constant", progress=False, random_state=seed)
        runs.append(_weights(vae))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["encoder.net.0.weight"], runs[2]["encoder.net.0.weight"])


def test_learned_variance_phase_freezes_mean(digits, tmp_path):
    x = digits[:120]
    vae = VAE(64, 2, hidden=(8,), random_state=0)
    log = tmp_path / "log.jsonl"
    tr = Trainer(vae, TrainConfig(epochs=3, variance="learned", variance_epochs=2, progress=False, batch_size=40,
                                  log_path=str(log), kl_warmup_epochs=0))
    hist = tr.fit(x)
    assert [r["phase"] for r in hist] == ["mean"] * 3 + ["variance"] * 2
    assert vae.variance == "learned"
    # a second run stopped after phase 1 gives the phase-1 weights: encoder and mean must be equal
    vae1 = VAE(64, 2, hidden=(8,), random_state=0)
    Trainer(vae1, TrainConfig(epochs=3, progress=False, batch_size=40, kl_warmup_epochs=0)).fit(x)
    w, w1 = vae.state_dict(), vae1.state_dict()
    for k in w:
        if k.startswith(("encoder.", "likelihood.mean_net.", "likelihood.raw_const_std")):
            assert torch.equal(w[k], w1[k]), k
    assert not torch.equal(w["likelihood.std_net.net.2.weight"], w1["likelihood.std_net.net.2.weight"])
    # the std head learned something better than the constant: val loss fell in phase 2
    assert hist.best_val_loss["variance"] < hist.best_val_loss["mean"]
    # the JSON-lines log has one line per epoch, equal to the history
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert lines == hist.records
    assert set(lines[0]) >= {"epoch", "phase", "train_loss", "val_loss", "kl", "recon", "beta", "time"}


def test_kl_warmup_and_early_stopping(digits):
    x = digits[:120]
    vae = VAE(64, 2, hidden=(8,), random_state=0)
    hist = train_vae(vae, x, epochs=40, kl_warmup_epochs=4, lr=0.05, batch_size=20, patience=2,
                     variance="constant", progress=False, random_state=0)
    betas = hist.column("beta")
    assert betas[:4] == [0.25, 0.5, 0.75, 1.0] and set(betas[4:]) <= {1.0}
    assert hist.stopped_early["mean"] and len(hist) < 40
    vals = hist.column("val_loss")
    best = hist.best_epoch["mean"]
    assert vals[best - 1] == min(vals)
    assert all(v >= vals[best - 1] for v in vals[best:]) and len(vals) - best == 2  # patience ran out


def test_resume_is_bitwise_identical(digits, tmp_path):
    x = digits[:100]
    cfg = dict(epochs=4, variance="learned", variance_epochs=3, kl_warmup_epochs=2, progress=False, batch_size=32, random_state=3)

    ref = VAE(64, 2, hidden=(8,), random_state=1)
    href = Trainer(ref, TrainConfig(checkpoint_path=str(tmp_path / "ref.safetensors"), **cfg)).fit(x)

    ck = tmp_path / "run.safetensors"
    vae = VAE(64, 2, hidden=(8,), random_state=1)
    tr = Trainer(vae, TrainConfig(checkpoint_path=str(ck), **cfg))
    calls = [0]
    orig = tr._epoch

    def crash(*a):
        calls[0] += 1
        if calls[0] == 6:  # during the 2nd epoch of the variance phase
            raise KeyboardInterrupt
        return orig(*a)

    tr._epoch = crash
    with pytest.raises(KeyboardInterrupt):
        tr.fit(x)
    fresh = VAE(64, 2, hidden=(8,), random_state=99)  # different init: everything comes from the checkpoint
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 99, "phase": "stale"}\n')
    hres = Trainer(fresh, TrainConfig(checkpoint_path=str(ck), log_path=str(log), **cfg)).fit(x, resume_from=ck)
    assert [json.loads(s) for s in log.read_text().splitlines()] == hres.records  # no stale/duplicate lines
    assert hres.resumed_at_epoch == 5
    for k, v in ref.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    strip = lambda recs: [{k: v for k, v in r.items() if k != "time"} for r in recs]  # noqa: E731
    assert strip(hres.records) == strip(href.records)
    # the finished checkpoint loads as a model
    loaded = VAE.load(ck)
    assert loaded.variance == "learned" and torch.equal(loaded.encode_mean(x), ref.encode_mean(x))
    # resuming on other data or from a plain model checkpoint is refused
    with pytest.raises(CheckpointError, match="different data"):
        Trainer(VAE(64, 2, hidden=(8,)), TrainConfig(**cfg)).fit(x[:50], resume_from=ck)
    with pytest.raises(CheckpointError, match="different model"):
        Trainer(VAE(64, 2, hidden=(9,)), TrainConfig(**cfg)).fit(x, resume_from=ck)
    ref.save(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        Trainer(VAE(64, 2, hidden=(8,)), TrainConfig(**cfg)).fit(x, resume_from=tmp_path / "plain.safetensors")


def test_bernoulli_trains_in_one_phase(digits):
    x = digits[:120]
    vae = VAE(64, 2, likelihood="bernoulli", hidden=(8,), random_state=0)
    hist = train_vae(vae, x, epochs=6, progress=False, lr=1e-2, batch_size=30)
    assert set(hist.column("phase")) == {"joint"} and hist.rbf is None
    losses = hist.column("train_loss")
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="Gaussian likelihood"):
        train_vae(vae, x, epochs=1, variance="learned", progress=False)


def test_bad_training_options(digits):
    vae = VAE(64, 2, hidden=(8,), random_state=0)
    for kw, msg in [
        (dict(epochs=-1), "epochs"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(lr=0.0), "lr"),
        (dict(variance="huge"), "variance"),
        (dict(batch_size=0), "batch_size"),
        (dict(patience=0), "patience"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Trainer(vae, **kw)
    with pytest.raises(ValueError, match="unknown training options"):
        Trainer(vae, epoch=3)
    with pytest.raises(ValueError, match="shape"):
        train_vae(vae, digits[:, :10], epochs=1, progress=False)
    bad = digits[:20].clone()
    bad[3, 3] = float("inf")
    with pytest.raises(ValueError, match=r"data contains inf at 1 point\(s\) \(indices 3\)"):
        train_vae(vae, bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, -0.1)
