"""Post-hoc RBF precision variance (Latent Space Oddity §4)."""

import pytest
import torch

import latentgeo as lg

f64 = torch.float64


def _toy(seed=0, n=400):
    g = torch.Generator().manual_seed(seed)
    # two blobs of codes; mean decoder fits the data up to small noise
    codes = torch.cat([torch.randn(n // 2, 2, generator=g, dtype=f64) * 0.3 + torch.tensor([-2.0, 0.0], dtype=f64),
                       torch.randn(n // 2, 2, generator=g, dtype=f64) * 0.3 + torch.tensor([2.0, 0.0], dtype=f64)])
    W = torch.randn(6, 2, generator=g, dtype=f64)

    def mean(z):
        return torch.tanh(z @ W.T)

    data = mean(codes) + 0.02 * torch.randn(n, 6, generator=g, dtype=f64)
    return codes, data, mean


def test_sigma_grows_away_from_data_and_weights_nonnegative():
    codes, data, mean = _toy()
    dec = lg.fit_rbf_variance(mean, codes, data, n_centers=16, random_state=0)
    rbf = dec.std
    assert isinstance(rbf, lg.RBFPrecision)
    assert bool((rbf.weights >= 0).all())
    on_data = dec.std(codes).mean()
    # on the data the fitted σ matches the noise level (0.02) within a factor 2
    assert 0.01 < on_data.item() < 0.04
    # several cluster radii away from every code, σ is at least 10x larger
    spread = codes[:200].std(0).norm()
    for radius in (4.0, 6.0, 10.0):
        direction = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=f64)
        centres = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [-2.0, 0.0]], dtype=f64)
        far = centres + radius * spread * direction
        assert (dec.std(far).mean(1) >= 10 * on_data).all(), radius
    # and it is monotone along a ray once it has left the data (codes reach ~1.0 from the centre)
    ray = torch.tensor([2.0, 0.0], dtype=f64) + torch.linspace(1.2, 6, 30, dtype=f64)[:, None] * torch.tensor([0.0, 1.0], dtype=f64)
    s = dec.std(ray).mean(1)
    assert bool((s[1:] >= s[:-1] - 1e-12).all())
    # the far-field std is far_std (data range by default)
    assert abs(dec.std(torch.tensor([[100.0, 100.0]], dtype=f64)).mean().item() - (data.max() - data.min()).item()) < 1e-9


def test_fitted_decoder_gives_expected_metric_that_grows():
    codes, data, mean = _toy()
    dec = lg.fit_rbf_variance(mean, codes, data, n_centers=16, random_state=0)
    metric = lg.PullbackMetric(dec)
    mf_data = metric.magnification(codes[:50]).median()
    mf_gap = metric.magnification(torch.tensor([[0.0, 0.0]], dtype=f64))  # between the two blobs
    assert mf_gap.item() > 10 * mf_data.item()


def test_same_seed_same_fit():
    codes, data, mean = _toy()
    a = lg.fit_rbf_variance(mean, codes, data, n_centers=8, random_state=3, n_iter=50)
    b = lg.fit_rbf_variance(mean, codes, data, n_centers=8, random_state=3, n_iter=50)
    torch.testing.assert_close(a.std.log_w, b.std.log_w, rtol=0, atol=0)
    torch.testing.assert_close(a.std.centers, b.std.centers, rtol=0, atol=0)


def test_bad_input():
    codes, data, mean = _toy(n=40)
    with pytest.raises(ValueError, match=r"n_centers must be an integer in \[1, 40\]"):
        lg.fit_rbf_variance(mean, codes, data, n_centers=41)
    with pytest.raises(ValueError, match="codes has 40 rows but data has 39"):
        lg.fit_rbf_variance(mean, codes, data[:39])
    bad = codes.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="codes contains NaN"):
        lg.fit_rbf_variance(mean, bad, data)
    with pytest.raises(ValueError, match="far_std must be positive"):
        lg.fit_rbf_variance(mean, codes, data, far_std=-1.0)
    with pytest.raises(ValueError, match="outputs"):
        lg.fit_rbf_variance(mean, codes, data[:, :3])
