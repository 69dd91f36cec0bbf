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
                    [--report] [--resume | --force] [--skip SECTION] [--threads T] [--quiet]
        Train a VAE; writes DIR/model.safetensors, the per-epoch log DIR/train_log.jsonl and
        the resumable trainer state DIR/train_state.safetensors (and the report with
        --report). --resume continues an interrupted run from that state; an OUT that holds a
        previous run is refused unless --resume or --force (replace it) is given.

    latentgeo report CHECKPOINT --out DIR [--data NAME] [--log LOG] [--skip SECTION]
        Write the analysis report of a saved model (no training); the data set is the one
        recorded in the checkpoint unless --data is given.

    latentgeo analyze --decoder MODULE:FACTORY --codes CODES [--labels LABELS] [--data DATA]
                      [--item-shape H,W] [--rbf-variance] --out DIR [--skip SECTION]
        The report of your own decoder at your own codes (.npy/.pt, never pickle): the factory
        returns a latentgeo decoder, a module returning (mean, std), or a mean network (with
        --rbf-variance the LSO variance is fitted to DATA). Sections that need a VAE say skipped.

    latentgeo cluster --decoder MODULE:FACTORY --codes CODES --k K --out LABELS.npy [--centers C.npy]
        Geodesic k-means (GeodesicKMeans) of the codes under the decoder's metric; labels to .npy.

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
import sys
from typing import Optional, Sequence

from . import analyze, cluster, demo, info, report, train
from .common import PROG, CLIError, common_parser

__all__ = ["main", "build_parser", "CLIError"]

#: the subcommands, one module each (``add_parser(sub, common)`` and ``run(args, argv)``)
COMMANDS = (demo, train, report, analyze, cluster, info)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (``latentgeo train: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    p = _Parser(
        prog=PROG,
        description="Riemannian geometry of VAE latent spaces: train, analyse, report.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(m.__name__.rsplit(".", 1)[1] for m in COMMANDS) + "}")

    common = common_parser()
    for command in COMMANDS:
        command.add_parser(sub, common)
    return p


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
        names = ", ".join(m.__name__.rsplit(".", 1)[1] for m in COMMANDS)
        print(f"{PROG}: error: a command is required ({names})", file=sys.stderr)
        return 2
    threads = getattr(args, "threads", None)
    if threads is not None:
        import torch

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return int(args.func(args, argv))
    except (ValueError, TypeError, OSError) as exc:
        # CLIError, CheckpointError and the library's input errors are ValueErrors/TypeErrors;
        # unusable files (missing, a folder, no permission, disk full) are OSErrors
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
