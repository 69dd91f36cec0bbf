"""The analysis report of a trained VAE: figures, ``summary.json`` and the checkpoint.

:func:`write_report` runs a list of *sections* in order. Each section is a function
``section(ctx: ReportContext) -> dict | None`` that may write files into the report folder
(through :meth:`ReportContext.save_figure` / :meth:`ReportContext.path`) and returns a
JSON-serialisable dict that becomes ``summary[section_name]``. Its wall time is recorded in
``summary["timings"][section_name + "_s"]``. Sections share the expensive quantities
through the context, computed once on first use: ``ctx.codes`` (encoder means of the
data), ``ctx.decoder`` / ``ctx.metric`` (the model's analysis decoder and its expected
pullback metric), ``ctx.extent`` and ``ctx.magnification_grid``.

Built-in sections (``order``): ``dataset`` (0), ``model`` (5), ``training`` (10),
``checkpoint`` (20), ``magnification`` (30, ``magnification.png`` and on-/off-data
statistics), ``decoded_grid`` (40, ``decoded_grid.png``), ``training_curves`` (50,
``training_curves.png``), ``iwae`` (60, importance-weighted log-likelihood on a subset).

Adding a section (the hook for the geodesics, clustering and random-walk analyses)::

    from latentgeo.report import register_section

    @register_section("geodesics", order=70, description="geodesics between class centres")
    def _geodesics_section(ctx):
        if ctx.latent_dim != 2:
            return {"skipped": f"needs a 2-D latent space, got {ctx.latent_dim}"}
        classes, centres = ctx.class_means()          # (C,), (C, 2) mean code per label
        ...                                           # compute with ctx.metric, ctx.codes, ctx.labels
        fig, ax = ctx.magnification_figure()          # the heat map + codes, ready to draw on
        plot_curves(curves, ax=ax, color="white")     # latentgeo.plotting
        ctx.save_figure(fig, "geodesics.png")
        fig, axes = ctx.new_figure(figsize=(8, 2), nrows=2)
        plot_decoded_strip(ctx.decoder, curve_points, ax=axes[0], label="geodesic")
        ctx.save_figure(fig, "geodesic_strips.png")
        return {"n_pairs": 10, "converged": 10, "mean_length_ratio": 0.8}

Put the decorated function in a module that ``latentgeo/__init__.py`` imports (importing
:mod:`latentgeo.report` always imports the package first), and every report —
``latentgeo demo`` included — gains the section. A section that cannot run on a model says
so in its returned dict (``{"skipped": reason}``) rather than silently writing nothing;
an exception in a section aborts the report with a :class:`ReportSectionError` naming the
section (the original exception chained).

Example:
    >>> from latentgeo.report import report_sections
    >>> [s.name for s in report_sections()][:4]
    ['dataset', 'model', 'training', 'checkpoint']
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "ReportContext",
    "ReportSection",
    "ReportError",
    "ReportSectionError",
    "register_section",
    "unregister_section",
    "report_sections",
    "write_report",
]


class ReportError(ValueError):
    """A report cannot be written with these arguments (bad option, unknown section, ...)."""


class ReportSectionError(RuntimeError):
    """A report section failed while running (the original exception is chained)."""


@dataclass(frozen=True)
class ReportSection:
    """A named step of the report: ``fn(ctx) -> dict | None``, run in increasing ``order``."""

    name: str
    fn: Callable[["ReportContext"], Optional[dict]]
    order: float = 50.0
    description: str = ""


_SECTIONS: dict[str, ReportSection] = {}
_RESERVED = {"latentgeo_version", "created_utc", "seed", "timings", "files", "sections", "out_dir"}


def register_section(
    name: str,
    fn: Optional[Callable] = None,
    *,
    order: float = 50.0,
    description: str = "",
    replace: bool = False,
):
    """Register a report section (usable as a decorator). Returns ``fn``.

    Args:
        name: the section's key in ``summary.json`` (an identifier, unique).
        fn: ``fn(ctx: ReportContext) -> dict | None``.
        order: sections run in increasing order (built-ins use 0–60).
        description: one line shown by ``latentgeo demo --help``-style listings.
        replace: allow re-registering an existing name (e.g. on module reload).
    """
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"section name must be an identifier string, got {name!r}")
    if name in _RESERVED:
        raise ValueError(f"section name {name!r} is reserved for the summary's own keys")
    if not (isinstance(order, (int, float)) and math.isfinite(order)):
        raise ValueError(f"order must be a finite number, got {order!r}")

    def deco(f):
        if not callable(f):
            raise ValueError(f"section {name!r} must be callable, got {type(f).__name__}")
        if name in _SECTIONS and not replace and _SECTIONS[name].fn is not f:
            raise ValueError(f"a report section named {name!r} is already registered (pass replace=True)")
        _SECTIONS[name] = ReportSection(name, f, float(order), description)
        return f

    return deco if fn is None else deco(fn)


def unregister_section(name: str) -> ReportSection:
    """Remove a registered section and return it (``ValueError`` if unknown)."""
    if name not in _SECTIONS:
        raise ValueError(f"no report section named {name!r}; registered: {', '.join(_SECTIONS)}")
    return _SECTIONS.pop(name)


def report_sections() -> list[ReportSection]:
    """All registered sections, in run order."""
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))


# ------------------------------------------------------------------------------------------
# context
# ------------------------------------------------------------------------------------------
def _jsonable(x):
    """Convert numpy/torch scalars and arrays, tuples and paths for ``json.dump``."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    return repr(x)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class ReportContext:
    """What sections see: inputs, options, shared lazily computed quantities, outputs.

    Attributes:
        model, dataset, history: as passed to :func:`write_report`.
        out_dir: the report folder.
        seed: seed for any randomness in sections (subsets, initialisations).
        options: report options (``resolution``, ``margin``, ``max_points``, ``iwae_points``,
            ``iwae_samples``, ``dpi``, ...); sections may read their own keys.
        summary: the summary being built (sections' dicts are added under their names).
        files: files written so far, relative to ``out_dir``.
    """

    model: Any
    dataset: Any
    history: Any
    out_dir: Path
    seed: int = 0
    options: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
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
        p = self.path(name)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=p.suffix)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=dpi or self.options.get("dpi", 120))
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
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
            raise ValueError(f"data set {getattr(self.dataset, 'name', '?')!r} has no labels")
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
    def data(self) -> torch.Tensor:
        """The data items analysed ``(N, D)``: the data set, or a seeded subset of ``max_points``."""

        def make():
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
            n = len(self.dataset.data)
            m = self.options.get("max_points")
            if m is None or m >= n:
                return None
            g = torch.Generator().manual_seed(self.seed)
            return torch.randperm(n, generator=g)[: int(m)].sort().values

        return self._cached("subset_index", make)

    @property
    def labels(self) -> Optional[np.ndarray]:
        """Labels of the analysed items ``(N,)`` or ``None``."""

        def make():
            lab = getattr(self.dataset, "labels", None)
            if lab is None:
                return None
            lab = lab.detach().cpu().numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab)
            idx = self.subset_index
            return lab if idx is None else lab[idx.numpy()]

        return self._cached("labels", make)

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of the model's parameters (data are converted to it)."""
        p = next(iter(self.model.parameters()), None) if hasattr(self.model, "parameters") else None
        return p.dtype if p is not None else torch.get_default_dtype()

    @property
    def param_device(self) -> torch.device:
        """device of the model's parameters (data are moved to it)."""
        p = next(iter(self.model.parameters()), None) if hasattr(self.model, "parameters") else None
        return p.device if p is not None else torch.device("cpu")

    @property
    def codes(self) -> torch.Tensor:
        """Encoder means of :attr:`data` in the analysis coordinates, ``(N, d)``."""

        def make():
            with torch.no_grad():
                z = self.model.encode_mean(self.data.to(device=self.param_device, dtype=self.param_dtype))
            return z.detach()

        return self._cached("codes", make)

    @property
    def latent_dim(self) -> int:
        return int(self.codes.shape[1])

    @property
    def decoder(self):
        """The model's analysis decoder (``model.decoder_for_analysis()``)."""
        return self._cached("decoder", lambda: self.model.decoder_for_analysis())

    @property
    def metric(self):
        """The pullback metric of :attr:`decoder` (its default kind: expected metric for Gaussians)."""
        from .metric import PullbackMetric

        return self._cached("metric", lambda: PullbackMetric(self.decoder))

    @property
    def extent(self) -> tuple:
        """Plot extent: the codes' bounding box padded by ``options["margin"]``, its shorter
        side widened to at least 3/4 of the longer one (maps are drawn with equal aspect)."""
        from .plotting import default_extent

        return self._cached(
            "extent", lambda: default_extent(self.codes, self.options.get("margin", 0.25), min_aspect=0.75)
        )

    @property
    def magnification_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mag (R, R), xs, ys)`` over :attr:`extent` at ``options["resolution"]``."""
        from .plotting import magnification_grid

        return self._cached(
            "mag_grid",
            lambda: magnification_grid(
                self.metric, self.extent, self.options.get("resolution", 150), dtype=self.codes.dtype,
                device=self.codes.device,
            ),
        )

    def magnification_figure(self, title: Optional[str] = "Magnification factor √det M(z)", figsize=(7.2, None)):
        """``(fig, ax)``: the magnification heat map with the codes coloured by label.

        Reuses the cached grid (no new metric evaluations); draw curves on ``ax`` with
        :func:`latentgeo.plotting.plot_curves` and save with :meth:`save_figure`. The height
        of ``figsize`` is chosen to fit the equal-aspect map to its width.
        """
        from matplotlib.colors import LogNorm

        from .plotting import _scatter_codes

        mag, xs, ys = self.magnification_grid
        x0, x1, y0, y1 = self.extent
        # height to fit the equal-aspect map (the legend takes ~25 % of the width, the colour bar sits below)
        w = float(figsize[0])
        figsize = (w, min(max(0.6 * w * (y1 - y0) / (x1 - x0) + 1.8, 3.5), 2 * w))
        fig, ax = self.new_figure(figsize=figsize)
        data = np.ma.masked_less_equal(mag, 0.0)
        pos = data.compressed()
        if pos.size == 0:
            raise ReportError("the metric is singular (√det M = 0) everywhere on the plotted grid")
        vmin, vmax = float(pos.min()), float(pos.max())
        im = ax.imshow(data, origin="lower", extent=self.extent, cmap=self.options.get("cmap", "bone"), interpolation="nearest",
                       norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10)), aspect="equal")
        # the codes' legend sits outside the right edge, so the colour bar goes below the map
        below = self.labels is not None
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.1 if below else 0.02,
                          **({"location": "bottom", "aspect": 40} if below else {}))
        cb.set_label("√det M(z) (log scale)")
        name = getattr(self.dataset, "name", None)
        _scatter_codes(ax, self.codes.cpu().numpy(), self.labels, legend_title="digit" if name == "digits" else "label")
        ax.set_xlim(self.extent[0], self.extent[1])
        ax.set_ylim(self.extent[2], self.extent[3])
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        if title:
            ax.set_title(title)
        return fig, ax


# ------------------------------------------------------------------------------------------
# built-in sections
# ------------------------------------------------------------------------------------------
def _history_records(history) -> list[dict]:
    from .plotting import _history_records as recs

    return recs(history)


@register_section("dataset", order=0, description="data set name, size and shape")
def _section_dataset(ctx: ReportContext) -> dict:
    ds = ctx.dataset
    x = ds.data
    labels = getattr(ds, "labels", None)
    out = {
        "name": getattr(ds, "name", None),
        "n_items": int(len(x)),
        "data_dim": int(np.prod(tuple(x.shape[1:]))),
        "item_shape": list(getattr(ds, "item_shape", None) or tuple(x.shape[1:])),
        "n_analysed": int(ctx.data.shape[0]),
        "params": getattr(ds, "params", None) or {},
    }
    if labels is not None:
        lab = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        out["classes"] = sorted(int(c) for c in np.unique(lab))
        out["n_classes"] = len(out["classes"])
    return out


@register_section("model", order=5, description="model configuration and size")
def _section_model(ctx: ReportContext) -> dict:
    m = ctx.model
    cfg = getattr(m, "config", None)
    cfg = dict(cfg) if cfg is not None else {}
    n_params = sum(p.numel() for p in m.parameters()) if hasattr(m, "parameters") else None
    return {
        "class": type(m).__name__,
        "config": cfg,
        "latent_dim": ctx.latent_dim,
        "n_parameters": n_params,
        "dtype": ctx.param_dtype,
    }


@register_section("training", order=10, description="epochs run and final losses")
def _section_training(ctx: ReportContext) -> dict:
    if ctx.history is None:
        return {"skipped": "no training history given"}
    recs = [r for r in _history_records(ctx.history) if r.get("phase") != "rbf"]
    if not recs:
        return {"epochs_run": 0}

    def last(key):
        for r in reversed(recs):
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                return float(v)
        return None

    phases: dict[str, int] = {}
    for r in recs:
        ph = str(r.get("phase", "train"))
        phases[ph] = phases.get(ph, 0) + 1
    vals = [float(r["val_loss"]) for r in recs if isinstance(r.get("val_loss"), (int, float))]
    out = {
        "epochs_run": len(recs),
        "epochs_per_phase": phases,
        "final_phase": str(recs[-1].get("phase", "train")),
        "final_train_loss": last("train_loss"),
        "final_val_loss": last("val_loss"),
        "best_val_loss": min(vals) if vals else None,
        "train_seconds": sum(float(r.get("time", 0.0)) for r in recs),
    }
    h = ctx.history
    for attr in ("n_train", "n_val", "best_epoch", "stopped_early", "rbf", "resumed_at_epoch"):
        if hasattr(h, attr):
            out[attr] = getattr(h, attr)
    if isinstance(getattr(h, "best_val_loss", None), dict):
        out["best_val_loss_per_phase"] = h.best_val_loss
    out["loss_note"] = "losses are negative ELBOs per item during the trained phases"
    if out.get("rbf"):
        out["loss_note"] += (
            "; the RBF variance was fitted after them, so the final model's ELBO and IWAE bound "
            "are in the 'iwae' section"
        )
    return out


@register_section("checkpoint", order=20, description="the trained model (safetensors weights + JSON config)")
def _section_checkpoint(ctx: ReportContext) -> dict:
    name = ctx.options.get("checkpoint_name", "model.safetensors")
    if name is None:
        return {"skipped": "checkpoint_name=None"}
    if not str(name).endswith(".safetensors"):
        raise ReportError(f"checkpoint_name must end in .safetensors, got {name!r}")
    if not hasattr(ctx.model, "save"):
        raise ReportError(f"{type(ctx.model).__name__} has no save(path) method; pass checkpoint_name=None")
    path = ctx.path(name)
    ctx.model.save(path)
    if not path.is_file():
        raise ReportError(f"{type(ctx.model).__name__}.save({path}) did not write the file")
    return {"path": name, "bytes": path.stat().st_size}


def _nearest_distance(points: torch.Tensor, codes: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Distance of each point ``(M, d)`` to its nearest code ``(N, d)``, chunked ``(M,)``."""
    out = [torch.cdist(points[s : s + chunk], codes).amin(1) for s in range(0, points.shape[0], chunk)]
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


@register_section("magnification", order=30, description="magnification.png: √det M heat map, on/off-data statistics")
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
        title=f"Magnification factor √det M(z) — {getattr(ctx.dataset, 'name', 'data')}, {kind_name}"
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

    def band(lo, hi):
        sel = (rel >= lo) & (rel < hi)
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


@register_section("decoded_grid", order=40, description="decoded_grid.png: decoder means over the latent plane")
def _section_decoded_grid(ctx: ReportContext) -> dict:
    if ctx.latent_dim != 2:
        return {"skipped": f"the decoded grid needs a 2-D latent space; this model's is {ctx.latent_dim}-D"}
    from .plotting import plot_image_grid

    item_shape = getattr(ctx.dataset, "item_shape", None)
    if item_shape is None or len(tuple(item_shape)) != 2:
        return {"skipped": f"items of shape {item_shape} are not images"}
    n = int(ctx.options.get("grid_n", 15))
    fig, ax = ctx.new_figure(figsize=(6.4, 6.4))
    data = ctx.data
    clip = (float(data.min()), float(data.max()))
    plot_image_grid(ctx.decoder, ctx.extent, n=n, item_shape=tuple(item_shape), ax=ax, clip=clip,
                    title="Decoder mean μ(z) over the latent plane", dtype=ctx.codes.dtype)
    ctx.save_figure(fig, "decoded_grid.png")
    return {"n": n, "extent": list(ctx.extent)}


@register_section("training_curves", order=50, description="training_curves.png")
def _section_training_curves(ctx: ReportContext) -> dict:
    if ctx.history is None:
        return {"skipped": "no training history given"}
    from .plotting import plot_training_curves

    fig, ax = ctx.new_figure(figsize=(7.0, 4.2))
    plot_training_curves(ctx.history, ax=ax)
    ctx.save_figure(fig, "training_curves.png")
    return {}


@register_section("iwae", order=60, description="IWAE log-likelihood and ELBO on held-out items")
def _section_iwae(ctx: ReportContext) -> dict:
    from .training import elbo_estimate, iwae_log_likelihood

    n_pts = int(ctx.options.get("iwae_points", 256))
    k = int(ctx.options.get("iwae_samples", 64))
    x = ctx.dataset.data
    x = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).reshape(len(x), -1)
    g = torch.Generator().manual_seed(ctx.seed)
    idx = ctx.options.get("eval_index")
    if idx is not None and len(idx) > 0:
        idx = torch.as_tensor(idx, dtype=torch.long)
        items = "validation"
    else:
        idx = torch.arange(x.shape[0])
        items = "all (no validation indices given)"
    idx = idx[torch.randperm(len(idx), generator=g)[:n_pts]].sort().values
    xs = x[idx].to(device=ctx.param_device, dtype=ctx.param_dtype)
    ll = iwae_log_likelihood(ctx.model, xs, k=k, seed=ctx.seed).double()
    elbo = elbo_estimate(ctx.model, xs, n_samples=k, seed=ctx.seed).double()
    return {
        "items": items,
        "n_points": int(xs.shape[0]),
        "n_samples": k,
        "log_likelihood": float(ll.mean()),
        "log_likelihood_sem": float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else None,
        "elbo": float(elbo.mean()),
        "units": "nats per item (log density for Gaussian likelihoods)",
    }


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
def write_report(
    model,
    dataset,
    history,
    out_dir,
    *,
    seed: int = 0,
    sections: Optional[Sequence] = None,
    timings: Optional[dict] = None,
    extra: Optional[dict] = None,
    resolution: int = 150,
    margin: float = 0.25,
    max_points: Optional[int] = None,
    iwae_points: int = 256,
    iwae_samples: int = 64,
    checkpoint_name: Optional[str] = "model.safetensors",
    dpi: int = 120,
    files: Sequence[str] = (),
    **options,
) -> dict:
    """Write the analysis report of a trained model into ``out_dir``; returns the summary.

    Args:
        model: a trained model with ``encode_mean(x)``, ``decoder_for_analysis()`` (and, for
            the default sections, ``parameters()``, ``config``, ``elbo(x)``), e.g.
            :class:`latentgeo.models.VAE`.
        dataset: a :class:`latentgeo.datasets.Dataset` (``data``, ``labels``, ``item_shape``,
            ``name``, ``params``).
        history: the per-epoch training records (or ``None``).
        out_dir: report folder (created if missing; existing files are overwritten).
        seed: seed for the sections' randomness (subsets, Monte-Carlo estimates).
        sections: section names or :class:`ReportSection` objects to run (default: all
            registered, see :func:`report_sections`).
        timings: extra timings to record (e.g. ``{"train_s": 41.2}``).
        extra: extra top-level summary entries (e.g. the command line).
        resolution: grid points per axis of the magnification map.
        margin: padding of the plotted extent around the codes (fraction of their span).
        max_points: analyse a seeded subset of this many items (``None``: all).
        iwae_points, iwae_samples: subset size and importance samples of the IWAE estimate.
        eval_index: (option) indices of held-out items; the IWAE/ELBO estimates use up to
            ``iwae_points`` of them (default: a seeded subset of all items).
        checkpoint_name: file name of the saved model (``None``: do not save).
        dpi: figure resolution.
        files: files the caller already wrote into ``out_dir`` (e.g. the training log), to be
            listed in ``summary["files"]``. Further ``options`` are passed to sections
            (``ctx.options``).

    Returns:
        the summary dict, also written to ``out_dir/summary.json``: ``latentgeo_version``,
        ``created_utc``, ``seed``, one entry per section, ``timings`` (seconds per section and
        the given ``timings``), ``sections`` (names in run order) and ``files`` (everything
        written, relative to ``out_dir``, ``summary.json`` included).
    """
    from ._version import __version__

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ReportError(f"seed must be an integer, got {seed!r}")
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 2:
        raise ReportError(f"resolution must be an integer >= 2, got {resolution!r}")
    if not (isinstance(margin, (int, float)) and margin >= 0 and math.isfinite(margin)):
        raise ReportError(f"margin must be a finite non-negative number, got {margin!r}")
    if max_points is not None and (isinstance(max_points, bool) or int(max_points) != max_points or max_points < 2):
        raise ReportError(f"max_points must be an integer >= 2 or None, got {max_points!r}")
    for nm, v in (("iwae_points", iwae_points), ("iwae_samples", iwae_samples)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ReportError(f"{nm} must be a positive integer, got {v!r}")
    if not hasattr(dataset, "data"):
        raise ReportError(f"dataset must have a .data array (a latentgeo Dataset), got {type(dataset).__name__}")

    if sections is None:
        run = report_sections()
    else:
        run = []
        for s in sections:
            if isinstance(s, ReportSection):
                run.append(s)
            elif isinstance(s, str) and s in _SECTIONS:
                run.append(_SECTIONS[s])
            else:
                raise ReportError(f"unknown report section {s!r}; registered: {', '.join(_SECTIONS)}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"report folder {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(
        resolution=int(resolution), margin=float(margin), max_points=max_points, iwae_points=int(iwae_points),
        iwae_samples=int(iwae_samples), checkpoint_name=checkpoint_name, dpi=int(dpi),
    )
    opts.update(options)
    ctx = ReportContext(model=model, dataset=dataset, history=history, out_dir=out, seed=int(seed), options=opts)
    for f in files:
        if not (out / f).is_file():
            raise ReportError(f"file {f!r} listed in files= does not exist in {out}")
        ctx.path(f)
    summary = ctx.summary
    summary["latentgeo_version"] = __version__
    summary["created_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary["seed"] = int(seed)
    if extra:
        for k in extra:
            if k in _RESERVED:
                raise ReportError(f"extra key {k!r} is reserved")
        summary.update(extra)
    times = {k: float(v) for k, v in (timings or {}).items()}

    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    t_all = time.perf_counter()
    try:
        for sec in run:
            t0 = time.perf_counter()
            try:
                res = sec.fn(ctx)
            except ReportError:
                raise
            except Exception as exc:
                raise ReportSectionError(
                    f"report section {sec.name!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
            times[f"{sec.name}_s"] = round(time.perf_counter() - t0, 4)
            if res is not None:
                if not isinstance(res, dict):
                    raise ReportError(f"report section {sec.name!r} returned {type(res).__name__}, expected a dict")
                summary[sec.name] = res
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    times["report_s"] = round(time.perf_counter() - t_all, 4)
    summary["timings"] = times
    summary["sections"] = [s.name for s in run]
    ctx.path("summary.json")
    summary["files"] = list(ctx.files)
    clean = _jsonable(summary)
    _atomic_write_text(out / "summary.json", json.dumps(clean, indent=2, sort_keys=False) + "\n")
    return clean
