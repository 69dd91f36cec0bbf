"""Wrappers that turn any trained decoder into something the metric code can differentiate.

A decoder maps latent codes ``z`` of shape ``(N, d)`` to the parameters of a likelihood
over data of any trailing shape (images are flattened internally). Each wrapper exposes

* :meth:`Decoder.coordinates` — the parameter vector ``η(z)`` (flattened, ``(N, K)``) for a
  metric *kind*; for the *embedded* kinds it is the embedding ``g(z)`` whose Euclidean
  pullback ``JᵀJ`` is the metric:

  ======================  ===========  ===========================================
  decoder                 kind         embedding ``g(z)``
  ======================  ===========  ===========================================
  GaussianDecoder         "expected"   ``[μ; σ]``  (Arvanitidis et al. 2018, Thm 1)
  GaussianDecoder         "mean"       ``μ``
  GaussianDecoder         "fisher"     ``η = [μ; σ]`` with Fisher weights ``[1/σ²; 2/σ²]`` (not Euclidean)
  BernoulliDecoder        "fisher"     ``2·arcsin √p``  (Arvanitidis et al. 2022)
  BernoulliDecoder        "mean"       ``p``
  CategoricalDecoder      "fisher"     ``2·√π``
  CategoricalDecoder      "mean"       ``π``
  DeterministicDecoder    "expected"   ``f(z)`` (σ = 0, so the expected metric is ``JᵀJ``)
  ======================  ===========  ===========================================

* :meth:`Decoder.distribution` — the likelihood as a :mod:`torch.distributions` object.

The coordinate maps are pure torch functions so that :mod:`torch.func` transforms apply;
the checks on decoder outputs (batch size, NaN, σ > 0, probabilities in range) are run by
:meth:`Decoder.check_coordinates` on the values, outside the transforms.

Example:
    >>> import torch, latentgeo as lg
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    >>> dec = lg.GaussianDecoder(mean=net, std=lambda z: 0.1 + z.pow(2).sum(1, keepdim=True).expand(-1, 5))
    >>> dec.coordinates(torch.zeros(3, 2), "expected").shape
    torch.Size([3, 10])
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal
from torch.func import jvp, vmap

from ._autodiff import (
    compose_hessian_second_order, compose_mixed_second_order, compose_second_order, function_module,
    hessian_second_order, jacobian_columns, mixed_second_order, second_order, uncompiled,
)
from ._validation import as_latent_batch, describe_bad_rows, infer_latent_dim, model_dtype, probe_decoder

__all__ = [
    "Decoder",
    "GaussianDecoder",
    "BernoulliDecoder",
    "CategoricalDecoder",
    "DeterministicDecoder",
]

_STATEFUL_TRAIN_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _traced(f, z):
    """``(f(z), tangent columns (d, *out.shape))`` through the fx interpreter, or ``None``.

    Modules and plain functions alike (a function is wrapped by
    :func:`latentgeo._autodiff.function_module`, which registers the modules it uses).
    """
    m = function_module(f)
    return None if m is None else jacobian_columns(m, z)


def _traced2(f, z, v, mode: str = "taylor"):
    """``(f(z), columns (d, *out.shape), ∂²f[v, v])`` through the fx interpreter (Taylor mode), or
    ``None``; in mode ``"mixed"``, ``∂²f[v, e_i]`` ``(d, *out.shape)`` in place of ``∂²f[v, v]``;
    in mode ``"hessian"`` (``v`` unused), ``∂²f[e_i, e_j]``, ``i ≤ j``, ``(m, *out.shape)``."""
    m = function_module(f)
    if m is None:
        return None
    if mode == "hessian":
        return hessian_second_order(m, z)
    return mixed_second_order(m, z, v) if mode == "mixed" else second_order(m, z, v)


def _jet_mode(mixed) -> str:
    return "mixed" if mixed else "taylor"


#: the chain rule through a pure map, per jet mode: (outer, raw, cols, h, v) -> (out, cols', h')
_COMPOSE = {
    "taylor": compose_second_order,
    "mixed": compose_mixed_second_order,
    "hessian": lambda outer, raw, cols, h, v: compose_hessian_second_order(outer, raw, cols, h),
}


def _jet_flat(r, n: int, d: int):
    """A traced jet ``(out, cols, h)`` flattened to ``((n, K), (d, n, K), (n, K))`` (a mixed jet's
    ``h`` ``(d, n, ...)`` to ``(d, n, K)``), or ``None``."""
    if r is None:
        return None
    out, cols, h = r
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
        return None  # the generic path raises the decoder's error message
    h = h.reshape(h.shape[0], n, -1) if h.dim() > out.dim() else h.reshape(n, -1)
    return out.reshape(n, -1), cols.reshape(d, n, -1), h


def _jet_cat(parts):
    """Concatenate flattened jets and return ``(g (N, K), J (N, K, d), h (N, K))`` (``None`` if any
    is); mixed jets: ``h (N, K, d)``, ``h[n, k, i] = ∂²g_k[v_n, e_i]``; Hessian-mode jets:
    ``h (N, K, m)``."""
    if not parts or any(p is None for p in parts):
        return None
    g = torch.cat([p[0] for p in parts], 1)
    cols = torch.cat([p[1] for p in parts], 2)
    if parts[0][2].dim() == 3:
        return g, cols.permute(1, 2, 0), torch.cat([p[2] for p in parts], 2).permute(1, 2, 0)
    h = torch.cat([p[2] for p in parts], 1)
    return g, cols.permute(1, 2, 0), h


def _outer_columns(outer, raw, cols):
    """Push tangent columns ``(d, N, ...)`` of ``raw`` through a pure map ``outer``."""
    return vmap(lambda t: jvp(outer, (raw,), (t,)), out_dims=(None, 0))(cols)


_DISTRIBUTION_HINT = ("; for a network that returns a torch.distributions.{0}, give the decoder its parameters as "
                      "tensors (e.g. GaussianDecoder(mean=..., std=...) or BernoulliDecoder(logits=...) with functions "
                      "that return the network's loc/scale or logits)")


def _flat(out, n: int, what: str) -> torch.Tensor:
    """Flatten a decoder output to ``(n, K)``, checking the batch size."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"decoder {what} returned {type(out).__name__}, expected a tensor of shape (N, ...)"
                         + _DISTRIBUTION_HINT.format(type(out).__name__) * isinstance(out, torch.distributions.Distribution))
    if out.dim() == 0 or out.shape[0] != n:
        raise ValueError(
            f"decoder {what} returned shape {tuple(out.shape)} for a batch of {n} latent codes; "
            f"the first dimension must be the batch size {n}"
        )
    return out.reshape(n, -1)


class Decoder:
    """Base class of decoder wrappers (see module docstring).

    Args:
        latent_dim: expected latent dimension ``d``; inputs with another width are refused.
            ``None`` accepts any width the wrapped callables accept.
    """

    kinds: tuple[str, ...] = ()
    default_kind: str = ""
    #: kinds whose metric is the Euclidean pullback ``JᵀJ`` of :meth:`coordinates`
    embedded_kinds: tuple[str, ...] = ()

    def __init__(self, latent_dim: Optional[int] = None):
        if latent_dim is not None and (int(latent_dim) != latent_dim or latent_dim < 1):
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = None if latent_dim is None else int(latent_dim)
        self._warned_training = False

    # -- to implement -------------------------------------------------------------------
    def _modules(self) -> list:
        return []

    def coordinates(self, z: torch.Tensor, kind: Optional[str] = None) -> torch.Tensor:
        """Pure map ``z (N, d) -> η (N, K)`` for ``kind`` (no input checks; transformable)."""
        raise NotImplementedError

    def coordinate_blocks(self, z: torch.Tensor, kind: Optional[str] = None) -> tuple[torch.Tensor, ...]:
        """Pure map ``z -> (η_1, …, η_B)``: :meth:`coordinates` split into blocks (e.g. ``(μ, σ)``).

        ``torch.cat(blocks, 1) == coordinates(z, kind)``; the metric sums ``J_bᵀ W_b J_b`` over
        blocks, which avoids concatenating the (large) batched tangents.
        """
        return (self.coordinates(z, kind),)

    def coordinate_blocks_jvp(self, z: torch.Tensor, kind: Optional[str] = None):
        """Fast path for the metric: ``(blocks, columns)`` with ``columns[b]`` of shape ``(d, N, K_b)``.

        Decoders whose callables (``nn.Module`` s or plain functions) :func:`torch.fx.symbolic_trace`
        can trace go through :func:`latentgeo._autodiff.jacobian_columns` (one matmul per linear
        layer, no vmap/jvp dispatch overhead); ``None`` means "use the generic ``vmap(jvp)`` path".
        """
        return None

    def embedding_jet(self, z: torch.Tensor, v: torch.Tensor, kind: Optional[str] = None, mixed: bool = False):
        """Fast path for the geodesic ODE: ``(g (N, K), J (N, K, d), ∂²g[v, v] (N, K))`` or ``None``.

        The embedding ``g`` of an embedded ``kind`` (:meth:`coordinates`), its Jacobian and its
        second directional derivative along ``v``, in one Taylor-mode pass through the fx trace
        of the decoder's callables (:func:`latentgeo._autodiff.second_order`). With ``mixed``, the
        third entry is the velocity's Hessian column ``H (N, K, d)``, ``H[n, :, i] = ∂²g[v_n, e_i]``
        (:func:`latentgeo._autodiff.mixed_second_order`). ``None`` means "use nested
        ``torch.func.jvp``" (untraceable callables, a non-embedded kind). No input checks.
        """
        return None

    def embedding_hessian_jet(self, z: torch.Tensor, kind: Optional[str] = None):
        """Fast path for Hessians of the embedding: ``(g (N, K), J (N, K, d), H (N, K, m))`` or ``None``.

        ``H[n, :, k] = ∂²g(z_n)[e_I[k], e_J[k]]`` for the ``m = d(d+1)/2`` pairs ``i ≤ j`` of
        :func:`latentgeo._autodiff.hessian_pairs`, in one Hessian-mode pass through the fx trace
        (:func:`latentgeo._autodiff.hessian_second_order`). ``None`` means "no fast path"
        (untraceable callables, a non-embedded kind, a decoder class without one). No input checks.
        """
        return None

    def block_weights(self, blocks: tuple, kind: Optional[str] = None) -> Optional[tuple]:
        """Per-block diagonal weights matching :meth:`coordinate_blocks`; ``None`` when embedded."""
        w = self.fisher_weights(torch.cat(blocks, 1), kind)
        if w is None:
            return None
        return tuple(torch.split(w, [b.shape[1] for b in blocks], 1))

    def check_coordinates(self, eta: torch.Tensor, kind: Optional[str] = None) -> None:
        """Raise ``ValueError`` if decoder outputs ``η`` are unusable (NaN, σ ≤ 0, ...)."""
        bad = ~torch.isfinite(eta).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"decoder returned NaN/inf at {describe_bad_rows(bad)}")

    def fisher_weights(self, eta: torch.Tensor, kind: Optional[str] = None) -> Optional[torch.Tensor]:
        """Diagonal weights ``w(η)`` with ``M = Jᵀ diag(w) J``; ``None`` for embedded kinds."""
        return None

    def distribution(self, z: torch.Tensor) -> torch.distributions.Distribution:
        """The likelihood ``p(x | z)`` as a torch distribution over flattened data."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    def resolve_kind(self, kind: Optional[str]) -> str:
        if kind is None:
            return self.default_kind
        if kind not in self.kinds:
            raise ValueError(
                f"{type(self).__name__} does not support metric kind {kind!r}; supported: {', '.join(self.kinds)}"
            )
        return kind

    def is_embedded(self, kind: Optional[str] = None) -> bool:
        return self.resolve_kind(kind) in self.embedded_kinds

    def prepare(self, z, name: str = "z") -> torch.Tensor:
        """Validate a latent batch against this decoder (shape, finiteness, dtype vs parameters)."""
        z, _ = as_latent_batch(z, self.latent_dim or infer_latent_dim(self._modules()), name=name,
                               allow_single=False, dtype=model_dtype(self))
        for m in self._modules():
            p = next(iter(m.parameters()), None)
            if p is not None:
                if p.dtype != z.dtype:
                    raise ValueError(
                        f"{name} has dtype {z.dtype} but the decoder's parameters are {p.dtype}; "
                        f"convert one of them (e.g. decoder.to({z.dtype}) or {name}.to({p.dtype}))"
                    )
                if p.device != z.device:
                    raise ValueError(f"{name} is on {z.device} but the decoder's parameters are on {p.device}")
            if not self._warned_training and any(
                mod.training for mod in m.modules() if isinstance(mod, _STATEFUL_TRAIN_LAYERS)
            ):
                warnings.warn(
                    "the decoder has dropout/batch-norm layers in training mode; its outputs are random or "
                    "batch-dependent, so the metric is not well defined. Call .eval() on it first.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned_training = True
        if self.latent_dim is None and z.shape[1] not in self.__dict__.setdefault("_accepted_widths", set()):
            probe_decoder(self.coordinates, z, name=name, what=type(self).__name__)
            self._accepted_widths.add(z.shape[1])
        return z

    def __call__(self, z):
        return self.distribution(z)

    def __repr__(self):
        def describe(f):
            if isinstance(f, nn.Module):
                n = sum(p.numel() for p in f.parameters())
                return f"{type(f).__name__}({n} parameters)"
            return getattr(f, "__name__", type(f).__name__)

        parts = [
            f"{k}={describe(v)}" for k, v in vars(self).items()
            if not k.startswith("_") and k != "latent_dim" and v is not None and callable(v)
        ]
        d = self.latent_dim if self.latent_dim is not None else infer_latent_dim(self._modules())
        parts.append(f"latent_dim={d}" + ("" if self.latent_dim is not None or d is None else " (inferred)"))
        dt = model_dtype(self)
        if dt is not None:
            parts.append(f"dtype={dt}")
        parts.append(f"kinds={self.kinds}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _as_callable(f, what: str) -> Callable:
    if f is None or not callable(f):
        raise ValueError(f"{what} must be a callable (an nn.Module or a function), got {type(f).__name__}")
    return uncompiled(f)


class GaussianDecoder(Decoder):
    """Gaussian likelihood ``x ~ N(μ(z), diag σ(z)²)``.

    Give either two callables ``mean`` and ``std``, or one callable ``model`` returning
    ``(mean, std)``. Both outputs may have any trailing shape (the same for both).

    Kinds: ``"expected"`` (default) the expected metric ``JμᵀJμ + JσᵀJσ`` of Arvanitidis,
    Hansen & Hauberg, *Latent Space Oddity*, ICLR 2018, Thm 1; ``"mean"`` the pullback of
    the mean only; ``"fisher"`` the Fisher–Rao pullback ``Jμᵀdiag(1/σ²)Jμ + 2Jσᵀdiag(1/σ²)Jσ``
    (Arvanitidis et al., AISTATS 2022), the pullback of a product of hyperbolic planes.
    """

    kinds = ("expected", "mean", "fisher")
    default_kind = "expected"
    embedded_kinds = ("expected", "mean")

    def __init__(self, mean=None, std=None, *, model=None, latent_dim: Optional[int] = None):
        super().__init__(latent_dim)
        if model is not None:
            if mean is not None or std is not None:
                raise ValueError("give either mean= and std= callables, or model= returning (mean, std), not both")
            self.model = _as_callable(model, "model")
            self.mean = self.std = None
        else:
            if mean is None or std is None:
                raise ValueError("GaussianDecoder needs both mean= and std= callables (or model= returning both)")
            self.model = None
            self.mean = _as_callable(mean, "mean")
            self.std = _as_callable(std, "std")

    def _modules(self):
        fs = [self.model] if self.model is not None else [self.mean, self.std]
        return [f for f in fs if isinstance(f, nn.Module)]

    def mean_std(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ)`` flattened to ``(N, D)`` each."""
        n = z.shape[0]
        if self.model is not None:
            out = self.model(z)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError("GaussianDecoder(model=...) must return a pair (mean, std)"
                                 + _DISTRIBUTION_HINT.format(type(out).__name__) * isinstance(out, torch.distributions.Distribution))
            mu, sd = out
        else:
            mu, sd = self.mean(z), self.std(z)
        mu, sd = _flat(mu, n, "mean"), _flat(sd, n, "std")
        if mu.shape != sd.shape:
            raise ValueError(f"decoder mean has {mu.shape[1]} outputs per code but std has {sd.shape[1]}")
        return mu, sd

    def coordinates(self, z, kind=None):
        kind = self.resolve_kind(kind)
        mu, sd = self.mean_std(z)
        if kind == "mean":
            return mu
        return torch.cat([mu, sd], dim=1)

    def coordinate_blocks(self, z, kind=None):
        kind = self.resolve_kind(kind)
        mu, sd = self.mean_std(z)
        return (mu,) if kind == "mean" else (mu, sd)

    def coordinate_blocks_jvp(self, z, kind=None):
        kind = self.resolve_kind(kind)
        n, d = z.shape
        if self.model is not None:
            r = _traced(self.model, z)
            if r is None or not (isinstance(r[0], (tuple, list)) and len(r[0]) == 2):
                return None
            (mu, sd), (tmu, tsd) = r
        else:
            r = _traced(self.mean, z)
            if r is None:
                return None
            mu, tmu = r
            sd = tsd = None
            if kind != "mean":
                r = _traced(self.std, z)
                if r is None:
                    return None
                sd, tsd = r
        mu = _flat(mu, n, "mean")
        if kind == "mean":
            return (mu,), (tmu.reshape(d, n, -1),)
        sd = _flat(sd, n, "std")
        if mu.shape != sd.shape:
            raise ValueError(f"decoder mean has {mu.shape[1]} outputs per code but std has {sd.shape[1]}")
        return (mu, sd), (tmu.reshape(d, n, -1), tsd.reshape(d, n, -1))

    def embedding_jet(self, z, v, kind=None, mixed=False):
        return self._jet(z, v, kind, _jet_mode(mixed))

    def embedding_hessian_jet(self, z, kind=None):
        return self._jet(z, None, kind, "hessian")

    def _jet(self, z, v, kind, mode):
        kind = self.resolve_kind(kind)
        if kind not in self.embedded_kinds:
            return None
        n, d = z.shape
        if self.model is not None:
            r = _traced2(self.model, z, v, mode)
            if r is None or not (isinstance(r[0], (tuple, list)) and len(r[0]) == 2):
                return None
            parts = [_jet_flat((r[0][k], r[1][k], r[2][k]), n, d) for k in range(2)]
        else:
            parts = [_jet_flat(_traced2(self.mean, z, v, mode), n, d)]
            if kind != "mean":
                parts.append(_jet_flat(_traced2(self.std, z, v, mode), n, d))
        if kind == "mean":
            parts = parts[:1]
        if len(parts) == 2 and all(p is not None for p in parts) and parts[0][0].shape != parts[1][0].shape:
            return None  # the generic path raises its error message
        return _jet_cat(parts)

    def block_weights(self, blocks, kind=None):
        if self.resolve_kind(kind) != "fisher":
            return None
        prec = blocks[1].pow(-2)
        return (prec, 2.0 * prec)

    def check_coordinates(self, eta, kind=None):
        super().check_coordinates(eta, kind)
        kind = self.resolve_kind(kind)
        if kind != "mean":
            sd = eta[:, eta.shape[1] // 2 :]
            bad = ~(sd > 0).all(dim=1)
            if bool(bad.any()):
                raise ValueError(f"decoder std must be positive; got σ <= 0 at {describe_bad_rows(bad)}")

    def fisher_weights(self, eta, kind=None):
        if self.resolve_kind(kind) != "fisher":
            return None
        sd = eta[:, eta.shape[1] // 2 :]
        prec = sd.pow(-2)
        return torch.cat([prec, 2.0 * prec], dim=1)

    def distribution(self, z):
        z = self.prepare(z)
        mu, sd = self.mean_std(z)
        eta = torch.cat([mu, sd], 1)
        self.check_coordinates(eta, "expected")
        return Independent(Normal(mu, sd), 1)


def _bernoulli_sqrt_embedding(logits: torch.Tensor) -> torch.Tensor:
    # 2·arcsin(√σ(l)) = 2·arctan(e^{l/2}) = π/2 + 2·arctan(tanh(l/4)): finite value and
    # derivative for every finite logit (the arcsin form has 0·∞ at p ∈ {0, 1}).
    return 0.5 * math.pi + 2.0 * torch.atan(torch.tanh(0.25 * logits))


class BernoulliDecoder(Decoder):
    """Bernoulli likelihood with ``logits=`` (preferred) or ``probs=`` callable.

    Kinds: ``"fisher"`` (default) the Fisher–Rao pullback ``Jᵀ diag(1/(p(1−p))) J``, whose
    embedding is ``2·arcsin √p`` (computed from logits as ``π/2 + 2·atan(tanh(l/4))`` so
    that it stays differentiable at saturated pixels); ``"mean"`` the pullback of ``p``.
    """

    kinds = ("fisher", "mean")
    default_kind = "fisher"
    embedded_kinds = kinds

    def __init__(self, logits=None, *, probs=None, latent_dim: Optional[int] = None):
        super().__init__(latent_dim)
        if (logits is None) == (probs is None):
            raise ValueError("BernoulliDecoder needs exactly one of logits= or probs=")
        self.logits = None if logits is None else _as_callable(logits, "logits")
        self.probs = None if probs is None else _as_callable(probs, "probs")

    def _modules(self):
        f = self.logits if self.logits is not None else self.probs
        return [f] if isinstance(f, nn.Module) else []

    def _raw(self, z):
        n = z.shape[0]
        if self.logits is not None:
            return _flat(self.logits(z), n, "logits")
        return _flat(self.probs(z), n, "probs")

    def coordinates(self, z, kind=None):
        kind = self.resolve_kind(kind)
        raw = self._raw(z)
        if self.logits is not None:
            return _bernoulli_sqrt_embedding(raw) if kind == "fisher" else torch.sigmoid(raw)
        return 2.0 * torch.asin(torch.sqrt(raw)) if kind == "fisher" else raw

    def coordinate_blocks_jvp(self, z, kind=None):
        kind = self.resolve_kind(kind)
        f = self.logits if self.logits is not None else self.probs
        r = _traced(f, z)
        if r is None:
            return None
        n, d = z.shape
        raw, cols = _flat(r[0], n, "logits" if self.logits is not None else "probs"), r[1].reshape(d, n, -1)
        if self.logits is not None:
            if kind == "fisher":
                # d/dl [2·arcsin √σ(l)] = √(p(1−p)) = 1 / (2·cosh(l/2))
                return (_bernoulli_sqrt_embedding(raw),), (cols * (0.5 / torch.cosh(0.5 * raw)),)
            p = torch.sigmoid(raw)
            return (p,), (cols * (p * (1 - p)),)
        if kind == "fisher":
            return _outer_columns(lambda x: (2.0 * torch.asin(torch.sqrt(x)),), raw, cols)
        return (raw,), (cols,)

    def embedding_jet(self, z, v, kind=None, mixed=False):
        return self._jet(z, v, kind, _jet_mode(mixed))

    def embedding_hessian_jet(self, z, kind=None):
        return self._jet(z, None, kind, "hessian")

    def _jet(self, z, v, kind, mode):
        kind = self.resolve_kind(kind)
        n, d = z.shape
        r = _jet_flat(_traced2(self.logits if self.logits is not None else self.probs, z, v, mode), n, d)
        if r is None:
            return None
        if self.logits is not None:
            outer = _bernoulli_sqrt_embedding if kind == "fisher" else torch.sigmoid
        else:
            outer = (lambda p: 2.0 * torch.asin(torch.sqrt(p))) if kind == "fisher" else None
        return _jet_cat([r if outer is None else _COMPOSE[mode](outer, *r, v)])

    def check_coordinates(self, eta, kind=None):
        super().check_coordinates(eta, kind)
        if self.probs is not None:
            kind = self.resolve_kind(kind)
            p = torch.sin(0.5 * eta).pow(2) if kind == "fisher" else eta
            bad = ~((p > 0) & (p < 1)).all(dim=1)
            if bool(bad.any()):
                raise ValueError(
                    "Bernoulli probabilities must lie strictly inside (0, 1) for the Fisher metric "
                    f"(it is infinite at 0 and 1); violated at {describe_bad_rows(bad)}. Pass logits= instead."
                )

    def distribution(self, z):
        z = self.prepare(z)
        raw = self._raw(z)
        self.check_coordinates(self.coordinates(z, "mean"), "mean")
        return Independent(Bernoulli(logits=raw) if self.logits is not None else Bernoulli(probs=raw), 1)


class CategoricalDecoder(Decoder):
    """Categorical likelihood over the last axis of ``logits=`` (or ``probs=``) outputs.

    Outputs have shape ``(N, ..., C)``: independent categoricals with ``C`` classes each.
    Kinds: ``"fisher"`` (default) ``Jᵀ diag(1/π) J`` with embedding ``2·√π`` (computed as
    ``2·exp(½ log_softmax)``); ``"mean"`` the pullback of ``π``.
    """

    kinds = ("fisher", "mean")
    default_kind = "fisher"
    embedded_kinds = kinds

    def __init__(self, logits=None, *, probs=None, latent_dim: Optional[int] = None):
        super().__init__(latent_dim)
        if (logits is None) == (probs is None):
            raise ValueError("CategoricalDecoder needs exactly one of logits= or probs=")
        self.logits = None if logits is None else _as_callable(logits, "logits")
        self.probs = None if probs is None else _as_callable(probs, "probs")

    def _modules(self):
        f = self.logits if self.logits is not None else self.probs
        return [f] if isinstance(f, nn.Module) else []

    def _raw(self, z):
        n = z.shape[0]
        out = (self.logits if self.logits is not None else self.probs)(z)
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"categorical decoder must return shape (N, ..., C) for {n} codes, got {shape}")
        return out

    def _probs_or_logprobs(self, z):
        raw = self._raw(z)
        if self.logits is not None:
            return torch.log_softmax(raw, dim=-1), True
        return raw, False

    def _from_raw(self, raw, kind):
        n = raw.shape[0]
        if self.logits is not None:
            x = torch.log_softmax(raw, dim=-1)
            e = 2.0 * torch.exp(0.5 * x) if kind == "fisher" else torch.exp(x)
        else:
            e = 2.0 * torch.sqrt(raw) if kind == "fisher" else raw
        return e.reshape(n, -1)

    def coordinate_blocks_jvp(self, z, kind=None):
        kind = self.resolve_kind(kind)
        r = _traced(self.logits if self.logits is not None else self.probs, z)
        if r is None:
            return None
        raw, cols = r
        if not isinstance(raw, torch.Tensor) or raw.dim() < 2 or raw.shape[0] != z.shape[0]:
            return None
        out, tcols = _outer_columns(lambda x: self._from_raw(x, kind), raw, cols)
        return (out,), (tcols,)

    def embedding_jet(self, z, v, kind=None, mixed=False):
        return self._jet(z, v, kind, _jet_mode(mixed))

    def embedding_hessian_jet(self, z, kind=None):
        return self._jet(z, None, kind, "hessian")

    def _jet(self, z, v, kind, mode):
        kind = self.resolve_kind(kind)
        r = _traced2(self.logits if self.logits is not None else self.probs, z, v, mode)
        if r is None:
            return None
        raw, cols, h = r
        if not isinstance(raw, torch.Tensor) or raw.dim() < 2 or raw.shape[0] != z.shape[0]:
            return None
        n, d = z.shape
        out, ocols, oh = _COMPOSE[mode](lambda x: self._from_raw(x, kind), raw, cols, h, v)
        oh = oh.reshape(n, -1) if mode == "taylor" else oh.reshape(oh.shape[0], n, -1)
        return _jet_cat([(out, ocols.reshape(d, n, -1), oh)])

    def coordinates(self, z, kind=None):
        kind = self.resolve_kind(kind)
        n = z.shape[0]
        x, is_log = self._probs_or_logprobs(z)
        if kind == "fisher":
            e = 2.0 * torch.exp(0.5 * x) if is_log else 2.0 * torch.sqrt(x)
        else:
            e = torch.exp(x) if is_log else x
        return e.reshape(n, -1)

    def check_coordinates(self, eta, kind=None):
        super().check_coordinates(eta, kind)
        if self.probs is not None:
            kind = self.resolve_kind(kind)
            p = (0.5 * eta).pow(2) if kind == "fisher" else eta
            bad = ~(p > 0).all(dim=1)
            if bool(bad.any()):
                raise ValueError(
                    "categorical probabilities must be positive for the Fisher metric; "
                    f"got a zero probability at {describe_bad_rows(bad)}. Pass logits= instead."
                )

    def distribution(self, z):
        z = self.prepare(z)
        raw = self._raw(z)
        d = Categorical(logits=raw) if self.logits is not None else Categorical(probs=raw)
        return Independent(d, raw.dim() - 2) if raw.dim() > 2 else d


class DeterministicDecoder(Decoder):
    """A deterministic map ``x = f(z)``; its metric is ``JᵀJ`` (kinds ``"expected"``/``"mean"``)."""

    kinds = ("expected", "mean")
    default_kind = "expected"
    embedded_kinds = kinds

    def __init__(self, f, *, latent_dim: Optional[int] = None):
        super().__init__(latent_dim)
        self.f = _as_callable(f, "f")

    def _modules(self):
        return [self.f] if isinstance(self.f, nn.Module) else []

    def coordinates(self, z, kind=None):
        self.resolve_kind(kind)
        return _flat(self.f(z), z.shape[0], "output")

    def coordinate_blocks_jvp(self, z, kind=None):
        self.resolve_kind(kind)
        r = _traced(self.f, z)
        if r is None:
            return None
        n, d = z.shape
        return (_flat(r[0], n, "output"),), (r[1].reshape(d, n, -1),)

    def embedding_jet(self, z, v, kind=None, mixed=False):
        return self._jet(z, v, kind, _jet_mode(mixed))

    def embedding_hessian_jet(self, z, kind=None):
        return self._jet(z, None, kind, "hessian")

    def _jet(self, z, v, kind, mode):
        self.resolve_kind(kind)
        n, d = z.shape
        return _jet_cat([_jet_flat(_traced2(self.f, z, v, mode), n, d)])

    def distribution(self, z):
        raise NotImplementedError("a deterministic decoder has no likelihood; use coordinates(z)")

    def __call__(self, z):
        z = self.prepare(z)
        return self.coordinates(z)
