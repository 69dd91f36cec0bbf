"""Report section ``geodesics``: shortest paths between class centres of the latent codes.

For a model with a 2-D latent space and labelled data, the section

1. takes the class centres (mean code of each class) of up to ``options["geodesic_classes"]``
   classes (default 4: the first classes in sorted order) and all pairs among them;
2. solves the connecting geodesics under the report's metric (``ctx.metric``: the expected
   pullback metric of the decoder) with :func:`latentgeo.geodesics.connecting_geodesic` at
   ``tol = options["geodesic_tol"]`` (default ``1e-6``; float32 models are solved on a float64
   copy, since 1e-6 needs float64) with bounded work (``geodesic_max_iter`` 20 collocation /
   Newton iterations, ``geodesic_max_nodes`` 512 collocation nodes — the RBF-variance metric's
   geodesics need 128–512 —, ``geodesic_budget`` 1 s per pair; pairs that are not certified are
   reported, drawn in a distinct style, with their status and reason in ``summary.json``), initialised
   from shortest paths in a kNN graph over the data's codes
   (:class:`~latentgeo.geodesics.graph.LatentGraph`; a grid over the plot extent when there are
   fewer than 20 codes), with the straight line as a competitor in the minimality check;
3. writes ``geodesics.png`` (geodesics over the magnification map, straight lines dashed) and
   ``geodesic_strips.png`` (decoded images along the geodesic and the straight line of each
   pair, on consecutive rows);
4. returns geodesic and straight-line lengths, their ratio, per-pair convergence and timings
   for ``summary.json``.

Its options and their defaults are :data:`SECTION.defaults <SECTION>`.

Example:
    >>> from latentgeo.report import report_sections
    >>> "geodesics" in [s.name for s in report_sections()]
    True
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION", "geodesics_section", "class_centre_pairs"]


def class_centre_pairs(codes: torch.Tensor, labels, n_classes: int = 4):
    """Class centres of the first ``n_classes`` classes and all pairs among them.

    Returns ``(z0 (P, d), z1 (P, d), names [(class_a, class_b), ...])``.
    """
    labels = np.asarray(labels)
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {codes.shape[0]} codes")
    classes = np.unique(labels)[: int(n_classes)]
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes for class-centre geodesics, got {len(classes)}")
    centres = torch.stack([codes[torch.as_tensor(labels == c)].mean(0) for c in classes])
    pairs = list(itertools.combinations(range(len(classes)), 2))
    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    names = [(classes[a].item(), classes[b].item()) for a, b in pairs]
    return centres[i], centres[j], names


def geodesics_section(ctx: ReportContext) -> dict:
    from ..geodesics import Collocation, GeodesicStatus, connecting_geodesic
    from ..geodesics.graph import LatentGraph
    from ..geodesics.plotting import plot_decoded_strips, plot_geodesics

    if ctx.latent_dim != 2:
        return {"skipped": f"geodesic figures need a 2-D latent space, the model has {ctx.latent_dim}"}
    if ctx.labels is None:
        return {"skipped": "the data set has no labels, so there are no class centres"}
    n_classes = int(ctx.options["geodesic_classes"])
    metric, codes = ctx.metric, ctx.codes
    model64 = ctx.float64_model() if codes.dtype != torch.float64 else None
    if model64 is not None:
        # certifying a geodesic to 1e-6 relative length needs float64 (float32 stalls near 1e-5):
        # solve on a float64 copy of the model (in the report's chart), leaving the model itself untouched
        from ..metric import PullbackMetric

        metric, codes = PullbackMetric(ctx.decoder_of(model64)), codes.double()
    tol = ctx.options["geodesic_tol"]
    tol = float(tol if tol is not None else (1e-6 if codes.dtype == torch.float64 else 1e-4))
    max_iter = int(ctx.options["geodesic_max_iter"])
    budget = ctx.options["geodesic_budget"]
    grid_res = int(ctx.options["geodesic_grid"])
    z0, z1, names = class_centre_pairs(codes, ctx.labels, n_classes)

    t = time.perf_counter()
    x0, x1, y0, y1 = ctx.extent
    # a kNN graph over the data's codes: its paths follow the data (where the RBF variance is
    # low), which a grid over the plot extent does not; the grid is kept for code-less contexts
    if codes.shape[0] >= 20:
        graph = LatentGraph(metric, codes, k=10, disconnected="bridge")
    else:
        graph = LatentGraph.grid(metric, [(x0, x1), (y0, y1)], grid_res, dtype=codes.dtype, device=codes.device)
    graph_s = time.perf_counter() - t
    t = time.perf_counter()
    # the demo's RBF-variance metric has sharp features: its geodesics need 128-512 collocation
    # nodes; the per-pair time budget bounds the section on any model
    max_nodes = int(ctx.options["geodesic_max_nodes"])
    solver = Collocation(max_iter=max_iter, max_nodes=max_nodes)
    res = connecting_geodesic(metric, z0, z1, tol=tol, init="graph", graph=graph, solver=solver, budget=budget,
                              progress=False)
    solve_s = time.perf_counter() - t
    s = torch.linspace(0, 1, 513, dtype=z0.dtype, device=z0.device)[None, :, None]
    lines = z0[:, None] + s * (z1 - z0)[:, None]
    with torch.no_grad():
        straight = metric.length(lines)
    geo = res.length.detach()  # an upper bound (shortest curve found) where a pair is not certified

    fig, ax = ctx.magnification_figure(title="Geodesics (solid) vs straight lines (dashed) between class centres")
    labels = [f"{a} → {b}" for a, b in names]
    # endpoint markers in their classes' colours (as the codes are drawn on the map)
    cls_color = {c.get_label(): c.get_facecolor()[0] for c in ax.collections if len(c.get_facecolor())}
    ends = [(cls_color.get(str(a), "white"), cls_color.get(str(b), "white")) for a, b in names]
    plot_geodesics(metric, res, ax=ax, names=labels, endpoint_colors=ends)
    ctx.save_figure(fig, "geodesics.png")

    n = len(names)
    tt = torch.linspace(0, 1, 10, dtype=z0.dtype, device=z0.device)
    geo_pts = res.curve(tt).detach()
    line_pts = z0[:, None] + tt[None, :, None] * (z1 - z0)[:, None]
    rows = torch.stack([geo_pts, line_pts], 1).reshape(2 * n, len(tt), 2)
    row_failed = torch.stack([~res.converged.cpu(), torch.zeros(n, dtype=torch.bool)], 1).reshape(-1)
    row_labels = [f"{lab} {kind}" for lab in labels for kind in ("geodesic", "straight")]
    item_shape = ctx.item_shape
    item_shape = tuple(item_shape) if item_shape is not None and len(item_shape) == 2 else None
    width = ctx.data.shape[1] if ctx.data is not None else None
    if item_shape is not None or (width is not None and int(np.sqrt(width)) ** 2 == width):
        fig = plot_decoded_strips(ctx.mean_fn(), rows.to(ctx.codes.dtype), n_images=len(tt), item_shape=item_shape, row_labels=row_labels,
                                  title="Decoded along geodesics and straight lines", failed=row_failed)
        ctx.save_figure(fig, "geodesic_strips.png")
        strips = True
    else:
        strips = False

    conv = res.converged.cpu().numpy().astype(bool)
    ratio = (geo / straight).cpu().numpy()
    return {
        "pairs": [list(p) for p in names],
        "geodesic_length": geo.cpu().numpy().tolist(),
        "straight_length": straight.cpu().numpy().tolist(),
        "length_ratio": ratio.tolist(),
        "mean_length_ratio": float(ratio.mean()),
        "converged": conv.tolist(),
        "n_converged": int(conv.sum()),
        "n_pairs": n,
        "init_used": list(getattr(res, "init", ["graph"] * n)),
        "certified_by": list(getattr(res, "method", [""] * n)),
        "max_nodes": max_nodes,
        "reasons": list(getattr(res, "reasons", [""] * n)),
        "tol": tol,
        "max_iter": max_iter,
        "budget_s_per_pair": budget,
        "status": [GeodesicStatus(int(s_)).name for s_ in res.status.tolist()],
        "graph_nodes": int(graph.nodes.shape[0]),
        "graph_s": graph_s,
        "solve_s": solve_s,
        "strips": strips if strips else "skipped: items are not square images",
        "message": getattr(res, "message", ""),
    }


SECTION = ReportSection(
    "geodesics", geodesics_section, order=70,
    description="geodesics.png, geodesic_strips.png: geodesics between class centres vs straight lines",
    defaults={
        "geodesic_classes": 4,  # class centres of the first classes in sorted order
        "geodesic_tol": None,  # None: 1e-6 (float64 solve; float32 models are solved on a float64 copy)
        "geodesic_max_iter": 20,
        "geodesic_budget": 1.0,  # seconds per pair (None: unbounded); pairs that run out are reported
        "geodesic_grid": 41,  # grid-graph resolution for the initial curves
        "geodesic_max_nodes": 512,
    },
)
