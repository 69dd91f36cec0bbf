"""Batched Jacobians of row-wise maps with :mod:`torch.func`.

A *row-wise* map ``f: (N, d) -> (N, K)`` treats every row independently (a decoder applied
to a batch). Its per-row Jacobians ``J_n = ∂f(z_n)/∂z_n`` (shape ``(N, K, d)``) are obtained
without any per-point Python loop:

* forward mode: one :func:`torch.func.jvp` of the *batched* map per tangent direction
  ``e_i`` broadcast over the batch, vectorised over the ``d`` directions with
  :func:`torch.func.vmap` (primal computed once) — cost ≈ ``(1 + d)`` forward passes;
* reverse mode: one :func:`torch.func.vjp` and ``K`` vectorised cotangents — cost ≈
  ``K`` backward passes; preferable only when ``K < d``.

Because the map is row-wise, ``jvp`` with tangent ``e_i`` in every row returns column ``i``
of every row's Jacobian at once. Large batches are processed in chunks to bound memory.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch.func import jvp, vjp, vmap

__all__ = ["rowwise_jacobian", "rowwise_gram", "choose_mode", "auto_chunk_rows", "value_and_columns", "second_directional"]

#: numbers per Jacobian block when chunking automatically (2**24 ≈ 64 MB of float32)
CHUNK_BUDGET = 2**24


def auto_chunk_rows(d: int, k: int, budget: int = CHUNK_BUDGET) -> int:
    """Rows per chunk so that a ``(rows, K, d)`` Jacobian holds about ``budget`` numbers.

    Measured on 10→512→512→784 (``benchmarks/RESULTS.md``): chunks of ~1000 rows beat both
    smaller ones (per-call overhead) and larger ones (cache/page-fault cost of 100+ MB temporaries).
    """
    return max(64, budget // max(1, d * k))


def choose_mode(mode: str, d: int, k: int) -> str:
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"unknown Jacobian mode {mode!r}; expected 'auto', 'forward' or 'reverse'")
    if mode == "auto":
        return "forward" if d <= k else "reverse"
    return mode


def _forward(f, z):
    """Forward mode for a map returning one tensor: ``(out (n, K), J (n, K, d))``."""
    outs, cols = _forward_blocks(lambda x: (f(x),), z)
    return outs[0], cols[0].permute(1, 2, 0)


def _reverse(f, z, k):
    out, pullback = vjp(f, z)
    n = z.shape[0]
    eye = torch.eye(k, dtype=out.dtype, device=out.device)
    cot = eye[:, None, :].expand(k, n, k)
    try:
        (rows,) = vmap(pullback)(cot)  # (K, N, d)
    except ValueError:
        raise
    except Exception as exc:
        warnings.warn(
            f"decoder could not be vectorised over cotangents with torch.func.vmap ({exc}); "
            f"computing the {k} Jacobian rows one vjp at a time (still batched over points)",
            RuntimeWarning,
            stacklevel=4,
        )
        rows = torch.stack([pullback(cot[i])[0] for i in range(k)], 0)
    return out, rows.permute(1, 0, 2)  # (N, K, d)


def rowwise_jacobian(
    f: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    mode: str = "auto",
    chunk_size: Optional[int] = None,
    out_dim: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and per-row Jacobians of a row-wise map.

    Args:
        f: map ``(n, d) -> (n, K)`` acting on each row independently.
        z: ``(N, d)`` points.
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` (forward when ``d <= K``).
        chunk_size: process at most this many rows at once (``None``: all).
        out_dim: ``K`` if known; otherwise ``"auto"`` uses forward mode until it is known.

    Returns:
        ``(f(z), J)`` with shapes ``(N, K)`` and ``(N, K, d)``.
    """
    n, d = z.shape
    step = n if chunk_size is None else max(1, int(chunk_size))
    outs, jacs = [], []
    k = out_dim
    for s in range(0, n, step):
        zc = z[s : s + step]
        m = choose_mode(mode, d, k if k is not None else d)
        if m == "reverse":
            if k is None:
                with torch.no_grad():
                    k = f(zc[:1]).shape[-1]
            out, jac = _reverse(f, zc, k)
        else:
            out, jac = _forward(f, zc)
        k = out.shape[-1]
        outs.append(out)
        jacs.append(jac)
    if len(outs) == 1:
        return outs[0], jacs[0]
    return torch.cat(outs, 0), torch.cat(jacs, 0)


def _forward_blocks(f, z):
    """Forward mode for a map returning a tuple of blocks: ``(outs, cols)`` with ``cols[b]`` ``(d, n, K_b)``."""
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    tangents = eye[:, None, :].expand(d, n, d)

    def one(t):
        return jvp(f, (z,), (t,))

    try:
        outs, cols = vmap(one, out_dims=(None, 0))(tangents)
    except ValueError:
        raise
    except Exception as exc:
        warnings.warn(
            f"decoder could not be vectorised over tangent directions with torch.func.vmap ({exc}); "
            f"computing the {d} Jacobian columns one jvp at a time (still batched over points)",
            RuntimeWarning,
            stacklevel=4,
        )
        try:
            per_dir = [jvp(f, (z,), (tangents[i],)) for i in range(d)]
        except RuntimeError as exc2:
            raise ValueError(
                f"the decoder cannot be differentiated with torch.func.jvp: {exc2} "
                "(in-place writes into tensors created outside the decoder are not supported)"
            ) from exc2
        outs = per_dir[0][0]
        cols = tuple(torch.stack([p[1][b] for p in per_dir], 0) for b in range(len(outs)))
    return tuple(outs), tuple(cols)


def rowwise_gram(
    f: Callable[[torch.Tensor], tuple],
    z: torch.Tensor,
    weights: Optional[Callable[[tuple], Optional[tuple]]] = None,
    mode: str = "auto",
    chunk_size: Optional[int] | str = "auto",
    out_dim: Optional[int] = None,
    fast: Optional[Callable[[torch.Tensor], Optional[tuple]]] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``M = Σ_b J_bᵀ diag(w_b) J_b`` for a row-wise map with block outputs, without forming ``J``.

    Args:
        f: map ``(n, d) -> (η_1 (n, K_1), …, η_B (n, K_B))`` acting on rows independently.
        z: ``(N, d)`` points.
        weights: ``blocks -> (w_1, …, w_B)`` diagonal weights (same shapes as the blocks), or
            ``None`` / returning ``None`` for the Euclidean pullback ``JᵀJ``.
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` (forward when ``d ≤ K``).
        chunk_size: rows per chunk, ``None`` for all, ``"auto"`` for :func:`auto_chunk_rows`.
        out_dim: ``K = Σ K_b`` if known (saves a probe evaluation for ``"auto"``).
        fast: optional ``z -> (blocks, columns)`` tried first in forward mode (columns
            ``(d, n, K_b)``, e.g. :meth:`Decoder.coordinate_blocks_jvp`); ``None`` from it
            selects the generic ``vmap(jvp)`` path.

    Returns:
        ``(η, M, K)``: the concatenated values ``(N, K)``, the metric ``(N, d, d)``, and ``K``.

    Forward mode contracts the ``(d, n, K_b)`` tangent columns block by block with a batched
    matmul; reverse mode (``K < d``) goes through :func:`rowwise_jacobian` on the concatenation.
    """
    n, d = z.shape
    k = out_dim
    if k is None and (chunk_size == "auto" or mode != "forward"):
        with torch.no_grad():
            k = sum(b.shape[-1] for b in f(z[:1]))
    if chunk_size == "auto":
        step = auto_chunk_rows(d, k)
    elif chunk_size is None:
        step = n
    else:
        step = max(1, int(chunk_size))
    m = choose_mode(mode, d, k if k is not None else d)
    etas, grams = [], []
    for s in range(0, n, step):
        zc = z[s : s + step]
        if m == "reverse":
            cat = lambda x: torch.cat(tuple(f(x)), 1)  # noqa: E731
            eta, jac = rowwise_jacobian(cat, zc, "reverse", None, k)
            blocks = tuple(torch.split(eta, [b.shape[1] for b in f(zc[:1])], 1)) if weights else (eta,)
            w = weights(blocks) if weights else None
            jt = jac.transpose(1, 2)
            g = jt @ jac if w is None else jt @ (torch.cat(w, 1).unsqueeze(-1) * jac)
        else:
            r = fast(zc) if fast is not None else None
            outs, cols = r if r is not None else _forward_blocks(f, zc)
            w = weights(outs) if weights else None
            g = None
            for b, c in enumerate(cols):
                cb = c.permute(1, 0, 2)  # (n, d, K_b), a view
                rhs = cb if w is None else cb * w[b].unsqueeze(1)
                g = cb @ rhs.transpose(1, 2) if g is None else g.baddbmm_(cb, rhs.transpose(1, 2))
            eta = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        etas.append(eta)
        grams.append(g)
        k = eta.shape[1]
    if len(etas) == 1:
        return etas[0], grams[0], k
    return torch.cat(etas, 0), torch.cat(grams, 0), k


def value_and_columns(g: Callable, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g(z), J)`` with ``J (N, K, d)`` of a row-wise ``g: (N, d) -> (N, K)``: one jvp per
    coordinate direction, vectorised (pure; composable with :mod:`torch.func`, no chunking)."""
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    tang = eye[:, None, :].expand(d, n, d)
    out, cols = vmap(lambda t: jvp(g, (z,), (t,)), out_dims=(None, 0))(tang)
    return out, cols.permute(1, 2, 0)


def second_directional(g: Callable, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``∂²g(z)[v, v]`` (row-wise, ``(N, K)``) by a nested :func:`torch.func.jvp` (pure)."""

    def dg(x):
        return jvp(g, (x,), (v,))[1]

    return jvp(dg, (z,), (v,))[1]
