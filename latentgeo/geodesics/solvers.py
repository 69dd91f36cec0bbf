"""Solver objects for connecting geodesics: each carries its own options (diffrax style).

Pass one as ``solver=`` to :func:`~latentgeo.geodesics.connecting_geodesic`,
:func:`~latentgeo.geodesics.log_map` or :func:`~latentgeo.geodesics.distance_matrix`.

* :class:`Collocation` (the default): pseudospectral energy minimisation of a degree-``degree``
  polynomial curve (from the line and ``starts − 1`` bulged curves), then Gauss–Legendre
  collocation of the geodesic boundary-value problem with ``nodes`` nodes, refined up to
  ``max_nodes`` for pairs it does not resolve
  (see :mod:`latentgeo.geodesics.spectral`); piecewise collocation on adaptive meshes for the
  pairs a global polynomial does not resolve (:mod:`latentgeo.geodesics.piecewise`); optionally
  Newton shooting for the pairs still not certified.
* :class:`Shooting`: discrete chord-energy minimisation with ``n_points`` points, then damped
  Newton shooting with an adaptive Dormand–Prince integrator (:mod:`latentgeo.geodesics.bvp`).

Example:
    >>> from latentgeo.geodesics import Collocation, Shooting
    >>> Collocation(max_nodes=128)
    Collocation(nodes=32, max_nodes=128, degree=24, max_iter=20, energy_max_iter=100, energy_rtol=1e-08, starts=3, piecewise=True, stages=4, max_segments=256, stall_retry=True, shooting_fallback=False, warm_fallback='solve', keep_jacobians=False, first_max_nodes=None, fixed_point_iter=1)
    >>> Shooting().n_points
    17
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .._validation import check_choice, check_int

__all__ = ["Collocation", "Shooting"]


def _pos_or_none(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0):
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Collocation:
    """Spectral energy minimisation + Gauss–Legendre collocation (the default solver).

    The defaults were chosen on the demo's trained VAE (RBF variance: sharp features that need
    128–256 nodes on about half of the pairs) and the variance-preserving MLP of
    ``benchmarks/bench_geodesics.py``: ``nodes=32, degree=24`` certified more pairs in less time
    than ``16, 12`` on both, and the finer pass to 512 nodes certified the demo's last
    class-centre pair.

    Args:
        nodes: collocation nodes of the first attempt (≥ 4); unresolved pairs are re-solved
            at the resolution the decay of their Legendre coefficients and speed drift predicts
            (on a grid of steps of √2), up to ``max_nodes // 2``; with ``piecewise`` on, a pair
            whose Newton solve fails there is not retried at twice the nodes. Pairs still not certified go to
            piecewise collocation (``piecewise``), then those it does not certify get one finer
            pass from their best curve: a degree-``2·degree`` energy minimisation, then
            collocation from ``2·nodes`` up to ``max_nodes`` nodes (when ``2·nodes ≤ max_nodes``).
        max_nodes: the finest resolution tried (≥ ``nodes``). With ``piecewise`` on, capped at
            ``max(nodes, 1280 // d)`` in ``d`` latent dimensions (the global Newton systems are
            dense in ``Q·d`` unknowns; beyond that the piecewise stage is cheaper): on the 10-D
            digits VAE, 20 pairs without a budget took a median of 1.8 s and a p90 of 5.1 s with
            the cap (128 nodes) and 2.7 s and 14.2 s without it (512), 17 certified either way.
        degree: polynomial degree of the energy-minimising starting curve (≥ 4).
        max_iter: Newton iterations per collocation attempt.
        fixed_point_iter: Anderson-accelerated fixed-point iterations a pair gets first at each
            resolution (≥ 0, at most ``max_iter``); those it does not settle take Newton at the
            same resolution, from the last iterate, or from their start where the iteration's
            residual rose above the start's (``0``: Newton straight away). One step settles a start that already solves the equations, as
            near-linear decoders' lines do; elsewhere the iteration needs 5–10 steps or diverges
            (demo VAE, tol 1e-6: 4 of 65 pairs settled at 32 nodes within 10), where Newton takes
            2–3. With ``1`` instead of ``10``, one batched call needed 12 % fewer evaluations on the
            demo VAE (65 pairs) and 10 % fewer on the variance-preserving MLP (40), with the same
            pairs certified; the digits k-means fits certified as many distances or more for 2–6 %
            fewer evaluations, with the same labels.
        energy_max_iter: Levenberg–Marquardt iterations of the energy minimisation.
        energy_rtol: the energy minimisation stops when a step lowers the energy by less than
            ``energy_rtol`` relative (it only finds the starting curve; collocation certifies it:
            ``1e-8`` certified as many demo-VAE pairs as ``1e-12`` with 25 % fewer evaluations,
            ``1e-6`` fewer pairs).
        starts: starting curves of the energy minimisation from the straight line: ``1`` (the line)
            or an odd number: the line and ``±0.25k·|z1 − z0|`` sine bulges normal to it; the
            shortest of them (dense length) after 20 energy iterations goes on alone and is then
            collocated: on 145 demo-VAE pairs the certified lengths were those of choosing after
            all 100 iterations (to 2e-14), for 26 % fewer evaluations (one batched call, tol 1e-6:
            34.2 → 27.5 ms/pair). On the demo VAE
            2 of 10 random pairs certified from the line alone were 2 % longer than stochman's
            curves; the bulged starts found geodesics shorter than both (stage 1 costs ``starts``
            times more; collocation runs once). Picking the shortest start rather than the one of
            lowest energy certified 145 of 145 demo-VAE pairs instead of 143, 4 of them up to 4.5 %
            shorter and none longer, at tol 1e-6 and 1e-4 alike.
        piecewise: retry the pairs the global polynomial did not certify by piecewise Gauss
            collocation of ``stages`` nodes per segment on meshes that adapt to the curve, from
            16 up to ``max_segments`` segments (:func:`~latentgeo.geodesics.piecewise.collocate_piecewise`).
            Measured on the 91 hardest (code, own centre) pairs of the {3,4,7} digits VAE (those
            k-means' final assignment did not certify; 2 threads, float64): with k-means' lighter
            solver at ``tol=1e-2``, 81 certified in 6.1 s, against 1 in 8.3 s without the stage;
            the stage alone from the best curves at ``tol=1e-6``, 74 of 90 in 3.5 s, each one
            confirmed by integrating it from its initial velocity (endpoint mismatch ≤ 1.0e-6
            relative) and within 1.1e-5 of its length at ``tol=1e-2``.
        stages: Gauss nodes per segment of the piecewise stage (≥ 2; order ``2·stages``).
        max_segments: the finest mesh of the piecewise stage (≥ 16).
        stall_retry: a pair whose piecewise Newton line search stalls on a mesh is solved again
            from that mesh's start with damped stage blocks and full steps instead of shorter
            steps (:func:`~latentgeo.geodesics.piecewise.collocate_piecewise`). On a 10-D digits
            VAE, with a 10 s budget, it certified all 4 such pairs of 20 (20 of 20 in all, 18
            without); :class:`~latentgeo.clustering.GeodesicKMeans` turns it off: on its fits it
            certified more distances (98.0 → 99.1 % on {3,4,7}) but took 3 s longer.
        shooting_fallback: retry the pairs collocation cannot certify by Newton shooting
            (slower; off by default since the time budget bounds every pair anyway).
        warm_fallback: what happens, with ``init=`` a previous result, to the pairs its certified
            curves do not carry (a direct Newton solve from the moved curve failed, or the pair had
            no certified curve): ``"solve"`` (default) runs the whole pipeline for them (from the
            straight line, or from their moved curves); ``"keep"`` leaves them unsolved: each is
            reported uncertified with its moved curve (measured densely: an upper bound of the
            distance, never longer than the line); with ``init=`` curves (no certified series)
            that is every pair. For loops that only need steering directions, such as the
            iterations of :class:`~latentgeo.clustering.GeodesicKMeans`.
        keep_jacobians: keep in the result each collocation-certified pair's last Newton Jacobian
            (its node blocks ``∂a/∂γ``, ``∂a/∂γ'``: ``2·Q·d²`` numbers a pair). A warm start from
            that result (``init=`` it) then begins its direct Newton solves with chord steps on
            them instead of a fresh finite-difference Jacobian (``2d + 1`` evaluations per
            node): for pairs whose endpoints moved a little, as in the iterations of
            :class:`~latentgeo.clustering.GeodesicKMeans`.
        first_max_nodes: the finest resolution of the first global collocation pass (from the
            energy stage's curve; ``None``: ``max(nodes, max_nodes // 2)``). Pairs it does not
            certify go on to the piecewise stage and then a finer global pass up to ``max_nodes``.
            :class:`~latentgeo.clustering.GeodesicKMeans` uses ``nodes``: on its hard pairs (the
            recorded batches of the digits fits, tol 1e-2) the passes at 44 and 64 nodes certified
            few pairs that the piecewise stage did not; with a single pass at 32 nodes the same
            pairs certified, with lengths within 5e-6, for 9–15 % fewer evaluations. On the demo VAE
            at tol 1e-6 (``bench_geodesics.py``) it made one batched call 35 % faster, but the
            variance-preserving MLP pairs 40 % slower (their 44–64-node curves are cheaper
            globally than piecewise), so the default stays.
    """

    nodes: int = 32
    max_nodes: int = 512
    degree: int = 24
    max_iter: int = 20
    energy_max_iter: int = 100
    energy_rtol: float = 1e-8
    starts: int = 3
    piecewise: bool = True
    stages: int = 4
    max_segments: int = 256
    stall_retry: bool = True
    shooting_fallback: bool = False
    warm_fallback: str = "solve"
    keep_jacobians: bool = False
    first_max_nodes: Optional[int] = None
    fixed_point_iter: int = 1

    def __post_init__(self):
        check_int(self.nodes, "nodes", minimum=4)
        check_int(self.max_nodes, "max_nodes", minimum=4)
        check_int(self.degree, "degree", minimum=4)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_int(self.energy_max_iter, "energy_max_iter", minimum=0)
        if isinstance(self.energy_rtol, bool) or not isinstance(self.energy_rtol, (int, float)) or not (0 < self.energy_rtol < 1):
            raise ValueError(f"energy_rtol must be a number in (0, 1), got {self.energy_rtol!r}")
        object.__setattr__(self, "energy_rtol", float(self.energy_rtol))
        check_int(self.starts, "starts", minimum=1)
        if self.starts % 2 == 0:
            raise ValueError(f"starts must be odd (the line and pairs of opposite bulges), got {self.starts!r}")
        if self.max_nodes < self.nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) must be >= nodes ({self.nodes})")
        if not isinstance(self.piecewise, bool):
            raise TypeError(f"piecewise must be a bool, got {self.piecewise!r}")
        check_int(self.stages, "stages", minimum=2)
        check_int(self.max_segments, "max_segments", minimum=16)
        if not isinstance(self.stall_retry, bool):
            raise TypeError(f"stall_retry must be a bool, got {self.stall_retry!r}")
        if not isinstance(self.shooting_fallback, bool):
            raise TypeError(f"shooting_fallback must be a bool, got {self.shooting_fallback!r}")
        check_choice(self.warm_fallback, "warm_fallback", ("solve", "keep"))
        if not isinstance(self.keep_jacobians, bool):
            raise TypeError(f"keep_jacobians must be a bool, got {self.keep_jacobians!r}")
        check_int(self.fixed_point_iter, "fixed_point_iter", minimum=0)
        if self.fixed_point_iter > self.max_iter:
            raise ValueError(f"fixed_point_iter ({self.fixed_point_iter}) must be <= max_iter ({self.max_iter})")
        if self.first_max_nodes is not None:
            check_int(self.first_max_nodes, "first_max_nodes", minimum=4)
            if not self.nodes <= self.first_max_nodes <= self.max_nodes:
                raise ValueError(f"first_max_nodes ({self.first_max_nodes}) must lie between nodes ({self.nodes}) "
                                 f"and max_nodes ({self.max_nodes})")


@dataclass(frozen=True)
class Shooting:
    """Discrete energy minimisation + damped Newton shooting.

    Args:
        n_points: points of the discrete starting curve (≥ 4).
        max_iter: Newton iterations per pair.
        energy_max_iter: iterations of the discrete energy minimisation.
        rtol, atol: integrator tolerances (default ``0.1·tol`` and ``0.01·tol``, not below
            ``10·eps`` of the dtype).
        max_steps: Runge–Kutta step attempts per integration.
    """

    n_points: int = 17
    max_iter: int = 20
    energy_max_iter: int = 100
    rtol: Optional[float] = None
    atol: Optional[float] = None
    max_steps: int = 10_000

    def __post_init__(self):
        check_int(self.n_points, "n_points", minimum=4)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_int(self.energy_max_iter, "energy_max_iter", minimum=0)
        check_int(self.max_steps, "max_steps", minimum=1)
        object.__setattr__(self, "rtol", _pos_or_none(self.rtol, "rtol"))
        object.__setattr__(self, "atol", _pos_or_none(self.atol, "atol"))
