"""Report section ``dataset``: data set name, size and shape."""

from __future__ import annotations

import numpy as np
import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


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


SECTION = ReportSection(
    "dataset", _section_dataset, order=0, description="data set name, size and shape",
    defaults={},
)
