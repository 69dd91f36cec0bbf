"""Report section ``model``: model configuration and size."""

from __future__ import annotations

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


def _section_model(ctx: ReportContext) -> dict:
    if ctx.model is None:
        return {"skipped": "no model: the subject is a decoder and codes"}
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


SECTION = ReportSection(
    "model", _section_model, order=5, description="model configuration and size",
    defaults={},
)
