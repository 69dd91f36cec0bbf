"""Report section ``walks``: do random walks stay on the data? (``walks.png``, ``walks_strips.png``)

Walkers start at seeded training codes and take ``walks_steps`` steps of every method in
``walks_methods`` (:func:`latentgeo.random_walk`), with step sizes matched so that every walk's
RMS step is ``walks_relative_step`` of the codes' spread at the median code
(:func:`latentgeo.walks.matched_step_sizes`); MMALA targets the aggregate posterior
(:func:`latentgeo.walks.mixture_log_prob` of the encoder's posteriors). Reported per method: the
fraction of steps within the data support (nearest training code closer than
:func:`latentgeo.walks.support_threshold` of the codes), of final positions within it, the
acceptance rate (MMALA) and the stopped walkers. Figures: one trajectory per method on the
magnification map (2-D latents) and its decoded strip (image data).
"""

from __future__ import annotations

import torch

from .context import ReportContext, ReportSection

__all__ = ["SECTION"]

METHODS = ("euclidean", "lso", "brownian", "geodesic", "mmala")


def _methods(value) -> tuple:
    from .context import ReportError

    ms = tuple(m.strip() for m in value.split(",")) if isinstance(value, str) else tuple(value)
    bad = [m for m in ms if m not in METHODS]
    if bad or not ms:
        raise ReportError(f"walks_methods must name some of {', '.join(METHODS)}, got {value!r}")
    return ms


def _section_walks(ctx: ReportContext) -> dict:
    from .. import walks as W

    methods = _methods(ctx.options["walks_methods"])
    n_walkers, n_steps = int(ctx.options["walks_walkers"]), int(ctx.options["walks_steps"])
    codes, metric = ctx.codes, ctx.metric
    g = torch.Generator().manual_seed(int(ctx.random_state))
    z0 = codes[torch.randint(codes.shape[0], (n_walkers,), generator=g)]
    h_e, h_m = W.matched_step_sizes(metric, codes, ctx.options["walks_relative_step"])
    tau = W.support_threshold(codes)
    out = {"walkers": n_walkers, "steps": n_steps, "support_threshold": tau,
           "step_size": {"euclidean": h_e, "metric": h_m}, "methods": {}}
    log_prob = None
    if "mmala" in methods and ctx.chart is not None:
        out["methods"]["mmala"] = {"skipped": f"the encoder's posteriors are not Gaussian in the {ctx.chart_kind} chart, "
                                              "so there is no aggregate-posterior target"}
    elif "mmala" in methods:
        try:
            with torch.no_grad():
                post = ctx.model.encode(ctx.data)
            log_prob = W.mixture_log_prob(post.mean, post.stddev)
        except (AttributeError, NotImplementedError) as exc:
            out["methods"]["mmala"] = {"skipped": f"no Gaussian encoder posterior for the aggregate posterior ({exc})"}
    results = {}
    for m in methods:
        if m == "mmala" and log_prob is None:
            continue
        kw = {"log_prob": log_prob} if m == "mmala" else {}
        res = W.random_walk(metric, z0, n_steps, h_e if m == "euclidean" else h_m, method=m,
                            random_state=ctx.random_state, progress=False, **kw)
        results[m] = res
        out["methods"][m] = {
            "within_support": float(W.support_fraction(res, codes, tau).mean()),
            "final_within_support": float(W.support_fraction(res.trajectories[:, -1:], codes, tau).mean()),
            "acceptance": None if res.acceptance_rate is None else float(res.acceptance_rate.mean()),
            "stopped": int(res.stopped.sum()),
            "message": res.message,
        }
    if ctx.latent_dim == 2 and results:
        fig, ax = ctx.magnification_figure(title="Random walks from a training code (one per method)")
        codes_legend = ax.get_legend()
        lines = []
        for m, res in results.items():
            tr = res.trajectories[0, : int(res.steps_taken[0]) + 1].cpu().numpy()
            lines += ax.plot(tr[:, 0], tr[:, 1], lw=1.0, label=m)
        ax.plot([float(z0[0, 0])], [float(z0[0, 1])], "k*", ms=9)
        ax.legend(handles=lines, loc="lower left", fontsize=7, title="walk", title_fontsize=7)
        if codes_legend is not None:
            ax.add_artist(codes_legend)  # keep the codes' legend next to the walks'
        ctx.save_figure(fig, "walks.png")
    item_shape = tuple(ctx.item_shape or ())  # the data set's or the Subject's
    if len(item_shape) == 2 and results:
        n_frames = 10
        idx = torch.linspace(0, n_steps, n_frames).round().long()
        fig, axes = ctx.new_figure(figsize=(n_frames * 0.75, len(results) * 0.85), nrows=len(results), ncols=n_frames,
                                   squeeze=False)
        for r, (m, res) in enumerate(results.items()):
            frames = res.decode(ctx.decoder, steps=idx)[0]
            for c in range(n_frames):
                ax = axes[r, c]
                ax.imshow(frames[c].reshape(item_shape).cpu().numpy(), cmap="gray_r")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel(m, rotation=0, ha="right", va="center", fontsize=8)
        ctx.save_figure(fig, "walks_strips.png")
    return out


SECTION = ReportSection(
    "walks", _section_walks, order=80,
    description="walks.png, walks_strips.png: random walks per method, fraction of steps within the data support",
    defaults={"walks_walkers": 24, "walks_steps": 250, "walks_methods": METHODS, "walks_relative_step": 0.05},
)
