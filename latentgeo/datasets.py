"""Data sets that ship with the package or are generated from a random_state (no downloads).

* ``"digits"`` — scikit-learn's bundled 8×8 handwritten digits (1797 images), scaled to
  [0, 1], labels kept, optional class subset (:func:`load_digits`).
* ``"moons"`` / ``"circles"`` — the 2-D two-moons / concentric-circles sets lifted into
  ``dim`` dimensions by a seeded random isometry plus isotropic noise (:func:`make_moons`,
  :func:`make_circles`). The clean data lie on a 1-D curve in a 2-D plane, so a 2-D latent
  VAE can represent them; the class structure is only visible to a geometry-aware analysis.
* ``"tree"`` — the branching-diffusion data of Mathieu et al. (*Continuous Hierarchical
  Representations with Poincaré Variational Auto-Encoders*, NeurIPS 2019, §5.1): a random
  tree whose children are their parent plus Gaussian noise that shrinks with depth, observed
  through noisy siblings of every node (:func:`make_tree`).

:func:`load_dataset` dispatches by name; :func:`train_val_split` makes seeded splits.
Every generator takes ``random_state`` and the same random_state gives the same data.

Example:
    >>> from latentgeo.datasets import load_dataset
    >>> ds = load_dataset("moons", n_samples=200, dim=10, random_state=0)
    >>> ds.data.shape, ds.labels.shape, ds.item_shape
    (torch.Size([200, 10]), torch.Size([200]), (10,))
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "Dataset",
    "load_dataset",
    "load_digits",
    "make_moons",
    "make_circles",
    "make_tree",
    "train_val_split",
    "split_indices",
    "DATASETS",
]


@dataclass
class Dataset:
    """A data set as flat float32 items.

    Attributes:
        data: ``(N, D)`` float32 tensor (images flattened; reshape with ``item_shape``).
        labels: ``(N,)`` int64 class labels, or ``None``.
        item_shape: shape of one item (``(8, 8)`` for digits, ``(D,)`` otherwise).
        name: the data set's name (as :func:`load_dataset` knows it).
        params: the parameters it was generated with (JSON-serialisable), so that
            ``load_dataset(name, **params)`` rebuilds it.
        extras: further per-item or per-set tensors (e.g. the tree's node depths).
    """

    data: torch.Tensor
    labels: Optional[torch.Tensor]
    item_shape: tuple
    name: str
    params: dict
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        """Width ``D`` of a flattened item."""
        return int(self.data.shape[1])

    def images(self) -> torch.Tensor:
        """``data`` reshaped to ``(N, *item_shape)``."""
        return self.data.reshape(-1, *self.item_shape)

    def subset(self, idx) -> "Dataset":
        """The items at ``idx`` (indices or boolean mask); per-item extras are subset too."""
        idx = torch.as_tensor(idx)
        n = len(self)
        extras = {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n and not k.startswith("node_")
                      else v) for k, v in self.extras.items()}
        return Dataset(self.data[idx], None if self.labels is None else self.labels[idx], self.item_shape,
                       self.name, dict(self.params), extras)


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------
def _int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return int(v)


def _num(name, v, lo=0.0, strict=False, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if (v <= lo if strict else v < lo) or (hi is not None and v > hi):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {lo}{'' if hi is None else f' and <= {hi}'}, got {v}")
    return float(v)


def _isometry(rng: np.random.Generator, dim: int, k: int = 2) -> np.ndarray:
    """A ``(dim, k)`` matrix with orthonormal columns (QR of a Gaussian, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return q * np.sign(np.diag(r))


def _finish(x: np.ndarray, labels, item_shape, name, params, extras=None) -> Dataset:
    data = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    lab = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return Dataset(data, lab, tuple(item_shape), name, params, extras or {})


# ---------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------
def load_digits(classes=None) -> Dataset:
    """scikit-learn's 8×8 digits (1797 items, ``D = 64``), pixel values scaled to [0, 1].

    Args:
        classes: optional subset of digit classes, e.g. ``(0, 1, 2)``; labels keep their
            digit values.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    raw = _sk_load_digits()
    x = raw.data.astype(np.float64) / 16.0
    y = raw.target.astype(np.int64)
    params = {"classes": None}
    if classes is not None:
        if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
            classes = (classes,)
        try:
            cl = [int(c) for c in classes]
        except (TypeError, ValueError):
            raise ValueError(f"classes must be a sequence of digits 0-9, got {classes!r}") from None
        if not cl or any(c < 0 or c > 9 for c in cl) or len(set(cl)) != len(cl) or any(
            isinstance(c, bool) or int(c) != c for c in classes
        ):
            raise ValueError(f"classes must be a non-empty sequence of distinct digits 0-9, got {classes!r}")
        keep = np.isin(y, cl)
        x, y = x[keep], y[keep]
        params["classes"] = sorted(cl)
    return _finish(x, y, (8, 8), "digits", params)


def make_moons(n_samples: int = 1000, dim: int = 10, noise: float = 0.05, random_state: int = 0) -> Dataset:
    """Two interleaved half circles in a random 2-plane of ``R^dim``, plus noise.

    Clean points (the scikit-learn geometry): moon 0 ``(cos t, sin t)``, moon 1
    ``(1 − cos t, ½ − sin t)``, ``t ~ U(0, π)``, centred; mapped by a seeded ``(dim, 2)``
    isometry, then ``N(0, noise²·I_dim)`` is added. Labels: the moon (0/1).
    """
    n = _int("n_samples", n_samples, 2)
    dim = _int("dim", dim, 2)
    noise = _num("noise", noise)
    random_state = _int("random_state", random_state, 0)
    rng = np.random.default_rng(random_state)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    t = rng.uniform(0.0, math.pi, n)
    pts = np.where(labels[:, None] == 0,
                   np.stack([np.cos(t), np.sin(t)], 1),
                   np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1))
    pts = pts - np.array([0.5, 0.25])
    x = pts @ _isometry(rng, dim).T + noise * rng.standard_normal((n, dim))
    return _finish(x, labels, (dim,), "moons", {"n_samples": n, "dim": dim, "noise": noise, "random_state": random_state})


def make_circles(n_samples: int = 1000, dim: int = 10, noise: float = 0.05, factor: float = 0.5, random_state: int = 0) -> Dataset:
    """Two concentric circles (radii 1 and ``factor``) in a random 2-plane of ``R^dim``, plus noise.

    Labels: 0 outer, 1 inner circle. Noise is ``N(0, noise²·I_dim)`` after the seeded isometry.
    """
    n = _int("n_samples", n_samples, 2)
    dim = _int("dim", dim, 2)
    noise = _num("noise", noise)
    factor = _num("factor", factor, 0.0, strict=True)
    if factor >= 1:
        raise ValueError(f"factor must be in (0, 1) (inner/outer radius ratio), got {factor}")
    random_state = _int("random_state", random_state, 0)
    rng = np.random.default_rng(random_state)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    t = rng.uniform(0.0, 2 * math.pi, n)
    r = np.where(labels == 0, 1.0, factor)
    pts = r[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    x = pts @ _isometry(rng, dim).T + noise * rng.standard_normal((n, dim))
    return _finish(x, labels, (dim,), "circles",
                   {"n_samples": n, "dim": dim, "noise": noise, "factor": factor, "random_state": random_state})


def make_tree(
    depth: int = 4,
    branching: int = 2,
    dim: int = 50,
    noise: float = 1.0,
    n_noisy_siblings: int = 5,
    sibling_noise: float = 0.1,
    decay: float = 0.5,
    random_state: int = 0,
) -> Dataset:
    """Branching diffusion: hierarchical data for hyperbolic latents (Mathieu et al. 2019, §5.1).

    The root is ``N(0, noise²·I)``; every node at depth ``k ≥ 1`` is its parent plus
    ``N(0, (noise·decay^(k−1))²·I)``, down to ``depth`` (``branching`` children per node, so
    ``(b^(depth+1) − 1)/(b − 1)`` nodes). Each node is observed through ``n_noisy_siblings``
    noisy copies ``node + N(0, (sibling_noise·noise·decay^k)²·I)``; those copies are the data.

    Returns:
        items ordered node by node (breadth first); ``labels`` = node id; ``extras``:
        ``depth`` (per item), ``branch`` (per item: the depth-1 ancestor, ``-1`` for the root),
        ``node_positions`` ``(n_nodes, dim)`` and ``node_parent`` ``(n_nodes,)`` (``-1`` for the root).
    """
    depth = _int("depth", depth, 1)
    branching = _int("branching", branching, 1)
    dim = _int("dim", dim, 1)
    noise = _num("noise", noise, 0.0, strict=True)
    n_sib = _int("n_noisy_siblings", n_noisy_siblings, 1)
    sibling_noise = _num("sibling_noise", sibling_noise)
    decay = _num("decay", decay, 0.0, strict=True, hi=1.0)
    random_state = _int("random_state", random_state, 0)
    n_nodes = sum(branching**k for k in range(depth + 1))
    if n_nodes * n_sib > 5_000_000:
        raise ValueError(f"tree would have {n_nodes * n_sib} items; reduce depth/branching/n_noisy_siblings")
    rng = np.random.default_rng(random_state)
    pos = np.empty((n_nodes, dim))
    parent = np.full(n_nodes, -1, dtype=np.int64)
    node_depth = np.zeros(n_nodes, dtype=np.int64)
    branch = np.full(n_nodes, -1, dtype=np.int64)
    pos[0] = noise * rng.standard_normal(dim)
    level = [0]
    nxt = 1
    for k in range(1, depth + 1):
        new_level = []
        scale = noise * decay ** (k - 1)
        for p in level:
            ids = np.arange(nxt, nxt + branching)
            pos[ids] = pos[p] + scale * rng.standard_normal((branching, dim))
            parent[ids], node_depth[ids] = p, k
            branch[ids] = ids - 1 if k == 1 else branch[p]
            new_level.extend(ids.tolist())
            nxt += branching
        level = new_level
    item_node = np.repeat(np.arange(n_nodes), n_sib)
    sib_scale = (sibling_noise * noise * decay ** node_depth[item_node])[:, None]
    x = pos[item_node] + sib_scale * rng.standard_normal((item_node.shape[0], dim))
    extras = {
        "depth": torch.as_tensor(node_depth[item_node]),
        "branch": torch.as_tensor(branch[item_node]),
        "node_positions": torch.as_tensor(pos, dtype=torch.float32),
        "node_parent": torch.as_tensor(parent),
    }
    params = {"depth": depth, "branching": branching, "dim": dim, "noise": noise, "n_noisy_siblings": n_sib,
              "sibling_noise": sibling_noise, "decay": decay, "random_state": random_state}
    return _finish(x, item_node, (dim,), "tree", params, extras)


DATASETS = {"digits": load_digits, "moons": make_moons, "circles": make_circles, "tree": make_tree}


def load_dataset(name: str, *, random_state: int = 0, **params) -> Dataset:
    """Build the data set ``name`` (one of :data:`DATASETS`) with ``params``.

    ``random_state`` is passed to the synthetic generators (the digits are fixed and ignore it).
    Unknown names or parameters raise ``ValueError`` listing what exists.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    fn = DATASETS[name]
    accepted = [p for p in inspect.signature(fn).parameters if p != "random_state"]
    bad = sorted(set(params) - set(accepted))
    if bad:
        raise ValueError(f"unknown parameter(s) {bad} for data set {name!r}; accepted: {', '.join(accepted) or 'none'}")
    if "random_state" in inspect.signature(fn).parameters:
        return fn(random_state=random_state, **params)
    _int("random_state", random_state, 0)
    return fn(**params)


def split_indices(n: int, val_fraction: float, random_state: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into ``(train_idx, val_idx)``; ``round(n·f)`` go to validation."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    gen = torch.Generator().manual_seed(int(random_state))
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training data out of {n} items")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def train_val_split(ds: Union[Dataset, torch.Tensor], val_fraction: float = 0.1, random_state: int = 0):
    """Seeded random split into ``(train, val)`` of the same type as ``ds``.

    ``round(N·val_fraction)`` items go to validation (the same indices as the trainer's
    split for the same random_state, see :func:`split_indices`).
    """
    if isinstance(ds, Dataset):
        tr, va = split_indices(len(ds), val_fraction, random_state)
        return ds.subset(tr), ds.subset(va)
    if isinstance(ds, torch.Tensor):
        if ds.dim() == 0:
            raise ValueError("cannot split a 0-d tensor")
        tr, va = split_indices(int(ds.shape[0]), val_fraction, random_state)
        return ds[tr], ds[va]
    raise ValueError(f"train_val_split needs a Dataset or a tensor, got {type(ds).__name__}")
