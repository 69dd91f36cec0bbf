"""Figures for geodesics: curves over the magnification map, decoded image strips along curves.

* :func:`plot_geodesics` draws connecting geodesics over the heat map of the magnification
  factor ``√det M(z)`` with the straight lines between the same endpoints (dashed, same
  colour), so one sees where the geodesics bend around regions of large metric.
* :func:`plot_decoded_strips` shows what the decoder produces along curves: one row of
  decoded images per curve at evenly spaced times, geodesic and straight line of a pair on
  consecutive rows.

Both take an optional ``ax``/``fig`` and return what they drew on; nothing calls
``plt.show()``, so they work headless and in notebooks.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.geodesics.plotting import plot_geodesics
    >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: torch.tanh(z @ A.T)))
    >>> t = torch.linspace(0, 1, 20)[:, None]
    >>> curves = torch.stack([t * torch.tensor([1.0, 1.0]) - 0.5, t * torch.tensor([1.0, -1.0])])
    >>> ax = plot_geodesics(metric, curves, extent=(-1, 1, -1, 1), resolution=16)
    >>> len(ax.lines)    # 2 geodesics + 2 dashed straight lines
    4
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

__all__ = ["plot_geodesics", "plot_decoded_strips", "curve_points"]


def curve_points(curves, n_points: int = 200) -> torch.Tensor:
    """Points ``(N, n_points, d)`` of a :class:`~latentgeo.geodesics.GeodesicResult` (its
    ``curve(t)`` at evenly spaced ``t``) or of curves given as ``(N, T, d)``/``(T, d)`` arrays
    (returned as they are)."""
    if hasattr(curves, "curve") and callable(curves.curve):
        z0 = curves.z0
        return curves.curve(torch.linspace(0, 1, int(n_points), dtype=z0.dtype, device=z0.device)).detach()
    c = curves if isinstance(curves, torch.Tensor) else torch.as_tensor(np.asarray(curves))
    if c.dim() == 2:
        c = c[None]
    if c.dim() != 3 or c.shape[1] < 2:
        raise ValueError(f"curves must have shape (T, d) or (N, T, d) with T >= 2, got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ValueError("curves contain NaN/inf")
    return c.detach()


def _colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_geodesics(
    metric,
    curves,
    *,
    straight: bool = True,
    ax=None,
    extent=None,
    resolution: int = 150,
    codes=None,
    labels=None,
    colors: Optional[Sequence] = None,
    names: Optional[Sequence[str]] = None,
    converged=None,
    endpoint_colors: Optional[Sequence] = None,
    background: bool = True,
    title: Optional[str] = "Geodesics (solid) and straight lines (dashed)",
    n_points: int = 200,
):
    """Geodesics over the magnification heat map, next to the straight lines.

    Args:
        metric: the :class:`~latentgeo.metric.Metric` of a 2-D latent space.
        curves: a :class:`~latentgeo.geodesics.GeodesicResult` or curves ``(N, T, 2)``.
        straight: also draw the straight segment between each pair's endpoints (dashed).
        ax: Axes to draw on; with ``background=True`` and no ``ax`` the heat map is drawn
            first by :func:`latentgeo.plotting.plot_magnification`.
        extent: ``(xmin, xmax, ymin, ymax)`` of the map; default: the curves' bounding box
            (and ``codes``) padded by 10 %.
        resolution, codes, labels: passed to :func:`~latentgeo.plotting.plot_magnification`.
        colors: one colour per curve (default: ``tab10``).
        names: legend entries per curve (e.g. ``"3 → 8"``).
        converged: ``(N,)`` bool; uncertified curves are drawn thin, crossed by red ``×`` marks
            along their length, and say "NOT certified" (with the status name) in the legend
            (default: ``curves.converged`` for a result object).
        endpoint_colors: per curve a pair ``(colour at z0, colour at z1)`` for the endpoint
            markers (e.g. the colours of the endpoints' classes; default: the curve's colour).
        background: draw the magnification map (when no ``ax`` is given).
        n_points: points at which a result object's curves are evaluated.

    Returns:
        the Axes.
    """
    from ..plotting import plot_magnification

    pts = curve_points(curves, n_points)
    if pts.shape[-1] != 2:
        raise ValueError(f"geodesic plots need a 2-D latent space, got curves in {pts.shape[-1]} dimensions")
    n = pts.shape[0]
    if converged is None and hasattr(curves, "converged"):
        converged = curves.converged
    conv = np.ones(n, dtype=bool) if converged is None else np.asarray(torch.as_tensor(converged).cpu(), dtype=bool).reshape(-1)
    if conv.shape[0] != n:
        raise ValueError(f"converged has {conv.shape[0]} entries for {n} curves")
    colors = list(colors) if colors is not None else _colors(n)
    if len(colors) < n:
        raise ValueError(f"{len(colors)} colours for {n} curves")
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} names for {n} curves")
    if endpoint_colors is not None and len(endpoint_colors) != n:
        raise ValueError(f"{len(endpoint_colors)} endpoint colour pairs for {n} curves")
    status = getattr(curves, "status", None)
    arr = pts.cpu().double().numpy()
    if extent is None:
        allp = arr.reshape(-1, 2)
        if codes is not None:
            allp = np.concatenate([allp, np.asarray(torch.as_tensor(codes).detach().cpu().double()).reshape(-1, 2)])
        lo, hi = allp.min(0), allp.max(0)
        pad = 0.1 * np.maximum(hi - lo, 1e-6)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    if ax is None and background:
        ax = plot_magnification(metric, extent=extent, resolution=resolution, codes=codes, labels=labels, title=title)
    elif ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6.0, 5.0), layout="constrained")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        if title:
            ax.set_title(title)
    from matplotlib import patheffects

    keep = bool(ax.images)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    halo = [patheffects.Stroke(linewidth=4.2, foreground="white", alpha=0.8), patheffects.Normal()]
    handles = []
    for i in range(n):
        why = ""
        if not conv[i]:
            why = " (NOT certified" + ("" if status is None else f": {int(status[i])} {_status_name(int(status[i]))}") + ")"
        label = None if names is None else names[i] + why
        if conv[i]:
            (ln,) = ax.plot(arr[i, :, 0], arr[i, :, 1], color=colors[i], lw=2.4, ls="-", label=label, zorder=5,
                            path_effects=halo)
        else:
            # unmistakable: a thin solid line crossed by red × marks (never dotted or dashed, which
            # would resemble the straight lines)
            every = max(1, arr.shape[1] // 12)
            (ln,) = ax.plot(arr[i, :, 0], arr[i, :, 1], color=colors[i], lw=1.3, ls="-", marker="x", markersize=7,
                            markeredgewidth=2.0, markeredgecolor="red", markevery=every, label=label, zorder=5,
                            path_effects=halo)
        handles.append(ln)
        if straight:
            ax.plot(arr[i, [0, -1], 0], arr[i, [0, -1], 1], color=colors[i], lw=1.4, ls="--", alpha=0.95, zorder=4,
                    path_effects=halo)
        ends = (colors[i], colors[i]) if endpoint_colors is None else endpoint_colors[i]
        ax.scatter(arr[i, [0, -1], 0], arr[i, [0, -1], 1], color=list(ends), s=34, edgecolors="black", linewidths=0.8,
                   zorder=6)
    if keep:
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
    if names is not None:
        old = ax.get_legend()
        if old is not None:
            ax.add_artist(old)  # keep e.g. the codes' legend
        ax.legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.85, title="geodesics")
    return ax


def _status_name(code: int) -> str:
    from .result import GeodesicStatus

    try:
        return GeodesicStatus(code).name
    except ValueError:
        return "unknown"


def _item_shape(x: np.ndarray, item_shape):
    if item_shape is not None:
        return tuple(int(s) for s in item_shape)
    if x.ndim == 3:
        return x.shape[1:]
    side = int(round(np.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        raise ValueError(f"cannot infer a square image shape from {x.shape[1]} values; pass item_shape=(H, W)")
    return (side, side)


def plot_decoded_strips(
    decode_fn: Callable,
    curves,
    *,
    n_images: int = 10,
    item_shape: Optional[Sequence[int]] = None,
    row_labels: Optional[Sequence[str]] = None,
    fig=None,
    cmap: str = "gray",
    clip: Optional[tuple] = (0.0, 1.0),
    title: Optional[str] = None,
    failed=None,
):
    """Rows of decoded images along curves.

    Args:
        decode_fn: ``z (N, d) -> x (N, ...)`` (e.g. the decoder mean), or a latentgeo
            :class:`~latentgeo.decoders.Decoder` (its distribution's mean is shown).
        curves: a result object or curves ``(R, T, d)``; each row shows ``n_images`` points at
            evenly spaced ``t`` (for a polyline: evenly spaced samples ``c[round(t·(T−1))]``).
        n_images: images per row.
        item_shape: ``(H, W)`` of one image (default: inferred square).
        row_labels: one label per row (drawn at the left).
        clip: value range shown (``None``: the decoded range).
        failed: ``(R,)`` bool: rows whose curve is not a certified geodesic get a red frame and
            "✗ not certified" after their label.

    Returns:
        the Figure (one image per row in ``fig.axes``).
    """
    import matplotlib.pyplot as plt

    if int(n_images) != n_images or n_images < 2:
        raise ValueError(f"n_images must be an integer >= 2, got {n_images!r}")
    n_images = int(n_images)
    if hasattr(curves, "curve") and callable(curves.curve):
        pts = curve_points(curves, n_images)
    else:
        c = curve_points(curves)
        idx = torch.round(torch.linspace(0, c.shape[1] - 1, n_images)).long()
        pts = c[:, idx]
    rows = pts.shape[0]
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} curves")
    bad = np.zeros(rows, dtype=bool) if failed is None else np.asarray(torch.as_tensor(failed).cpu(), dtype=bool).reshape(-1)
    if bad.shape[0] != rows:
        raise ValueError(f"failed has {bad.shape[0]} entries for {rows} rows")
    flat = pts.reshape(-1, pts.shape[-1])
    with torch.no_grad():
        if hasattr(decode_fn, "distribution") and callable(decode_fn.distribution):
            x = decode_fn.distribution(flat).mean
        elif callable(decode_fn):
            x = decode_fn(flat)
        else:
            raise ValueError(f"decode_fn must be callable, got {type(decode_fn).__name__}")
    x = np.asarray(torch.as_tensor(x).detach().cpu().double())
    if x.shape[0] != flat.shape[0]:
        raise ValueError(f"decode_fn returned {x.shape[0]} items for {flat.shape[0]} latent points")
    x = x.reshape(x.shape[0], -1) if x.ndim != 3 else x
    h, w = _item_shape(x, item_shape)
    imgs = x.reshape(rows, n_images, h, w)
    gap = 1
    strip = np.full((rows, h, n_images * (w + gap) - gap), np.nan)
    for j in range(n_images):
        strip[:, :, j * (w + gap) : j * (w + gap) + w] = imgs[:, j]
    if clip is not None:
        strip = np.clip(strip, *clip)
    if fig is None:
        fig = plt.figure(figsize=(max(4.0, 0.55 * n_images + 1.2), 0.62 * rows + (0.5 if title else 0.2)), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    vmin, vmax = (clip if clip is not None else (np.nanmin(strip), np.nanmax(strip)))
    cm = plt.get_cmap(cmap).with_extremes(bad="white")
    for r, ax in enumerate(axes):
        ax.imshow(strip[r], cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(bool(bad[r]))
            if bad[r]:
                s.set_edgecolor("red")
                s.set_linewidth(2.0)
        if row_labels is not None:
            lab = row_labels[r] + ("  ✗ not certified" if bad[r] else "")
            ax.set_ylabel(lab, rotation=0, ha="right", va="center", fontsize="small", color="red" if bad[r] else "black")
    if title:
        fig.suptitle(title)
    return fig
