"""Matplotlib figures for latent spaces: magnification maps, decoded-image grids, curves.

Every function takes an optional ``ax`` (a new figure is made with :mod:`matplotlib.pyplot`
when it is ``None``) and returns the Axes it drew on, so figures compose::

    ax = plot_magnification(metric, codes=z, labels=y)          # heat map of √det M + codes
    plot_curves(geodesic_points, ax=ax, color="white")           # curves (N, T, 2) on top
    ax.figure.savefig("map.png")

Nothing here calls ``plt.show()`` or selects a backend, so the functions work headless
(Agg) and in notebooks alike. All latent-space maps are for 2-D latent spaces.

The magnification factor ``√det M(z)`` (Bishop, Svensén & Williams, *Magnification factors
for the SOM and GTM algorithms*, 1997) is the local volume change of the decoder; with the
expected metric of a decoder whose variance grows away from the data (Arvanitidis, Hansen &
Hauberg, *Latent Space Oddity*, ICLR 2018, Fig. 1) it is *not* simply "small on the data and
large off it": the RBF σ rises from the data to a plateau (``far_std``), so its Jacobian — what
the metric sees — is largest in a band just outside the data and vanishes far away. The map
shows a bright ring around the data, moderate values on it and small values far from it
(the demo VAE: median 4.7 on the data, 9.7 near it, 0.33 far from it).

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.plotting import plot_magnification
    >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: torch.tanh(z @ A.T)))
    >>> ax = plot_magnification(metric, extent=(-2, 2, -2, 2), resolution=20)
    >>> ax.images[0].get_array().shape
    (20, 20)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = [
    "default_extent",
    "label_colors",
    "scatter_codes",
    "history_records",
    "latent_grid",
    "magnification_grid",
    "plot_magnification",
    "plot_image_grid",
    "plot_training_curves",
    "plot_curves",
    "plot_decoded_strip",
]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _new_ax(ax, figsize=(6.0, 5.0)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers, got {type(x).__name__}") from exc
    return arr


def _codes_2d(codes, name: str = "codes") -> np.ndarray:
    arr = _to_numpy(codes, name)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 1 (a 2-D latent space), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/inf")
    return arr


def _check_extent(extent) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in extent)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax), got {extent!r}") from exc
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"extent must be four finite numbers (xmin, xmax, ymin, ymax), got {extent!r}")
    xmin, xmax, ymin, ymax = vals
    if not (xmin < xmax and ymin < ymax):
        raise ValueError(f"extent needs xmin < xmax and ymin < ymax, got {extent!r}")
    return vals


def default_extent(codes, margin: float = 0.1, min_aspect: float = 0.0) -> tuple[float, float, float, float]:
    """The bounding box of ``codes`` ``(N, 2)`` padded by ``margin`` × its span on each side.

    A degenerate span (all codes on a line or one point) is padded by ``max(margin, 0.5)``
    in absolute units so the box has positive area. ``min_aspect`` in ``[0, 1]``: widen the
    shorter side (about its centre) to at least ``min_aspect`` × the longer one (``1``: a
    square, good for equal-aspect maps of elongated code clouds).
    """
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite non-negative number, got {margin!r}")
    if not (0.0 <= min_aspect <= 1.0):
        raise ValueError(f"min_aspect must be in [0, 1], got {min_aspect!r}")
    arr = _codes_2d(codes)
    lo, hi = arr.min(0), arr.max(0)
    span = hi - lo
    pad = np.where(span > 0, margin * span, max(margin, 0.5))
    lo, hi = lo - pad, hi + pad
    side = hi - lo
    need = min_aspect * side.max()
    grow = np.maximum(need - side, 0.0) / 2
    lo, hi = lo - grow, hi + grow
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def latent_grid(extent, resolution: int, dtype=None, device=None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Points of a ``resolution × resolution`` grid over ``extent``.

    Returns ``(z, xs, ys)`` with ``z`` of shape ``(resolution², 2)`` in row-major image order
    (row ``i`` ↔ ``ys[i]``, column ``j`` ↔ ``xs[j]``; ``z[i*R + j] = (xs[j], ys[i])``).
    """
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    resolution = int(resolution)
    xmin, xmax, ymin, ymax = _check_extent(extent)
    xs = np.linspace(xmin, xmax, resolution)
    ys = np.linspace(ymin, ymax, resolution)
    gx, gy = np.meshgrid(xs, ys)  # (R, R), gy varies along rows
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    z = torch.as_tensor(pts, dtype=dtype or torch.get_default_dtype(), device=device)
    return z, xs, ys


def _metric_dtype_device(metric, codes):
    """dtype/device for grid points: the codes' if a tensor, else the decoder parameters'."""
    if isinstance(codes, torch.Tensor) and torch.is_floating_point(codes):
        return codes.dtype, codes.device
    return _decoder_dtype_device(getattr(metric, "decoder", None))


def _as_decode_fn(decode_fn, dtype, device):
    """``(callable z -> mean image, dtype, device)`` from a latentgeo Decoder or a callable."""
    from .decoders import Decoder

    if isinstance(decode_fn, Decoder):
        dec = decode_fn
        if dtype is None or device is None:
            d0, dev0 = _decoder_dtype_device(dec)
            dtype, device = dtype or d0, device or dev0
        return (lambda z: dec.distribution(z).mean), dtype, device
    if not callable(decode_fn):
        raise ValueError(f"decode_fn must be callable or a latentgeo Decoder, got {type(decode_fn).__name__}")
    return decode_fn, dtype, device


def _decoder_dtype_device(dec):
    """dtype/device of a latentgeo decoder's first parameter (or floating buffer)."""
    if dec is not None and hasattr(dec, "_modules"):
        for m in dec._modules():
            p = next(iter(m.parameters()), None)
            if p is not None:
                return p.dtype, p.device
            b = next(iter(m.buffers()), None)
            if b is not None and torch.is_floating_point(b):
                return b.dtype, b.device
    return torch.get_default_dtype(), torch.device("cpu")


def magnification_grid(
    metric,
    extent,
    resolution: int = 150,
    *,
    chunk_size: int = 16384,
    dtype=None,
    device=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``√det M`` on a grid: returns ``(mag (R, R), xs (R,), ys (R,))``, ``mag[i, j]`` at ``(xs[j], ys[i])``.

    One batched :meth:`~latentgeo.metric.Metric.magnification` call per chunk of
    ``chunk_size`` grid points (the metric chunks its Jacobians further).
    """
    if getattr(metric, "latent_dim", None) not in (None, 2):
        raise ValueError(f"magnification maps need a 2-D latent space; the metric has latent_dim={metric.latent_dim}")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if dtype is None or device is None:
        d0, dev0 = _metric_dtype_device(metric, None)
        dtype, device = dtype or d0, device or dev0
    z, xs, ys = latent_grid(extent, resolution, dtype=dtype, device=device)
    with torch.no_grad():
        mag = torch.cat([metric.magnification(z[s : s + chunk_size]).detach() for s in range(0, z.shape[0], chunk_size)])
    r = len(xs)
    return mag.cpu().numpy().reshape(r, r), xs, ys


def _label_colors(n: int):
    """Qualitative colours: tab10 with its grey replaced by black (grey vanishes on grey maps)."""
    import matplotlib

    if n <= 10:
        cols = list(matplotlib.colormaps["tab10"].colors)
        cols[7] = (0.0, 0.0, 0.0)
        return cols[:n]
    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def label_colors(n: int) -> list:
    """The ``n`` colours :func:`scatter_codes` gives classes, in sorted-label order (tab10 with
    black for its grey; tab20 beyond ten classes), for figures that draw the codes themselves."""
    return list(_label_colors(int(n)))


def scatter_codes(ax, codes: np.ndarray, labels=None, size=None, legend=True, label_names=None,
                   legend_title="label", **kw):
    size = size if size is not None else max(5.0, min(14.0, 4000.0 / len(codes)))
    many = len(codes) > 500
    style = dict(s=size, linewidths=0.15 if many else 0.3, edgecolors="white", alpha=0.9, zorder=3)
    style.update(kw)
    if labels is None:
        style.setdefault("color", "tab:red")
        ax.scatter(codes[:, 0], codes[:, 1], label="codes", **style)
        return
    lab = _to_numpy(labels, "labels").reshape(-1) if not isinstance(labels, (list, tuple)) else np.asarray(labels)
    if lab.shape[0] != codes.shape[0]:
        raise ValueError(f"labels has {lab.shape[0]} entries but codes has {codes.shape[0]} rows")
    classes = np.unique(lab)
    for c, color in zip(classes, _label_colors(len(classes))):
        sel = lab == c
        name = label_names[c] if label_names is not None else (str(int(c)) if float(c).is_integer() else str(c))
        ax.scatter(codes[sel, 0], codes[sel, 1], color=color, label=name, **style)
    if legend:
        ax.legend(
            title=legend_title,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            ncols=max(1, math.ceil(len(classes) / 12)),
            columnspacing=0.5,
            handletextpad=0.1,
            fontsize="small" if len(classes) <= 12 else "x-small",
            markerscale=max(1.0, (30.0 / size) ** 0.5),
            frameon=False,
        )


# ------------------------------------------------------------------------------------------
# public plots
# ------------------------------------------------------------------------------------------
def _log_colorbar_ticks(cb, vmin: float, vmax: float, horizontal: bool = False) -> None:
    """Readable ticks on a log colour bar: labels at a few values only, never overlapping.

    Matplotlib labels the minor ticks of a log axis spanning less than about a decade
    (``2×10⁰, 3×10⁰, …``), which on a short (horizontal) colour bar overlap. Here: decades when
    the range spans several, else three to four rounded values spaced evenly in log.
    """
    from matplotlib.ticker import LogLocator, NullFormatter, NullLocator

    n = 4 if horizontal else 6
    decades = math.log10(vmax / vmin) if vmax > vmin > 0 else 0.0
    cb.ax.minorticks_off()
    axis = cb.ax.xaxis if cb.orientation == "horizontal" else cb.ax.yaxis
    if decades >= 2:
        cb.locator = LogLocator(base=10, numticks=n)
        cb.update_ticks()
    else:
        raw = np.geomspace(vmin, vmax, 5 if horizontal else 6)[1:-1]  # interior: inside the bar
        for digits in (2, 3, 4):
            ticks = sorted({float(f"{t:.{digits}g}") for t in raw})
            if len(ticks) == len(raw):
                break
        cb.set_ticks(ticks, labels=[f"{t:.{digits}g}" for t in ticks])
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def plot_magnification(
    metric,
    extent=None,
    resolution: int = 150,
    codes=None,
    labels=None,
    ax=None,
    log: bool = True,
    *,
    margin: float = 0.1,
    cmap: str = "bone",
    colorbar: bool = True,
    legend: bool = True,
    legend_title: str = "label",
    aspect: str = "equal",
    scatter_kw: Optional[dict] = None,
    title: Optional[str] = "Magnification factor √det M(z)",
    chunk_size: int = 16384,
    dtype: Optional[torch.dtype] = None,
):
    """Heat map of the magnification factor ``√det M(z)`` over a 2-D latent plane.

    Args:
        metric: a :class:`~latentgeo.metric.Metric` on a 2-D latent space.
        extent: ``(xmin, xmax, ymin, ymax)``; default: the bounding box of ``codes`` padded
            by ``margin`` × its span (``codes`` is then required).
        resolution: grid points per axis (the metric is evaluated at ``resolution²`` points,
            in batched chunks of ``chunk_size``).
        codes: optional latent codes ``(N, 2)`` scattered on top.
        labels: optional ``(N,)`` labels colouring the codes (one legend entry per class).
        ax: Axes to draw on (a new figure when ``None``).
        log: logarithmic colour scale (:class:`~matplotlib.colors.LogNorm`). The image data
            is ``√det M`` itself in both cases (``ax.images[0].get_array()``, with
            non-positive values masked when ``log``).
        aspect: ``"equal"`` (default: lengths and angles look as the Euclidean latent
            coordinates measure them) or ``"auto"`` (fill the axes).
        cmap, colorbar, legend, legend_title, scatter_kw, title: styling.
        chunk_size: grid points per metric call.
        dtype: dtype of the grid points; default: the codes' dtype if they are a tensor,
            else the decoder parameters' dtype, else torch's default.

    Returns:
        the Axes; the image is ``ax.images[0]`` with ``origin="lower"`` and the given extent
        (``array[i, j]`` is the value at ``(xs[j], ys[i])``).
    """
    from matplotlib.colors import LogNorm, Normalize

    codes_np = _codes_2d(codes) if codes is not None else None
    if extent is None:
        if codes_np is None:
            raise ValueError("plot_magnification needs extent=(xmin, xmax, ymin, ymax) or codes to derive it from")
        extent = default_extent(codes_np, margin)
    extent = _check_extent(extent)
    d0, device = _metric_dtype_device(metric, codes)
    dtype = dtype or d0
    mag, xs, ys = magnification_grid(metric, extent, resolution, chunk_size=chunk_size, dtype=dtype, device=device)

    ax = _new_ax(ax)
    data = mag
    if log:
        data = np.ma.masked_less_equal(mag, 0.0)
        pos = data.compressed()
        if pos.size == 0:
            raise ValueError("the metric is singular (√det M = 0) everywhere on the grid; use log=False")
        vmin, vmax = float(pos.min()), float(pos.max())
        norm = LogNorm(vmin=vmin, vmax=vmax if vmax > vmin else vmin * 10)
    else:
        norm = Normalize(vmin=float(mag.min()), vmax=float(mag.max()))
    im = ax.imshow(data, origin="lower", extent=extent, cmap=cmap, norm=norm, interpolation="nearest", aspect=aspect)
    if colorbar:
        # with a class legend outside the right edge, the colour bar goes below the map (no overlap)
        below = codes_np is not None and labels is not None and legend
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.12 if below else 0.02,
                                **({"location": "bottom", "aspect": 40} if below else {}))
        cb.set_label("√det M(z)" + (" (log scale)" if log else ""))
        if log:
            _log_colorbar_ticks(cb, norm.vmin, norm.vmax, horizontal=bool(below))
    if codes_np is not None:
        scatter_codes(ax, codes_np, labels, legend=legend, legend_title=legend_title, **(scatter_kw or {}))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax


def plot_image_grid(
    decode_fn,
    extent,
    n: int = 15,
    item_shape: Optional[Sequence[int]] = None,
    ax=None,
    *,
    cmap: str = "gray",
    clip: Optional[tuple[float, float]] = (0.0, 1.0),
    gap: int = 1,
    title: Optional[str] = "Decoded images over the latent plane",
    dtype=None,
    device=None,
):
    """Mosaic of decoded items at an ``n × n`` grid of latent points over ``extent``.

    Args:
        decode_fn: ``z (N, 2) -> x (N, ...)`` (e.g. a VAE's decoder mean), or a latentgeo
            :class:`~latentgeo.decoders.Decoder` (its distribution's mean is shown).
            Called once on all ``n²`` points.
        extent: ``(xmin, xmax, ymin, ymax)``.
        n: images per axis.
        item_shape: ``(H, W)`` of one image; default: the trailing shape of the output
            when it is 2-D, or a square when the flat size is a perfect square.
        clip: value range shown (``None``: the data's range).
        gap: pixels of background between tiles.

    The image at row ``i`` from the *bottom* and column ``j`` decodes ``(xs[j], ys[i])``,
    so the mosaic lies over the latent plane like the magnification map (axes in latent
    units, ``origin="lower"``).

    Returns:
        the Axes (mosaic in ``ax.images[0]``).
    """

    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    extent = _check_extent(extent)
    decode_fn, dtype, device = _as_decode_fn(decode_fn, dtype, device)
    xmin, xmax, ymin, ymax = extent
    # tile centres: cell midpoints so the mosaic covers extent exactly
    xs = xmin + (np.arange(n) + 0.5) * (xmax - xmin) / n
    ys = ymin + (np.arange(n) + 0.5) * (ymax - ymin) / n
    gx, gy = np.meshgrid(xs, ys)
    z = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=dtype or torch.get_default_dtype(), device=device)
    with torch.no_grad():
        out = decode_fn(z)
    if isinstance(out, torch.distributions.Distribution):
        out = out.mean
    x = _to_numpy(out, "decoded items")
    if x.shape[0] != n * n:
        raise ValueError(f"decode_fn returned {x.shape[0]} items for {n * n} latent points")
    if not np.isfinite(x).all():
        raise ValueError("decode_fn returned NaN/inf")
    h, w = _image_shape(x, item_shape)
    imgs = x.reshape(n, n, h, w)  # [row i (y index), col j (x index)]
    if clip is not None:
        imgs = np.clip(imgs, clip[0], clip[1])
        lo, hi = clip
    else:
        lo, hi = float(imgs.min()), float(imgs.max())
    mosaic = np.full((n * (h + gap) + gap, n * (w + gap) + gap), np.nan)
    for i in range(n):  # n ≤ a few dozen tiles per axis: a cheap copy loop, not a hot path
        r0 = gap + i * (h + gap)
        for j in range(n):
            c0 = gap + j * (w + gap)
            # image rows run top-to-bottom, but the mosaic is drawn with origin="lower"
            mosaic[r0 : r0 + h, c0 : c0 + w] = imgs[i, j][::-1]
    ax = _new_ax(ax, figsize=(6.0, 6.0))
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    ax.imshow(np.ma.masked_invalid(mosaic), origin="lower", extent=extent, cmap=cm, vmin=lo, vmax=hi,
              interpolation="nearest", aspect="auto")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax


def _image_shape(x: np.ndarray, item_shape) -> tuple[int, int]:
    """``(H, W)`` of decoded items ``x (N, ...)``: given, the trailing 2-D shape, or a square."""
    if item_shape is None:
        if x.ndim == 3:
            item_shape = x.shape[1:]
        elif x.ndim == 4 and x.shape[1] == 1:
            item_shape = x.shape[2:]
        else:
            size = int(np.prod(x.shape[1:]))
            side = int(round(math.sqrt(size)))
            if side * side != size:
                raise ValueError(f"cannot infer an image shape for items of shape {x.shape[1:]}; pass item_shape=(H, W)")
            item_shape = (side, side)
    item_shape = tuple(int(s) for s in item_shape)
    if len(item_shape) != 2 or int(np.prod(item_shape)) != int(np.prod(x.shape[1:])):
        raise ValueError(f"item_shape {item_shape} does not match decoded items of shape {x.shape[1:]} (need (H, W))")
    return item_shape[0], item_shape[1]


def history_records(history) -> list[dict]:
    if isinstance(history, (str, bytes)) or hasattr(history, "__fspath__"):
        import json
        from pathlib import Path

        path = Path(history)
        if not path.is_file():
            raise ValueError(f"training log {path} does not exist")
        recs = []
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"training log {path} line {k} is not valid JSON: {exc.msg}") from exc
        return recs
    recs = list(getattr(history, "records", history))
    if not all(isinstance(r, dict) for r in recs):
        raise ValueError("history must be a sequence of per-epoch dicts (or a JSON-lines log path)")
    return recs


def plot_training_curves(
    history,
    ax=None,
    *,
    keys: Sequence[str] = ("train_loss", "val_loss"),
    title: Optional[str] = "Training curves",
    logy: Optional[bool] = None,
):
    """Per-epoch losses with one colour per key and the training phases marked.

    Args:
        history: a sequence of per-epoch dicts (``epoch``, optional ``phase``, and the
            ``keys``), e.g. the ``History`` from :func:`latentgeo.training.train_vae`, or the
            path of its JSON-lines log.
        keys: which numeric entries to draw (missing or non-finite values are skipped).
        logy: log-scaled y axis; default: when every drawn value is positive and they span
            more than two decades.

    Epochs are numbered consecutively across phases (a phase that restarts its epoch
    counter is appended after the previous one); phase changes get a dashed line and the
    phase name. A history with an ``rbf`` record (the post-hoc RBF variance, fitted after
    the last epoch) gets a dotted line at the end.

    Returns:
        the Axes.
    """
    recs = history_records(history)
    if not recs:
        raise ValueError("history is empty: nothing to plot")
    # keep epoch records (a log may hold other events, e.g. the RBF-variance fit)
    recs = [r for r in recs if any(isinstance(r.get(k), (int, float)) for k in keys)]
    if not recs:
        raise ValueError(f"history has none of the keys {list(keys)} with finite values")
    ax = _new_ax(ax, figsize=(7.0, 4.0))
    # a global x axis: running index over the records, but use 'epoch' when monotone
    ep = [r.get("epoch") for r in recs]
    if all(isinstance(e, (int, float)) for e in ep) and all(b > a for a, b in zip(ep, ep[1:])):
        x = np.asarray(ep, dtype=float)
    else:
        x = np.arange(1, len(recs) + 1, dtype=float)
    phases = [r.get("phase") for r in recs]
    drawn = []
    for key, color in zip(keys, _label_colors(max(len(keys), 1))):
        y = np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in recs])
        ok = np.isfinite(y)
        if not ok.any():
            continue
        label = key.replace("_", " ")
        # one line per phase so the phase boundary is not bridged by a misleading segment
        first = True
        for ph in dict.fromkeys(phases):
            sel = ok & np.array([p == ph for p in phases])
            if sel.any():
                ax.plot(x[sel], y[sel], color=color, marker="." if sel.sum() < 30 else None,
                        label=label if first else None, lw=1.5)
                first = False
        drawn.append(y[ok])
    if not drawn:
        raise ValueError(f"history has none of the keys {list(keys)} with finite values")
    allv = np.concatenate(drawn)
    if logy is None:
        logy = bool((allv > 0).all() and allv.max() / allv.min() > 100)
    if logy:
        ax.set_yscale("log")
    # phase boundaries
    if any(p is not None for p in phases):
        starts = [i for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
        for i in starts:
            if i > 0:
                ax.axvline(0.5 * (x[i - 1] + x[i]), color="0.5", ls="--", lw=1)
            ax.annotate(str(phases[i]), xy=(x[i], 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize="small", color="0.3")
    rbf = getattr(history, "rbf", None)
    if isinstance(rbf, dict):
        ax.axvline(x[-1], color="tab:green", ls=":", lw=1.5, label="RBF variance fitted")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (negative ELBO per item)" if "train_loss" in keys else "value")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_curves(
    curves,
    ax=None,
    *,
    label: Optional[str] = None,
    endpoints: bool = True,
    endpoint_kw: Optional[dict] = None,
    **style,
):
    """Draw latent curves ``(N, T, 2)`` (or one ``(T, 2)``, or a list of ``(T_k, 2)``).

    Args:
        curves: points along the curves (torch or numpy).
        ax: Axes to draw on (e.g. the one :func:`plot_magnification` returned).
        label: legend label, attached to the first curve only.
        endpoints: mark each curve's start and end points.
        **style: passed to :meth:`~matplotlib.axes.Axes.plot` (``color``, ``ls``, ``lw``, ...).

    Axis limits are left as they are when ``ax`` already shows an image (curves are drawn
    over a map), so a curve leaving the map does not rescale it.

    Returns:
        the Axes (one :class:`~matplotlib.lines.Line2D` per curve in ``ax.lines``).
    """
    if isinstance(curves, (list, tuple)):
        items = [_to_numpy(c, "curve") for c in curves]
    else:
        arr = _to_numpy(curves, "curves")
        items = [arr] if arr.ndim == 2 else list(arr) if arr.ndim == 3 else None
        if items is None:
            raise ValueError(f"curves must have shape (T, 2) or (N, T, 2), got {arr.shape}")
    if not items:
        raise ValueError("curves is empty")
    for c in items:
        if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 2:
            raise ValueError(f"each curve must have shape (T, 2) with T >= 2 (a 2-D latent space), got {c.shape}")
        if not np.isfinite(c).all():
            raise ValueError("curves contain NaN/inf")
    ax = _new_ax(ax)
    keep = bool(ax.images)
    if keep:
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
    style.setdefault("lw", 1.8)
    style.setdefault("zorder", 4)
    lines = []
    for k, c in enumerate(items):
        (ln,) = ax.plot(c[:, 0], c[:, 1], label=label if k == 0 else None, **style)
        lines.append(ln)
    if endpoints:
        ekw = dict(s=18, zorder=5, edgecolors="black", linewidths=0.6)
        ekw.update(endpoint_kw or {})
        ends = np.concatenate([np.stack([c[0], c[-1]]) for c in items])
        colors = [ln.get_color() for ln in lines for _ in range(2)]
        ekw.setdefault("c", colors)
        ax.scatter(ends[:, 0], ends[:, 1], **ekw)
    if keep:
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
    return ax


def plot_decoded_strip(
    decode_fn,
    points,
    item_shape: Optional[Sequence[int]] = None,
    ax=None,
    *,
    cmap: str = "gray",
    clip: Optional[tuple[float, float]] = (0.0, 1.0),
    gap: int = 1,
    label: Optional[str] = None,
    dtype=None,
    device=None,
):
    """Decoded images at points ``(T, d)`` along a latent curve, left to right in one row.

    Args:
        decode_fn: ``z (T, d) -> x (T, ...)`` or a latentgeo Decoder (its mean is shown);
            called once on all points.
        points: ``(T, d)`` latent points (e.g. a geodesic's ``curve(t)`` at a few ``t``).
        item_shape: ``(H, W)`` of one image (inferred as in :func:`plot_image_grid`).
        label: text on the y axis (e.g. ``"geodesic"``); the x ticks mark the point index.

    Returns:
        the Axes (the strip is ``ax.images[0]``, image ``k`` in columns
        ``[gap + k(W+gap), gap + k(W+gap) + W)``).
    """

    pts = _to_numpy(points, "points")
    if pts.ndim != 2 or pts.shape[0] < 1:
        raise ValueError(f"points must have shape (T, d) with T >= 1, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN/inf")
    decode_fn, dtype, device = _as_decode_fn(decode_fn, dtype, device)
    if isinstance(points, torch.Tensor) and dtype is None:
        dtype, device = points.dtype, points.device
    z = torch.as_tensor(pts, dtype=dtype or torch.get_default_dtype(), device=device)
    with torch.no_grad():
        out = decode_fn(z)
    if isinstance(out, torch.distributions.Distribution):
        out = out.mean
    x = _to_numpy(out, "decoded items")
    t = pts.shape[0]
    if x.shape[0] != t:
        raise ValueError(f"decode_fn returned {x.shape[0]} items for {t} points")
    if not np.isfinite(x).all():
        raise ValueError("decode_fn returned NaN/inf")
    h, w = _image_shape(x, item_shape)
    imgs = x.reshape(t, h, w)
    if clip is not None:
        imgs = np.clip(imgs, clip[0], clip[1])
        lo, hi = clip
    else:
        lo, hi = float(imgs.min()), float(imgs.max())
    strip = np.full((h + 2 * gap, t * (w + gap) + gap), np.nan)
    for k in range(t):
        c0 = gap + k * (w + gap)
        strip[gap : gap + h, c0 : c0 + w] = imgs[k]
    ax = _new_ax(ax, figsize=(max(3.0, 0.5 * t), 1.2))
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    ax.imshow(np.ma.masked_invalid(strip), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([gap + k * (w + gap) + (w - 1) / 2 for k in range(t)], [str(k) for k in range(t)], fontsize="x-small")
    ax.set_yticks([])
    if label:
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    return ax
