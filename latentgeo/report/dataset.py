"""Report section ``dataset``: data set name, size and shape."""

from __future__ import annotations

import numpy as np
import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


def _section_dataset(ctx: ReportContext) -> dict:
    if ctx.subject is not None:
        return _subject_dataset(ctx)
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


def _subject_dataset(ctx: ReportContext) -> dict:
    """The codes (and data, labels) of a :class:`~latentgeo.report.subject.Subject`."""
    sub = ctx.subject
    x = ctx.all_data
    out = {
        "name": ctx.name,
        "n_items": ctx.n_items,
        "latent_dim": ctx.latent_dim,
        "decoder": type(sub.decoder).__name__,
        "data_dim": None if x is None else int(x.shape[1]),
        "item_shape": None if ctx.item_shape is None else list(ctx.item_shape),
        "n_analysed": int(ctx.codes.shape[0]),
        "params": dict(sub.params or {}),
    }
    if sub.labels is not None:
        out["classes"] = sorted(int(c) for c in np.unique(sub.labels))
        out["n_classes"] = len(out["classes"])
    return out


SECTION = ReportSection(
    "dataset", _section_dataset, order=0, description="data set (or codes) name, size and shape",
    defaults={},
)
