"""The report driver: :func:`write_report` runs the sections and writes ``summary.json`` and ``index.html``."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .context import ReportContext, ReportError, ReportSection, ReportSectionError, atomic_write_text, jsonable
from .registry import RESERVED, get_section, known_options, report_sections

__all__ = ["write_report"]


def write_report(
    model,
    dataset,
    history,
    out_dir,
    *,
    random_state: int = 0,
    sections: Optional[Sequence] = None,
    timings: Optional[dict] = None,
    extra: Optional[dict] = None,
    files: Sequence[str] = (),
    html: bool = True,
    **options,
) -> dict:
    """Write the analysis report of a trained model, or of any decoder, into ``out_dir``; returns the summary.

    Two forms: ``write_report(model, dataset, history, out_dir)`` for a trained model and its
    data set, and ``write_report(subject, None, None, out_dir)`` for a
    :class:`~latentgeo.report.subject.Subject` (a decoder and codes; the model, data and
    history optional). The sections that need what the subject lacks say ``{"skipped": ...}``.

    Args:
        model: a trained model with ``encode_mean(x)``, ``decoder_for_analysis()`` (and, for
            the default sections, ``parameters()``, ``config``, ``elbo(x)``), e.g.
            :class:`latentgeo.models.VAE`; or a :class:`~latentgeo.report.subject.Subject`.
        dataset: a :class:`latentgeo.datasets.Dataset` (``data``, ``labels``, ``item_shape``,
            ``name``, ``params``); ``None`` with a Subject.
        history: the per-epoch training records (or ``None``; with a Subject, its ``history``).
        out_dir: report folder (created if missing; existing files are overwritten). Complete or
            absent: the sections write into a staging folder and the files move into place only
            when all succeeded; a failure leaves ``out_dir`` as it was (removed if it was created).
        random_state: int seed for the sections' randomness (subsets, Monte-Carlo estimates).
        sections: section names or :class:`ReportSection` objects to run (default: all
            registered, see :func:`report_sections`).
        timings: extra timings to record (e.g. ``{"train_s": 41.2}``).
        extra: extra top-level summary entries (e.g. the command line).
        files: files the caller already wrote into ``out_dir`` (e.g. the training log), to be
            listed in ``summary["files"]``.
        html: also write ``index.html`` (:func:`latentgeo.report.html.write_html`): the
            figures, the tables and the numbers of the summary, section by section, with what
            each section computed and how long it took; it opens offline.
        options: report options, each known to the report (:data:`CONTEXT_DEFAULTS`:
            ``resolution``, ``margin``, ``max_points``, ``dpi``, ``cmap``) or to a registered
            section (its ``defaults``, e.g. ``checkpoint_name``, ``iwae_points``,
            ``iwae_samples``, ``eval_index``, ``grid_n``, ``geodesic_tol``); an unknown option is
            a :class:`ReportError`. Sections see them merged over the defaults as ``ctx.options``.

    Returns:
        the summary dict, also written to ``out_dir/summary.json`` (and shown in
        ``out_dir/index.html``): ``latentgeo_version``,
        ``created_utc``, ``random_state``, one entry per section, ``timings`` (seconds per section and
        the given ``timings``), ``sections`` (names in run order) and ``files`` (everything
        written, relative to ``out_dir``, ``summary.json`` included).
    """
    from .._version import __version__

    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ReportError(f"random_state must be an integer, got {random_state!r}")
    known = known_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ReportError(f"unknown report option(s) {unknown}; known: {', '.join(sorted(known))}")
    opts = {**known, **options}
    resolution, margin, max_points = opts["resolution"], opts["margin"], opts["max_points"]
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 2:
        raise ReportError(f"resolution must be an integer >= 2, got {resolution!r}")
    if not (isinstance(margin, (int, float)) and margin >= 0 and math.isfinite(margin)):
        raise ReportError(f"margin must be a finite non-negative number, got {margin!r}")
    if max_points is not None and (isinstance(max_points, bool) or int(max_points) != max_points or max_points < 2):
        raise ReportError(f"max_points must be an integer >= 2 or None, got {max_points!r}")
    if isinstance(opts["dpi"], bool) or not isinstance(opts["dpi"], (int, np.integer)) or opts["dpi"] < 10:
        raise ReportError(f"dpi must be an integer >= 10, got {opts['dpi']!r}")
    from .subject import Subject

    subject = None
    if isinstance(model, Subject):
        if dataset is not None or history is not None:
            raise ReportError("with a Subject, pass dataset=None and history=None (the subject carries its data "
                              "and history)")
        subject, model, history = model, model.model, model.history
    elif not hasattr(dataset, "data"):
        raise ReportError(f"dataset must have a .data array (a latentgeo Dataset), got {type(dataset).__name__}")

    if sections is None:
        run = report_sections()
    else:
        run = []
        for s in sections:
            if isinstance(s, ReportSection):
                run.append(s)
            elif isinstance(s, str) and get_section(s) is not None:
                run.append(get_section(s))
            else:
                names = ", ".join(x.name for x in report_sections())
                raise ReportError(f"unknown report section {s!r}; registered: {names}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"report folder {out} exists and is not a directory")
    for f in files:
        if not (out / f).is_file():
            raise ReportError(f"file {f!r} listed in files= does not exist in {out}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # complete or absent: sections write into a staging folder inside out/; only when every
    # section has succeeded are the files moved into place (each move atomic), summary.json last
    stage = Path(tempfile.mkdtemp(prefix=".report-partial-", dir=out))
    try:
        clean = _write(model, dataset, history, stage, random_state, run, opts, resolution, margin, timings, extra,
                       files, __version__, subject=subject, html=html)
        for rel in clean["files"]:
            src = stage / rel
            if rel != "summary.json" and src.is_file():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, out / rel)
        os.replace(stage / "summary.json", out / "summary.json")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return clean


def _write(model, dataset, history, out, random_state, run, opts, resolution, margin, timings, extra, files,
           __version__, subject=None, html=True) -> dict:
    opts.update(resolution=int(resolution), margin=float(margin))
    ctx = ReportContext(model=model, dataset=dataset, history=history, out_dir=out, random_state=int(random_state),
                        options=opts, subject=subject)
    for f in files:
        ctx.files.append(str(Path(f)))
    summary = ctx.summary
    summary["latentgeo_version"] = __version__
    summary["created_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary["random_state"] = int(random_state)
    if extra:
        for k in extra:
            if k in RESERVED:
                raise ReportError(f"extra key {k!r} is reserved")
        summary.update(extra)
    times = {k: float(v) for k, v in (timings or {}).items()}
    if ctx.chart_kind is not None:  # curved latents: the sections run in this chart (see ReportContext.chart)
        summary["chart"] = ctx.chart_info()

    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    t_all = time.perf_counter()
    section_files: dict = {}
    try:
        for sec in run:
            n_files = len(ctx.files)
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
            section_files[sec.name] = ctx.files[n_files:]
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
    if html:
        ctx.path("index.html")
    summary["files"] = list(ctx.files)
    clean = jsonable(summary)
    atomic_write_text(out / "summary.json", json.dumps(clean, indent=2, sort_keys=False) + "\n")
    if html:  # last: the page shows the summary as written
        from .html import write_html

        write_html(clean, out, sections=[(s.name, s.description, section_files.get(s.name, [])) for s in run])
    return clean
