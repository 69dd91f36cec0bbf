"""What the subcommands share: constants, argument types, the output folder, training and the report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = [
    "CLIError", "int_at_least", "seed_arg", "widths", "latent_kinds", "say",
    "prepare_out", "refuse_overwrite", "subset_dataset", "train_model", "selected_sections", "write_cli_report", "fmt",
    "print_summary", "add_report_options", "common_parser", "PROG", "DATASETS", "LIKELIHOODS",
    "VARIANCES", "VAL_FRACTION", "TRAIN_STATE", "DEMO_EPOCHS", "RUN_FILES", "split_of",
]

PROG = "latentgeo"
DATASETS = ("digits", "moons", "circles", "tree")
LIKELIHOODS = ("gaussian", "bernoulli")
VARIANCES = ("rbf", "learned", "constant")
VAL_FRACTION = 0.1
TRAIN_STATE = "train_state.safetensors"
DEMO_EPOCHS = 300


class CLIError(ValueError):
    """A command-line argument or file is unusable (reported in one line, exit status 2)."""


def int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{what} must be >= {lo}, got {v}")
        return v

    parse.__name__ = what  # argparse shows it in "invalid <name> value"
    return parse


def seed_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63), got {v}")
    return v


def widths(text: str) -> tuple[int, ...]:
    try:
        ws = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden widths must be comma-separated integers, got {text!r}") from None
    if not ws or any(w < 1 for w in ws):
        raise argparse.ArgumentTypeError(f"hidden widths must be positive integers like 64,64, got {text!r}")
    return ws


def latent_kinds() -> tuple[str, ...]:
    """Latent kinds the model registry knows (the hyperspherical/hyperbolic issues add theirs)."""
    try:
        from ..models import latents as _lat
    except ImportError:  # the models package is not importable: nothing can be trained anyway
        return ("euclidean",)
    reg = getattr(_lat, "LATENTS", None) or getattr(_lat, "_REGISTRY", None)
    return tuple(sorted(reg)) if isinstance(reg, dict) and reg else ("euclidean",)


def say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise CLIError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    return out


#: what `latentgeo train` writes into --out (a run's files: replacing them loses a model)
RUN_FILES = ("model.safetensors", "train_log.jsonl", TRAIN_STATE, "summary.json")


def refuse_overwrite(out: Path, args) -> None:
    """Refuse to replace a previous run in ``out`` unless ``--resume`` or ``--force`` says how."""
    if getattr(args, "resume", False) or getattr(args, "force", False) or not out.is_dir():
        return
    found = [f for f in RUN_FILES if (out / f).exists()]
    if found:
        raise CLIError(
            f"--out {out} already holds a run ({', '.join(found)}); pass --resume to continue it "
            "or --force to replace it (or choose another --out)"
        )


def subset_dataset(dataset, max_items: Optional[int], seed: int):
    """A seeded random subset of a Dataset (same class, same metadata)."""
    if max_items is None or max_items >= len(dataset.data):
        return dataset
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset.data), generator=g)[:max_items].sort().values
    sub = dataset.subset(idx)
    sub.params["subset"] = {"max_items": int(max_items), "random_state": int(seed)}  # `latentgeo report` re-applies it
    return sub


def train_model(args, dataset, latent: str, latent_dim: int, likelihood: str, hidden, variance: str, out: Path,
           resumable: bool = False, latent_kwargs: Optional[dict] = None):
    """Build and train a VAE; returns ``(model, history, seconds)``.

    ``latent_kwargs``: extra keyword arguments of the latent (e.g. ``{"family": "power"}``,
    ``{"flow": "tc"}``).

    ``resumable``: write the trainer state to ``out/train_state.safetensors`` after every
    epoch, and resume from it when ``args.resume`` is set.
    """
    from ..models import VAE
    from ..training import train_vae

    model = VAE(
        dataset.dim,
        latent_dim,
        latent=latent,
        latent_kwargs=latent_kwargs or None,
        likelihood=likelihood,
        hidden=tuple(hidden),
        item_shape=tuple(dataset.item_shape),
        random_state=args.seed,
    )
    t0 = time.perf_counter()
    kwargs = dict(
        epochs=args.epochs,
        random_state=args.seed,
        progress=False if args.quiet else None,
        log_path=out / "train_log.jsonl",
        val_fraction=VAL_FRACTION,
        variance=variance if likelihood == "gaussian" else None,
    )
    if getattr(args, "batch_size", None) is not None:
        kwargs["batch_size"] = args.batch_size
    if resumable:
        state = out / TRAIN_STATE
        kwargs["checkpoint_path"] = state
        if getattr(args, "resume", False):
            if not state.is_file():
                raise CLIError(f"--resume: no trainer state {state} to resume from")
            kwargs["resume_from"] = state
    history = train_vae(model, dataset, **kwargs)
    return model, history, time.perf_counter() - t0


def selected_sections(args) -> list[str]:
    """Registered report sections minus ``--skip`` (unknown names are a usage error)."""
    from ..report import report_sections

    names = [s.name for s in report_sections()]
    unknown = sorted(set(args.skip) - set(names))
    if unknown:
        raise CLIError(f"--skip: unknown report section(s) {', '.join(unknown)}; sections: {', '.join(names)}")
    return [n for n in names if n not in set(args.skip)]


def split_of(model, n_items: int):
    """``(val_idx, words)``: the validation items of the split stored with ``model`` by the
    trainer (``model.metadata["split"]``), and a phrase saying which items they are; ``None``
    indices when the model stores no split or it was made for another number of items."""
    from ..datasets import split_indices

    sp = (getattr(model, "metadata", None) or {}).get("split")
    if not sp:
        return None, "all items (the checkpoint stores no train/validation split)"
    if int(sp["n_items"]) != n_items:
        return None, (f"all items (the checkpoint's split is of {sp['n_items']} items, the data set has {n_items})")
    _, val_idx = split_indices(n_items, float(sp["val_fraction"]), int(sp["random_state"]))
    if len(val_idx) == 0:
        return None, "all items (the model was trained without a validation split)"
    return val_idx, (f"the {len(val_idx)} validation items of the training split "
                     f"(val_fraction {sp['val_fraction']}, random_state {sp['random_state']})")


def write_cli_report(args, model, dataset, history, out: Path, train_s: float, command: list[str]) -> dict:
    from ..report import write_report

    val_idx, _ = split_of(model, len(dataset))  # the trainer's held-out items
    return write_report(
        model,
        dataset,
        history,
        out,
        random_state=args.seed,
        timings={"train_s": round(train_s, 3)},
        extra={"command": command},
        resolution=args.resolution,
        iwae_points=args.iwae_points,
        iwae_samples=args.iwae_samples,
        eval_index=val_idx,
        files=["train_log.jsonl"],
        sections=selected_sections(args),
    )


def fmt(x, spec=".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def print_summary(summary: dict, out: Path, total_s: float, items: Optional[str] = None) -> None:
    """Print the report's headline numbers; ``items``: which items the IWAE used, in words."""
    tr = summary.get("training", {}) or {}
    mag = summary.get("magnification", {}) or {}
    iw = summary.get("iwae", {}) or {}
    lines = [
        f"report written to {out}/ in {total_s:.1f} s",
        f"  epochs run: {tr.get('epochs_run', 'n/a')}   final train loss: {fmt(tr.get('final_train_loss'))}   "
        f"final val loss: {fmt(tr.get('final_val_loss'))}",
    ]
    if "log_likelihood" in iw:
        lines.append(f"  IWAE log-likelihood (K={iw['n_samples']}, {iw['n_points']} items): {iw['log_likelihood']:.4g} nats/item"
                     f"\n    on {items or iw.get('items', 'n/a')}" + (f" (a random {iw['n_points']} of them)" if items else ""))
    if mag.get("on_data"):
        near, far = mag.get("near_data") or {}, mag.get("far_from_data") or {}
        lines.append(
            f"  magnification √det M, median: on the data {mag['on_data']['median']:.3g}, "
            f"near it {fmt(near.get('median'), '.3g')}, far from it {fmt(far.get('median'), '.3g')}"
        )
    lines.append("  files: " + ", ".join(summary.get("files", [])))
    print("\n".join(lines), flush=True)




def add_report_options(sp) -> None:
    """``--skip`` and the hidden knobs for tests and quick looks (not part of the documented interface)."""
    sp.add_argument("--skip", action="append", default=[], metavar="SECTION",
                    help="leave out a report section (repeatable), e.g. a slow analysis; "
                    "names: see latentgeo.report.report_sections()")
    sp.add_argument("--max-items", type=int_at_least(10, "max-items"), default=None, help=argparse.SUPPRESS)
    sp.add_argument("--resolution", type=int_at_least(2, "resolution"), default=150, help=argparse.SUPPRESS)
    sp.add_argument("--iwae-points", type=int_at_least(1, "iwae-points"), default=256, help=argparse.SUPPRESS)
    sp.add_argument("--iwae-samples", type=int_at_least(1, "iwae-samples"), default=64, help=argparse.SUPPRESS)


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes (``--seed``, ``--quiet``, ``--threads``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=seed_arg, default=0, help="random seed (data split, initialisation, sampling); default 0")
    common.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    common.add_argument("--threads", type=int_at_least(1, "threads"), default=1,
                        help="torch CPU threads (default 1: these small networks gain nothing from more, "
                        "and extra threads slow down badly on a busy machine)")
    return common
