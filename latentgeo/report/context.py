"""What report sections see: :class:`ReportContext`, :class:`ReportSection` and the errors.

The context holds the subject of the analysis (a model and its data set, or a
:class:`~latentgeo.report.subject.Subject`: a decoder and codes, the model optional), the report's
options and the quantities sections share, computed once on first use: ``ctx.codes``
(encoder means of the data), ``ctx.decoder`` / ``ctx.metric`` (the analysis decoder and its
pullback metric), ``ctx.extent`` and ``ctx.magnification_grid``.

Curved latents are analysed in a chart (``ctx.chart``): a spherical VAE's codes on
``S^d ⊂ R^{d+1}`` in the stereographic chart from the pole opposite their mean direction, a
hyperbolic VAE's hyperboloid codes in the Poincaré ball. ``ctx.codes``, ``ctx.decoder`` and
``ctx.metric`` are then the chart's (``ctx.ambient_codes`` keeps the model's own), so every
section works in ``d`` free coordinates unchanged; ``summary["chart"]`` records the chart.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

__all__ = ["ReportContext", "ReportSection", "ReportError", "ReportSectionError", "CONTEXT_DEFAULTS", "jsonable",
           "atomic_write_text"]

#: options the context itself reads (every report has them)
CONTEXT_DEFAULTS = {
    "resolution": 150,  # grid points per axis of the magnification map
    "margin": 0.25,  # padding of the plotted extent around the codes (fraction of their span)
    "max_points": None,  # analyse a seeded subset of this many items (None: all)
    "dpi": 120,  # figure resolution
    "cmap": "bone",  # colour map of the magnification map
}


#: the chart each curved latent is analysed in (``ReportContext.chart_kind``)
CHART_KINDS = {"sphere": "stereographic", "hyperbolic": "poincare"}
#: the Poincaré-ball analysis stays within this fraction of the ball's radius (grids are masked beyond)
POINCARE_MAX_RADIUS = 0.999


class ReportError(ValueError):
    """A report cannot be written with these arguments (bad option, unknown section, ...)."""


class ReportSectionError(RuntimeError):
    """A report section failed while running (the original exception is chained)."""


@dataclass(frozen=True)
class ReportSection:
    """A named step of the report: ``fn(ctx) -> dict | None``, run in increasing ``order``.

    ``defaults`` are the options the section reads from ``ctx.options``, stated once here.
    """

    name: str
    fn: Callable[["ReportContext"], Optional[dict]]
    order: float = 50.0
    description: str = ""
    #: the section's own options and their defaults (``write_report(**options)`` overrides them)
    defaults: Mapping[str, Any] = field(default_factory=dict)


def jsonable(x):
    """Convert numpy/torch scalars and arrays, tuples and paths for ``json.dump``."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    return repr(x)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, with a normal file mode (0644 under umask 022)."""
    from ..checkpoint import atomic_write

    atomic_write(path, text)


@dataclass
class ReportContext:
    """What sections see: inputs, options, shared lazily computed quantities, outputs.

    Attributes:
        model, dataset, history: as passed to :func:`write_report` (``dataset`` is ``None``
            and ``model`` may be ``None`` when the report's subject is a :class:`Subject`).
        subject: the :class:`~latentgeo.report.subject.Subject` analysed, or ``None`` (a model
            and its data set).
        out_dir: the report folder.
        random_state: int seed for any randomness in sections (subsets, initialisations).
        options: the report's options: :data:`CONTEXT_DEFAULTS` and every section's
            ``defaults``, overridden by what was passed to :func:`write_report`.
        summary: the summary being built (sections' dicts are added under their names).
        files: files written so far, relative to ``out_dir``.
    """

    model: Any
    dataset: Any
    history: Any
    out_dir: Path
    random_state: int = 0
    options: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    subject: Any = None
    _cache: dict = field(default_factory=dict, repr=False)

    # -- files --------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Path of a report file ``name`` (recorded in ``summary["files"]``)."""
        p = self.out_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        rel = str(p.relative_to(self.out_dir))
        if rel not in self.files:
            self.files.append(rel)
        return p

    def save_figure(self, fig, name: str, dpi: Optional[int] = None) -> Path:
        """Save a matplotlib figure atomically as ``out_dir/name`` (closed if pyplot made it)."""
        import io

        from ..checkpoint import atomic_write

        p = self.path(name)
        try:
            buf = io.BytesIO()
            fig.savefig(buf, dpi=dpi or self.options["dpi"], format=p.suffix.lstrip(".") or "png")
            atomic_write(p, buf.getvalue())  # complete or absent; mode 0666 less the umask, not 0600
        finally:
            plt = sys.modules.get("matplotlib.pyplot")  # only pyplot-made figures need closing
            num = getattr(fig, "number", None)
            if plt is not None and num is not None and plt.fignum_exists(num):
                plt.close(fig)
        return p

    def new_figure(self, figsize=(6.4, 5.0), nrows: int = 1, ncols: int = 1, **kw):
        """``(fig, ax)`` (``ax`` an array when ``nrows·ncols > 1``) on a plain
        :class:`~matplotlib.figure.Figure`: no pyplot state, no GUI backend, nothing to close."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.subplots(nrows, ncols, **kw)
        return fig, ax

    def class_means(self) -> tuple[np.ndarray, torch.Tensor]:
        """``(classes (C,), means (C, d))``: the mean code of each label (``ValueError`` without labels)."""
        if self.labels is None:
            raise ValueError(f"data set {self.name!r} has no labels")
        classes = np.unique(self.labels)
        lab = torch.as_tensor(self.labels, device=self.codes.device)
        means = torch.stack([self.codes[lab == c].mean(0) for c in classes])
        return classes, means

    # -- shared quantities ----------------------------------------------------------------
    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def name(self) -> str:
        """What the report analyses: the data set's or the subject's name."""
        src = self.subject if self.subject is not None else self.dataset
        return getattr(src, "name", None) or "data"

    @property
    def item_shape(self) -> Optional[tuple]:
        """Shape of one data item (e.g. ``(8, 8)``), or ``None`` when unknown."""
        src = self.subject if self.subject is not None else self.dataset
        shape = getattr(src, "item_shape", None)
        return None if shape is None else tuple(shape)

    @property
    def n_items(self) -> int:
        """Number of items (codes) before any ``max_points`` subset."""
        if self.subject is not None:
            return int(self.subject.codes.shape[0])
        return int(len(self.dataset.data))

    @property
    def all_data(self) -> Optional[torch.Tensor]:
        """Every data item, flattened ``(n_items, D)`` (no subset), or ``None`` when the subject has no data."""
        x = self.subject.data if self.subject is not None else self.dataset.data
        if x is None:
            return None
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        return x.reshape(x.shape[0], -1)

    def mean_fn(self):
        """``z (N, d) -> x̂ (N, ...)``: the decoder's mean output (the value of a deterministic decoder)."""
        from ..decoders import DeterministicDecoder

        dec = self.decoder
        if isinstance(dec, DeterministicDecoder):
            def fn(z):  # a plain function: plotting treats Decoder objects by their likelihood mean
                return dec(z)
        else:
            def fn(z):
                return dec.distribution(z).mean
        if self.chart_kind != "poincare":
            return fn

        def masked(z):  # outside the Poincaré disk: NaN items (drawn blank), never a decoded wrong sheet
            inside = self.in_domain(z)
            if bool(inside.all()):
                return fn(z)
            x = fn(z[inside]) if bool(inside.any()) else fn(z[:1] * 0)[:0]
            out = torch.full((z.shape[0], *x.shape[1:]), float("nan"), dtype=x.dtype, device=x.device)
            out[inside] = x
            return out

        return masked

    @property
    def data(self) -> Optional[torch.Tensor]:
        """The data items analysed ``(N, D)``: the data set, or a seeded subset of ``max_points``
        (``None`` when the subject has no data)."""

        def make():
            if self.subject is not None:
                x = self.all_data
                if x is None:
                    return None
                idx = self.subset_index
                return x if idx is None else x[idx.to(x.device)]
            x = self.dataset.data
            x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
            x = x.reshape(x.shape[0], -1)
            idx = self.subset_index
            return x if idx is None else x[idx]

        return self._cached("data", make)

    @property
    def subset_index(self) -> Optional[torch.Tensor]:
        """Indices of the analysed items in the data set (``None``: all of them)."""

        def make():
            n = self.n_items
            m = self.options.get("max_points")
            if m is None or m >= n:
                return None
            g = torch.Generator().manual_seed(self.random_state)
            return torch.randperm(n, generator=g)[: int(m)].sort().values

        return self._cached("subset_index", make)

    @property
    def labels(self) -> Optional[np.ndarray]:
        """Labels of the analysed items ``(N,)`` or ``None``."""

        def make():
            src = self.subject if self.subject is not None else self.dataset
            lab = getattr(src, "labels", None)
            if lab is None:
                return None
            lab = lab.detach().cpu().numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab)
            idx = self.subset_index
            return lab if idx is None else lab[idx.numpy()]

        return self._cached("labels", make)

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of the model's parameters (data are converted to it); the codes' without a model."""
        if self.model is None and self.subject is not None:
            return self.subject.codes.dtype
        p = next(iter(self.model.parameters()), None) if hasattr(self.model, "parameters") else None
        return p.dtype if p is not None else torch.get_default_dtype()

    @property
    def param_device(self) -> torch.device:
        """device of the model's parameters (data are moved to it); the codes' without a model."""
        if self.model is None and self.subject is not None:
            return self.subject.codes.device
        p = next(iter(self.model.parameters()), None) if hasattr(self.model, "parameters") else None
        return p.device if p is not None else torch.device("cpu")

    @property
    def ambient_codes(self) -> torch.Tensor:
        """Encoder means of :attr:`data` as the model gives them, ``(N, code_dim)``: points of
        ``S^d ⊂ R^{d+1}`` or of the hyperboloid for curved latents (the subject's codes)."""

        def make():
            if self.subject is not None:
                z = self.subject.codes
                idx = self.subset_index
                return z if idx is None else z[idx.to(z.device)]
            with torch.no_grad():
                z = self.model.encode_mean(self.data.to(device=self.param_device, dtype=self.param_dtype))
            return z.detach()

        return self._cached("ambient_codes", make)

    @property
    def chart_kind(self) -> Optional[str]:
        """``"stereographic"`` (sphere latents), ``"poincare"`` (hyperbolic latents) or ``None``
        (flat codes: Euclidean latents and every :class:`Subject`, whose codes are already the
        analysis coordinates)."""
        if self.subject is not None or self.model is None:
            return None
        kind = getattr(self.model, "latent_name", None) or getattr(getattr(self.model, "latent", None), "name", None)
        return CHART_KINDS.get(kind)

    @property
    def chart(self):
        """The chart the analysis runs in, or ``None`` (see :attr:`chart_kind`).

        Sphere latents: a :class:`~latentgeo.charts.StereographicChart` projecting from the pole
        opposite the codes' mean direction (computed in float64), so the codes sit near the
        chart's origin. Hyperbolic latents: the model's :class:`~latentgeo.charts.PoincareChart`.
        """

        def make():
            kind = self.chart_kind
            if kind == "stereographic":
                from ..charts import StereographicChart

                return StereographicChart.opposite_mean(self.ambient_codes.double())
            if kind == "poincare":
                from ..charts import PoincareChart

                return PoincareChart.for_model(self.model)
            return None

        return self._cached("chart", make)

    def chart_info(self) -> Optional[dict]:
        """What ``summary["chart"]`` records: the chart's kind and parameters (``None``: flat codes)."""
        chart, kind = self.chart, self.chart_kind
        if chart is None:
            return None
        if kind == "stereographic":
            return {"kind": kind, "dim": chart.dim, "pole": chart.pole.tolist(),
                    "definition": "y = Bᵀx / (1 − pᵀx), projected from the pole p opposite the codes' mean direction "
                                  "(B: an orthonormal basis of p⊥)"}
        return {"kind": kind, "dim": chart.dim, "curvature": chart.c, "radius": 1.0 / math.sqrt(chart.c),
                "definition": "y = x_s / (1 + √c x_0): the Poincaré ball of the hyperboloid"}

    def to_chart(self, x: torch.Tensor) -> torch.Tensor:
        """Model codes ``(..., code_dim)`` → analysis coordinates (unchanged without a chart)."""
        chart, kind = self.chart, self.chart_kind
        if chart is None:
            return x
        return chart.to_chart(x) if kind == "stereographic" else chart.to_ball(x)

    def from_chart(self, y: torch.Tensor) -> torch.Tensor:
        """Analysis coordinates ``(..., d)`` → model codes (unchanged without a chart)."""
        chart, kind = self.chart, self.chart_kind
        if chart is None:
            return y
        return chart.from_chart(y) if kind == "stereographic" else chart.from_ball(y)

    def in_domain(self, y: torch.Tensor) -> torch.Tensor:
        """``(...)`` bool: which analysis coordinates the analysis evaluates: inside
        ``POINCARE_MAX_RADIUS`` of the ball's radius for the Poincaré chart, everywhere else."""
        if self.chart_kind != "poincare":
            return torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)
        return self.chart.c * (y * y).sum(-1) < POINCARE_MAX_RADIUS**2

    def decoder_of(self, model):
        """``model.decoder_for_analysis()`` expressed in the analysis coordinates (this report's chart).

        Used for :attr:`decoder`, and by sections that solve on a float64 copy of the model
        (:meth:`float64_model`)."""
        dec = model.decoder_for_analysis()
        kind = self.chart_kind
        if kind == "stereographic":
            return self.chart.decoder(dec)
        if kind == "poincare":
            from ..charts import poincare_decoder

            return poincare_decoder(dec, self.chart)
        return dec

    def float64_model(self):
        """A float64 copy of the model in eval mode (cached; the model itself is untouched), or
        ``None`` when there is no model to copy (a :class:`Subject` without one)."""
        import copy

        if self.subject is not None or not (hasattr(self.model, "double") and hasattr(self.model, "decoder_for_analysis")):
            return None
        return self._cached("model64", lambda: copy.deepcopy(self.model).double().eval())

    @property
    def codes(self) -> torch.Tensor:
        """Encoder means of :attr:`data` in the analysis coordinates, ``(N, d)``: the model's codes,
        mapped into :attr:`chart` for curved latents (the subject's codes as given)."""
        return self._cached("codes", lambda: self.to_chart(self.ambient_codes).to(self.ambient_codes.dtype))

    @property
    def latent_dim(self) -> int:
        return int(self.codes.shape[1])

    @property
    def decoder(self):
        """The model's analysis decoder (``model.decoder_for_analysis()``, composed with the chart's
        inverse for curved latents: :meth:`decoder_of`), or the subject's decoder."""
        if self.subject is not None:
            return self.subject.decoder
        return self._cached("decoder", lambda: self.decoder_of(self.model))

    @property
    def metric(self):
        """The pullback metric of :attr:`decoder` (its default kind: expected metric for Gaussians)."""
        from ..metric import PullbackMetric

        return self._cached("metric", lambda: PullbackMetric(self.decoder))

    @property
    def extent(self) -> tuple:
        """Plot extent: the codes' bounding box padded by ``options["margin"]``, its shorter
        side widened to at least 3/4 of the longer one (maps are drawn with equal aspect)."""
        from ..plotting import default_extent

        def make():
            ext = default_extent(self.codes, self.options["margin"], min_aspect=0.75)
            if self.chart_kind == "poincare":  # the ball is the whole space: never plot beyond it
                r = 1.0 / math.sqrt(self.chart.c)
                ext = (max(ext[0], -r), min(ext[1], r), max(ext[2], -r), min(ext[3], r))
            return ext

        return self._cached("extent", make)

    @property
    def magnification_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mag (R, R), xs, ys)`` over :attr:`extent` at ``options["resolution"]``."""
        from ..plotting import latent_grid, magnification_grid

        def make():
            if self.chart_kind != "poincare":
                return magnification_grid(self.metric, self.extent, self.options["resolution"], dtype=self.codes.dtype,
                                          device=self.codes.device)
            # the Poincaré ball: evaluate inside the disk only; NaN (masked in the figures) outside
            z, xs, ys = latent_grid(self.extent, self.options["resolution"], dtype=self.codes.dtype,
                                    device=self.codes.device)
            inside = self.in_domain(z)
            mag = torch.full((z.shape[0],), float("nan"), dtype=z.dtype, device=z.device)
            zi = z[inside]
            with torch.no_grad():
                mag[inside] = torch.cat([self.metric.magnification(zi[s: s + 16384]).detach()
                                         for s in range(0, zi.shape[0], 16384)])
            r = len(xs)
            return mag.cpu().numpy().reshape(r, r), xs, ys

        return self._cached("mag_grid", make)

    def magnification_figure(self, title: Optional[str] = "Magnification factor √det M(z)", figsize=(7.2, None)):
        """``(fig, ax)``: the magnification heat map with the codes coloured by label.

        Reuses the cached grid (no new metric evaluations); draw curves on ``ax`` with
        :func:`latentgeo.plotting.plot_curves` and save with :meth:`save_figure`. The height
        of ``figsize`` is chosen to fit the equal-aspect map to its width.
        """
        from matplotlib.colors import LogNorm

        from ..plotting import scatter_codes

        mag, xs, ys = self.magnification_grid
        x0, x1, y0, y1 = self.extent
        # height to fit the equal-aspect map (the legend takes ~25 % of the width, the colour bar sits below)
        w = float(figsize[0])
        figsize = (w, min(max(0.6 * w * (y1 - y0) / (x1 - x0) + 1.8, 3.5), 2 * w))
        fig, ax = self.new_figure(figsize=figsize)
        data = np.ma.masked_where(~np.isfinite(mag) | (mag <= 0.0), mag)  # NaN: outside the Poincaré disk
        pos = data.compressed()
        if pos.size == 0:
            raise ReportError("the metric is singular (√det M = 0) everywhere on the plotted grid")
        vmin, vmax = float(pos.min()), float(pos.max())
        im = ax.imshow(data, origin="lower", extent=self.extent, cmap=self.options["cmap"], interpolation="nearest",
                       norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10)), aspect="equal")
        # the codes' legend sits outside the right edge, so the colour bar goes below the map
        below = self.labels is not None
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.1 if below else 0.02,
                          **({"location": "bottom", "aspect": 40} if below else {}))
        cb.set_label("√det M(z) (log scale)")
        name = self.name
        scatter_codes(ax, self.codes.cpu().numpy(), self.labels, legend_title="digit" if name == "digits" else "label")
        if self.chart_kind == "poincare":
            r = 1.0 / math.sqrt(self.chart.c)
            t = np.linspace(0, 2 * np.pi, 400)
            ax.plot(r * np.cos(t), r * np.sin(t), color="0.3", lw=0.8, zorder=2)
        ax.set_xlim(self.extent[0], self.extent[1])
        ax.set_ylim(self.extent[2], self.extent[3])
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        if title:
            ax.set_title(title)
        return fig, ax
