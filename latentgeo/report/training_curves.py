"""Report section ``training_curves``: training_curves.png."""

from __future__ import annotations

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


def _section_training_curves(ctx: ReportContext) -> dict:
    if ctx.history is None:
        return {"skipped": "no training history given" + (" (no model)" if ctx.model is None else "")}
    from ..plotting import plot_training_curves

    fig, ax = ctx.new_figure(figsize=(7.0, 4.2))
    plot_training_curves(ctx.history, ax=ax)
    ctx.save_figure(fig, "training_curves.png")
    return {}


SECTION = ReportSection(
    "training_curves", _section_training_curves, order=50, description="training_curves.png",
    defaults={},
)
