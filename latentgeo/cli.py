"""The ``latentgeo`` command line.

Subcommands::

    latentgeo demo  --out DIR [--epochs N] [--seed S] [--skip SECTION] [--threads T] [--quiet]
        The main job: train a 2-D Gaussian VAE on the bundled 8×8 digits (mean first, then
        the post-hoc RBF variance of Latent Space Oddity §4), save the checkpoint and write
        the analysis report (magnification map, decoded grid, training curves,
        summary.json, and every section registered in latentgeo.report).

    latentgeo train --data {digits,moons,circles,tree} --out DIR [--latent euclidean]
                    [--latent-dim 2] [--likelihood gaussian|bernoulli] [--epochs N]
                    [--batch-size B] [--seed S] [--hidden 64,64] [--variance rbf|learned|constant]
                    [--report] [--resume] [--skip SECTION] [--threads T] [--quiet]
        Train a VAE; writes DIR/model.safetensors, the per-epoch log DIR/train_log.jsonl and
        the resumable trainer state DIR/train_state.safetensors (and the report with
        --report). --resume continues an interrupted run from that state.

    latentgeo report CHECKPOINT --out DIR [--data NAME] [--log LOG] [--skip SECTION]
        Write the analysis report of a saved model (no training); the data set is the one
        recorded in the checkpoint unless --data is given.

    latentgeo info CHECKPOINT [--json]
        Verify a checkpoint (format, digest) and print its configuration.

Bad arguments (unknown data set, non-positive epochs, missing or corrupt checkpoint, an
output path that is a file, ...) print one line ``latentgeo <cmd>: error: <what>`` on
stderr and exit with status 2, without a traceback. Progress bars are shown only when
stderr is a terminal and ``--quiet`` is not given.

Use from Python: ``latentgeo.cli.main(["demo", "--out", "report"])`` returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

PROG = "latentgeo"
DATASETS = ("digits", "moons", "circles", "tree")
LIKELIHOODS = ("gaussian", "bernoulli")
VARIANCES = ("rbf", "learned", "constant")
VAL_FRACTION = 0.1
TRAIN_STATE = "train_state.safetensors"
DEMO_EPOCHS = 300


class CLIError(ValueError):
    """A command-line argument or file is unusable (reported in one line, exit status 2)."""


# ------------------------------------------------------------------------------------------
# argument types
# ------------------------------------------------------------------------------------------
def _int_at_least(lo: int, what: str):
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


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63), got {v}")
    return v


def _widths(text: str) -> tuple[int, ...]:
    try:
        ws = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden widths must be comma-separated integers, got {text!r}") from None
    if not ws or any(w < 1 for w in ws):
        raise argparse.ArgumentTypeError(f"hidden widths must be positive integers like 64,64, got {text!r}")
    return ws


def _latent_kinds() -> tuple[str, ...]:
    """Latent kinds the model registry knows (the hyperspherical/hyperbolic issues add theirs)."""
    try:
        from .models import latents as _lat
    except ImportError:  # the models package is not importable: nothing can be trained anyway
        return ("euclidean",)
    reg = getattr(_lat, "LATENTS", None) or getattr(_lat, "_REGISTRY", None)
    return tuple(sorted(reg)) if isinstance(reg, dict) and reg else ("euclidean",)


# ------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Riemannian geometry of VAE latent spaces: train, analyse, report.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{demo,train,report,info}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=_seed, default=0, help="random seed (data split, initialisation, sampling); default 0")
    common.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    common.add_argument("--threads", type=_int_at_least(1, "threads"), default=1,
                        help="torch CPU threads (default 1: these small networks gain nothing from more, "
                        "and extra threads slow down badly on a busy machine)")

    # hidden knobs for tests and quick looks (not part of the documented interface)
    def hidden(sp):
        sp.add_argument("--skip", action="append", default=[], metavar="SECTION",
                        help="leave out a report section (repeatable), e.g. a slow analysis; "
                        "names: see latentgeo.report.report_sections()")
        sp.add_argument("--max-items", type=_int_at_least(10, "max-items"), default=None, help=argparse.SUPPRESS)
        sp.add_argument("--resolution", type=_int_at_least(2, "resolution"), default=150, help=argparse.SUPPRESS)
        sp.add_argument("--iwae-points", type=_int_at_least(1, "iwae-points"), default=256, help=argparse.SUPPRESS)
        sp.add_argument("--iwae-samples", type=_int_at_least(1, "iwae-samples"), default=64, help=argparse.SUPPRESS)

    d = sub.add_parser(
        "demo",
        parents=[common],
        help="train a 2-D Gaussian VAE on the digits and write the analysis report",
        description="Train a 2-D Gaussian VAE (RBF variance) on scikit-learn's 8x8 digits, save the "
        "checkpoint and write the report (magnification map, decoded grid, training curves, summary.json).",
    )
    d.add_argument("--out", required=True, type=Path, help="report folder (created; files in it are overwritten)")
    d.add_argument("--epochs", type=_int_at_least(1, "epochs"), default=DEMO_EPOCHS,
                   help=f"training epochs (default {DEMO_EPOCHS})")
    hidden(d)
    d.add_argument("--batch-size", type=_int_at_least(1, "batch-size"), default=None, help=argparse.SUPPRESS)
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser(
        "train",
        parents=[common],
        help="train a VAE and save its checkpoint and per-epoch log",
        description="Train a VAE; writes OUT/model.safetensors and OUT/train_log.jsonl.",
    )
    t.add_argument("--data", required=True, choices=DATASETS, help="data set")
    t.add_argument("--out", required=True, type=Path, help="output folder (created)")
    t.add_argument("--latent", default="euclidean", choices=_latent_kinds(), help="latent space (default euclidean)")
    t.add_argument("--latent-dim", type=_int_at_least(1, "latent-dim"), default=2, help="latent dimension (default 2)")
    t.add_argument("--likelihood", default="gaussian", choices=LIKELIHOODS, help="decoder likelihood (default gaussian)")
    t.add_argument("--epochs", type=_int_at_least(1, "epochs"), default=100, help="training epochs (default 100)")
    t.add_argument("--batch-size", type=_int_at_least(1, "batch-size"), default=128, help="mini-batch size (default 128)")
    t.add_argument("--hidden", type=_widths, default=(64, 64), help="hidden layer widths, e.g. 64,64 (default)")
    t.add_argument("--variance", default=None, choices=VARIANCES,
                   help="Gaussian decoder variance after the mean phase (default rbf, Latent Space Oddity §4)")
    t.add_argument("--report", action="store_true", help="also write the analysis report into OUT")
    t.add_argument("--resume", action="store_true",
                   help=f"continue an interrupted run from OUT/{TRAIN_STATE} (give the same arguments)")
    hidden(t)
    t.set_defaults(func=_cmd_train)

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
    hidden(r)
    r.set_defaults(func=_cmd_report)

    i = sub.add_parser("info", help="verify a checkpoint and print its configuration",
                       description="Verify a checkpoint (format and digest) and print its configuration.")
    i.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint, or a folder holding model.safetensors")
    i.add_argument("--json", action="store_true", help="print the configuration as JSON only")
    i.set_defaults(func=_cmd_info)
    return p


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _progress_quiet(args) -> bool:
    return bool(args.quiet) or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise CLIError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    return out


def _subset(dataset, max_items: Optional[int], seed: int):
    """A seeded random subset of a Dataset (same class, same metadata)."""
    if max_items is None or max_items >= len(dataset.data):
        return dataset
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset.data), generator=g)[:max_items].sort().values
    sub = dataset.subset(idx)
    sub.params["subset"] = {"max_items": int(max_items), "seed": int(seed)}  # `latentgeo report` re-applies it
    return sub


def _train(args, dataset, latent: str, latent_dim: int, likelihood: str, hidden, variance: str, out: Path,
           resumable: bool = False):
    """Build and train a VAE; returns ``(model, history, seconds)``.

    ``resumable``: write the trainer state to ``out/train_state.safetensors`` after every
    epoch, and resume from it when ``args.resume`` is set.
    """
    from .models import VAE
    from .training import train_vae

    model = VAE(
        dataset.dim,
        latent_dim,
        latent=latent,
        likelihood=likelihood,
        hidden=tuple(hidden),
        item_shape=tuple(dataset.item_shape),
        seed=args.seed,
    )
    t0 = time.perf_counter()
    kwargs = dict(
        epochs=args.epochs,
        seed=args.seed,
        quiet=_progress_quiet(args),
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


def _sections(args) -> list[str]:
    """Registered report sections minus ``--skip`` (unknown names are a usage error)."""
    from .report import report_sections

    names = [s.name for s in report_sections()]
    unknown = sorted(set(args.skip) - set(names))
    if unknown:
        raise CLIError(f"--skip: unknown report section(s) {', '.join(unknown)}; sections: {', '.join(names)}")
    return [n for n in names if n not in set(args.skip)]


def _report(args, model, dataset, history, out: Path, train_s: float, command: list[str]) -> dict:
    from .report import write_report
    from .training import split_indices

    _, val_idx = split_indices(len(dataset), VAL_FRACTION, args.seed)  # the trainer's held-out items
    return write_report(
        model,
        dataset,
        history,
        out,
        seed=args.seed,
        timings={"train_s": round(train_s, 3)},
        extra={"command": command},
        resolution=args.resolution,
        iwae_points=args.iwae_points,
        iwae_samples=args.iwae_samples,
        eval_index=val_idx,
        files=["train_log.jsonl"],
        sections=_sections(args),
    )


def _fmt(x, spec=".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _print_summary(summary: dict, out: Path, total_s: float) -> None:
    tr = summary.get("training", {}) or {}
    mag = summary.get("magnification", {}) or {}
    iw = summary.get("iwae", {}) or {}
    lines = [
        f"report written to {out}/ in {total_s:.1f} s",
        f"  epochs run: {tr.get('epochs_run', 'n/a')}   final train loss: {_fmt(tr.get('final_train_loss'))}   "
        f"final val loss: {_fmt(tr.get('final_val_loss'))}",
    ]
    if "log_likelihood" in iw:
        lines.append(f"  IWAE log-likelihood (K={iw['n_samples']}, {iw['n_points']} items): {iw['log_likelihood']:.4g} nats/item")
    if mag.get("on_data"):
        near, far = mag.get("near_data") or {}, mag.get("far_from_data") or {}
        lines.append(
            f"  magnification √det M, median: on the data {mag['on_data']['median']:.3g}, "
            f"near it {_fmt(near.get('median'), '.3g')}, far from it {_fmt(far.get('median'), '.3g')}"
        )
    lines.append("  files: " + ", ".join(summary.get("files", [])))
    print("\n".join(lines), flush=True)


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------
def _cmd_demo(args, argv: list[str]) -> int:
    t0 = time.perf_counter()
    _sections(args)  # check --skip before training
    out = _prepare_out(args.out)
    from .datasets import load_dataset

    dataset = _subset(load_dataset("digits"), args.max_items, args.seed)
    _say(args, f"latentgeo demo: training a 2-D Gaussian VAE on {len(dataset.data)} digits for {args.epochs} epochs ...")
    model, history, train_s = _train(args, dataset, "euclidean", 2, "gaussian", (64, 64), "rbf", out)
    _say(args, f"latentgeo demo: trained in {train_s:.1f} s; writing the report ...")
    summary = _report(args, model, dataset, history, out, train_s, ["latentgeo", *argv])
    _print_summary(summary, out, time.perf_counter() - t0)
    return 0


def _cmd_train(args, argv: list[str]) -> int:
    t0 = time.perf_counter()
    if args.likelihood != "gaussian" and args.variance is not None:
        raise CLIError(f"--variance applies to the gaussian likelihood only (got --likelihood {args.likelihood})")
    variance = args.variance or "rbf"
    if args.report:
        _sections(args)  # check --skip before training
    out = _prepare_out(args.out)
    from .datasets import load_dataset

    dataset = _subset(load_dataset(args.data), args.max_items, args.seed)
    _say(args, f"latentgeo train: {args.likelihood} VAE, {args.latent} latent of dimension {args.latent_dim}, "
               f"on {args.data} ({len(dataset.data)} items), {args.epochs} epochs ...")
    model, history, train_s = _train(
        args, dataset, args.latent, args.latent_dim, args.likelihood, args.hidden, variance, out, resumable=True
    )
    if args.report:
        summary = _report(args, model, dataset, history, out, train_s, ["latentgeo", *argv])
        _print_summary(summary, out, time.perf_counter() - t0)
        return 0
    ckpt = out / "model.safetensors"
    model.save(ckpt)
    recs = list(getattr(history, "records", history))
    last = recs[-1] if recs else {}
    print(
        f"trained {len(recs)} epochs in {train_s:.1f} s; final train loss {_fmt(last.get('train_loss'))}, "
        f"val loss {_fmt(last.get('val_loss'))}\n  checkpoint: {ckpt}\n  log: {out / 'train_log.jsonl'}",
        flush=True,
    )
    return 0


def _cmd_report(args, argv: list[str]) -> int:
    from .checkpoint import checkpoint_file
    from .datasets import load_dataset
    from .models import VAE
    from .report import write_report

    t0 = time.perf_counter()
    sections = _sections(args)
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
        dataset = _subset(dataset, args.max_items, args.seed)
    elif subset is not None:
        dataset = _subset(dataset, int(subset["max_items"]), int(subset["seed"]))
    log = args.log if args.log is not None else ckpt.parent / "train_log.jsonl"
    if args.log is not None and not log.is_file():
        raise CLIError(f"--log: no training log at {log}")
    history = log if log.is_file() else None
    out = _prepare_out(args.out)
    _say(args, f"latentgeo report: analysing {ckpt} on {dataset.name} ({len(dataset)} items) ...")
    summary = write_report(
        model, dataset, history, out, seed=args.seed, extra={"command": ["latentgeo", *argv], "source": str(ckpt)},
        resolution=args.resolution, iwae_points=args.iwae_points, iwae_samples=args.iwae_samples,
        sections=sections,
    )
    _print_summary(summary, out, time.perf_counter() - t0)
    return 0


def _cmd_info(args, argv: list[str]) -> int:
    from .checkpoint import checkpoint_file, load_checkpoint

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


# ------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``latentgeo`` command; returns the exit status.

    0: done; 2: bad arguments or unusable files (one line on stderr, no traceback);
    1: a known failure while running (e.g. training diverged; one line); 130: interrupted.
    Anything else is a bug and propagates with its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required (demo, train, report or info)", file=sys.stderr)
        return 2
    threads = getattr(args, "threads", None)
    if threads is not None:
        import torch

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return int(args.func(args, argv))
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # CLIError, CheckpointError and the library's input errors are ValueErrors
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as exc:  # e.g. training diverged: a known failure, not a bug
        print(f"{PROG} {args.command}: failed: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if threads is not None:
            torch.set_num_threads(prev_threads)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
