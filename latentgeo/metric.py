"""Riemannian metrics on latent spaces.

Two kinds share one interface (:class:`Metric`):

* :class:`PullbackMetric` — the metric a decoder induces, ``M(z) = J(z)ᵀ W(η) J(z)`` with
  ``J = ∂η/∂z`` the Jacobian of the decoder's parameter map. For the *embedded* kinds
  (``W = I``: expected metric, deterministic, Bernoulli/categorical Fisher–Rao) it is the
  Euclidean pullback of an embedding ``g = η``; curve energies and lengths then need only
  forward passes. The Gaussian Fisher–Rao kind pulls back a product of hyperbolic planes.
* :class:`MetricField` — any callable ``z ↦ M(z)`` (Poincaré ball, a user's model).

Conventions for discrete curves ``c_0 … c_{T-1}`` at ``t_i = i/(T−1)``:
``length = Σ_i dist(c_i, c_{i+1})`` and ``energy = (T−1)·Σ_i dist(c_i, c_{i+1})²``, the
Riemann sums of ``∫‖ċ‖ dt`` and ``∫‖ċ‖² dt`` (so ``length² ≤ energy``, with equality for a
constant-speed curve). For embedded metrics ``dist`` is the chord ``‖g(c_{i+1}) − g(c_i)‖``;
for the Gaussian Fisher–Rao kind the closed-form distance in the product of hyperbolic
planes; for a :class:`MetricField` the midpoint rule ``√(Δᵀ M(c_{i+½}) Δ)``.

References:
    Arvanitidis, Hansen, Hauberg. *Latent Space Oddity: on the Curvature of Deep
    Generative Models*. ICLR 2018 (expected metric, Thm 1).
    Arvanitidis, González-Duque, Pouplin, Kalatzis, Hauberg. *Pulling back information
    geometry*. AISTATS 2022 (Fisher–Rao pullbacks).

Example:
    >>> import torch, latentgeo as lg
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    >>> metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A.T))
    >>> torch.allclose(metric.tensor(torch.randn(4, 2)), (A.T @ A).expand(4, 2, 2))
    True
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch.func import jvp

from ._autodiff import (
    auto_chunk_rows, nested_forward_hazard, rowwise_gram, rowwise_jacobian, second_directional, transforms_active,
    value_and_columns,
)
from ._validation import as_latent_batch, check_finite, describe_bad_rows, model_dtype
from .decoders import Decoder

__all__ = ["Metric", "PullbackMetric", "MetricField"]

_DEFAULT_CHUNK = "auto"


def _as_curves(curve, latent_dim, name="curve") -> tuple[torch.Tensor, bool]:
    if not isinstance(curve, torch.Tensor):
        curve = torch.as_tensor(curve, dtype=torch.get_default_dtype())
    single = curve.dim() == 2
    if single:
        curve = curve.unsqueeze(0)
    if curve.dim() != 3:
        raise ValueError(f"{name} must have shape (T, d) or (N, T, d), got {tuple(curve.shape)}")
    if curve.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 points per curve, got {curve.shape[1]}")
    if latent_dim is not None and curve.shape[2] != latent_dim:
        raise ValueError(f"{name} has latent dimension {curve.shape[2]}, expected {latent_dim}")
    if not torch.is_floating_point(curve):
        curve = curve.to(torch.get_default_dtype())
    check_finite(curve, name)
    return curve, single


class Metric:
    """Common interface: ``tensor``, volume, inner products, and discrete-curve energy/length.

    Subclasses implement :meth:`tensor` and :meth:`segment_sq_lengths`.
    """

    latent_dim: Optional[int] = None
    #: True when the metric is the Euclidean pullback of :meth:`embedding` (fast paths apply)
    is_embedded: bool = False

    def __init__(self, ridge: float = 0.0, rcond: Optional[float] = None):
        if not (ridge >= 0.0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be a finite non-negative number, got {ridge!r}")
        self.ridge = float(ridge)
        self.rcond = rcond

    # -- to implement ------------------------------------------------------------------
    def _raw_tensor(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def segment_sq_lengths(self, curve: torch.Tensor) -> torch.Tensor:
        """Squared lengths of the segments of curves ``(N, T, d)`` → ``(N, T−1)``."""
        raise NotImplementedError

    def _base_tensor_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    # -- pure functions (transformable) ---------------------------------------------------
    def tensor_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A pure function ``z (N, d) -> M(z) (N, d, d)``, ridge included, without input checks.

        Composable with :mod:`torch.func` (``jvp``, ``vmap``, ``jacfwd``): the geodesic
        solvers differentiate it for Christoffel symbols.
        """
        base = self._base_tensor_fn()
        ridge = self.ridge
        if ridge <= 0.0:
            return base

        def with_ridge(z):
            m = base(z)
            return m + ridge * torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)

        return with_ridge

    # -- shared ------------------------------------------------------------------------
    def _check_z(self, z, name="z"):
        return as_latent_batch(z, self.latent_dim, name=name)

    def _apply_ridge(self, g: torch.Tensor) -> torch.Tensor:
        if self.ridge <= 0.0:
            return g
        d = g.shape[-1]
        ev = torch.linalg.eigvalsh(g)
        rcond = self.rcond if self.rcond is not None else d * torch.finfo(g.dtype).eps * 10
        scale = ev.abs().amax(-1).clamp_min(torch.finfo(g.dtype).tiny)
        singular = ev[..., 0] <= rcond * scale
        if bool(singular.any()):
            warnings.warn(
                f"metric is numerically singular (smallest/largest eigenvalue <= {rcond:.1e}) at "
                f"{describe_bad_rows(singular)}; a ridge {self.ridge:g}·I is added to the metric",
                RuntimeWarning,
                stacklevel=3,
            )
        return g + self.ridge * torch.eye(d, dtype=g.dtype, device=g.device)

    def tensor(self, z) -> torch.Tensor:
        """Metric tensor ``M(z)`` of shape ``(N, d, d)`` (``(d, d)`` for a single code)."""
        z, single = self._check_z(z)
        g = self._apply_ridge(self._raw_tensor(z))
        return g[0] if single else g

    def log_volume(self, z) -> torch.Tensor:
        """``log √det M(z)`` — the log of the Riemannian volume density; ``-inf`` where singular."""
        g = self.tensor(z)
        sign, logabs = torch.linalg.slogdet(g)
        return torch.where(sign > 0, 0.5 * logabs, torch.full_like(logabs, -math.inf))

    def magnification(self, z) -> torch.Tensor:
        """Magnification factor ``√det M(z)`` (Bishop et al. 1997), shape ``(N,)``."""
        return torch.exp(self.log_volume(z))

    def inner(self, z, u, v) -> torch.Tensor:
        """``⟨u, v⟩_{M(z)}`` for batches ``(N, d)`` (or single vectors ``(d,)``)."""
        zz, single = self._check_z(z)
        uu, _ = as_latent_batch(u, zz.shape[1], name="u")
        vv, _ = as_latent_batch(v, zz.shape[1], name="v")
        if uu.shape != zz.shape or vv.shape != zz.shape:
            raise ValueError(
                f"z, u and v must have the same shape, got {tuple(zz.shape)}, {tuple(uu.shape)} and {tuple(vv.shape)}"
            )
        g = self._apply_ridge(self._raw_tensor(zz))
        out = torch.einsum("ni,nij,nj->n", uu.to(g.dtype), g, vv.to(g.dtype))
        return out[0] if single else out

    def norm(self, z, v) -> torch.Tensor:
        """``‖v‖_{M(z)}``, shape ``(N,)``."""
        as_latent_batch(v, None, name="v")
        return self.inner(z, v, v).clamp_min(0).sqrt()

    def energy(self, curve) -> torch.Tensor:
        """Discrete curve energy ``(T−1)·Σ dist²`` of curves ``(N, T, d)`` → ``(N,)``."""
        c, single = _as_curves(curve, self.latent_dim)
        e = self.segment_sq_lengths(c).sum(-1) * (c.shape[1] - 1)
        return e[0] if single else e

    def length(self, curve) -> torch.Tensor:
        """Discrete curve length ``Σ dist`` of curves ``(N, T, d)`` → ``(N,)``."""
        c, single = _as_curves(curve, self.latent_dim)
        s = _safe_sqrt(self.segment_sq_lengths(c)).sum(-1)
        return s[0] if single else s

    def _chord_sums(self, curve: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete lengths of curves ``(N, T, d)`` at all ``T`` points and at every second one."""
        return tuple(_safe_sqrt(self.segment_sq_lengths(x)).sum(-1) for x in (curve, curve[:, ::2]))

    def _richardson_length(self, curve: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chord sums of curves ``(N, T, d)`` (``T`` odd) at all ``T`` points and at every second
        one, Richardson-extrapolated (chord sums converge as ``h²``): ``(estimate, error estimate)``,
        each ``(N,)``. No input checks."""
        L1, L0 = self._chord_sums(curve)
        diff = (L1 - L0) / 3
        return L1 + diff, diff.abs()


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``√x`` with a zero (not NaN/inf) gradient at ``x = 0``."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def _hyperbolic_product_sq_dist(eta_a: torch.Tensor, eta_b: torch.Tensor) -> torch.Tensor:
    """Squared Fisher–Rao distance between products of univariate Gaussians.

    ``η = [μ; σ]`` with ``D`` means and ``D`` stds. Per output, ``ds² = (dμ² + 2dσ²)/σ²`` is
    ``2×`` the hyperbolic half-plane metric in ``(μ/√2, σ)``, so
    ``d_k = 2√2·asinh(√q_k)``, ``q_k = ((Δμ)²/2 + (Δσ)²)/(4σ_aσ_b)``, and the product
    distance is ``√Σ d_k²``. ``asinh(√q)²`` is evaluated as ``q·(asinh(√q)/√q)²`` to keep
    the gradient finite at ``q = 0``.
    """
    D = eta_a.shape[-1] // 2
    mu_a, sd_a = eta_a[..., :D], eta_a[..., D:]
    mu_b, sd_b = eta_b[..., :D], eta_b[..., D:]
    q = (0.5 * (mu_a - mu_b).pow(2) + (sd_a - sd_b).pow(2)) / (4.0 * sd_a * sd_b)
    small = q < 1e-8
    qs = torch.where(small, torch.ones_like(q), q)
    ratio_sq = torch.where(small, 1.0 - q / 3.0, torch.asinh(torch.sqrt(qs)).pow(2) / qs)
    return (8.0 * q * ratio_sq).sum(-1)


class PullbackMetric(Metric):
    """The metric a decoder induces on its latent space.

    Args:
        decoder: a :class:`~latentgeo.decoders.Decoder` wrapper.
        kind: ``"expected"``, ``"fisher"`` or ``"mean"`` (see :mod:`latentgeo.decoders` for
            what each decoder supports); ``None`` takes the decoder's default.
        mode: Jacobian mode — ``"forward"`` (``d`` jvps, best when ``d ≤ K``), ``"reverse"``
            (``K`` vjps) or ``"auto"``.
        chunk_size: points per batch in Jacobian computations, to bound memory
            (``None``: everything at once). Jacobians take ``chunk_size·K·d`` numbers; the
            default ``"auto"`` picks about ``2**24 / (K·d)`` points (≈ 64 MB in float32).
        ridge: add ``ridge·I`` to every metric tensor (for numerically singular metrics); a
            warning names the points where the metric was singular.
        fast_path: compute ``tensor()`` and :meth:`jet` through a :mod:`torch.fx` trace of the
            decoder's callables (``nn.Module`` s and plain functions) when they trace
            (:mod:`latentgeo._autodiff`); callables that do not trace use the generic
            ``vmap(jvp)`` path. Both give the same numbers.

    The metric is ``M(z) = Jᵀ W J`` with ``J = ∂η/∂z`` computed in one batched
    :func:`torch.func.jvp` (vectorised over the ``d`` directions) — about ``1 + d`` forward
    passes for all points, no per-point loop.
    """

    def __init__(
        self,
        decoder: Decoder,
        kind: Optional[str] = None,
        *,
        mode: str = "auto",
        chunk_size: Optional[int] | str = _DEFAULT_CHUNK,
        ridge: float = 0.0,
        rcond: Optional[float] = None,
        fast_path: bool = True,
    ):
        super().__init__(ridge=ridge, rcond=rcond)
        self.fast_path = bool(fast_path)
        if not isinstance(decoder, Decoder):
            raise ValueError(
                f"PullbackMetric needs a latentgeo decoder wrapper (GaussianDecoder, BernoulliDecoder, ...), "
                f"got {type(decoder).__name__}; wrap your network first"
            )
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"unknown Jacobian mode {mode!r}; expected 'auto', 'forward' or 'reverse'")
        if chunk_size is not None and chunk_size != "auto" and (
            isinstance(chunk_size, str) or int(chunk_size) != chunk_size or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}")
        self.decoder = decoder
        self.kind = decoder.resolve_kind(kind)
        self.mode = mode
        self.chunk_size = chunk_size
        self.latent_dim = decoder.latent_dim
        self.is_embedded = decoder.is_embedded(self.kind)
        self._out_dim: Optional[int] = None

    def __repr__(self):
        return f"PullbackMetric({type(self.decoder).__name__}, kind={self.kind!r}, mode={self.mode!r})"

    def _check_z(self, z, name="z"):
        z, single = as_latent_batch(z, self.latent_dim, name=name, dtype=model_dtype(self.decoder))
        self.decoder.prepare(z, name=name)
        return z, single

    # -- pure maps (usable inside torch.func transforms) --------------------------------
    def coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """Pure map ``z (N, d) -> η (N, K)``; no input checks (safe under vmap/jvp)."""
        return self.decoder.coordinates(z, self.kind)

    def embedding(self, z: torch.Tensor) -> torch.Tensor:
        """The embedding ``g(z)`` whose Euclidean pullback is this metric (embedded kinds only).

        Pure and differentiable (no checks), so the geodesic code can nest ``jvp`` through it.
        """
        if not self.is_embedded:
            raise ValueError(
                f"the {self.kind!r} metric of {type(self.decoder).__name__} is not a Euclidean pullback; "
                "it has no embedding (use tensor())"
            )
        return self.coordinates(z)

    def embed(self, z) -> torch.Tensor:
        """Checked coordinates ``η(z)`` for a batch (validates input and decoder output)."""
        z, single = self._check_z(z)
        eta = self._coords_checked(z)
        return eta[0] if single else eta

    def _rows_per_chunk(self, z) -> int:
        if self.chunk_size is None:
            return z.shape[0]
        if self.chunk_size == "auto":
            if self._out_dim is None:
                with torch.no_grad():
                    self._out_dim = self.coordinates(z[:1]).shape[1]
            return auto_chunk_rows(z.shape[1], self._out_dim)
        return int(self.chunk_size)

    def _coords_checked(self, z):
        step = self._rows_per_chunk(z) * 8
        eta = torch.cat([self.coordinates(z[s : s + step]) for s in range(0, z.shape[0], step)], 0)
        self.decoder.check_coordinates(eta, self.kind)
        return eta

    # -- tensor ------------------------------------------------------------------------
    def jacobian(self, z) -> tuple[torch.Tensor, torch.Tensor]:
        """``(η(z), J(z))`` with shapes ``(N, K)`` and ``(N, K, d)`` (checked)."""
        z, single = self._check_z(z)
        eta, jac = self._jacobian(z)
        return (eta[0], jac[0]) if single else (eta, jac)

    def _jacobian(self, z):
        eta, jac = rowwise_jacobian(self.coordinates, z, self.mode, self._rows_per_chunk(z), self._out_dim)
        if eta.shape[0] != z.shape[0]:
            raise ValueError(f"decoder returned {eta.shape[0]} outputs for {z.shape[0]} latent codes")
        self._out_dim = eta.shape[1]
        self.decoder.check_coordinates(eta, self.kind)
        bad = ~torch.isfinite(jac).reshape(jac.shape[0], -1).all(1)
        if bool(bad.any()):
            raise ValueError(f"decoder Jacobian contains NaN/inf at {describe_bad_rows(bad)}")
        return eta, jac

    def _base_tensor_fn(self):
        coords, weights, kind = self.coordinates, self.decoder.fisher_weights, self.kind
        embedded = self.is_embedded

        def base(z):
            # outside torch.func transforms, the decoder's traced first-order pass: reverse mode
            # through it is right where torch's double backward of a forward-mode derivative is
            # not (through LayerNorm, autograd of value_and_columns' M was off by 0.10 where its
            # largest entry is 0.12)
            r = self.traced_columns(z)
            eta, jac = r if r is not None else value_and_columns(coords, z)
            jt = jac.transpose(1, 2)
            w = None if embedded else weights(eta, kind)
            return jt @ jac if w is None else jt @ (w.unsqueeze(-1) * jac)

        return base

    def jet(self, z: torch.Tensor, v: torch.Tensor, mixed: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(g(z) (N, K), J (N, K, d), ∂²g(z)[v, v] (N, K))`` of the embedding (embedded kinds).

        What the geodesic ODE of a Euclidean pullback needs: ``γ'' = −J⁺ ∂²g[γ', γ']``. The
        decoder's own jet (:meth:`~latentgeo.decoders.Decoder.embedding_jet`: one Taylor-mode
        pass through the fx trace) when ``fast_path`` is on and it applies, else nested
        :func:`torch.func.jvp` through :meth:`embedding` (under active ``torch.func`` transforms
        too). With ``mixed``, the third entry is the velocity's Hessian column ``H (N, K, d)``,
        ``H[n, :, i] = ∂²g(z_n)[v_n, e_i]`` (so ``∂²g[v, v] = H v``): with it the acceleration's
        Jacobian in the velocity is exact, ``−2 J⁺ H``. Pure: no input checks.
        """
        if not self.is_embedded:
            raise ValueError(
                f"the {self.kind!r} metric of {type(self.decoder).__name__} is not a Euclidean pullback; "
                "it has no embedding jet (use tensor_fn())"
            )
        if self.fast_path and not transforms_active():
            r = self.decoder.embedding_jet(z, v, self.kind, mixed=True) if mixed else self.decoder.embedding_jet(z, v, self.kind)
            if r is not None:
                return r
        hazard = nested_forward_hazard(self.decoder)
        if hazard:
            raise NotImplementedError(
                f"second derivatives of the {type(self.decoder).__name__}'s embedding: {hazard}. latentgeo's traced "
                "path decomposes that layer, but it is not available here ("
                + ("inside torch.func transforms" if transforms_active() else
                   "the decoder cannot be traced, or fast_path is off") + ")")
        try:
            g, jac = value_and_columns(self.embedding, z)
            if mixed:
                emb = self.embedding
                return g, jac, value_and_columns(lambda x: jvp(emb, (x,), (v,))[1], z)[1]
            return g, jac, second_directional(self.embedding, z, v)
        except NotImplementedError as exc:
            if "forward AD" not in str(exc):
                raise
            raise NotImplementedError(
                f"second derivatives of the {type(self.decoder).__name__}'s embedding by nested torch.func.jvp "
                f"failed: {exc} (torch has no forward-mode derivative of that op's backward, e.g. of SiLU, Mish "
                "and Hardsigmoid under no_grad). latentgeo's traced path has closed forms for them: write the "
                "decoder as an nn.Module that torch.fx can trace (see latentgeo._autodiff.unsupported_reason)"
            ) from exc

    def traced_columns(self, z: torch.Tensor):
        """``(η(z) (N, K), J (N, K, d))`` of the coordinates from the decoder's traced first-order
        pass (:meth:`~latentgeo.decoders.Decoder.coordinate_blocks_jvp`), or ``None`` (``fast_path``
        off, inside :mod:`torch.func` transforms, or no traced pass). Pure: no input checks."""
        if not self.fast_path or transforms_active():
            return None
        r = self.decoder.coordinate_blocks_jvp(z, self.kind)
        if r is None or r[0][0].shape[0] != z.shape[0]:
            return None
        blocks, cols = r
        return torch.cat(list(blocks), 1), torch.cat(list(cols), 2).permute(1, 2, 0)

    def hessian_jet(self, z: torch.Tensor):
        """``(g(z) (N, K), J (N, K, d), H (N, K, m))`` of the embedding, or ``None``: the upper
        triangle of every output's Hessian, ``H[n, :, k] = ∂²g(z_n)[e_I[k], e_J[k]]`` for the
        ``m = d(d+1)/2`` pairs ``i ≤ j`` of :func:`latentgeo._autodiff.hessian_pairs`.

        From the decoder's Hessian-mode jet (:meth:`~latentgeo.decoders.Decoder.embedding_hessian_jet`,
        ``1 + d + m`` rows a point against ``d (2d + 2)`` for ``d`` mixed jets) when ``fast_path``
        is on and it applies; ``None`` otherwise (the caller then uses :meth:`jet`). Embedded
        kinds only. Pure: no input checks.
        """
        if not self.is_embedded or not self.fast_path or transforms_active():
            return None
        f = getattr(self.decoder, "embedding_hessian_jet", None)
        return None if f is None else f(z, self.kind)

    def _raw_tensor(self, z):
        kind = self.kind
        eta, g, self._out_dim = rowwise_gram(
            lambda x: self.decoder.coordinate_blocks(x, kind),
            z,
            None if self.is_embedded else (lambda blocks: self.decoder.block_weights(blocks, kind)),
            self.mode,
            self.chunk_size,
            self._out_dim,
            fast=(lambda x: self.decoder.coordinate_blocks_jvp(x, kind)) if self.fast_path else None,
        )
        if eta.shape[0] != z.shape[0]:
            raise ValueError(f"decoder returned {eta.shape[0]} outputs for {z.shape[0]} latent codes")
        self.decoder.check_coordinates(eta, kind)
        # M_ii = Σ_k w_k J_ki² with finite w > 0 is finite iff column i of J is: checking the
        # (N, d) diagonal replaces a pass over the whole (N, K, d) Jacobian
        bad = ~torch.isfinite(torch.diagonal(g, dim1=1, dim2=2)).all(1)
        if bool(bad.any()):
            raise ValueError(f"decoder Jacobian (or the metric built from it) contains NaN/inf at {describe_bad_rows(bad)}")
        return g

    # -- curves ------------------------------------------------------------------------
    def _coords_of_curve(self, curve: torch.Tensor) -> torch.Tensor:
        n, t, d = curve.shape
        self.decoder.prepare(curve[:, 0], name="curve")
        return self._coords_checked(curve.reshape(n * t, d)).reshape(n, t, -1)

    def _sq_chords(self, eta: torch.Tensor) -> torch.Tensor:
        if self.is_embedded:
            return (eta[:, 1:] - eta[:, :-1]).pow(2).sum(-1)
        return _hyperbolic_product_sq_dist(eta[:, :-1], eta[:, 1:])

    def segment_sq_lengths(self, curve: torch.Tensor) -> torch.Tensor:
        return self._sq_chords(self._coords_of_curve(curve))

    def _chord_sums(self, curve):
        # the segments' lengths depend only on the coordinates at the points: the coarse sum reuses
        # the fine one's decoder evaluations (a third of the work of measuring a curve twice)
        eta = self._coords_of_curve(curve)
        return tuple(_safe_sqrt(self._sq_chords(e)).sum(-1) for e in (eta, eta[:, ::2]))


class MetricField(Metric):
    """A metric given by any callable ``fn: (N, d) -> (N, d, d)``.

    Args:
        fn: returns symmetric positive-definite matrices for a batch of points. It should be
            written with torch operations so that the geodesic code can differentiate it
            (Christoffel symbols come from autodiff of ``fn``).
        latent_dim: optional expected ``d``.
        ridge, rcond: as in :class:`PullbackMetric`.
        check_symmetric: refuse non-symmetric outputs (relative tolerance ``1e-6`` of the
            largest entry, scaled by the dtype's precision).

    Example (the Poincaré disk, ``M = (2/(1−‖z‖²))² I``):
        >>> import torch, latentgeo as lg
        >>> ball = lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * torch.eye(2))
        >>> ball.tensor(torch.zeros(1, 2))
        tensor([[[4., 0.],
                 [0., 4.]]])
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        latent_dim: Optional[int] = None,
        *,
        ridge: float = 0.0,
        rcond: Optional[float] = None,
        check_symmetric: bool = True,
    ):
        super().__init__(ridge=ridge, rcond=rcond)
        if not callable(fn):
            raise ValueError(f"MetricField needs a callable z -> M(z), got {type(fn).__name__}")
        if latent_dim is not None and (int(latent_dim) != latent_dim or latent_dim < 1):
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.fn = fn
        self.latent_dim = None if latent_dim is None else int(latent_dim)
        self.check_symmetric = check_symmetric

    def __repr__(self):
        return f"MetricField({getattr(self.fn, '__name__', type(self.fn).__name__)})"

    def _base_tensor_fn(self):
        fn = self.fn

        def base(z):
            m = fn(z)
            return 0.5 * (m + m.transpose(-1, -2))

        return base

    def _raw_tensor(self, z):
        g = self.fn(z)
        n, d = z.shape
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != (n, d, d):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"metric function must return shape ({n}, {d}, {d}) for z of shape {(n, d)}, got {shape}")
        check_finite(g, "metric tensor")
        if self.check_symmetric:
            asym = (g - g.transpose(1, 2)).abs().amax((1, 2))
            tol = 1e3 * torch.finfo(g.dtype).eps * g.abs().amax((1, 2)).clamp_min(1.0)
            bad = asym > tol
            if bool(bad.any()):
                raise ValueError(f"metric tensor is not symmetric at {describe_bad_rows(bad)}")
        return 0.5 * (g + g.transpose(1, 2))

    def segment_sq_lengths(self, curve):
        n, t, d = curve.shape
        mid = 0.5 * (curve[:, 1:] + curve[:, :-1])
        delta = curve[:, 1:] - curve[:, :-1]
        g = self._raw_tensor(mid.reshape(-1, d)).reshape(n, t - 1, d, d)
        return torch.einsum("ntI,ntIJ,ntJ->nt", delta, g, delta).clamp_min(0)
