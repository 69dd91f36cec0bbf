"""``latentgeo analyze``: the report of your own decoder at your own codes (no VAE needed).

``--decoder`` names a factory, ``package.module:factory`` (imported; the current folder is
searched first, as ``python -m`` does) or ``path/to/file.py:factory``, called with no
arguments. It returns one of

* a latentgeo decoder (``GaussianDecoder``, ``BernoulliDecoder``, ``CategoricalDecoder``,
  ``DeterministicDecoder``): used as it is;
* a callable (e.g. an ``nn.Module``) returning ``(mean, std)``: wrapped in
  ``GaussianDecoder(model=...)`` (the expected metric of Latent Space Oddity, Thm 1);
* a callable returning one tensor, the mean: with ``--rbf-variance``, the post-hoc RBF
  variance of Latent Space Oddity §4 is fitted to ``--data`` (:func:`latentgeo.fit_rbf_variance`);
  without it, the decoder is deterministic (``DeterministicDecoder``, metric ``JᵀJ``).

Codes, labels and data are read from ``.npy`` (``numpy.load(allow_pickle=False)``) or ``.pt``
(``torch.load(weights_only=True)``, one tensor) files: tensors only, never pickle.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

from .common import CLIError, add_report_options, int_at_least, prepare_out, say, selected_sections

__all__ = ["add_parser", "run", "load_array", "load_factory", "build_decoder", "add_decoder_arguments", "load_inputs"]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace(" ", "").replace("x", ",").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"item shape must be integers like 8,8, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"item shape must be positive integers like 8,8, got {text!r}")
    return shape


def _option(text: str) -> tuple:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"report option must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to the subparsers ``sub``."""
    a = sub.add_parser(
        "analyze",
        parents=[common],
        help="write the analysis report of your own decoder at your own latent codes",
        description="Write the analysis report (magnification map, decoded grid, geodesics, index.html) of "
        "your own decoder at your own latent codes. --decoder package.module:factory (or file.py:factory) "
        "returns a latentgeo decoder, a module returning (mean, std), or a mean network (with --rbf-variance "
        "the LSO variance is fitted to --data). Arrays: .npy or .pt files, tensors only (never pickle).",
    )
    add_decoder_arguments(a)
    a.add_argument("--item-shape", type=_shape, default=None, metavar="H,W",
                   help="shape of one data item for image figures, e.g. 8,8 (default: the data's when 3-D)")
    a.add_argument("--name", default=None, help="what the report calls the subject (default: the codes' file name)")
    a.add_argument("--out", required=True, type=Path, help="report folder (created; files in it are overwritten)")
    add_report_options(a)
    a.add_argument("--report-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                   help=argparse.SUPPRESS)  # any write_report option (JSON value), for tests and quick looks
    a.set_defaults(func=run)
    return a


def load_array(path: Path, what: str):
    """A tensor from a ``.npy`` or ``.pt`` file, without unpickling anything (``CLIError`` otherwise)."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"--{what}: no file {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise CLIError(f"--{what}: {path} is not a plain numeric .npy array ({' '.join(str(exc).split())})") from None
        except (OSError, EOFError) as exc:
            raise CLIError(f"--{what}: cannot read {path} as .npy: {exc}") from None
        if arr.dtype.kind not in "biuf":
            raise CLIError(f"--{what}: {path} holds {arr.dtype} values; expected numbers")
        return torch.from_numpy(np.ascontiguousarray(arr))
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled objects; corrupt files raise many types
            raise CLIError(f"--{what}: cannot load {path} as a tensor file: {' '.join(str(exc).split())[:300]}") from None
        if not isinstance(obj, torch.Tensor):
            raise CLIError(f"--{what}: {path} holds a {type(obj).__name__}; expected one tensor")
        return obj.detach()
    raise CLIError(f"--{what}: {path} must be a .npy or .pt file")


def load_factory(spec: str):
    """The callable named by ``module:attr`` or ``file.py:attr`` (``CLIError`` naming what failed)."""
    if ":" not in spec:
        raise CLIError(f"--decoder must be MODULE:FACTORY (e.g. mypkg.models:make_decoder), got {spec!r}")
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise CLIError(f"--decoder must be MODULE:FACTORY, got {spec!r}")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise CLIError(f"--decoder: no file {path}")
            name = f"_latentgeo_user_{abs(hash(str(path.resolve())))}"
            spec_ = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[name] = module
            spec_.loader.exec_module(module)
        else:
            cwd = str(Path.cwd())
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added and cwd in sys.path:
                    sys.path.remove(cwd)
    except CLIError:
        raise
    except Exception as exc:  # the user's module may raise anything while importing
        raise CLIError(f"--decoder: importing {mod_name!r} failed: {type(exc).__name__}: {exc}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise CLIError(f"--decoder: module {mod_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise CLIError(f"--decoder: {spec} is a {type(factory).__name__}, not a callable factory")
    return factory


def _module_dtype(obj):
    import torch

    if isinstance(obj, torch.nn.Module):
        for t in (*obj.parameters(), *obj.buffers()):
            if torch.is_floating_point(t):
                return t.dtype
    return None


def build_decoder(obj, codes, data=None, rbf_variance: bool = False, n_centers: int = 32, random_state: int = 0):
    """``(decoder, codes, how)``: a latentgeo decoder from what a factory returned (see the module doc).

    ``codes`` are converted to the decoder's parameter dtype (floating point always).
    """
    import torch

    import latentgeo as lg
    from ..report.subject import decoder_dtype

    if isinstance(obj, lg.Decoder):
        if rbf_variance:
            raise CLIError("--rbf-variance: the factory returned a complete decoder "
                           f"({type(obj).__name__}); --rbf-variance is for a mean network")
        dtype = decoder_dtype(obj) or (codes.dtype if torch.is_floating_point(codes) else torch.get_default_dtype())
        codes = codes.to(dtype)
        try:
            with torch.no_grad():
                obj.coordinates(obj.prepare(codes[:2], "codes"))
        except Exception as exc:
            raise CLIError(f"--codes: the decoder cannot decode codes of width {codes.shape[1]}: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
        return obj, codes, f"the factory's {type(obj).__name__}"
    if not callable(obj):
        raise CLIError(
            f"--decoder: the factory returned a {type(obj).__name__}; expected a latentgeo Decoder, a module "
            "returning (mean, std), or a mean network (with --rbf-variance)"
        )
    dtype = _module_dtype(obj) or (codes.dtype if torch.is_floating_point(codes) else torch.get_default_dtype())
    codes = codes.to(dtype)
    try:
        with torch.no_grad():
            out = obj(codes[:2])
    except Exception as exc:
        raise CLIError(f"--codes: the decoder cannot decode codes of width {codes.shape[1]}: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        if rbf_variance:
            raise CLIError("--rbf-variance: the decoder returns (mean, std) already; --rbf-variance is for a mean network")
        return lg.GaussianDecoder(model=obj, latent_dim=codes.shape[1]), codes, "GaussianDecoder(model=factory's (mean, std))"
    if not isinstance(out, torch.Tensor):
        raise CLIError(f"--decoder: the factory's decoder returned a {type(out).__name__}; expected a tensor (the mean) "
                       "or a pair of tensors (mean, std)")
    if out.shape[0] != 2:
        raise CLIError(f"--decoder: the decoder returned {out.shape[0]} rows for 2 codes; expected one row per code")
    if rbf_variance:
        if data is None:
            raise CLIError("--rbf-variance needs --data (the items the codes encode)")
        if n_centers > codes.shape[0]:
            raise CLIError(f"--rbf-centers {n_centers} exceeds the number of codes ({codes.shape[0]})")
        if isinstance(obj, torch.nn.Module):
            obj.eval()
            for p in obj.parameters():
                p.requires_grad_(False)
        dec = lg.fit_rbf_variance(obj, codes, data.to(dtype), n_centers=n_centers, random_state=random_state)
        return dec, codes, f"fit_rbf_variance(factory's mean, {n_centers} centres)"
    return lg.DeterministicDecoder(obj, latent_dim=codes.shape[1]), codes, "DeterministicDecoder(factory's network)"


def add_decoder_arguments(a, labels: bool = True) -> None:
    """``--decoder``, ``--codes``, ``--data``, ``--rbf-variance``, ``--rbf-centers`` (and ``--labels``)."""
    a.add_argument("--decoder", required=True, metavar="MODULE:FACTORY",
                   help="factory returning the decoder, e.g. mypkg.models:make_decoder or ./dec.py:make")
    a.add_argument("--codes", required=True, type=Path, help="latent codes (N, d): .npy or .pt")
    if labels:
        a.add_argument("--labels", type=Path, default=None,
                       help="integer labels (N,): .npy or .pt (class-centre geodesics)")
    a.add_argument("--data", type=Path, default=None, help="data items (N, ...): .npy or .pt (RBF variance, value range)")
    a.add_argument("--rbf-variance", action="store_true",
                   help="the factory returns a mean network: fit the post-hoc RBF variance (LSO §4) to --data")
    a.add_argument("--rbf-centers", type=int_at_least(1, "rbf-centers"), default=32,
                   help="RBF centres for --rbf-variance (default 32)")


def load_inputs(args):
    """``(decoder, codes, labels, data, how)`` from the decoder/codes arguments (``CLIError`` on bad input)."""
    import torch

    codes = load_array(args.codes, "codes")
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise CLIError(f"--codes: expected an array of shape (N, d) with N >= 2, got {tuple(codes.shape)}")
    if not torch.is_floating_point(codes):
        codes = codes.to(torch.get_default_dtype())
    n = codes.shape[0]
    labels = load_array(args.labels, "labels") if getattr(args, "labels", None) is not None else None
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != n:
            raise CLIError(f"--labels: expected {n} labels (one per code, shape ({n},)), got shape {tuple(labels.shape)}")
        if torch.is_floating_point(labels) and not bool((labels == labels.round()).all()):
            raise CLIError("--labels: expected integer class labels, got non-integer values")
        labels = labels.long()
    data = load_array(args.data, "data") if args.data is not None else None
    if data is not None and (data.ndim < 2 or data.shape[0] != n):
        raise CLIError(f"--data: expected one item per code, shape ({n}, ...), got {tuple(data.shape)}")
    if args.rbf_variance and data is None:
        raise CLIError("--rbf-variance needs --data (the items the codes encode)")

    factory = load_factory(args.decoder)
    try:
        obj = factory()
    except Exception as exc:
        raise CLIError(f"--decoder: calling {args.decoder}() failed: {type(exc).__name__}: {exc}") from None
    decoder, codes, how = build_decoder(obj, codes, data, args.rbf_variance, args.rbf_centers, args.seed)
    if data is not None and torch.is_floating_point(codes):
        data = data.to(codes.dtype)
    return decoder, codes, labels, data, how


def run(args, argv: list[str]) -> int:
    from ..report import Subject, write_report

    t0 = time.perf_counter()
    sections = selected_sections(args)
    decoder, codes, labels, data, how = load_inputs(args)
    n = codes.shape[0]
    try:
        subject = Subject(decoder, codes, labels=labels, data=data, item_shape=args.item_shape,
                          name=args.name or args.codes.stem, params={"decoder": args.decoder, "wrapped_as": how})
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    out = prepare_out(args.out)
    say(args, f"latentgeo analyze: {how} at {n} codes in {codes.shape[1]}-D ...")
    options = {"resolution": args.resolution, "iwae_points": args.iwae_points, "iwae_samples": args.iwae_samples}
    if args.max_items is not None:
        options["max_points"] = args.max_items
    options.update(dict(args.report_option))
    summary = write_report(subject, None, None, out, random_state=args.seed, sections=sections,
                           extra={"command": ["latentgeo", *argv], "source": args.decoder}, **options)
    _print_summary(summary, out, time.perf_counter() - t0)
    return 0


def _print_summary(summary: dict, out: Path, total_s: float) -> None:
    from .common import fmt

    lines = [f"report written to {out}/ in {total_s:.1f} s (open {out}/index.html)"]
    mag = summary.get("magnification") or {}
    if mag.get("on_data"):
        near, far = mag.get("near_data") or {}, mag.get("far_from_data") or {}
        lines.append(f"  magnification √det M, median: on the data {mag['on_data']['median']:.3g}, "
                     f"near it {fmt(near.get('median'), '.3g')}, far from it {fmt(far.get('median'), '.3g')}")
    geo = summary.get("geodesics") or {}
    if "mean_length_ratio" in geo:
        lines.append(f"  geodesics: {geo['n_converged']}/{geo['n_pairs']} class-centre pairs converged; "
                     f"mean geodesic/straight length ratio {geo['mean_length_ratio']:.3g}")
    skipped = [k for k in summary.get("sections", []) if isinstance(summary.get(k), dict) and "skipped" in summary[k]]
    if skipped:
        lines.append("  skipped: " + ", ".join(f"{k} ({summary[k]['skipped']})" for k in skipped))
    lines.append("  files: " + ", ".join(summary.get("files", [])))
    print("\n".join(lines), flush=True)
