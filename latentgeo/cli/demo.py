"""``latentgeo demo``: train a 2-D Gaussian VAE on the digits and write the analysis report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (
    DEMO_EPOCHS, add_report_options, int_at_least, prepare_out, print_summary, say, selected_sections, split_of, subset_dataset,
    train_model, write_cli_report,
)

__all__ = ["add_parser", "run"]


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to the subparsers ``sub``."""
    d = sub.add_parser(
        "demo",
        parents=[common],
        help="train a 2-D Gaussian VAE on the digits and write the analysis report",
        description="Train a 2-D Gaussian VAE (RBF variance) on scikit-learn's 8x8 digits, save the "
        "checkpoint and write the report (magnification map, decoded grid, training curves, summary.json).",
    )
    d.add_argument("--out", required=True, type=Path, help="report folder (created; files in it are overwritten)")
    d.add_argument("--epochs", type=int_at_least(1, "epochs"), default=DEMO_EPOCHS,
                   help=f"training epochs (default {DEMO_EPOCHS})")
    add_report_options(d)
    d.add_argument("--batch-size", type=int_at_least(1, "batch-size"), default=None, help=argparse.SUPPRESS)
    d.set_defaults(func=run)
    return d


def run(args, argv: list[str]) -> int:
    t0 = time.perf_counter()
    selected_sections(args)  # check --skip before training
    out = prepare_out(args.out)
    from ..datasets import load_dataset

    dataset = subset_dataset(load_dataset("digits"), args.max_items, args.seed)
    say(args, f"latentgeo demo: training a 2-D Gaussian VAE on {len(dataset.data)} digits for {args.epochs} epochs ...")
    model, history, train_s = train_model(args, dataset, "euclidean", 2, "gaussian", (64, 64), "rbf", out)
    say(args, f"latentgeo demo: trained in {train_s:.1f} s; writing the report ...")
    summary = write_cli_report(args, model, dataset, history, out, train_s, ["latentgeo", *argv])
    print_summary(summary, out, time.perf_counter() - t0, items=split_of(model, len(dataset))[1])
    return 0
