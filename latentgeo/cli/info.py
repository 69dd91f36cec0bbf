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
    short = summarise(config)
    print("config:" + ("  (long entries summarised; --json prints everything)" if short != config else ""))
    for line in json.dumps(short, indent=2, sort_keys=True).splitlines()[1:-1]:
        print(line)
    return 0


def _history_words(h: dict) -> str:
    recs = [r for r in h.get("records") or [] if isinstance(r, dict)]
    if not recs:
        return "no epochs"
    phases: dict = {}
    for r in recs:
        phases[r.get("phase")] = phases.get(r.get("phase"), 0) + 1
    last = recs[-1]
    parts = [f"{len(recs)} epochs (" + ", ".join(f"{p}: {n}" for p, n in phases.items()) + ")"]
    for key in ("train_loss", "val_loss"):
        if isinstance(last.get(key), (int, float)):
            parts.append(f"last {key} {last[key]:.4g}")
    best = h.get("best_val_loss") or {}
    if best:
        parts.append("best val_loss " + ", ".join(f"{p}: {v:.4g}" for p, v in best.items() if isinstance(v, (int, float))))
    return "; ".join(parts)


def summarise(config, limit: int = 8):
    """The config with its long parts (the training history, optimizer groups, long lists) in words."""
    if isinstance(config, dict):
        out = {}
        for k, v in config.items():
            if k == "history" and isinstance(v, dict) and "records" in v:
                out[k] = _history_words(v)
            elif k == "optim_param_groups" and isinstance(v, list):
                out[k] = f"{len(v)} parameter group(s), lr " + ", ".join(str(g.get("lr")) for g in v if isinstance(g, dict))
            else:
                out[k] = summarise(v, limit)
        return out
    if isinstance(config, list) and len(config) > limit:
        head = ", ".join(json.dumps(v) for v in config[:3])
        return f"[{len(config)} items: {head}, ...]"
    if isinstance(config, list):
        return [summarise(v, limit) for v in config]
    return config
