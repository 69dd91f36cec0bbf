"""Report section ``iwae``: IWAE log-likelihood and ELBO on held-out items."""

from __future__ import annotations

import math

import torch

from .context import ReportContext, ReportError, ReportSection

__all__ = ["SECTION"]


def _section_iwae(ctx: ReportContext) -> dict:
    from ..training import elbo_estimate, iwae_log_likelihood

    n_pts, k = ctx.options["iwae_points"], ctx.options["iwae_samples"]
    for nm, v in (("iwae_points", n_pts), ("iwae_samples", k)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ReportError(f"{nm} must be a positive integer, got {v!r}")
    n_pts, k = int(n_pts), int(k)
    if ctx.model is None:
        return {"skipped": "no model: the subject is a decoder and codes"}
    x = ctx.all_data
    if x is None:
        return {"skipped": "no data items to evaluate the likelihood of"}
    g = torch.Generator().manual_seed(ctx.random_state)
    idx = ctx.options["eval_index"]
    if idx is not None and len(idx) > 0:
        idx = torch.as_tensor(idx, dtype=torch.long)
        items = "validation"
    else:
        idx = torch.arange(x.shape[0])
        items = "all (no validation indices given)"
    idx = idx[torch.randperm(len(idx), generator=g)[:n_pts]].sort().values
    xs = x[idx].to(device=ctx.param_device, dtype=ctx.param_dtype)
    ll = iwae_log_likelihood(ctx.model, xs, k=k, random_state=ctx.random_state).double()
    elbo = elbo_estimate(ctx.model, xs, n_samples=k, random_state=ctx.random_state).double()
    return {
        "items": items,
        "n_points": int(xs.shape[0]),
        "n_samples": k,
        "log_likelihood": float(ll.mean()),
        "log_likelihood_sem": float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else None,
        "elbo": float(elbo.mean()),
        "units": "nats per item (log density for Gaussian likelihoods)",
    }


SECTION = ReportSection(
    "iwae", _section_iwae, order=60, description="IWAE log-likelihood and ELBO on held-out items",
    defaults={'iwae_points': 256, 'iwae_samples': 64, 'eval_index': None},
)
