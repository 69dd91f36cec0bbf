"""Graph approximations of geodesics: k-nearest-neighbour and grid graphs in latent space.

A :class:`LatentGraph` connects latent codes (or the points of a regular grid) by straight
segments whose weights are their *metric* lengths, measured with a few sub-points per
segment through :meth:`Metric.length <latentgeo.metric.Metric.length>` (batched over all
edges). Shortest paths in this graph (Dijkstra, :func:`scipy.sparse.csgraph.dijkstra`)

* give initial curves for the connecting-geodesic solver on hard pairs (pairs whose
  straight line crosses a region of huge metric, where local optimisation from the line
  would stall in a poor local minimum) — :meth:`LatentGraph.initial_curves`;
* approximate the geodesic distance between large sets of codes —
  :meth:`LatentGraph.distances`. Every graph distance is the length of an actual curve
  (a polyline through the graph), so it is an *upper bound* of the geodesic distance up to
  the sub-point discretisation of each segment's length; its excess shrinks as the graph
  gets denser.

A query point ``z`` is attached to its Euclidean-nearest node by a straight segment (again
measured with the metric). When a pair's straight line is shorter than its best graph path,
:meth:`~LatentGraph.shortest_paths` keeps the line (``via_graph`` says which was used).

Backend choice: :func:`scipy.sparse.csgraph.dijkstra` (C, many sources per call) against
:func:`networkx.single_source_dijkstra_path_length` (pure Python) on 10,000 nodes, ``k = 10``
(57,393 edges) and 100 sources took 0.34 s against 7.9 s on the shared 2-core development
machine (23× faster), so scipy is used (numbers in ``benchmarks/RESULTS.md``).

References:
    Tenenbaum, de Silva, Langford. *A global geometric framework for nonlinear
    dimensionality reduction* (Isomap). Science 2000 (graph distances approximate
    geodesic distances).
    Chen, Klushyn, Ferroni, Bayer, van der Smagt. *Learning flat latent manifolds with
    VAEs*. ICML 2020; Arvanitidis, Hauberg, Schölkopf. *Geometrically enriched latent
    spaces*. AISTATS 2021 (graph-based geodesic initialisation in latent spaces).

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics.graph import LatentGraph
    >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> g = LatentGraph.grid(metric, extent=[(-1, 1), (-1, 1)], resolution=21, dtype=torch.float64)
    >>> z0 = torch.tensor([[-0.9, -0.9]], dtype=torch.float64)
    >>> z1 = torch.tensor([[0.9, 0.8]], dtype=torch.float64)
    >>> curves = g.initial_curves(z0, z1, n_points=16)   # (1, 16, 2), endpoints exact
    >>> exact = (A @ (z1 - z0)[0]).norm()
    >>> bool(exact <= g.distances(z0, z1)[0, 0] <= 1.03 * exact)
    True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import product
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from .._validation import as_latent_batch, check_finite
from ..metric import Metric

__all__ = ["LatentGraph", "GraphPaths", "DisconnectedGraphError", "resample_polylines"]

# entries of a (sources × nodes) Dijkstra block kept in memory at once (float64 + int32)
_BLOCK_ENTRIES = 1 << 22


class DisconnectedGraphError(ValueError):
    """The graph has several connected components (or a query pair lies in two of them)."""


@dataclass
class GraphPaths:
    """Shortest graph paths between pairs of latent codes.

    Attributes:
        polylines: ``(N, P, d)`` vertices ``z0 → nearest node → … → nearest node → z1``,
            padded at the end by repeating ``z1`` (``n_vertices`` says how many are real).
        arclength: ``(N, P)`` cumulative metric length along each polyline (``0`` at ``z0``).
        lengths: ``(N,)`` metric length of each polyline — an upper bound of the geodesic
            distance (up to the sub-point discretisation of segment lengths).
        n_vertices: ``(N,)`` number of real vertices of each polyline.
        via_graph: ``(N,)`` bool; ``False`` where the straight segment ``z0 → z1`` was shorter
            than the graph path and was kept instead.
    """

    polylines: torch.Tensor
    arclength: torch.Tensor
    lengths: torch.Tensor
    n_vertices: torch.Tensor
    via_graph: torch.Tensor


def _parameter_dtype_device(metric):
    decoder = getattr(metric, "decoder", None)
    for module in decoder._modules() if decoder is not None else []:
        p = next(iter(module.parameters()), None)
        if p is not None:
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class LatentGraph:
    """A graph over latent points whose edges are straight segments weighted by metric length.

    Args:
        metric: any :class:`~latentgeo.metric.Metric` (pullback or metric field).
        nodes: ``(M, d)`` latent codes (the training codes, or a sample covering the region
            of interest). Their dtype/device is the graph's.
        k: number of Euclidean nearest neighbours per node (``1 ≤ k < M``); the graph is
            symmetrised (an edge when either node is among the other's ``k`` nearest).
        n_sub: sub-segments per edge used to measure its metric length (``n_sub + 1`` points
            on the straight segment, :meth:`Metric.length`). Larger is more exact.
        chunk_size: edges measured per batch (bounds memory: ``chunk_size·(n_sub+1)`` decoder rows).
            (``chunk=`` is the deprecated spelling of the same option.)
        n_attach: a query point is joined to its ``n_attach`` Euclidean-nearest nodes by
            straight segments (measured with the metric); the shortest combination is used
            (default ``k``; 8 with explicit ``edges``).
        disconnected: what to do when the graph has several connected components:
            ``"raise"`` (default) a :class:`DisconnectedGraphError`; ``"warn"`` keep the
            components (distances across them are ``inf``; :meth:`initial_curves` refuses
            such pairs); ``"bridge"`` warn and join the components by their shortest
            Euclidean links (Borůvka steps), also weighted by metric length.
        edges: optional ``(E, 2)`` integer array of explicit edges used instead of the kNN
            graph (``k`` is then ignored); see :meth:`grid`.

    Attributes:
        nodes: ``(M, d)`` tensor; ``edges``: ``(E, 2)`` int64 array (``i < j``);
        weights: ``(E,)`` float64 array of metric edge lengths; ``adjacency``: symmetric
        :class:`scipy.sparse.csr_matrix`; ``n_components``: components of the graph *before*
        bridging; ``n_bridges``: edges added by ``disconnected="bridge"``.
    """

    def __init__(
        self,
        metric: Metric,
        nodes,
        k: int = 10,
        *,
        n_sub: int = 4,
        chunk_size: int = 4096,
        n_attach: Optional[int] = None,
        disconnected: str = "raise",
        edges=None,
        chunk: Optional[int] = None,
    ):
        if not isinstance(metric, Metric):
            raise ValueError(f"metric must be a latentgeo Metric (PullbackMetric, MetricField), got {type(metric).__name__}")
        if disconnected not in ("raise", "warn", "bridge"):
            raise ValueError(f"unknown disconnected={disconnected!r}; expected 'raise', 'warn' or 'bridge'")
        self.metric = metric
        nodes, _ = as_latent_batch(nodes, metric.latent_dim, name="nodes", allow_single=False)
        m = nodes.shape[0]
        if m < 2:
            raise ValueError(f"a graph needs at least 2 nodes, got {m}")
        self.nodes = nodes
        self.n_sub = _check_int(n_sub, "n_sub")
        if chunk is not None:
            warnings.warn("LatentGraph(chunk=) is deprecated; use chunk_size= (the package-wide name)", DeprecationWarning,
                          stacklevel=2)
            chunk_size = chunk
        self.chunk_size = _check_int(chunk_size, "chunk_size")
        self.disconnected = disconnected
        self._np_nodes = nodes.detach().cpu().double().numpy()
        self._tree = cKDTree(self._np_nodes)

        if edges is None:
            self.k = _check_int(k, "k")
            if self.k >= m:
                raise ValueError(f"k must be smaller than the number of nodes: k={self.k}, {m} nodes")
            pairs = self._knn_edges(self.k)
        else:
            self.k = None
            pairs = np.asarray(edges)
            if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
                raise ValueError(f"edges must be an integer array of shape (E, 2), got {pairs.dtype} {pairs.shape}")
            if pairs.size and (pairs.min() < 0 or pairs.max() >= m):
                raise ValueError(f"edges refer to nodes outside 0..{m - 1}")
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
            if len(pairs) == 0:
                raise ValueError("edges contain no edge between two different nodes")
        self.n_attach = _check_int(n_attach if n_attach is not None else (self.k or 8), "n_attach")
        pairs = np.unique(np.sort(pairs, axis=1).astype(np.int64), axis=0)
        weights = self._segment_lengths(self.nodes[pairs[:, 0]], self.nodes[pairs[:, 1]])

        self.n_components, labels = self._components(pairs, weights)
        self.n_bridges = 0
        if self.n_components > 1:
            msg = (
                f"the latent graph is disconnected: {self.n_components} components over {m} nodes "
                f"(sizes {sorted(np.bincount(labels).tolist(), reverse=True)[:8]})"
            )
            if disconnected == "raise":
                raise DisconnectedGraphError(
                    msg + "; increase k, add nodes, or pass disconnected='bridge' (join components by their "
                    "shortest Euclidean links) or 'warn' (keep them apart)"
                )
            if disconnected == "bridge":
                bridges = self._bridge(labels)
                bw = self._segment_lengths(self.nodes[bridges[:, 0]], self.nodes[bridges[:, 1]])
                pairs = np.concatenate([pairs, bridges])
                weights = np.concatenate([weights, bw])
                self.n_bridges = len(bridges)
                warnings.warn(
                    msg + f"; joined by {self.n_bridges} bridge edge(s) of metric lengths "
                    f"{np.round(np.sort(bw)[::-1][:5], 4).tolist()} (longest first)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                warnings.warn(msg + "; distances between components are inf", RuntimeWarning, stacklevel=2)
        self.edges = pairs
        self.weights = weights
        self.adjacency = self._build_adjacency(pairs, weights)
        coo = self.adjacency.tocoo()
        self._coo = (coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data)
        # straight segments between query points closer than a typical edge are also candidates
        # (the 95th percentile of the Euclidean edge lengths, bridges excluded: an outlier's or a
        # bridge's long edge would otherwise make every pair "close" and cost N·K segment lengths)
        own = pairs[: len(pairs) - self.n_bridges]
        elen = np.linalg.norm(self._np_nodes[own[:, 0]] - self._np_nodes[own[:, 1]], axis=1)
        self._reach = float(np.quantile(elen, 0.95)) if len(elen) else 0.0
        self._direct_sub = max(16, 4 * self.n_sub)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def grid(
        cls,
        metric: Metric,
        extent,
        resolution: Union[int, Sequence[int]] = 64,
        *,
        radius: Optional[int] = None,
        n_attach: Optional[int] = None,
        n_sub: int = 4,
        chunk_size: int = 4096,
        dtype: Optional[torch.dtype] = None,
        device=None,
    ) -> "LatentGraph":
        """A graph on a regular 2-D or 3-D grid.

        Args:
            extent: ``[(lo_1, hi_1), …, (lo_d, hi_d)]`` (a ``(d, 2)`` array), or one pair
                ``(lo, hi)`` used for every axis when ``metric.latent_dim`` is known.
            resolution: points per axis (an int, or one per axis; each ``≥ 2``).
            radius: each node is joined to the grid offsets ``o`` with ``max|o_i| ≤ radius``
                that are primitive (``gcd = 1``), i.e. 16 directions in 2-D for ``radius=2``
                (default in 2-D; worst-case excess of a straight path about 2.8 % in a flat
                metric) and 26 in 3-D for ``radius=1`` (default in 3-D).
            n_attach: nearest nodes a query point is joined to (default ``(2·radius + 1)**d``,
                the node's own stencil: 25 in 2-D, 27 in 3-D).
            n_sub, chunk_size: as in the constructor.
            dtype, device: of the nodes (default: those of the decoder's parameters when the
                metric wraps ``nn.Module`` decoders, else ``torch.get_default_dtype()`` on CPU).
        """
        ext = np.asarray(extent, dtype=np.float64)
        if ext.ndim == 1:
            if ext.shape != (2,):
                raise ValueError(f"extent must be (lo, hi) or a (d, 2) array of per-axis bounds, got shape {ext.shape}")
            if metric.latent_dim is None:
                raise ValueError("a single (lo, hi) extent needs a metric with a known latent_dim; give one pair per axis")
            ext = np.tile(ext, (metric.latent_dim, 1))
        if ext.ndim != 2 or ext.shape[1] != 2:
            raise ValueError(f"extent must be (lo, hi) or a (d, 2) array of per-axis bounds, got shape {ext.shape}")
        if not np.all(np.isfinite(ext)) or np.any(ext[:, 1] <= ext[:, 0]):
            raise ValueError(f"extent needs finite bounds with lo < hi on every axis, got {ext.tolist()}")
        d = ext.shape[0]
        if d not in (2, 3):
            raise ValueError(f"grid graphs are for 2-D or 3-D latent spaces, got d={d}; use kNN nodes instead")
        if metric.latent_dim is not None and metric.latent_dim != d:
            raise ValueError(f"extent has {d} axes but the metric's latent dimension is {metric.latent_dim}")
        res = [resolution] * d if np.ndim(resolution) == 0 else list(resolution)
        if len(res) != d:
            raise ValueError(f"resolution must be an int or {d} ints, got {resolution!r}")
        res = [_check_int(r, "resolution", minimum=2) for r in res]
        r = _check_int(radius if radius is not None else (2 if d == 2 else 1), "radius")

        axes = [torch.linspace(lo, hi, n, dtype=torch.float64) for (lo, hi), n in zip(ext, res)]
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        if dtype is None or device is None:
            p_dtype, p_device = _parameter_dtype_device(metric)
            dtype, device = dtype or p_dtype, device if device is not None else p_device
        nodes = mesh.to(dtype=dtype, device=device)

        index = np.arange(int(np.prod(res))).reshape(res)
        edges = []
        for off in product(range(-r, r + 1), repeat=d):
            if math.gcd(*[abs(o) for o in off]) != 1 or off <= tuple([0] * d):
                continue  # keep primitive offsets, one of each ± pair
            src = index[tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, res))]
            dst = index[tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, res))]
            edges.append(np.stack([src.reshape(-1), dst.reshape(-1)], 1))
        n_attach = (2 * r + 1) ** d if n_attach is None else n_attach
        graph = cls(
            metric, nodes, n_sub=n_sub, chunk_size=chunk_size, n_attach=n_attach, edges=np.concatenate(edges), disconnected="raise"
        )
        graph.extent, graph.resolution, graph.radius = ext, res, r
        return graph

    def _knn_edges(self, k: int) -> np.ndarray:
        m = len(self._np_nodes)
        _, idx = self._tree.query(self._np_nodes, k=k + 1)
        rows = np.arange(m)[:, None]
        is_self = idx == rows
        # with duplicated nodes the node itself may be missing from its own list: drop the farthest
        is_self[~is_self.any(1), -1] = True
        nbrs = idx[~is_self].reshape(m, k)
        return np.stack([np.repeat(np.arange(m), k), nbrs.reshape(-1)], 1)

    @torch.no_grad()
    def _segment_lengths(self, a: torch.Tensor, b: torch.Tensor, n_sub: Optional[int] = None) -> np.ndarray:
        """Metric lengths of the straight segments ``a_i → b_i`` (``(E, d)`` each) → ``(E,)`` float64."""
        n_sub = self.n_sub if n_sub is None else n_sub
        s = torch.linspace(0, 1, n_sub + 1, dtype=a.dtype, device=a.device)[None, :, None]
        out = []
        for i in range(0, a.shape[0], self.chunk_size):
            aa, bb = a[i : i + self.chunk_size, None], b[i : i + self.chunk_size, None]
            out.append(self.metric.length(aa + s * (bb - aa)).double().cpu())
        lengths = torch.cat(out).numpy()
        if not np.all(np.isfinite(lengths)):
            raise ValueError("the metric returned NaN/inf segment lengths")
        return lengths

    def _build_adjacency(self, pairs, weights) -> csr_matrix:
        m = len(self._np_nodes)
        # csgraph treats explicit zeros as edges, but keep weights strictly positive anyway
        w = np.maximum(weights, np.finfo(np.float64).tiny)
        i = np.concatenate([pairs[:, 0], pairs[:, 1]])
        j = np.concatenate([pairs[:, 1], pairs[:, 0]])
        return coo_matrix((np.concatenate([w, w]), (i, j)), shape=(m, m)).tocsr()

    def _components(self, pairs, weights):
        return connected_components(self._build_adjacency(pairs, weights), directed=False)

    def _bridge(self, labels: np.ndarray) -> np.ndarray:
        """Borůvka steps: join every component to its Euclidean-nearest other component."""
        labels = labels.copy()
        bridges = []
        while True:
            comps = np.unique(labels)
            if len(comps) == 1:
                break
            new = []
            for c in comps:
                inside = np.flatnonzero(labels == c)
                outside = np.flatnonzero(labels != c)
                dist, j = cKDTree(self._np_nodes[outside]).query(self._np_nodes[inside], k=1)
                best = int(np.argmin(dist))
                new.append((inside[best], outside[j[best]]))
            new = np.unique(np.sort(np.asarray(new), 1), axis=0)
            bridges.append(new)
            # merge labels along the new edges
            merged = coo_matrix((np.ones(len(new)), (labels[new[:, 0]], labels[new[:, 1]])), shape=(labels.max() + 1,) * 2)
            _, relabel = connected_components(merged, directed=False)
            labels = relabel[labels]
        return np.concatenate(bridges).astype(np.int64)

    def __repr__(self):
        how = f"k={self.k}" if self.k is not None else "explicit edges"
        return (
            f"LatentGraph({self.nodes.shape[0]} nodes, {len(self.edges)} edges, {how}, "
            f"components={self.n_components}, bridges={self.n_bridges})"
        )

    # -- queries ----------------------------------------------------------------------------
    def _check_points(self, z, name):
        z, _ = as_latent_batch(z, self.nodes.shape[1], name=name)
        return z

    def _attach(self, z: torch.Tensor, to_node: bool):
        """The ``n_attach`` nearest nodes of each point and the metric lengths of the segments.

        Returns ``(idx (N, a) int64, lengths (N, a) float64)``; ``to_node`` orients the segments
        ``z → node`` (else ``node → z``; equal lengths for a symmetric discretisation).
        """
        na = min(self.n_attach, self.nodes.shape[0])
        _, idx = self._tree.query(z.detach().cpu().double().numpy(), k=na)
        idx = np.asarray(idx, dtype=np.int64).reshape(z.shape[0], na)
        zz = z.to(self.nodes.dtype).to(self.nodes.device)[:, None].expand(-1, na, -1).reshape(-1, z.shape[1])
        nodes = self.nodes[torch.as_tensor(idx.reshape(-1), device=self.nodes.device)]
        a, b = (zz, nodes) if to_node else (nodes, zz)
        return idx, self._segment_lengths(a, b).reshape(z.shape[0], na)

    def _augmented(self, src_idx, src_len, dst_idx, dst_len) -> csr_matrix:
        """The graph plus one virtual node per query start (edges to its attached nodes) and
        one per query end (edges from its attached nodes); directed so that no path passes
        through another query's virtual node. Node order: graph, starts, ends."""
        m = self.adjacency.shape[0]
        ns, nt = src_idx.shape[0], dst_idx.shape[0]
        tiny = np.finfo(np.float64).tiny
        rows = [self._coo[0], np.repeat(m + np.arange(ns), src_idx.shape[1]), dst_idx.reshape(-1)]
        cols = [self._coo[1], src_idx.reshape(-1), np.repeat(m + ns + np.arange(nt), dst_idx.shape[1])]
        data = [self._coo[2], np.maximum(src_len.reshape(-1), tiny), np.maximum(dst_len.reshape(-1), tiny)]
        size = m + ns + nt
        return coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size)).tocsr()

    def _block_size(self, extra: int) -> int:
        return max(1, _BLOCK_ENTRIES // (self.adjacency.shape[0] + extra))

    def node_distances(self, sources=None) -> np.ndarray:
        """Graph distances from node indices ``sources`` (default: all) to every node, ``(S, M)``."""
        m = self.adjacency.shape[0]
        src = np.arange(m) if sources is None else np.asarray(sources, dtype=np.int64).reshape(-1)
        if src.size == 0 or src.min() < 0 or src.max() >= m:
            raise ValueError(f"sources must be node indices in 0..{m - 1}")
        size = self._block_size(0)
        return np.concatenate(
            [np.atleast_2d(dijkstra(self.adjacency, directed=False, indices=src[i : i + size])) for i in range(0, len(src), size)]
        )

    def _direct_close_pairs(self, A: torch.Tensor, B: torch.Tensor):
        """Pairs closer than the 95th percentile of the edge lengths (Euclidean, bridges excluded) and their straight-segment metric lengths."""
        ta, tb = cKDTree(A.detach().cpu().double().numpy()), cKDTree(B.detach().cpu().double().numpy())
        close = ta.sparse_distance_matrix(tb, self._reach, output_type="ndarray")
        i, j = close["i"].astype(np.int64), close["j"].astype(np.int64)
        if len(i) == 0:
            return i, j, np.zeros(0)
        dt, dev = self.nodes.dtype, self.nodes.device
        it, jt = torch.as_tensor(i, device=A.device), torch.as_tensor(j, device=B.device)
        return i, j, self._segment_lengths(A[it].to(dt).to(dev), B[jt].to(dt).to(dev))

    @torch.no_grad()
    def distances(self, A, B=None) -> torch.Tensor:
        """Graph-approximate geodesic distances between point sets.

        ``D[i, j]`` is the shortest length of a curve ``a_i → n → (graph path) → n' → b_j``
        where ``n`` runs over the ``n_attach`` nearest nodes of ``a_i``, ``n'`` over those of
        ``b_j``, and the attaching pieces are straight segments measured with the metric; for
        pairs closer than a typical graph edge (95th percentile of the Euclidean edge lengths) the straight segment ``a_i → b_j`` itself is
        also a candidate. Every candidate is a real curve, so ``D`` is an upper bound of the
        geodesic distance (up to the sub-point discretisation of segment lengths).
        ``B=None`` gives the symmetric matrix of ``A`` with a zero diagonal.

        Args:
            A: ``(N, d)``; B: ``(K, d)`` or ``None``.

        Returns:
            ``(N, K)`` tensor in ``A``'s dtype/device; ``inf`` across components of a graph
            built with ``disconnected="warn"``.
        """
        A = self._check_points(A, "A")
        same = B is None
        B = A if same else self._check_points(B, "B")
        ia, la = self._attach(A, to_node=True)
        ib, lb = (ia, la) if same else self._attach(B, to_node=False)
        m, n, k = self.adjacency.shape[0], A.shape[0], B.shape[0]
        D = np.empty((n, k))
        size = self._block_size(k)
        for s in range(0, n, size):
            blk = slice(s, min(n, s + size))
            nb = blk.stop - blk.start
            adj = self._augmented(ia[blk], la[blk], ib, lb)
            dist = np.atleast_2d(dijkstra(adj, directed=True, indices=m + np.arange(nb)))
            D[blk] = dist[:, m + nb :]
        i, j, direct = self._direct_close_pairs(A, B)
        D[i, j] = np.minimum(D[i, j], direct)
        if same:
            D = np.minimum(D, D.T)  # both are lengths of real curves (reversed), keep the shorter
            np.fill_diagonal(D, 0.0)
        return torch.as_tensor(D, dtype=A.dtype, device=A.device)

    @torch.no_grad()
    def shortest_paths(self, z0, z1) -> GraphPaths:
        """Shortest graph polylines ``z0 → n → … → n' → z1`` for pairs ``(N, d)``.

        ``n`` and ``n'`` are chosen among the ``n_attach`` nearest nodes of ``z0`` and ``z1``
        (whichever gives the shortest total). The straight segment ``z0 → z1`` (measured with
        ``max(16, 4·n_sub)`` sub-segments) is kept instead where it is shorter than the graph
        path (``via_graph=False``).
        """
        z0 = self._check_points(z0, "z0")
        z1 = self._check_points(z1, "z1")
        if z0.shape != z1.shape:
            raise ValueError(f"z0 and z1 must have the same shape (N, d), got {tuple(z0.shape)} and {tuple(z1.shape)}")
        n, d = z0.shape
        m = self.adjacency.shape[0]
        i0, l0 = self._attach(z0, to_node=True)
        i1, l1 = self._attach(z1, to_node=False)
        dt, dev = self.nodes.dtype, self.nodes.device
        direct = self._segment_lengths(z0.to(dt).to(dev), z1.to(dt).to(dev), self._direct_sub)

        graph_len = np.empty(n)
        blocks = []
        size = self._block_size(0)
        for s in range(0, n, size):
            sel = np.arange(s, min(n, s + size))
            nb = len(sel)
            adj = self._augmented(i0[sel], l0[sel], i1[sel], l1[sel])
            src, dst = m + np.arange(nb), m + nb + np.arange(nb)
            dist, pred = dijkstra(adj, directed=True, indices=src, return_predecessors=True)
            dist, pred = np.atleast_2d(dist), np.atleast_2d(pred)
            rows = np.arange(nb)
            graph_len[sel] = dist[rows, dst]
            if not np.all(np.isfinite(graph_len[sel])):
                bad = sel[~np.isfinite(graph_len[sel])]
                raise DisconnectedGraphError(
                    f"{len(bad)} pair(s) (indices {bad[:5].tolist()}) have endpoints in different components of the "
                    "graph; build it with a larger k or disconnected='bridge'"
                )
            # walk the predecessor trees back from the virtual end nodes, all pairs at once
            cur = dst.copy()
            seq = [cur.copy()]
            active = cur != src
            while active.any():
                cur = np.where(active, pred[rows, np.where(active, cur, 0)], cur)
                seq.append(cur.copy())
                active = cur != src
            seq = np.stack(seq, 1)  # (nb, L): end, ..., start, then repeats of the start
            counts = (seq != src[:, None]).sum(1) + 1
            col = counts[:, None] - 1 - np.arange(seq.shape[1])[None, :]
            path = np.take_along_axis(seq, np.maximum(col, 0), 1)  # start ... end, padded with the end
            cum = dist[rows[:, None], path]
            # vertex coordinates: graph nodes, then this block's z0, then its z1
            node_idx = np.where(path < m, path, 0)
            pts = self.nodes[torch.as_tensor(node_idx, device=dev)].to(z0.dtype).to(z0.device)
            is_start = torch.as_tensor(path == src[:, None], device=z0.device)[..., None]
            is_end = torch.as_tensor(path >= m + nb, device=z0.device)[..., None]
            zs = torch.as_tensor(sel, device=z0.device)
            pts = torch.where(is_start, z0[zs][:, None], torch.where(is_end, z1[zs][:, None], pts))
            blocks.append((sel, pts, cum, counts))

        via = graph_len < direct
        P = max(b[1].shape[1] for b in blocks)
        poly = z1[:, None].repeat(1, P, 1)
        cum = np.empty((n, P))
        nv = np.empty(n, dtype=np.int64)
        for sel, pts, c, cnt in blocks:
            L = pts.shape[1]
            poly[torch.as_tensor(sel, device=z0.device), :L] = pts
            cum[sel, :L], cum[sel, L:] = c, c[:, -1:]
            nv[sel] = cnt
        line_cum = np.where(np.arange(P)[None, :] == 0, 0.0, direct[:, None])
        cum = np.where(via[:, None], cum, line_cum)
        vmask = torch.as_tensor(via, device=z0.device)[:, None, None]
        line = torch.cat([z0[:, None], z1[:, None].expand(n, P - 1, d)], 1)
        poly = torch.where(vmask, poly, line)
        nv = np.where(via, nv, 2)
        lengths = np.where(via, graph_len, direct)
        t = lambda x, dtype=z0.dtype: torch.as_tensor(x, dtype=dtype, device=z0.device)  # noqa: E731
        return GraphPaths(
            polylines=poly,
            arclength=t(cum),
            lengths=t(lengths),
            n_vertices=t(nv, torch.int64),
            via_graph=t(via, torch.bool),
        )

    def initial_curves(self, z0, z1, n_points: int = 32, *, spacing: str = "metric") -> torch.Tensor:
        """Initial curves for the connecting-geodesic solver.

        Args:
            z0, z1: ``(N, d)`` endpoints (or ``(d,)`` each).
            n_points: points per curve ``T ≥ 2``.
            spacing: resample the shortest polyline evenly in ``"metric"`` arc length
                (segment lengths measured with the metric; the curve is then close to
                constant speed, a good start for energy minimisation) or ``"euclidean"``.

        Returns:
            ``(N, T, d)`` curves in ``z0``'s dtype/device with ``curve[:, 0] == z0`` and
            ``curve[:, -1] == z1`` exactly.
        """
        n_points = _check_int(n_points, "n_points", minimum=2)
        if spacing not in ("metric", "euclidean"):
            raise ValueError(f"unknown spacing={spacing!r}; expected 'metric' or 'euclidean'")
        z0t = self._check_points(z0, "z0")
        z1t = self._check_points(z1, "z1")
        res = self.shortest_paths(z0t, z1t)
        return resample_polylines(res.polylines, None if spacing == "euclidean" else res.arclength, n_points)


def resample_polylines(poly: torch.Tensor, arclength: Optional[torch.Tensor], n_points: int) -> torch.Tensor:
    """Resample polylines ``(N, P, d)`` at ``n_points`` evenly spaced arc-length positions.

    ``arclength`` ``(N, P)`` gives the cumulative length at each vertex (any non-decreasing
    parametrisation, e.g. metric length); ``None`` uses Euclidean arc length. Between vertices
    the points are linearly interpolated. The first and last vertices are kept exactly.
    """
    n, p, d = poly.shape
    if arclength is None:
        seg = (poly[:, 1:] - poly[:, :-1]).norm(dim=-1)
        arclength = torch.cat([torch.zeros_like(seg[:, :1]), seg.cumsum(1)], 1)
    check_finite(arclength, "arclength")
    total = arclength[:, -1:]
    s = torch.linspace(0, 1, n_points, dtype=poly.dtype, device=poly.device)[None, :] * total  # (n, T)
    j = torch.searchsorted(arclength.contiguous(), s.contiguous(), right=True).clamp(1, p - 1)
    c_lo = arclength.gather(1, j - 1)
    c_hi = arclength.gather(1, j)
    span = c_hi - c_lo
    w = torch.where(span > 0, (s - c_lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))
    w = w.clamp(0, 1)[..., None]
    lo = poly.gather(1, (j - 1)[..., None].expand(n, n_points, d))
    hi = poly.gather(1, j[..., None].expand(n, n_points, d))
    out = lo + w * (hi - lo)
    out[:, 0] = poly[:, 0]
    out[:, -1] = poly[:, -1]
    return out
