"""Geodesics: ODE right-hand side, exp map (IVP), connecting geodesics (energy + BVP), distances.

Modules: :mod:`.ode` (geodesic acceleration, Christoffel symbols), :mod:`.ivp` (batched
Dormand–Prince, exp map), :mod:`.spectral` (pseudospectral energy minimisation and
Gauss–Legendre collocation: the default connecting-geodesic solver), :mod:`.energy` (discrete
energy minimisation), :mod:`.bvp` (Newton shooting), :mod:`.solvers` (``Collocation``, ``Shooting``),
:mod:`.result` (``GeodesicResult``, ``GeodesicStatus``), :mod:`.connecting` (connecting geodesics,
log map, distance matrices), :mod:`.graph` (kNN/grid graphs, graph distances).
"""

from .connecting import DistanceMatrix, connecting_geodesic, distance_matrix, float64_metric, log_map, working_metric
from .result import GeodesicConvergenceError, GeodesicResult, GeodesicStatus
from .solvers import Collocation, Shooting
from .energy import EnergyResult, minimize_discrete_energy
from .ivp import exp_map
from .ode import acceleration_fn, acceleration_from_jet, christoffel, geodesic_acceleration

__all__ = [
    "geodesic_acceleration",
    "christoffel",
    "acceleration_fn",
    "acceleration_from_jet",
    "exp_map",
    "minimize_discrete_energy",
    "EnergyResult",
    "connecting_geodesic",
    "Collocation",
    "Shooting",
    "GeodesicResult",
    "GeodesicStatus",
    "float64_metric",
    "working_metric",
    "log_map",
    "distance_matrix",
    "DistanceMatrix",
    "GeodesicConvergenceError",
    "LatentGraph",
]


def __getattr__(name):
    # LatentGraph needs scipy.sparse/csgraph/spatial (~0.4 s to import): loaded on first use
    if name == "LatentGraph":
        from .graph import LatentGraph

        return LatentGraph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
