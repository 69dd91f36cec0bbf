"""``latentgeo train``: train a VAE and save its checkpoint and per-epoch log."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (
    CLIError, DATASETS, LIKELIHOODS, TRAIN_STATE, VARIANCES, add_report_options, fmt, int_at_least, latent_kinds,
    prepare_out, print_summary, refuse_overwrite, say, selected_sections, split_of, subset_dataset, train_model, widths, write_cli_report,
)

__all__ = ["add_parser", "run"]

#: posterior flows by latent (the latents validate them too)
LATENT_FLOWS = {"hyperbolic": ("tc", "whc"), "euclidean": ("realnvp", "nsf", "planar", "radial")}
FLOWS = ("tc", "whc", "realnvp", "nsf", "planar", "radial")


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to the subparsers ``sub``."""
    t = sub.add_parser(
        "train",
        parents=[common],
        help="train a VAE and save its checkpoint and per-epoch log",
        description="Train a VAE; writes OUT/model.safetensors and OUT/train_log.jsonl.",
    )
    t.add_argument("--data", required=True, choices=DATASETS, help="data set")
    t.add_argument("--out", required=True, type=Path, help="output folder (created)")
    t.add_argument("--latent", default="euclidean", choices=latent_kinds(), help="latent space (default euclidean)")
    t.add_argument("--family", default=None, choices=("vmf", "power"),
                   help="posterior family of --latent sphere: vmf (von Mises-Fisher, default) or power "
                        "(power spherical); an error with any other latent")
    t.add_argument("--flow", default=None, choices=FLOWS,
                   help="posterior flow: tc|whc for --latent hyperbolic (Bose et al. 2020), realnvp|nsf|planar|radial "
                   "for --latent euclidean (default none)")
    t.add_argument("--latent-dim", type=int_at_least(1, "latent-dim"), default=2, help="latent dimension (default 2)")
    t.add_argument("--likelihood", default="gaussian", choices=LIKELIHOODS, help="decoder likelihood (default gaussian)")
    t.add_argument("--epochs", type=int_at_least(1, "epochs"), default=100, help="training epochs (default 100)")
    t.add_argument("--batch-size", type=int_at_least(1, "batch-size"), default=128, help="mini-batch size (default 128)")
    t.add_argument("--hidden", type=widths, default=(64, 64), help="hidden layer widths, e.g. 64,64 (default)")
    t.add_argument("--variance", default=None, choices=VARIANCES,
                   help="Gaussian decoder variance after the mean phase (default rbf, Latent Space Oddity §4)")
    t.add_argument("--report", action="store_true", help="also write the analysis report into OUT")
    t.add_argument("--resume", action="store_true",
                   help=f"continue an interrupted run from OUT/{TRAIN_STATE} (give the same arguments)")
    t.add_argument("--force", action="store_true",
                   help="replace a previous run in OUT (model, log, trainer state); without it an OUT that "
                   "holds one is refused")
    add_report_options(t)
    t.set_defaults(func=run)
    return t


def run(args, argv: list[str]) -> int:
    t0 = time.perf_counter()
    if args.likelihood != "gaussian" and args.variance is not None:
        raise CLIError(f"--variance applies to the gaussian likelihood only (got --likelihood {args.likelihood})")
    variance = args.variance or "rbf"
    latent_kwargs = {}
    if args.family is not None:
        if args.latent != "sphere":
            raise CLIError(f"--family applies to --latent sphere only (got --latent {args.latent})")
        latent_kwargs["family"] = args.family
    if args.flow is not None:
        allowed = LATENT_FLOWS.get(args.latent, ())
        if args.flow not in allowed:
            raise CLIError(
                f"--flow {args.flow} does not apply to --latent {args.latent}"
                + (f" (choose one of {', '.join(allowed)})" if allowed else " (it has no posterior flows)")
            )
        if args.flow in ("tc", "whc", "realnvp", "nsf") and args.latent_dim < 2:
            raise CLIError(f"--flow {args.flow} (coupling layers) needs --latent-dim ≥ 2, got {args.latent_dim}")
        latent_kwargs["flow"] = args.flow
    latent_kwargs = latent_kwargs or None
    if args.report:
        selected_sections(args)  # check --skip before training
    if args.resume and args.force:
        raise CLIError("--resume continues the run in --out and --force replaces it: give one of them")
    refuse_overwrite(args.out, args)
    if args.resume and not (args.out / TRAIN_STATE).is_file():
        raise CLIError(f"--resume: no trainer state {args.out / TRAIN_STATE} to resume from")
    out = prepare_out(args.out)
    from ..datasets import load_dataset

    dataset = subset_dataset(load_dataset(args.data), args.max_items, args.seed)
    flow_txt = f" with a {args.flow} posterior flow" if args.flow else ""
    say(args, f"latentgeo train: {args.likelihood} VAE, {args.latent} latent of dimension {args.latent_dim}{flow_txt}, "
               f"on {args.data} ({len(dataset.data)} items), {args.epochs} epochs ...")
    model, history, train_s = train_model(
        args, dataset, args.latent, args.latent_dim, args.likelihood, args.hidden, variance, out, resumable=True,
        latent_kwargs=latent_kwargs,
    )
    if args.report:
        summary = write_cli_report(args, model, dataset, history, out, train_s, ["latentgeo", *argv])
        print_summary(summary, out, time.perf_counter() - t0, items=split_of(model, len(dataset))[1])
        return 0
    ckpt = out / "model.safetensors"
    model.save(ckpt)
    recs = list(getattr(history, "records", history))
    last = recs[-1] if recs else {}
    print(
        f"trained {len(recs)} epochs in {train_s:.1f} s; final train loss {fmt(last.get('train_loss'))}, "
        f"val loss {fmt(last.get('val_loss'))}\n  checkpoint: {ckpt}\n  log: {out / 'train_log.jsonl'}",
        flush=True,
    )
    return 0
