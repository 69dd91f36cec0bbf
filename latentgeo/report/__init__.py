"""The analysis report of a trained model: figures, ``summary.json`` and the checkpoint.

:func:`write_report` runs a list of *sections* in order. Each section is a
:class:`ReportSection`: a function ``fn(ctx: ReportContext) -> dict | None`` that may write
files into the report folder (through :meth:`ReportContext.save_figure` /
:meth:`ReportContext.path`) and returns a JSON-serialisable dict that becomes
``summary[section_name]``, with the options it reads and their defaults stated once, in
``ReportSection.defaults``. Its wall time is recorded in ``summary["timings"][name + "_s"]``.
Sections share the expensive quantities through the context, computed once on first use:
``ctx.codes`` (encoder means of the data), ``ctx.decoder`` / ``ctx.metric`` (the model's
analysis decoder and its expected pullback metric), ``ctx.extent`` and
``ctx.magnification_grid``.

One module per built-in section, assembled here (``order``): :mod:`.dataset` (0),
:mod:`.model` (5), :mod:`.training` (10), :mod:`.checkpoint` (20), :mod:`.magnification` (30,
``magnification.png`` and on-/off-data statistics), :mod:`.decoded_grid` (40), :mod:`.training_curves`
(50), :mod:`.iwae` (60, importance-weighted log-likelihood on held-out items), :mod:`.geodesics`
(70, geodesics between class centres), :mod:`.manifold` (75, curved latents: the codes on S² or in
the Poincaré disk, geodesics mapped back from the chart, chart-independence of their lengths),
:mod:`.clustering` (76, Euclidean vs geodesic k-means on the codes), :mod:`.walks` (80, random walks: fraction of steps
within the data support per method, decoded strips). A new built-in section is a module with a ``SECTION``
and one line in :data:`BUILTIN_SECTIONS` below.

Your own section, from a notebook or a script (:func:`register_section`)::

    from latentgeo.report import register_section

    @register_section("my_section", order=80, defaults={"my_n": 10})
    def my_section(ctx):
        if ctx.latent_dim != 2:
            return {"skipped": f"needs a 2-D latent space, got {ctx.latent_dim}"}
        fig, ax = ctx.magnification_figure()          # the heat map + codes, ready to draw on
        ...                                           # compute with ctx.metric, ctx.codes, ctx.labels
        ctx.save_figure(fig, "my_figure.png")
        return {"n": ctx.options["my_n"]}

The subject of a report is a trained model and its data set, or any decoder and codes
(:class:`Subject`; the model optional)::

    write_report(model, dataset, history, "report")
    write_report(Subject(decoder, codes, labels=labels), None, None, "report")

Without a model, the ``model``, ``training``, ``checkpoint``, ``iwae`` and ``training_curves``
sections say ``{"skipped": ...}``; the geometric ones run on the decoder. The last step writes
``index.html`` (:mod:`.html`): figures, tables and timings of every section, offline.

A section that cannot run on a model says so in its returned dict (``{"skipped": reason}``)
rather than silently writing nothing; an exception in a section aborts the report with a
:class:`ReportSectionError` naming the section (the original exception chained).

Example:
    >>> from latentgeo.report import report_sections
    >>> [s.name for s in report_sections()][:4]
    ['dataset', 'model', 'training', 'checkpoint']
"""

from . import checkpoint, dataset, decoded_grid, geodesics, iwae, magnification, model, training, training_curves
from . import clustering, manifold, walks
from .context import CONTEXT_DEFAULTS, ReportContext, ReportError, ReportSection, ReportSectionError
from .registry import _add, register_section, report_sections, unregister_section
from .subject import Subject
from .writer import write_report

#: the sections every report has, in the order they are listed (each runs at its ``order``)
BUILTIN_SECTIONS = (
    dataset.SECTION,
    model.SECTION,
    training.SECTION,
    checkpoint.SECTION,
    magnification.SECTION,
    decoded_grid.SECTION,
    training_curves.SECTION,
    iwae.SECTION,
    geodesics.SECTION,
    manifold.SECTION,
    clustering.SECTION,
    walks.SECTION,
)
for _s in BUILTIN_SECTIONS:
    _add(_s)
del _s

__all__ = [
    "BUILTIN_SECTIONS",
    "CONTEXT_DEFAULTS",
    "ReportContext",
    "ReportSection",
    "ReportError",
    "ReportSectionError",
    "Subject",
    "register_section",
    "unregister_section",
    "report_sections",
    "write_report",
]
