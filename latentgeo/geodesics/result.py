"""One result type for geodesics (:class:`GeodesicResult`) and the per-pair status codes.

Every pair solved by :func:`~latentgeo.geodesics.connecting_geodesic` (and so by
:func:`~latentgeo.geodesics.log_map` and :func:`~latentgeo.geodesics.distance_matrix`) gets a
:class:`GeodesicStatus`: ``SUCCESS`` (0) means its length is a certified distance — the ODE
residual and the speed drift of the returned curve are ``≤ tol`` *and* it is the shortest
of the candidate curves tried (straight line, graph paths, other starts). Every other pair
still has an honest number: ``length`` is the length of the shortest curve found, an upper
bound on the distance that is never longer than the straight line.

Example:
    >>> from latentgeo.geodesics import GeodesicStatus
    >>> GeodesicStatus.BUDGET.message
    'the time budget ran out before the pair was certified; length is an upper bound'
    >>> int(GeodesicStatus.SUCCESS)
    0
"""

from __future__ import annotations

from enum import IntEnum

import torch

from .ivp import hermite5
from .spectral import _eval_series

__all__ = ["GeodesicStatus", "GeodesicResult", "GeodesicConvergenceError"]


class GeodesicStatus(IntEnum):
    """Per-pair outcome of a connecting-geodesic solve (``0`` = success)."""

    SUCCESS = 0
    NOT_CONVERGED = 1
    NOT_SHORTEST = 2
    BUDGET = 3
    STOPPED = 4
    NONFINITE = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    GeodesicStatus.SUCCESS: "certified geodesic, the shortest curve found",
    GeodesicStatus.NOT_CONVERGED: "not certified (ODE residual, speed drift or resolution above tol); "
    "length is an upper bound",
    GeodesicStatus.NOT_SHORTEST: "a geodesic, but another candidate curve (straight line, graph path or "
    "another start) is shorter; length is an upper bound",
    GeodesicStatus.BUDGET: "the time budget ran out before the pair was certified; length is an upper bound",
    GeodesicStatus.STOPPED: "stopped by the user before the pair was solved; length is the straight line's",
    GeodesicStatus.NONFINITE: "non-finite values of the metric along the curve; length is an upper bound",
}


class GeodesicConvergenceError(RuntimeError):
    """Raised when geodesics that were required did not converge; ``.result`` holds the details."""

    def __init__(self, msg, result=None):
        super().__init__(msg)
        self.result = result


def _polyline(curve: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of discrete curves ``(N, T, d)`` at ``t (Q,)``."""
    n, T, d = curve.shape
    s = t.clamp(0, 1) * (T - 1)
    i0 = s.floor().long().clamp(0, T - 2)
    w = (s - i0.to(s.dtype))[None, :, None]
    return curve[:, i0] * (1 - w) + curve[:, i0 + 1] * w


class GeodesicResult:
    """Connecting geodesics for a batch of pairs.

    Attributes:
        z0, z1: ``(N, d)`` endpoints.
        length: ``(N,)`` the geodesic distance where ``converged``; elsewhere the length of the
            shortest curve found (an upper bound on the distance, never above the straight line's).
        energy: ``(N,)`` ``length²`` (the energy of the constant-speed curve on ``[0, 1]``).
        status: ``(N,)`` long tensor of :class:`GeodesicStatus` values; ``converged`` is
            ``status == SUCCESS``.
        reasons: per pair, why it is not certified (``""`` for certified pairs); ``message`` summarises.
        method: per pair, what certified it: ``"collocation"``, ``"shooting"`` or ``""``.
        init: per pair, the start of the reported curve: ``"line"``, ``"graph"`` or ``"warm"``.
        residual: ``(N,)`` Euclidean size of the ODE residual (collocation fixed-point change or
            shooting endpoint mismatch).
        rel_residual: ``(N,)`` the same in the metric norm relative to the length (or the
            truncation estimate, whichever is larger).
        speed_drift: ``(N,)`` relative variation of ``‖γ'‖_M`` along the solution.
        line_length: ``(N,)`` the straight line's length (a competitor of every pair).
        initial_velocity: ``(N, d)`` ``γ'(0)`` (the log map where converged).
        stats: dict of ``(N,)`` tensors: ``iterations`` (collocation/Newton), ``energy_iterations``,
            ``evaluations`` (points at which the metric's second-order jet was evaluated),
            ``nodes`` (final collocation nodes) and ``wall_time`` (seconds, the pair's share of
            its batch).
        discrete_curve: ``(N, n_points, d)`` the reported curves at evenly spaced times.

    ``curve(t)`` evaluates the reported curves at ``t ∈ [0, 1]``; ``result[idx]`` selects pairs.

    From :func:`~latentgeo.geodesics.exp_map`: ``z1`` is the endpoint, ``end_velocity`` the
    velocity there, ``initial_velocity`` the given ``v``, ``method == "ivp"``; ``stats`` has
    ``rejected`` steps too, and with ``return_path=True`` ``knot_times``/``knot_points`` hold the
    accepted steps and ``curve(s)`` the dense output at fractions ``s`` of the integration.
    """

    def __init__(self, **kw):
        kw.setdefault("_series", None)
        kw.setdefault("_knots", None)
        kw.setdefault("_from_knots", torch.zeros(kw["z0"].shape[0], dtype=torch.bool, device=kw["z0"].device))
        kw.setdefault("_polyline", torch.zeros(kw["z0"].shape[0], dtype=torch.bool, device=kw["z0"].device))
        self.__dict__.update(kw)

    @property
    def converged(self) -> torch.Tensor:
        return self.status == int(GeodesicStatus.SUCCESS)

    @property
    def iterations(self) -> torch.Tensor:
        return self.stats["iterations"]

    @property
    def nodes(self) -> torch.Tensor:
        return self.stats["nodes"]

    def curve(self, t) -> torch.Tensor:
        """Points ``(N, Q, d)`` at times ``t (Q,)`` in ``[0, 1]``: the Legendre series of the
        collocation solution (or of the best curve where not converged), the quintic Hermite dense
        output of shooting solutions, or the piecewise-linear discrete curve."""
        if self.__dict__.get("_needs_path"):
            raise ValueError("exp_map was called without return_path=True; no dense output is stored")
        dt, dev = self.z0.dtype, self.z0.device
        t = torch.as_tensor(t, dtype=dt, device=dev)
        if t.dim() == 0:
            t = t[None]
        if t.dim() != 1 or not bool(torch.isfinite(t).all()) or not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError("t must be a 1-d tensor of times in [0, 1]")
        if self._series is not None:
            out = _eval_series(self._series, t)
            out = torch.where((t == 0)[None, :, None], self.z0[:, None], out)
            out = torch.where((t == 1)[None, :, None], self.z1[:, None], out)
        else:
            out = _polyline(self.discrete_curve, t)
        if self._series is not None and bool(self._polyline.any()):
            out = torch.where(self._polyline[:, None, None], _polyline(self.discrete_curve, t), out)
        if self._knots is not None and bool(self._from_knots.any()):
            kt, z, v, a = self._knots
            ode = hermite5(kt, z, v, a, t)
            out = torch.where(self._from_knots[:, None, None], ode, out)
        return out

    def _collocation_certified(self) -> torch.Tensor:
        """``(N,)`` pairs certified by collocation whose curve is their Legendre series (not a graph
        polyline or a shooting solution): those a warm start can collocate directly."""
        colloc = torch.tensor([m == "collocation" for m in self.method], dtype=torch.bool, device=self.z0.device)
        return self.converged & colloc & ~self._polyline & ~self._from_knots

    def _piecewise_paths(self, K: int = 33, T: int = 513):
        """``(piece, series)``: the pairs certified by piecewise collocation ``(N,)`` and their
        paths as Euclidean-arclength Legendre series ``(N, K, d)`` (zeros elsewhere; see
        :func:`~latentgeo.geodesics.piecewise.path_series`), the start a warm solve re-collocates
        them from."""
        from .piecewise import path_series

        dev = self.z0.device
        piece = self.converged & torch.tensor([m == "piecewise collocation" for m in self.method], dtype=torch.bool,
                                              device=dev)
        series = self.z0.new_zeros(len(self), K, self.z0.shape[1])
        if bool(piece.any()):
            rows = torch.nonzero(piece).reshape(-1)
            with torch.no_grad():
                pts = self[rows].curve(torch.linspace(0, 1, T, dtype=self.z0.dtype, device=dev)).detach()
            series[rows] = path_series(pts, K)
            piece &= torch.isfinite(series).all(2).all(1)
        return piece, series

    @property
    def messages(self) -> list:
        """Per pair: ``""`` if certified, else its status message and reason."""
        return [
            "" if s == 0 else f"{GeodesicStatus(s).name}: {r or GeodesicStatus(s).message}"
            for s, r in zip(self.status.tolist(), self.reasons)
        ]

    @property
    def message(self) -> str:
        n = len(self)
        bad = [(i, m) for i, m in enumerate(self.messages) if m]
        if not bad:
            return f"all {n} geodesics certified"
        counts = {}
        for s in self.status.tolist():
            if s:
                counts[GeodesicStatus(s).name] = counts.get(GeodesicStatus(s).name, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        shown = "; ".join(f"pair {i}: {m}" for i, m in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        return f"{len(bad)} of {n} geodesics not certified ({summary}): {shown}{more}"

    def __len__(self):
        return self.length.shape[0]

    @staticmethod
    def concat(results) -> "GeodesicResult":
        """One result holding the pairs of ``results`` in order (for instance chunks of pairs solved
        by separate calls): ``GeodesicResult.concat([r[:2], r[2:]])`` has the pairs of ``r``."""
        from .connecting import _concat

        results = list(results)
        if not results or not all(isinstance(r, GeodesicResult) for r in results):
            raise TypeError("GeodesicResult.concat needs a non-empty sequence of GeodesicResult objects")
        return _concat(results)

    def __getitem__(self, idx):
        n = len(self)
        sel = torch.arange(n, device=self.z0.device)[idx].reshape(-1)
        kw = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
                kw[k] = v[sel]
            elif isinstance(v, list) and len(v) == n:
                kw[k] = [v[i] for i in sel.tolist()]
            elif k == "stats":
                kw[k] = {s: x[sel] for s, x in v.items()}
            elif k == "_knots" and v is not None:
                kw[k] = tuple(x[sel] for x in v)
            else:
                kw[k] = v
        return GeodesicResult(**kw)

    def __repr__(self):
        n = len(self)
        ok = int(self.converged.sum())
        L = self.length[self.converged]
        rng = f", length in [{float(L.min()):.4g}, {float(L.max()):.4g}]" if L.numel() else ""
        why = ""
        if ok < n:
            why = "; " + self.message.split(":")[0].split("(", 1)[1].rstrip(")")
        return f"GeodesicResult(n={n}, converged={ok}/{n}{rng}{why})"
