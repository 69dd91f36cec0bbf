"""Report section ``checkpoint``: the trained model (safetensors weights + JSON config)."""

from __future__ import annotations

from .context import ReportContext, ReportError, ReportSection

__all__ = ["SECTION"]


def _section_checkpoint(ctx: ReportContext) -> dict:
    name = ctx.options["checkpoint_name"]
    if name is None:
        return {"skipped": "checkpoint_name=None"}
    if ctx.model is None:
        return {"skipped": "no model: the subject is a decoder and codes"}
    if not str(name).endswith(".safetensors"):
        raise ReportError(f"checkpoint_name must end in .safetensors, got {name!r}")
    if not hasattr(ctx.model, "save"):
        raise ReportError(f"{type(ctx.model).__name__} has no save(path) method; pass checkpoint_name=None")
    path = ctx.path(name)
    ctx.model.save(path)
    if not path.is_file():
        raise ReportError(f"{type(ctx.model).__name__}.save({path}) did not write the file")
    return {"path": name, "bytes": path.stat().st_size}


SECTION = ReportSection(
    "checkpoint", _section_checkpoint, order=20, description="the trained model (safetensors weights + JSON config)",
    defaults={'checkpoint_name': 'model.safetensors'},
)
