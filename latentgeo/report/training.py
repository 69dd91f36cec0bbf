"""Report section ``training``: epochs run and final losses."""

from __future__ import annotations

import math

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


from ..plotting import history_records


def _section_training(ctx: ReportContext) -> dict:
    if ctx.history is None:
        return {"skipped": "no training history given" + (" (no model)" if ctx.model is None else "")}
    recs = [r for r in history_records(ctx.history) if r.get("phase") != "rbf"]
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


SECTION = ReportSection(
    "training", _section_training, order=10, description="epochs run and final losses",
    defaults={},
)
