"""What a report analyses: :class:`Subject`, a decoder and latent codes (the VAE optional).

The geometric sections of a report (``magnification``, ``decoded_grid``, ``geodesics`` and
every section that only needs a metric and codes) run on *any* latentgeo decoder: yours,
trained elsewhere, with codes you computed. The sections that need a model (``model``,
``training``, ``checkpoint``, ``iwae``, ``training_curves``) say ``{"skipped": ...}`` when
the subject has none.

Two ways to write a report::

    write_report(model, dataset, history, "report")            # a trained VAE and its data set
    write_report(Subject(decoder, codes, labels=y), None, None, "report")   # any decoder

``Subject.from_model(model, dataset, history)`` builds the subject of the first form
explicitly (codes = the encoder means of the data); both forms give the same report.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.report import Subject
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    >>> s = Subject(lg.DeterministicDecoder(net), torch.randn(50, 2), labels=torch.arange(50) % 2)
    >>> s
    Subject('decoder': DeterministicDecoder, 50 codes in 2-D, labels (2 classes), no data, no model)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["Subject", "decoder_dtype"]


def decoder_dtype(decoder) -> Optional[torch.dtype]:
    """dtype of the first floating parameter/buffer of the ``nn.Module`` s a decoder wraps (``None``: none)."""
    seen = []
    for v in vars(decoder).values():
        if isinstance(v, torch.nn.Module) and all(v is not s for s in seen):
            seen.append(v)
            for t in (*v.parameters(), *v.buffers()):
                if torch.is_floating_point(t):
                    return t.dtype
    return None


def _as_tensor(x, name: str, dtype=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be an array or a tensor, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array or a tensor, got an object array")
    t = torch.as_tensor(arr)
    return t.to(dtype) if dtype is not None and torch.is_floating_point(t) else t


@dataclass
class Subject:
    """A decoder and the latent codes to analyse it at (the VAE optional).

    Args:
        decoder: a :class:`latentgeo.Decoder` (``GaussianDecoder``, ``DeterministicDecoder``, ...).
        codes: ``(N, d)`` latent codes (e.g. the encoder means of your data). Arrays and
            lists are converted to the dtype of the decoder's parameters; a tensor must
            already have it.
        labels: ``(N,)`` integer class labels of the codes, or ``None`` (the class-centre
            geodesics need them).
        data: ``(N, ...)`` the data items the codes encode, or ``None`` (the IWAE section needs
            them, the decoded images use their value range).
        item_shape: shape of one data item, e.g. ``(8, 8)`` for images (default: ``data``'s
            trailing shape when it is 2-D, else ``None``: no image figures).
        name: what the report calls the subject.
        model: the trained model the decoder comes from (``encode_mean``, ``parameters()``,
            ``config``, ``save``, ``elbo``), or ``None``.
        history: training records for the training sections, or ``None``.
        params: parameters describing the data (listed in the ``dataset`` section).

    Raises:
        TypeError: ``decoder`` is not a latentgeo Decoder.
        ValueError: codes not ``(N, d)`` finite / not of the decoder's latent width, or
            labels / data with a number of rows other than ``N``.
    """

    decoder: Any
    codes: Any
    labels: Any = None
    data: Any = None
    item_shape: Optional[tuple] = None
    name: str = "decoder"
    model: Any = None
    history: Any = None
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        from .._validation import as_latent_batch
        from ..decoders import Decoder

        if not isinstance(self.decoder, Decoder):
            raise TypeError(
                "decoder must be a latentgeo Decoder (GaussianDecoder, BernoulliDecoder, CategoricalDecoder, "
                f"DeterministicDecoder), got {type(self.decoder).__name__}"
            )
        dtype = decoder_dtype(self.decoder)
        codes = _as_tensor(self.codes, "codes", dtype or torch.get_default_dtype())
        if not torch.is_floating_point(codes):
            codes = codes.to(dtype or torch.get_default_dtype())
        codes, _ = as_latent_batch(codes, self.decoder.latent_dim, name="codes", allow_single=False)
        if codes.shape[0] < 2:
            raise ValueError(f"codes must hold at least 2 codes, got {codes.shape[0]}")
        if dtype is not None and codes.dtype != dtype:
            raise ValueError(f"codes have dtype {codes.dtype} but the decoder's parameters are {dtype}; "
                             f"convert them (codes.to({dtype}))")
        self.codes = codes
        n = codes.shape[0]
        if self.labels is not None:
            lab = _as_tensor(self.labels, "labels")
            if lab.ndim != 1 or lab.shape[0] != n:
                raise ValueError(f"labels must have shape ({n},) (one per code), got {tuple(lab.shape)}")
            if torch.is_floating_point(lab):
                if not bool((lab == lab.round()).all()):
                    raise ValueError("labels must be integer class labels, got non-integer values")
                lab = lab.long()
            self.labels = lab.cpu().numpy()
        if self.data is not None:
            x = _as_tensor(self.data, "data", codes.dtype)
            if x.ndim < 2 or x.shape[0] != n:
                raise ValueError(f"data must have one row per code ({n}, ...), got shape {tuple(x.shape)}")
            self.data = x.to(codes.dtype)
            if self.item_shape is None and x.ndim == 3:
                self.item_shape = tuple(int(s) for s in x.shape[1:])
        if self.item_shape is not None:
            shape = tuple(int(s) for s in self.item_shape)
            if not shape or any(s < 1 for s in shape):
                raise ValueError(f"item_shape must be positive integers, got {self.item_shape!r}")
            if self.data is not None and int(np.prod(shape)) != int(np.prod(self.data.shape[1:])):
                raise ValueError(f"item_shape {shape} does not match data items of shape {tuple(self.data.shape[1:])}")
            self.item_shape = shape
        # one decode up front: a decoder that cannot take these codes is named here, not deep in a section
        try:
            with torch.no_grad():
                out = self.decoder.coordinates(codes[:2])
        except Exception as exc:
            raise ValueError(
                f"the decoder cannot decode codes of width {codes.shape[1]}: {type(exc).__name__}: {exc}"
            ) from exc
        del out

    @classmethod
    def from_model(cls, model, dataset, history=None) -> "Subject":
        """The subject of ``write_report(model, dataset, history)``: the model's analysis
        decoder, the encoder means of ``dataset.data`` and its labels."""
        x = _as_tensor(dataset.data, "dataset.data")
        p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        flat = x.reshape(x.shape[0], -1)
        if p is not None:
            flat = flat.to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            codes = model.encode_mean(flat).detach()
        return cls(
            decoder=model.decoder_for_analysis(), codes=codes, labels=getattr(dataset, "labels", None),
            data=flat, item_shape=getattr(dataset, "item_shape", None), name=getattr(dataset, "name", None) or "data",
            model=model, history=history, params=dict(getattr(dataset, "params", None) or {}),
        )

    def __repr__(self) -> str:
        n, d = self.codes.shape
        lab = "no labels" if self.labels is None else f"labels ({len(np.unique(self.labels))} classes)"
        data = "no data" if self.data is None else f"data {tuple(self.data.shape[1:])}"
        model = "no model" if self.model is None else f"model {type(self.model).__name__}"
        return f"Subject({self.name!r}: {type(self.decoder).__name__}, {n} codes in {d}-D, {lab}, {data}, {model})"
