"""Report section ``manifold``: the codes on their own manifold, and geodesics that do not depend on the chart.

Curved latents are analysed in a chart (:attr:`ReportContext.chart
<latentgeo.report.context.ReportContext.chart>`); this section shows the codes where the model
puts them and checks what the chart must not change. For a 2-D latent and labelled data:

* **sphere** (``S² ⊂ R³``): the class centres are the normalised mean codes of the first
  ``options["manifold_classes"]`` classes (chart-free: the extrinsic mean on the sphere). Their
  connecting geodesics under the decoder's pullback metric are solved in the report's chart
  (stereographic from the pole opposite the codes' mean), then checked in a **second**
  stereographic chart whose pole is at least 60° from the first and as far as possible from the
  codes and the curves: (a) the *same* curves carried into the second chart have the same
  discrete length there (``same_curve_rel_diff``: chart-independence of the length functional)
  and (b) the geodesics *solved again* in the second chart have the same lengths
  (``resolved_rel_diff``). ``sphere.png``: the codes on S² (3-D, coloured by label) with the
  geodesics mapped back to the sphere, and the chart view with both charts' geodesics.
* **hyperbolic** (``H² ⊂ R³``, drawn in the Poincaré disk): class centres are Lorentzian
  centroids of the hyperboloid codes; the pullback geodesics between them are solved in the
  ball and compared with the latent's own hyperbolic distance (the prior's geometry).
  ``poincare.png``: the codes in the disk with the unit circle, the pullback geodesics (solid)
  and the hyperbolic ones (dotted), the whole disk and a close-up of the codes.

Euclidean latents (and :class:`~latentgeo.report.subject.Subject` reports) say ``{"skipped": ...}``.
Geodesics are solved on a float64 copy of the model, as in :mod:`.geodesics`. Its options and
their defaults are :data:`SECTION.defaults <SECTION>`.

Example:
    >>> from latentgeo.report import report_sections
    >>> "manifold" in [s.name for s in report_sections()]
    True
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION", "manifold_section", "second_pole", "lorentz_centroid"]

#: the second chart's pole is at least this far (degrees) from the report chart's pole
MIN_POLE_ANGLE_DEG = 60.0


def lorentz_centroid(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """The Lorentzian centroid of hyperboloid points ``x (N, d+1)`` (``−x₀² + |x_s|² = −1/c``):
    their sum rescaled back onto the hyperboloid, shape ``(d+1,)``."""
    s = x.sum(0)
    q = s[0] ** 2 - (s[1:] ** 2).sum()  # −⟨s, s⟩_L > 0 for a sum of points of the upper sheet
    return s / torch.sqrt(c * q)


def second_pole(avoid: torch.Tensor, pole: torch.Tensor, n_candidates: int = 4096, random_state: int = 0,
                min_angle_deg: float = MIN_POLE_ANGLE_DEG) -> torch.Tensor:
    """A pole for a second stereographic chart: among ``n_candidates`` seeded random unit vectors
    at least ``min_angle_deg`` from ``pole``, the one farthest (in angle) from every point of
    ``avoid (M, d+1)`` (the codes and curves that chart must represent)."""
    g = torch.Generator().manual_seed(int(random_state))
    cand = torch.nn.functional.normalize(torch.randn(n_candidates, pole.shape[0], generator=g, dtype=torch.float64), dim=1)
    p = pole.to(torch.float64)
    cand = cand[cand @ p <= math.cos(math.radians(min_angle_deg))]
    a = torch.nn.functional.normalize(avoid.to(torch.float64), dim=1)
    closest = (cand @ a.T).amax(1)  # cosine of the angle to the nearest point to avoid
    return cand[int(closest.argmin())]


def _class_pairs(labels, n_classes):
    classes = np.unique(np.asarray(labels))[: int(n_classes)]
    pairs = list(itertools.combinations(range(len(classes)), 2))
    return classes, pairs


def _solve(metric, codes, z0, z1, opts, tol):
    from ..geodesics import Collocation, connecting_geodesic
    from ..geodesics.graph import LatentGraph

    graph = LatentGraph(metric, codes, k=10, disconnected="bridge") if codes.shape[0] >= 20 else None
    solver = Collocation(max_iter=int(opts["manifold_max_iter"]), max_nodes=int(opts["manifold_max_nodes"]))
    return connecting_geodesic(metric, z0, z1, tol=tol, init="graph" if graph is not None else "line", graph=graph,
                               solver=solver, budget=opts["manifold_budget"], progress=False)


def _quad_length(metric, pts: torch.Tensor) -> torch.Tensor:
    """``Σ_k √(Δ_kᵀ G(m_k) Δ_k)`` of curves ``(P, Q, d)`` with the metric *tensor* at the chords'
    midpoints ``m_k`` (not the decoder's chord distances, which are the same in every chart by
    construction): the midpoint rule for ``∫ √(γ̇ᵀ G γ̇)``, so two charts agree only when their
    pullback tensors are related by the chart change's Jacobian."""
    p, q, d = pts.shape
    mid = 0.5 * (pts[:, 1:] + pts[:, :-1])
    dp = pts[:, 1:] - pts[:, :-1]
    g = metric.tensor(mid.reshape(-1, d)).reshape(p, q - 1, d, d)
    return torch.einsum("pki,pkij,pkj->pk", dp, g, dp).clamp_min(0).sqrt().sum(-1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> list:
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).cpu().tolist()


def _metric64(ctx: ReportContext, decoder_of):
    """(metric, dtype): the float64 copy's pullback metric through ``decoder_of(model)``."""
    from ..metric import PullbackMetric

    model64 = ctx.float64_model()
    model = model64 if model64 is not None else ctx.model
    return PullbackMetric(decoder_of(model)), (torch.float64 if model64 is not None else ctx.codes.dtype)


def _pair_colors(n):
    from ..plotting import label_colors

    return label_colors(n)


def _sphere(ctx: ReportContext, opts, tol) -> dict:
    from ..charts import StereographicChart

    chart1 = ctx.chart
    metric1, dt = _metric64(ctx, ctx.decoder_of)
    amb = ctx.ambient_codes.to(dt)
    lab = np.asarray(ctx.labels)
    classes, pairs = _class_pairs(lab, opts["manifold_classes"])
    if len(classes) < 2:
        return {"skipped": f"need at least 2 classes for class-centre geodesics, got {len(classes)}"}
    centres = torch.nn.functional.normalize(
        torch.stack([amb[torch.as_tensor(lab == c)].mean(0) for c in classes]), dim=1)
    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    codes1 = chart1.to_chart(amb)
    t0 = time.perf_counter()
    res1 = _solve(metric1, codes1, chart1.to_chart(centres[i]), chart1.to_chart(centres[j]), opts, tol)
    solve1_s = time.perf_counter() - t0

    tt = torch.linspace(0, 1, 2049, dtype=dt)
    with torch.no_grad():
        p1 = res1.curve(tt).detach()  # (P, Q, 2) in chart 1
        s1 = chart1.from_chart(p1)  # on S²
    avoid = torch.nn.functional.normalize(torch.cat([amb, s1.reshape(-1, s1.shape[-1])]), dim=1)
    pole2 = second_pole(avoid, chart1.pole, random_state=ctx.random_state)
    chart2 = StereographicChart(pole2)
    metric2, _ = _metric64(ctx, lambda m: chart2.decoder(m.decoder_for_analysis()))
    with torch.no_grad():
        len1 = _quad_length(metric1, p1[:, ::2])
        len2_same = _quad_length(metric2, chart2.to_chart(s1[:, ::2]))
    t0 = time.perf_counter()
    res2 = _solve(metric2, chart2.to_chart(amb), chart2.to_chart(centres[i]), chart2.to_chart(centres[j]), opts, tol)
    solve2_s = time.perf_counter() - t0
    with torch.no_grad():
        s2 = chart2.from_chart(res2.curve(tt).detach())
    both = (res1.converged & res2.converged).cpu()
    same = _rel(len2_same, len1)
    resolved = _rel(res2.length.detach(), res1.length.detach())
    great = torch.arccos((centres[i] * centres[j]).sum(1).clamp(-1, 1))
    p2_to_curves = float(torch.rad2deg(torch.arccos((avoid @ pole2).amax().clamp(-1, 1))))

    names = [(classes[a].item(), classes[b].item()) for a, b in pairs]
    if ctx.latent_dim == 2:
        _sphere_figure(ctx, amb, lab, s1, s2, chart1, names, res1, res2)
    tol_chk = float(opts["manifold_chart_rtol"])
    sel = both.numpy().astype(bool)
    return {
        "manifold": "sphere",
        "pairs": [list(p) for p in names],
        "centres": centres.cpu().tolist(),
        "geodesic_length": res1.length.detach().cpu().tolist(),
        "great_circle_distance": great.cpu().tolist(),
        "converged": res1.converged.cpu().tolist(),
        "status": [s_.name for s_ in _statuses(res1)],
        "second_chart": {"pole": pole2.tolist(), "angle_to_report_pole_deg":
                         float(torch.rad2deg(torch.arccos((pole2 @ chart1.pole.to(pole2)).clamp(-1, 1)))),
                         "min_angle_to_codes_and_curves_deg": p2_to_curves},
        "same_curve_length_chart2": len2_same.cpu().tolist(),
        "same_curve_length_chart1": len1.cpu().tolist(),
        "same_curve_rel_diff": same,
        "resolved_length_chart2": res2.length.detach().cpu().tolist(),
        "resolved_converged": res2.converged.cpu().tolist(),
        "resolved_rel_diff": resolved,
        "chart_rtol": tol_chk,
        "chart_independent": bool(max(same) <= tol_chk and all(r <= tol_chk for r, ok in zip(resolved, sel) if ok)
                                  and sel.any()),
        "tol": tol,
        "solve_s": solve1_s,
        "solve_chart2_s": solve2_s,
        "definition": "geodesics between normalised class-mean codes under the decoder's pullback metric, solved "
                      "in the report's stereographic chart; same_curve: those curves' length by the midpoint rule "
                      "with the metric tensor (1025 points) in each chart; resolved: the geodesics solved again in the second chart",
    }


def _statuses(res):
    from ..geodesics import GeodesicStatus

    return [GeodesicStatus(int(s)) for s in res.status.tolist()]


def _sphere_figure(ctx, amb, lab, s1, s2, chart1, names, res1, res2):
    from ..plotting import label_colors, scatter_codes

    fig = _figure((11.6, 5.9))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d", computed_zorder=False)
    ax2 = fig.add_subplot(1, 2, 2)
    a = amb.cpu().numpy()
    m = a.mean(0)
    m = m / np.linalg.norm(m)
    # a light wireframe of S², seen from the codes' mean direction
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 37), np.linspace(0, np.pi, 19))
    ax3.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.75", lw=0.4, alpha=0.5)
    # mplot3d does not hide what lies behind the sphere: draw the far hemisphere faded
    front = a @ m >= 0
    classes = np.unique(lab)
    for c, col in zip(classes, label_colors(len(classes))):
        for vis, alpha in ((False, 0.15), (True, 1.0)):
            sel = (lab == c) & (front == vis)
            ax3.scatter(a[sel, 0], a[sel, 1], a[sel, 2], color=col, s=6, depthshade=False, alpha=alpha,
                        zorder=3 if vis else 1)
    cols = ["k", "0.35", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]
    lines = []

    def split(cur, vis):
        out = cur.copy()
        out[(cur @ m >= 0) != vis] = np.nan
        return out

    for k, (nm, cur, cur2) in enumerate(zip(names, s1.cpu().numpy(), s2.cpu().numpy())):
        col = cols[k % len(cols)]
        b = split(cur, False)
        ax3.plot(b[:, 0], b[:, 1], b[:, 2], color=col, lw=1.2, alpha=0.3, zorder=2)
        f, f2 = split(cur, True), split(cur2, True)
        lines += ax3.plot(f[:, 0], f[:, 1], f[:, 2], color=col, lw=2.2, label=f"{nm[0]} → {nm[1]}", zorder=5)
        ax3.plot(f2[:, 0], f2[:, 1], f2[:, 2], color="white", lw=0.8, ls="--", zorder=6)
    ax3.view_init(elev=float(np.degrees(np.arcsin(np.clip(m[2], -1, 1)))), azim=float(np.degrees(np.arctan2(m[1], m[0]))))
    ax3.set_box_aspect((1, 1, 1))
    for lim in (ax3.set_xlim, ax3.set_ylim, ax3.set_zlim):
        lim(-1, 1)
    ax3.set_axis_off()  # the wireframe is the reference; ticks on a 3-D box only clutter
    for k in range(3):  # the axes' directions, as short labelled arrows from the centre
        e = np.eye(3)[k]
        ax3.plot(*[[0, 1.25 * e[n]] for n in range(3)], color="0.5", lw=0.8)
        ax3.text(*(1.33 * e), f"$x_{k + 1}$", color="0.4", fontsize=8)
    ax3.set_title("Codes on S² and class-centre geodesics\n(seen from the codes' mean direction; the far side faded)", fontsize=10)
    ax3.legend(handles=lines, loc="lower left", fontsize=7, title="geodesic", title_fontsize=7)

    y = chart1.to_chart(amb).cpu().numpy()
    scatter_codes(ax2, y, lab, legend_title="digit" if ctx.name == "digits" else "label")
    c2 = chart1.to_chart(s2)
    for k, (cur, cur2) in enumerate(zip(chart1.to_chart(s1).cpu().numpy(), c2.cpu().numpy())):
        col = cols[k % len(cols)]
        ax2.plot(cur[:, 0], cur[:, 1], color=col, lw=2.2, zorder=4)
        ax2.plot(cur2[:, 0], cur2[:, 1], color="white", lw=0.8, ls="--", zorder=5)
        ax2.plot(cur[[0, -1], 0], cur[[0, -1], 1], "*", color=col, mec="white", mew=0.5, ms=10, zorder=6)
    x0, x1, y0, y1 = ctx.extent
    ax2.set_xlim(x0, x1)
    ax2.set_ylim(y0, y1)
    ax2.set_aspect("equal")
    ax2.set_xlabel("$y_1$")
    ax2.set_ylabel("$y_2$")
    ax2.set_title("Stereographic chart (pole opposite the mean)\nsolid: solved here; dashed: solved in a second chart",
                  fontsize=10)
    ctx.save_figure(fig, "sphere.png")


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _mobius_geodesic(a: torch.Tensor, b: torch.Tensor, c: float, n: int = 200) -> torch.Tensor:
    """The hyperbolic geodesic ``a → b`` in the Poincaré ball (``a ⊕ t ⊗ (−a ⊕ b)``), ``(n, d)``."""

    def add(x, y):
        xy, x2, y2 = (x * y).sum(-1, keepdim=True), (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
        return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)

    v = add(-a, b)
    nv = v.norm().clamp_min(1e-300)
    t = torch.linspace(0, 1, n, dtype=a.dtype)[:, None]
    sc = math.sqrt(c)
    w = torch.tanh(t * torch.atanh((sc * nv).clamp(max=1 - 1e-15))) * v / (sc * nv)
    return add(a.expand_as(w), w)


def _hyperbolic(ctx: ReportContext, opts, tol) -> dict:
    chart = ctx.chart
    metric, dt = _metric64(ctx, ctx.decoder_of)
    amb = ctx.ambient_codes.to(dt)
    lab = np.asarray(ctx.labels)
    classes, pairs = _class_pairs(lab, opts["manifold_classes"])
    if len(classes) < 2:
        return {"skipped": f"need at least 2 classes for class-centre geodesics, got {len(classes)}"}
    centres = torch.stack([lorentz_centroid(amb[torch.as_tensor(lab == c)], chart.c) for c in classes])
    cb = chart.to_ball(centres)
    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    codes = chart.to_ball(amb)
    t0 = time.perf_counter()
    res = _solve(metric, codes, cb[i], cb[j], opts, tol)
    solve_s = time.perf_counter() - t0
    tt = torch.linspace(0, 1, 513, dtype=dt)
    with torch.no_grad():
        curves = res.curve(tt).detach()
    hyp = chart.dist(cb[i], cb[j])
    names = [(classes[a].item(), classes[b].item()) for a, b in pairs]
    arcs = [_mobius_geodesic(cb[a], cb[b], chart.c) for a, b in zip(i.tolist(), j.tolist())]
    if ctx.latent_dim == 2:
        _poincare_figure(ctx, codes, lab, curves, arcs, names, chart)
    return {
        "manifold": "hyperbolic",
        "pairs": [list(p) for p in names],
        "centres_ball": cb.cpu().tolist(),
        "geodesic_length": res.length.detach().cpu().tolist(),
        "hyperbolic_distance": hyp.cpu().tolist(),
        "length_over_hyperbolic": (res.length.detach() / hyp).cpu().tolist(),
        "converged": res.converged.cpu().tolist(),
        "status": [s_.name for s_ in _statuses(res)],
        "max_curve_radius": float(curves.norm(dim=-1).max() * math.sqrt(chart.c)),
        "tol": tol,
        "solve_s": solve_s,
        "definition": "geodesics between Lorentzian centroids of the classes' hyperboloid codes under the decoder's "
                      "pullback metric, solved in the Poincaré ball; hyperbolic_distance: the latent's own distance "
                      "(curvature −c) between the same centres",
    }


def _poincare_figure(ctx, codes, lab, curves, arcs, names, chart):
    from ..plotting import scatter_codes

    fig = _figure((11.6, 5.6))
    axes = fig.subplots(1, 2)
    r = 1.0 / math.sqrt(chart.c)
    t = np.linspace(0, 2 * np.pi, 400)
    z = codes.cpu().numpy()
    cols = ["k", "0.35", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]
    for n_ax, ax in enumerate(axes):
        ax.plot(r * np.cos(t), r * np.sin(t), color="0.2", lw=1.0)
        scatter_codes(ax, z, lab, legend=n_ax == 1, legend_title="digit" if ctx.name == "digits" else "label",
                      size=6 if n_ax == 0 else None)
        lines = []
        for k, (nm, cur, arc) in enumerate(zip(names, curves.cpu().numpy(), arcs)):
            col = cols[k % len(cols)]
            lines += ax.plot(cur[:, 0], cur[:, 1], color=col, lw=1.6, zorder=4, label=f"{nm[0]} → {nm[1]}")
            a = arc.cpu().numpy()
            ax.plot(a[:, 0], a[:, 1], color=col, lw=1.0, ls=":", zorder=4)
        ax.set_aspect("equal")
        ax.set_xlabel("$y_1$")
        ax.set_ylabel("$y_2$")
        if n_ax == 0:
            ax.set_xlim(-1.05 * r, 1.05 * r)
            ax.set_ylim(-1.05 * r, 1.05 * r)
            ax.set_title("Codes in the Poincaré disk\nsolid: pullback geodesics; dotted: hyperbolic", fontsize=10)
            ax.legend(handles=lines, loc="lower left", fontsize=7, title="geodesic", title_fontsize=7)
        else:
            x0, x1, y0, y1 = ctx.extent
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_title("Close-up of the codes", fontsize=10)
    ctx.save_figure(fig, "poincare.png")


def manifold_section(ctx: ReportContext) -> dict:
    kind = ctx.chart_kind
    if kind is None:
        return {"skipped": "the codes are flat (a Euclidean latent or a decoder and codes); nothing to map back"}
    if ctx.latent_dim != 2:
        return {"skipped": f"the manifold figures need a 2-D manifold (S² or H²), the model's is {ctx.latent_dim}-D"}
    if ctx.labels is None:
        return {"skipped": "the data set has no labels, so there are no class centres"}
    opts = ctx.options
    tol = opts["manifold_tol"]
    tol = float(tol if tol is not None else 1e-6)
    out = _sphere(ctx, opts, tol) if kind == "stereographic" else _hyperbolic(ctx, opts, tol)
    out["chart"] = kind
    return out


SECTION = ReportSection(
    "manifold", manifold_section, order=75,
    description="sphere.png / poincare.png: the codes on S² or in the Poincaré disk, class-centre geodesics mapped "
                "back from the chart, their lengths and (sphere) the same lengths through a second pole",
    defaults={
        "manifold_classes": 4,  # class centres of the first classes in sorted order
        "manifold_tol": None,  # None: 1e-6 (solved on a float64 copy of the model)
        "manifold_max_iter": 20,
        "manifold_max_nodes": 512,
        "manifold_budget": 1.0,  # seconds per pair
        "manifold_chart_rtol": 1e-4,  # lengths through the two poles must agree to this (chart_independent)
    },
)
