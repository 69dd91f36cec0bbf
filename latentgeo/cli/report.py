"""``latentgeo report``: write the analysis report of a saved model (no training)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import CLIError, DATASETS, add_report_options, prepare_out, print_summary, say, selected_sections, split_of, subset_dataset

__all__ = ["add_parser", "run"]


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the subparsers ``sub``."""
    r = sub.add_parser(
        "report",
        parents=[common],
        help="write the analysis report of a saved model (no training)",
        description="Write the analysis report of a saved VAE checkpoint into OUT (no training). The data set "
        "is the one recorded in the checkpoint unless --data is given; the training curves come from --log or "
        "train_log.jsonl beside the checkpoint when there is one.",
    )
    r.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint, or a folder holding model.safetensors")
    r.add_argument("--out", required=True, type=Path, help="report folder (created; files in it are overwritten)")
    r.add_argument("--data", choices=DATASETS, default=None, help="data set to analyse (default: the checkpoint's)")
    r.add_argument("--log", type=Path, default=None, help="JSON-lines training log for the training curves")
    add_report_options(r)
    r.set_defaults(func=run)
    return r


def run(args, argv: list[str]) -> int:
    from ..checkpoint import checkpoint_file
    from ..datasets import load_dataset
    from ..models import VAE
    from ..report import write_report

    t0 = time.perf_counter()
    sections = selected_sections(args)
    model = VAE.load(args.checkpoint)  # CheckpointError (a ValueError) names the file and the problem
    ckpt = checkpoint_file(args.checkpoint)
    subset = None
    if args.data is not None:
        dataset = load_dataset(args.data)
    else:
        info = (model.metadata or {}).get("dataset")
        if not info or "name" not in info:
            raise CLIError(f"checkpoint {ckpt} does not record its data set; pass --data")
        params = dict(info.get("params") or {})
        subset = params.pop("subset", None)  # the model was trained on a subset (latentgeo ... --max-items)
        dataset = load_dataset(info["name"], **params)
    if dataset.dim != model.data_dim:
        raise CLIError(f"data set {dataset.name!r} has items of width {dataset.dim} but the model expects {model.data_dim}")
    if args.max_items is not None:
        dataset = subset_dataset(dataset, args.max_items, args.seed)
    elif subset is not None:
        dataset = subset_dataset(dataset, int(subset["max_items"]), int(subset["random_state"]))
    log = args.log if args.log is not None else ckpt.parent / "train_log.jsonl"
    if args.log is not None and not log.is_file():
        raise CLIError(f"--log: no training log at {log}")
    history = log if log.is_file() else None
    out = prepare_out(args.out)
    val_idx, which = split_of(model, len(dataset))
    say(args, f"latentgeo report: analysing {ckpt} on {dataset.name} ({len(dataset)} items) ...")
    say(args, f"latentgeo report: IWAE on {which}")
    summary = write_report(
        model, dataset, history, out, random_state=args.seed, extra={"command": ["latentgeo", *argv], "source": str(ckpt)},
        resolution=args.resolution, iwae_points=args.iwae_points, iwae_samples=args.iwae_samples,
        eval_index=val_idx, sections=sections,
    )
    print_summary(summary, out, time.perf_counter() - t0, items=which)
    return 0
