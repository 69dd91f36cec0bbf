"""Safe, atomic checkpoints: safetensors weights with the JSON config embedded.

File format (one file, ``*.safetensors``)
-----------------------------------------
A standard `safetensors <https://github.com/huggingface/safetensors>`_ file. Its header
metadata holds

* ``format`` = ``"latentgeo-checkpoint"`` and ``format_version``;
* ``latentgeo_version`` of the writer;
* ``config``: the JSON config (model class, hyperparameters, latent kind, data set, ...);
* ``sha256``: a digest of every tensor's name, dtype, shape and bytes.

Why one file: weights and config must never disagree. Two files cannot be replaced
atomically together, so a crash between two renames could pair new weights with an old
config. Embedding the config in the weights file makes one ``os.replace`` the only commit
point. The config is still plain JSON (``read_checkpoint_config`` prints it without
loading tensors; any safetensors reader shows it).

Writing: the bytes go to a temporary file in the same directory, are flushed and
``fsync``-ed, then ``os.replace`` moves them over the target (atomic on POSIX and Windows),
and the directory is ``fsync``-ed. A crash at any point leaves either the old checkpoint or
the new one, never a mixture; a failed write removes its temporary file.

Reading never unpickles: the file is parsed as safetensors (a JSON header and raw
buffers). ``torch.save`` archives (zip) and raw pickles are recognised and refused with a
message, truncated or corrupt files raise :class:`CheckpointError` naming the file and the
problem, and the digest catches flipped bytes in the tensor data.

Paths: a path ending in ``.safetensors`` (or naming an existing file) is the file itself;
any other path is a directory holding ``model.safetensors``.

Example:
    >>> import tempfile, torch
    >>> from latentgeo.checkpoint import save_checkpoint, load_checkpoint
    >>> d = tempfile.mkdtemp()
    >>> save_checkpoint(d, {"w": torch.ones(2, 3)}, {"class": "Demo", "width": 3})
    >>> sd, cfg = load_checkpoint(d)
    >>> cfg["width"], sd["w"].shape
    (3, torch.Size([2, 3]))
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Mapping, Union

import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_config",
    "checkpoint_file",
    "atomic_write",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "latentgeo-checkpoint"
FORMAT_VERSION = 1
DEFAULT_FILENAME = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, unsafe (pickle), or does not match."""


def checkpoint_file(path: PathLike) -> Path:
    """The checkpoint file for ``path``: ``path`` itself if it ends in ``.safetensors`` or is
    an existing file, else ``path / "model.safetensors"``."""
    p = Path(path)
    return p if (p.suffix == ".safetensors" or p.is_file()) else p / DEFAULT_FILENAME


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write_bytes(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` and fsync (a separate function so tests can break it)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state_dict: Mapping[str, torch.Tensor], config: dict) -> None:
    """Atomically write ``state_dict`` (name → tensor) and ``config`` (JSON-able dict).

    Args:
        path: ``*.safetensors`` file, or a directory (created) that receives ``model.safetensors``.
        state_dict: tensors of any shape/dtype/device (copied to CPU, made contiguous).
        config: JSON-serialisable dict (no NaN/inf); it is embedded in the file.

    Raises:
        ValueError: non-tensor values, unserialisable config.
        OSError: the write failed; the previous file at ``path`` (if any) is intact.
    """
    from safetensors.torch import save as st_save

    from ._version import __version__

    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    try:
        config_json = json.dumps(config, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint config is not JSON-serialisable: {exc}") from exc
    tensors = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"state_dict keys must be non-empty strings, got {k!r}")
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state_dict[{k!r}] is a {type(v).__name__}, not a tensor")
        # clone: safetensors refuses tensors that share storage
        tensors[k] = v.detach().to("cpu").contiguous().clone()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "latentgeo_version": __version__,
        "config": config_json,
        "sha256": _digest(tensors),
    }
    payload = _canonical(st_save(tensors, metadata=metadata))
    target = checkpoint_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, payload)


def _canonical(payload: bytes) -> bytes:
    """The safetensors bytes with the header metadata in sorted key order.

    safetensors serialises the metadata from a hash map, so its key order (and the file's
    bytes) changes from process to process; sorting makes identical checkpoints byte-identical
    (hash-based data tracking). The header keeps its length, so the data offsets are unchanged.
    """
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + n].decode("utf-8"))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload[8 + n :]


def _new_file_mode() -> int:
    """``0666`` less the process umask: the mode ``open()`` would give a new file (0644 under umask 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, data: Union[bytes, str]) -> None:
    """Write ``data`` to ``path`` atomically: complete or absent, never half-written.

    The bytes go to a temporary file in the same directory (flushed, ``fsync``-ed) that
    ``os.replace`` moves over ``path``; the directory is then ``fsync``-ed. The file gets the
    mode of the file it replaces, or that of a newly created file (``0666`` less the umask,
    e.g. ``0644``), not the temporary file's ``0600``. A failed write removes the temporary
    file and leaves any previous ``path`` intact. ``str`` is written as UTF-8.
    """
    target = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            if hasattr(os, "fchmod"):
                try:
                    mode = target.stat().st_mode & 0o777
                except FileNotFoundError:
                    mode = _new_file_mode()
                os.fchmod(fd, mode)
            _write_bytes(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def _read_header(f: Path, raw: bytes) -> dict:
    size = len(raw)
    if size == 0:
        raise CheckpointError(f"checkpoint file {f} is empty")
    if raw[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"checkpoint file {f} is a zip archive (the torch.save format, which runs pickle on load); "
            "refusing to load it. latentgeo checkpoints are safetensors files."
        )
    if raw[:1] == b"\x80" and size > 1 and 2 <= raw[1] <= 5:
        raise CheckpointError(f"checkpoint file {f} is a Python pickle; refusing to unpickle it")
    if size < 8:
        raise CheckpointError(f"checkpoint file {f} is truncated ({size} bytes, shorter than the 8-byte header length)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER:
        raise CheckpointError(f"checkpoint file {f} is not a safetensors file (header length field {n} is implausible)")
    if 8 + n > size:
        raise CheckpointError(f"checkpoint file {f} is truncated: header needs {n} bytes but only {size - 8} follow")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {f} has a corrupt header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint file {f} has a corrupt header (not a JSON object)")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            end = max(end, int(v["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(f"checkpoint file {f} has a corrupt header entry for tensor {k!r}") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"checkpoint file {f} is truncated: tensor data needs {end} bytes but only {size - 8 - n} are present"
        )
    if 8 + n + end < size:
        raise CheckpointError(f"checkpoint file {f} is corrupt: {size - 8 - n - end} unexpected trailing bytes")
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{f} is a safetensors file but not a latentgeo checkpoint (metadata 'format' is {meta.get('format')!r})"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"checkpoint file {f} has an invalid format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint file {f} has format version {version}, newer than this latentgeo reads ({FORMAT_VERSION}); "
            "upgrade latentgeo"
        )
    return meta


def _parse_config(f: Path, meta: dict) -> dict:
    try:
        config = json.loads(meta["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {f} has a missing or corrupt config: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint file {f} has a config that is not a JSON object")
    return config


def _read(path: PathLike) -> tuple[Path, bytes]:
    f = checkpoint_file(path)
    if not f.is_file():
        if Path(path).is_dir():
            raise CheckpointError(f"no checkpoint in directory {path} (expected {f.name})")
        raise CheckpointError(f"no checkpoint file at {f}")
    return f, f.read_bytes()


def read_checkpoint_config(path: PathLike) -> dict:
    """The embedded config of a checkpoint, without loading its tensors."""
    f, raw = _read(path)
    meta = _read_header(f, raw)
    return _parse_config(f, meta)


def load_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(state_dict, config)``; tensors are on the CPU in their saved dtypes. The config
        also carries ``"_latentgeo_version"`` (the writer's version).

    Raises:
        CheckpointError: missing, empty, truncated, corrupt (checksum), pickle/zip, or not a
            latentgeo checkpoint; the message names the file.
    """
    from safetensors.torch import load as st_load

    f, raw = _read(path)
    meta = _read_header(f, raw)
    config = _parse_config(f, meta)
    try:
        tensors = st_load(raw)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint file {f} is corrupt: {exc}") from None
    digest = meta.get("sha256")
    if digest is None or _digest(tensors) != digest:
        raise CheckpointError(f"checkpoint file {f} is corrupt: tensor data does not match its sha256 digest")
    config["_latentgeo_version"] = meta.get("latentgeo_version")
    return tensors, config
