"""Data sets: shapes, ranges, seeds, closed-form geometry of the generators, clear errors."""


import numpy as np
import pytest
import torch

from latentgeo.datasets import (
    Dataset,
    load_dataset,
    load_digits,
    make_circles,
    make_moons,
    make_tree,
    train_val_split,
)


def test_digits_scaled_labels_kept():
    from sklearn.datasets import load_digits as sk

    ds = load_digits()
    raw = sk()
    assert ds.data.shape == (1797, 64) and ds.data.dtype == torch.float32
    assert ds.item_shape == (8, 8) and ds.images().shape == (1797, 8, 8)
    assert float(ds.data.min()) == 0.0 and float(ds.data.max()) == 1.0
    np.testing.assert_allclose(ds.data.numpy(), raw.data / 16.0, rtol=0, atol=1e-7)
    assert ds.labels.dtype == torch.int64 and torch.equal(ds.labels, torch.as_tensor(raw.target))


def test_digits_class_subset():
    ds = load_digits(classes=(2, 0, 1))
    assert set(ds.labels.tolist()) == {0, 1, 2}
    full = load_digits()
    keep = (full.labels <= 2)
    assert len(ds) == int(keep.sum())
    assert torch.equal(ds.data, full.data[keep])
    assert ds.params["classes"] == [0, 1, 2]
    assert load_dataset("digits", classes=[7]).labels.unique().tolist() == [7]


@pytest.mark.parametrize("bad", [(10,), (), (1, 1), ("a",), (-1,), (1.5,)])
def test_digits_bad_classes(bad):
    with pytest.raises(ValueError, match="classes"):
        load_digits(classes=bad)


@pytest.mark.parametrize("maker", [make_moons, make_circles])
def test_lifted_2d_sets_seeded(maker):
    a, b, c = maker(300, dim=7, random_state=3), maker(300, dim=7, random_state=3), maker(300, dim=7, random_state=4)
    assert a.data.shape == (300, 7) and a.item_shape == (7,) and a.labels.shape == (300,)
    assert torch.equal(a.data, b.data) and torch.equal(a.labels, b.labels)
    assert not torch.allclose(a.data, c.data)
    assert sorted(a.labels.unique().tolist()) == [0, 1] and int(a.labels.sum()) == 150


def test_circles_noise_free_radii_and_plane():
    ds = make_circles(400, dim=12, noise=0.0, factor=0.3, random_state=1)
    r = ds.data.double().norm(dim=1)
    want = torch.where(ds.labels == 0, 1.0, 0.3).double()
    torch.testing.assert_close(r, want, rtol=0, atol=1e-6)
    sv = torch.linalg.svdvals(ds.data.double())
    assert float(sv[2] / sv[0]) < 1e-6  # the clean data span a 2-plane


def test_moons_noise_variance_off_plane():
    sigma, dim = 0.1, 10
    clean = make_moons(4000, dim=dim, noise=0.0, random_state=5).data.double()
    noisy = make_moons(4000, dim=dim, noise=sigma, random_state=5).data.double()
    sv = torch.linalg.svdvals(clean)
    assert float(sv[2] / sv[0]) < 1e-6
    # the component orthogonal to the clean plane is pure noise: variance sigma^2 per dim
    _, _, vh = torch.linalg.svd(clean - clean.mean(0), full_matrices=True)
    ortho = noisy @ vh[2:].T
    assert abs(float(ortho.var(0).mean()) / sigma**2 - 1) < 0.05
    # in plane coordinates each clean moon is an arc of the unit circle: fit |p - c|^2 = 1
    labels = make_moons(4000, dim=dim, noise=0.0, random_state=5).labels
    plane = clean @ vh[:2].T  # (N, 2) coordinates in the data plane (the map is an isometry)
    for lab in (0, 1):
        pts = plane[labels == lab]
        A = torch.cat([2 * pts, torch.ones(len(pts), 1, dtype=pts.dtype)], 1)
        sol = torch.linalg.lstsq(A, (pts**2).sum(1, keepdim=True), driver="gelsd").solution[:, 0]
        c = sol[:2]
        radius = (sol[2] + c.pow(2).sum()).sqrt()
        torch.testing.assert_close((pts - c).norm(dim=1), torch.ones(len(pts), dtype=pts.dtype), atol=1e-6, rtol=0)
        assert abs(float(radius) - 1) < 1e-6


def test_tree_structure_and_noise_scales():
    depth, b, dim, noise, sibs, decay, sn = 3, 4, 200, 2.0, 20, 0.5, 0.1
    ds = make_tree(depth=depth, branching=b, dim=dim, noise=noise, n_noisy_siblings=sibs, sibling_noise=sn,
                   decay=decay, random_state=0)
    n_nodes = sum(b**k for k in range(depth + 1))
    assert ds.data.shape == (n_nodes * sibs, dim) and len(ds.labels.unique()) == n_nodes
    pos, parent = ds.extras["node_positions"].double(), ds.extras["node_parent"]
    assert parent[0] == -1 and (parent[1:] >= 0).all() and (parent[1:] < torch.arange(1, n_nodes)).all()
    node_depth = torch.zeros(n_nodes, dtype=torch.long)
    for i in range(1, n_nodes):
        node_depth[i] = node_depth[parent[i]] + 1
    assert torch.equal(ds.extras["depth"], node_depth[ds.labels])
    # children = parent + N(0, (noise * decay^(k-1))^2 I): per-coordinate variance of the step
    for k in range(1, depth + 1):
        kids = (node_depth == k).nonzero().reshape(-1)
        step = pos[kids] - pos[parent[kids]]
        ratio = float(step.pow(2).mean()) / (noise * decay ** (k - 1)) ** 2
        assert abs(ratio - 1) < 0.2, (k, ratio)
    # noisy siblings around their node with sd sibling_noise * noise * decay^k
    resid = ds.data.double() - pos[ds.labels]
    for k in range(depth + 1):
        sel = ds.extras["depth"] == k
        ratio = float(resid[sel].pow(2).mean()) / (sn * noise * decay**k) ** 2
        assert abs(ratio - 1) < 0.1, (k, ratio)
    # branches: every depth-1 node is its own branch, and descendants inherit it
    br = ds.extras["branch"]
    assert set(br[ds.extras["depth"] >= 1].tolist()) == set(range(b))


def test_tree_seeded():
    a, b, c = make_tree(random_state=1), make_tree(random_state=1), make_tree(random_state=2)
    assert torch.equal(a.data, b.data) and not torch.allclose(a.data, c.data)
    assert load_dataset("tree", random_state=1, depth=4).data.shape == a.data.shape


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="available: digits, moons, circles, tree"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"unknown parameter.*'bogus'.*accepted: n_samples, dim, noise"):
        load_dataset("moons", bogus=1)
    for name, kw, msg in [
        ("moons", {"noise": -0.1}, "noise"),
        ("circles", {"factor": 1.5}, "factor"),
        ("circles", {"n_samples": 0}, "n_samples"),
        ("tree", {"depth": 0}, "depth"),
        ("tree", {"branching": 0}, "branching"),
        ("tree", {"noise": float("nan")}, "noise"),
        ("tree", {"n_noisy_siblings": 0}, "n_noisy_siblings"),
        ("moons", {"dim": 1}, "dim"),
        ("moons", {"dim": 2.5}, "dim"),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_dataset(name, **kw)
    with pytest.raises(ValueError, match="random_state"):
        load_dataset("moons", random_state=-1)


def test_train_val_split():
    ds = make_moons(101, random_state=0)
    tr, va = train_val_split(ds, 0.2, random_state=7)
    assert isinstance(tr, Dataset) and len(tr) == 81 and len(va) == 20
    both = torch.cat([tr.data, va.data])
    assert torch.equal(both[torch.argsort(both[:, 0])], ds.data[torch.argsort(ds.data[:, 0])])
    tr2, va2 = train_val_split(ds, 0.2, random_state=7)
    assert torch.equal(va.data, va2.data)
    tr3, _ = train_val_split(ds.data, 0.2, random_state=8)
    assert not torch.equal(tr3, tr.data)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ds, 1.0)
