"""``latentgeo cluster``: geodesic k-means of your codes under your decoder's metric, labels to ``.npy``.

The decoder and codes arguments are those of ``latentgeo analyze`` (``--decoder MODULE:FACTORY``,
``--codes``, ``--data``, ``--rbf-variance``); :class:`latentgeo.GeodesicKMeans` clusters the codes
under the decoder's pullback metric and the labels (``int64``, one per code) are written to
``--out`` atomically (``numpy.save``, no pickle); ``--centers`` writes the cluster centres.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .analyze import add_decoder_arguments, load_inputs
from .common import CLIError, int_at_least, say

__all__ = ["add_parser", "run"]


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``cluster`` subcommand to the subparsers ``sub``."""
    c = sub.add_parser(
        "cluster",
        parents=[common],
        help="geodesic k-means of your codes under your decoder's metric; labels to .npy",
        description="Cluster latent codes with geodesic k-means (GeodesicKMeans) under the pullback metric of "
        "your decoder (see `latentgeo analyze --help` for --decoder) and write the labels to a .npy file.",
    )
    add_decoder_arguments(c, labels=False)
    c.add_argument("--k", required=True, type=int_at_least(1, "k"), help="number of clusters")
    c.add_argument("--out", required=True, type=Path, help="labels file (.npy): int64, one per code")
    c.add_argument("--centers", type=Path, default=None, help="also write the cluster centres (k, d) to this .npy")
    c.add_argument("--centroid", choices=("karcher", "medoid"), default="karcher",
                   help="cluster centres: Karcher (Fréchet) means or medoids (default karcher)")
    c.add_argument("--algorithm", choices=("geodesic", "graph"), default="geodesic",
                   help="geodesic: solved geodesics (slow on RBF-variance decoders: minutes); graph: k-medoids on "
                        "kNN-graph distances over the codes, no ODE solves (seconds; implies --centroid medoid)")
    c.add_argument("--n-init", type=int_at_least(1, "n-init"), default=1, help="independent runs (default 1)")
    c.add_argument("--max-iter", type=int_at_least(1, "max-iter"), default=20, help="iterations per run (default 20)")
    c.set_defaults(func=run)
    return c


def _save_npy(path: Path, arr) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args, argv: list[str]) -> int:
    import numpy as np

    import latentgeo as lg

    t0 = time.perf_counter()
    for flag, p in (("--out", args.out), ("--centers", args.centers)):
        if p is not None and p.suffix.lower() != ".npy":
            raise CLIError(f"{flag} must be a .npy file, got {p}")
        if p is not None and p.is_dir():
            raise CLIError(f"{flag} {p} is a directory")
    decoder, codes, _, _, how = load_inputs(args)
    if args.k > codes.shape[0]:
        raise CLIError(f"--k {args.k} exceeds the number of codes ({codes.shape[0]})")
    say(args, f"latentgeo cluster: geodesic k-means (k={args.k}) of {codes.shape[0]} codes under {how} ...")
    centroid = "medoid" if args.algorithm == "graph" else args.centroid
    km = lg.GeodesicKMeans(lg.PullbackMetric(decoder), n_clusters=args.k, centroid=centroid, n_init=args.n_init,
                           max_iter=args.max_iter, algorithm=args.algorithm, random_state=args.seed)
    labels = np.asarray(km.fit_predict(codes), dtype=np.int64)
    _save_npy(args.out, labels)
    if args.centers is not None:
        _save_npy(args.centers, km.cluster_centers_.detach().cpu().numpy())
    sizes = np.bincount(labels, minlength=args.k).tolist()
    print(f"labels written to {args.out} in {time.perf_counter() - t0:.1f} s: {args.k} clusters of sizes {sizes}, "
          f"inertia {float(km.inertia_):.4g}, {int(km.n_iter_)} iterations", flush=True)
    return 0
