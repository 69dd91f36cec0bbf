"""Report section ``decoded_grid``: decoded_grid.png: decoder means over the latent plane."""

from __future__ import annotations

import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]


def _section_decoded_grid(ctx: ReportContext) -> dict:
    if ctx.latent_dim != 2:
        return {"skipped": f"the decoded grid needs a 2-D latent space; this model's is {ctx.latent_dim}-D"}
    from ..plotting import plot_image_grid

    item_shape = ctx.item_shape
    if item_shape is None or len(tuple(item_shape)) != 2:
        return {"skipped": f"items of shape {item_shape} are not images"}
    n = int(ctx.options["grid_n"])
    fig, ax = ctx.new_figure(figsize=(6.4, 6.4))
    data = ctx.data
    clip = None if data is None else (float(data.min()), float(data.max()))  # None: the decoded range
    fn = ctx.mean_fn()
    masked = ctx.chart_kind == "poincare"
    if masked:  # tiles outside the Poincaré disk (NaN from mean_fn) are drawn as the background value
        fill = 0.0 if clip is None else clip[0]

        def fn(z, _f=fn):
            return torch.nan_to_num(_f(z), nan=fill)

    plot_image_grid(fn, ctx.extent, n=n, item_shape=tuple(item_shape), ax=ax, clip=clip,
                    title="Decoder mean μ(z) over the latent plane", dtype=ctx.codes.dtype)
    if masked:
        import math

        import numpy as np

        r = 1.0 / math.sqrt(ctx.chart.c)
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(r * np.cos(t), r * np.sin(t), color="tab:red", lw=0.8)
        ax.set_xlim(*ctx.extent[:2])
        ax.set_ylim(*ctx.extent[2:])
    ctx.save_figure(fig, "decoded_grid.png")
    return {"n": n, "extent": list(ctx.extent)}


SECTION = ReportSection(
    "decoded_grid", _section_decoded_grid, order=40, description="decoded_grid.png: decoder means over the latent plane",
    defaults={'grid_n': 15},
)
