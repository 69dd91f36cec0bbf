"""Report section ``magnification``: magnification.png: √det M heat map, on/off-data statistics."""

from __future__ import annotations

import math

import numpy as np
import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


def _nearest_distance(points: torch.Tensor, codes: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Distance of each point ``(M, d)`` to its nearest code ``(N, d)``, chunked ``(M,)``."""
    out = [torch.cdist(points[s : s + chunk_size], codes).amin(1) for s in range(0, points.shape[0], chunk_size)]
    return torch.cat(out)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    return {
        "n": int(x.size),
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "q05": float(np.quantile(x, 0.05)),
        "q95": float(np.quantile(x, 0.95)),
        "min": float(x.min()),
        "max": float(x.max()),
    }


#: distance bands (fractions of the codes' bounding-box diagonal, distance to the nearest code)
#: for the magnification profile; "near" is where a post-hoc RBF variance rises, "far" beyond
MAGNIFICATION_BANDS = {"on": (0.0, 0.02), "near": (0.02, 0.15), "far": (0.15, math.inf)}


def _section_magnification(ctx: ReportContext) -> dict:
    """Heat map, and √det M at the codes vs on grid points at growing distance from them.

    ``on_data``: at the codes themselves. ``near_data`` / ``far_from_data``: at grid points
    whose distance to the nearest code is in the ``"near"`` / ``"far"`` band of
    :data:`MAGNIFICATION_BANDS` (fractions of the codes' bounding-box diagonal), and
    ``profile``: the median in finer bands. With the RBF variance the expected metric is
    large in a halo around the data (where σ rises) and small again far away, where σ has
    saturated at its far value and the decoder is nearly constant (``J → 0``).
    """
    if ctx.latent_dim != 2:
        return {"skipped": f"the heat map needs a 2-D latent space; this model's is {ctx.latent_dim}-D"}
    kind = getattr(ctx.metric, "kind", None)
    kind_name = {"expected": "expected metric", "fisher": "Fisher–Rao metric", "mean": "mean-only metric"}.get(
        kind, f"{kind} metric" if kind else "metric"
    )
    fig, ax = ctx.magnification_figure(
        title=f"Magnification factor √det M(z) — {ctx.name}, {kind_name}"
    )
    ctx.save_figure(fig, "magnification.png")
    codes = ctx.codes
    with torch.no_grad():
        on = ctx.metric.magnification(codes).cpu().numpy()
    mag, xs, ys = ctx.magnification_grid
    gx, gy = np.meshgrid(xs, ys)
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=codes.dtype)
    diag = float((codes.amax(0) - codes.amin(0)).norm())
    rel = _nearest_distance(grid, codes.cpu()).numpy() / max(diag, 1e-300)
    flat = mag.ravel()
    finite = np.isfinite(flat)  # NaN: outside the Poincaré disk (not evaluated)

    def band(lo, hi):
        sel = (rel >= lo) & (rel < hi) & finite
        return _stats(flat[sel]) if sel.any() else None

    near = band(*MAGNIFICATION_BANDS["near"])
    far = band(*MAGNIFICATION_BANDS["far"])
    edges = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, math.inf]
    profile = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = band(lo, hi)
        if b is not None:
            profile.append({"from": lo, "to": hi if math.isfinite(hi) else None, "n": b["n"], "median": b["median"]})
    med = float(np.median(on))
    return {
        "metric": repr(ctx.metric),
        "extent": list(ctx.extent),
        "resolution": int(len(xs)),
        "distance_unit": diag,
        "bands": {k: [lo, hi if math.isfinite(hi) else None] for k, (lo, hi) in MAGNIFICATION_BANDS.items()},
        "on_data": _stats(on),
        "near_data": near,
        "far_from_data": far,
        "near_on_median_ratio": None if near is None else near["median"] / med,
        "far_on_median_ratio": None if far is None else far["median"] / med,
        "profile": profile,
        "definition": "√det M at the codes (on_data) and at grid points whose distance to the nearest code, "
        "in units of the codes' bounding-box diagonal (distance_unit), lies in the near/far bands",
    }


SECTION = ReportSection(
    "magnification", _section_magnification, order=30, description="magnification.png: √det M heat map, on/off-data statistics",
    defaults={},
)
