"""``latentgeo info``: verify a checkpoint and print its configuration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


__all__ = ["add_parser", "run"]


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand to the subparsers ``sub``."""
    i = sub.add_parser("info", help="verify a checkpoint and print its configuration",
                       description="Verify a checkpoint (format and digest) and print its configuration.")
    i.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint, or a folder holding model.safetensors")
    i.add_argument("--json", action="store_true", help="print the configuration as JSON only")
    i.set_defaults(func=run)
    return i


def run(args, argv: list[str]) -> int:
    from ..checkpoint import checkpoint_file, load_checkpoint

    state, config = load_checkpoint(args.checkpoint)  # verifies the header and the digest
    if args.json:
        print(json.dumps(config, indent=2, sort_keys=True))
        return 0
    n_params = sum(int(t.numel()) for t in state.values())
    print(f"checkpoint: {checkpoint_file(args.checkpoint)} (verified)")
    print(f"tensors: {len(state)}, numbers: {n_params}")
    print("config:")
    for line in json.dumps(config, indent=2, sort_keys=True).splitlines()[1:-1]:
        print(line)
    return 0
