"""The one result type of :func:`latentgeo.walks.random_walk`: :class:`WalkResult`."""

from __future__ import annotations

from enum import IntEnum
from typing import Optional

import torch

__all__ = ["WalkStatus", "WalkResult"]


class WalkStatus(IntEnum):
    """Per-walker outcome of a walk (``0`` = every step was taken)."""

    SUCCESS = 0
    NONFINITE_STEP = 1  # the proposed position (or the drift/diffusion at the current one) was NaN/inf
    METRIC_NOT_PD = 2  # the metric tensor was not positive definite (no Cholesky factor)
    EXP_MAP_FAILED = 3  # the geodesic step did not reach its end within tolerance/budget
    NONFINITE_TARGET = 4  # MMALA: the log-density or its gradient at the current position is NaN/inf

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    WalkStatus.SUCCESS: "",
    WalkStatus.NONFINITE_STEP: "the step became non-finite (NaN/inf position, drift or diffusion); walker stopped",
    WalkStatus.METRIC_NOT_PD: "the metric tensor is not positive definite here (Cholesky failed, or NaN/inf entries); walker stopped",
    WalkStatus.EXP_MAP_FAILED: "the exponential map did not reach the end of the step; walker stopped",
    WalkStatus.NONFINITE_TARGET: "the log-density or its gradient is NaN/inf at the current position; walker stopped",
}


class WalkResult:
    """Trajectories and diagnostics of a batch of random walks.

    Attributes:
        trajectories: ``(W, S + 1, d)`` positions, ``trajectories[:, 0]`` the start points. A
            stopped walker keeps its last finite position for the remaining steps (see ``mask``),
            so no NaN ever enters the array.
        method: the walk's method name; ``step_size``: its step size.
        status: ``(W,)`` int tensor of :class:`WalkStatus` codes (``0`` = success).
        steps_taken: ``(W,)`` steps completed before a walker stopped (``S`` when it did not).
        accepted: ``(W,)`` accepted proposals (MMALA; for other methods every taken step counts).
        n_rejected: ``(W,)`` rejected proposals (MMALA), ``n_nonfinite``: ``(W,)`` non-finite
            proposals (rejected by MMALA; stop the walker elsewhere).
        stats: ``dict`` with ``wall_time`` (s), ``n_steps``, ``n_walkers``.

    ``converged``/``success`` is the bool mask ``status == 0``; ``stopped`` its complement;
    ``acceptance_rate`` the per-walker fraction of accepted proposals (``None`` for methods
    without a Metropolis–Hastings step); ``messages`` human text per walker.
    """

    def __init__(self, trajectories, method, step_size, status, steps_taken, accepted, n_rejected, n_nonfinite,
                 stats, mh: bool):
        self.trajectories = trajectories
        self.method = method
        self.step_size = step_size
        self.status = status
        self.steps_taken = steps_taken
        self.accepted = accepted
        self.n_rejected = n_rejected
        self.n_nonfinite = n_nonfinite
        self.stats = stats
        self._mh = mh

    # -- masks -------------------------------------------------------------------------
    @property
    def success(self) -> torch.Tensor:
        return self.status == 0

    converged = success

    @property
    def stopped(self) -> torch.Tensor:
        return self.status != 0

    @property
    def mask(self) -> torch.Tensor:
        """``(W, S + 1)`` bool: positions actually reached (False after a walker stopped)."""
        s = self.trajectories.shape[1]
        t = torch.arange(s, device=self.steps_taken.device)
        return t[None, :] <= self.steps_taken[:, None]

    @property
    def acceptance_rate(self) -> Optional[torch.Tensor]:
        if not self._mh:
            return None
        tried = (self.accepted + self.n_rejected).clamp_min(1)
        return self.accepted.to(torch.float64) / tried.to(torch.float64)

    @property
    def messages(self) -> list[str]:
        return [WalkStatus(int(s)).message for s in self.status.tolist()]

    @property
    def message(self) -> str:
        bad = [f"{i}: {m}" for i, m in enumerate(self.messages) if m]
        if not bad:
            return "all walkers took every step"
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        return "; ".join(bad[:10]) + more

    def __len__(self) -> int:
        return self.trajectories.shape[0]

    def __repr__(self) -> str:
        w, s1, d = self.trajectories.shape
        ok = int(self.success.sum())
        parts = [f"WalkResult(method={self.method!r}, walkers={w}, steps={s1 - 1}, d={d}: {ok}/{w} walked every step"]
        if ok < w:
            counts = torch.bincount(self.status, minlength=len(WalkStatus)).tolist()
            why = ", ".join(f"{c} {WalkStatus(k).name.lower()}" for k, c in enumerate(counts) if k and c)
            parts.append(f"; stopped: {why}")
        if self._mh:
            parts.append(f"; acceptance {float(self.acceptance_rate.mean()):.3f}")
        return "".join(parts) + ")"

    # -- display -----------------------------------------------------------------------
    def decode(self, decoder, *, chunk_size: int = 4096, steps=None) -> torch.Tensor:
        """Decoder means along the trajectories, ``(W, S' + 1, D)`` (for display).

        Args:
            decoder: a latentgeo decoder (its likelihood mean; a
                :class:`~latentgeo.DeterministicDecoder`'s output) or any callable
                ``(N, d) -> (N, ...)``.
            chunk_size: rows decoded at a time.
            steps: optional index (slice, list, tensor) of the steps to decode, e.g. ``slice(None, None, 10)``.
        """
        return decode_trajectories(decoder, self.trajectories if steps is None else self.trajectories[:, steps],
                                   chunk_size=chunk_size)


def decode_trajectories(decoder, trajectories: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """Decoder means of ``trajectories (W, T, d)``, shape ``(W, T, D)`` (see :meth:`WalkResult.decode`)."""
    from .._validation import check_int
    from ..decoders import Decoder, DeterministicDecoder

    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    if trajectories.dim() != 3:
        raise ValueError(f"trajectories must have shape (W, T, d), got {tuple(trajectories.shape)}")
    if isinstance(decoder, DeterministicDecoder):
        fn = decoder
    elif isinstance(decoder, Decoder):
        def fn(z):
            return decoder.distribution(z).mean
    elif callable(decoder):
        fn = decoder
    else:
        raise TypeError(f"decoder must be a latentgeo decoder or a callable, got {type(decoder).__name__}")
    w, t, d = trajectories.shape
    flat = trajectories.reshape(w * t, d)
    with torch.no_grad():
        out = [fn(flat[i:i + chunk_size]) for i in range(0, w * t, chunk_size)]
    x = torch.cat([o.reshape(o.shape[0], -1) for o in out])
    return x.reshape(w, t, -1)
