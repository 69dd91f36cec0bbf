"""The main workflows on a CUDA device agree with the same computation on the CPU.

Skipped where no GPU is present (CI has none); run by hand on a machine with one:
``pytest tests/test_cuda.py``. Most tests compute the same thing on both devices, so a tensor
left on the wrong device fails with torch's device-mismatch error and a device-dependent
result fails the comparison; the others check a closed form or a reference value on the GPU.
"""

import copy

import pytest
import torch

import latentgeo as lg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

F64 = torch.float64


def _trained(latent="euclidean", epochs=15):
    ds = lg.load_dataset("digits", classes=[0, 1])
    model = lg.VAE(ds.dim, 2, latent=latent, hidden=(32,), item_shape=ds.item_shape, random_state=0)
    lg.train_vae(model, ds, epochs=epochs, random_state=0, progress=False)
    return model, ds


@pytest.fixture(scope="module")
def trained():
    model, ds = _trained()
    with torch.no_grad():
        codes = model.encode_mean(ds.data)
    return model.double(), codes.double()


def _metrics(model):
    cpu = lg.PullbackMetric(model.decoder_for_analysis())
    gpu = lg.PullbackMetric(copy.deepcopy(model).cuda().decoder_for_analysis())
    return cpu, gpu


def test_training_on_cuda_is_seeded_and_leaves_the_callers_rng_alone():
    ds = lg.load_dataset("digits", classes=[0, 1])
    runs = []
    for _ in range(2):
        model = lg.VAE(ds.dim, 2, hidden=(32,), item_shape=ds.item_shape, random_state=0).double().cuda()
        before = torch.cuda.get_rng_state()
        hist = lg.train_vae(model, ds, epochs=3, random_state=0, progress=False)
        # train_vae seeds a forked RNG: the caller's CUDA generator is where it was
        assert torch.equal(torch.cuda.get_rng_state(), before)
        assert next(model.parameters()).device.type == "cuda"
        runs.append((model, torch.tensor([r["train_loss"] for r in hist.epochs()], dtype=F64)))
    # the same seed on the same device: the same minibatches and draws
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-9, atol=1e-9)
    assert bool(torch.isfinite(runs[0][1]).all()) and float(runs[0][1][-1]) < float(runs[0][1][0])
    x = ds.data[:16].double().cuda()
    torch.testing.assert_close(runs[1][0].encode_mean(x), runs[0][0].encode_mean(x))


def test_expected_metric_on_cuda(trained):
    model, codes = trained
    cpu, gpu = _metrics(model)
    z = codes[:50]
    G = gpu.tensor(z.cuda())
    assert G.device.type == "cuda"
    torch.testing.assert_close(G.cpu(), cpu.tensor(z), rtol=1e-9, atol=1e-12)


def test_connecting_geodesics_on_cuda(trained):
    model, codes = trained
    cpu, gpu = _metrics(model)
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(len(codes), (2, 12), generator=g)
    a, b = codes[i], codes[j]
    # no time budget: it is wall time, and the two devices run at different speeds
    rc = lg.connecting_geodesic(cpu, a, b, tol=1e-6, budget=None, progress=False)
    rg = lg.connecting_geodesic(gpu, a.cuda(), b.cuda(), tol=1e-6, budget=None, progress=False)
    assert rg.length.device.type == "cuda"
    assert rg.converged.cpu().tolist() == rc.converged.cpu().tolist()
    ok = rc.converged.cpu()
    torch.testing.assert_close(rg.length.cpu()[ok], rc.length[ok], rtol=1e-6, atol=1e-9)
    # uncertified pairs: both are upper bounds of the same distance, within the tolerance
    torch.testing.assert_close(rg.length.cpu(), rc.length, rtol=1e-3, atol=1e-6)
    t = torch.linspace(0, 1, 9, dtype=F64)
    torch.testing.assert_close(rg.curve(t.cuda()).cpu()[ok], rc.curve(t)[ok], rtol=1e-5, atol=1e-6)


def test_float32_model_on_cuda_is_solved_in_float64():
    model, ds = _trained()
    with torch.no_grad():
        codes = model.encode_mean(ds.data)[:8]
    cpu, gpu = _metrics(model)
    a, b = codes[:4], codes[4:]
    rc = lg.connecting_geodesic(cpu, a, b, tol=1e-6, budget=None, progress=False)
    rg = lg.connecting_geodesic(gpu, a.cuda(), b.cuda(), tol=1e-6, budget=None, progress=False)
    assert rg.length.device.type == "cuda"
    assert rg.converged.cpu().tolist() == rc.converged.cpu().tolist()
    torch.testing.assert_close(rg.length.cpu().double(), rc.length.double(), rtol=1e-5, atol=1e-7)


def test_exp_and_log_maps_on_cuda(trained):
    model, codes = trained
    cpu, gpu = _metrics(model)
    z = codes[:6]
    v = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1)) * 0.3
    ec, eg = lg.exp_map(cpu, z, v), lg.exp_map(gpu, z.cuda(), v.cuda())
    assert eg.z1.device.type == "cuda"
    torch.testing.assert_close(eg.z1.cpu(), ec.z1, rtol=1e-7, atol=1e-9)
    lc = lg.log_map(cpu, z, codes[6:12], on_failure="ignore", progress=False)
    lgpu = lg.log_map(gpu, z.cuda(), codes[6:12].cuda(), on_failure="ignore", progress=False)
    assert lgpu.device.type == "cuda"
    torch.testing.assert_close(lgpu.cpu(), lc, rtol=1e-4, atol=1e-6)


def test_distance_matrix_and_graph_on_cuda(trained):
    model, codes = trained
    cpu, gpu = _metrics(model)
    z = codes[:5]
    Dc = lg.distance_matrix(cpu, z, budget=None, on_failure="ignore", progress=False)
    Dg = lg.distance_matrix(gpu, z.cuda(), budget=None, on_failure="ignore", progress=False)
    assert Dg.converged.tolist() == Dc.converged.tolist()
    torch.testing.assert_close(torch.as_tensor(Dg.distances).cpu(), torch.as_tensor(Dc.distances), rtol=1e-5, atol=1e-7)
    gc, gg = lg.LatentGraph(cpu, codes[:100], k=8), lg.LatentGraph(gpu, codes[:100].cuda(), k=8)
    torch.testing.assert_close(gg.distances(codes[:10].cuda()).cpu(), gc.distances(codes[:10]), rtol=1e-6, atol=1e-9)


def test_geodesic_kmeans_on_cuda(trained):
    model, codes = trained
    cpu, gpu = _metrics(model)
    X = codes[::8][:40]
    opts = {"budget": None}
    # (float64: the test compares the devices; dtype="auto" would solve in float32, whose different
    # reduction orders on the two devices are not what it is about)
    kw = dict(random_state=0, max_iter=2, geodesic_options=opts, iteration_options=opts, dtype=F64)
    kc = lg.GeodesicKMeans(cpu, 2, **kw).fit(X)
    kg = lg.GeodesicKMeans(gpu, 2, **kw).fit(X.cuda())
    assert kg.cluster_centers_.device.type == "cuda"
    assert (kg.labels_ == kc.labels_).all()
    assert kg.inertia_ == pytest.approx(kc.inertia_, rel=1e-4)
    assert (kg.predict(X[:10].cuda()) == kc.labels_[:10]).all()


def _sphere(z):
    s = (z * z).sum(-1, keepdim=True)
    return torch.cat([2 * z, 1 - s], -1) / (1 + s)


def test_frechet_mean_on_cuda_is_the_centre_of_symmetric_points():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(_sphere, latent_dim=2))
    # points symmetric around the north pole (z = 0) of the inverse stereographic sphere
    pts = torch.tensor([[0.5, 0.1], [-0.5, -0.1], [0.1, -0.5], [-0.1, 0.5]], dtype=F64, device="cuda")
    res = lg.frechet_mean(metric, pts, init=torch.tensor([0.2, 0.1], dtype=F64, device="cuda"))
    assert res.mean.device.type == "cuda"
    assert res.converged
    assert float(res.mean.abs().max()) < 1e-4


@pytest.mark.parametrize("method", ["lso", "brownian", "geodesic"])
def test_random_walks_on_cuda(trained, method):
    model, codes = trained
    cpu, gpu = _metrics(model)
    z0 = codes[:4]
    wg = lg.random_walk(gpu, z0.cuda(), 5, step_size=1e-3, method=method, random_state=0, progress=False)
    wc = lg.random_walk(cpu, z0, 5, step_size=1e-3, method=method, random_state=0, progress=False)
    assert wg.trajectories.device.type == "cuda"
    assert bool(torch.isfinite(wg.trajectories).all())
    # the noise is drawn on the CPU from random_state, so both devices take the same steps
    torch.testing.assert_close(wg.trajectories.cpu(), wc.trajectories, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("latent", ["sphere", "hyperbolic"])
def test_non_euclidean_vaes_train_on_cuda(latent):
    ds = lg.load_dataset("digits", classes=[0, 1])
    model = lg.VAE(ds.dim, 2, latent=latent, hidden=(32,), item_shape=ds.item_shape, random_state=0).cuda()
    hist = lg.train_vae(model, ds, epochs=3, random_state=0, progress=False)
    assert all(torch.isfinite(torch.tensor([r["train_loss"] for r in hist.epochs()])))
    with torch.no_grad():
        z = model.encode_mean(ds.data[:8].cuda())
    assert z.device.type == "cuda" and bool(torch.isfinite(z).all())


def test_von_mises_fisher_on_cuda_has_the_reference_mean_resultant():
    from scipy.special import iv

    from latentgeo.distributions import VonMisesFisher

    loc = torch.tensor([0.0, 0.0, 1.0], dtype=F64, device="cuda")
    kappa = torch.tensor(4.0, dtype=F64, device="cuda")
    x = VonMisesFisher(loc, kappa).sample((20000,), random_state=0)
    assert x.device.type == "cuda"
    # E[μᵀx] = A_3(κ) = I_{3/2}(κ) / I_{1/2}(κ); the sample mean's standard error is ~0.003
    ref = iv(1.5, 4.0) / iv(0.5, 4.0)
    assert float((x @ loc).mean()) == pytest.approx(ref, abs=0.012)


def test_checkpoint_of_a_cuda_model_round_trips(tmp_path):
    ds = lg.load_dataset("digits", classes=[0, 1])
    model = lg.VAE(ds.dim, 2, hidden=(16,), item_shape=ds.item_shape, random_state=0).cuda()
    model.save(tmp_path / "m")
    back = lg.VAE.load(tmp_path / "m", map_location="cuda")
    assert back.device.type == "cuda"
    x = ds.data[:4].cuda()
    torch.testing.assert_close(back.encode_mean(x), model.encode_mean(x))
    cpu = lg.VAE.load(tmp_path / "m")
    torch.testing.assert_close(cpu.encode_mean(x.cpu()), model.encode_mean(x).cpu())
