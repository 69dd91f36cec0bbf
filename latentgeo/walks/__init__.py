"""Random walks on latent metrics: Euclidean, the LSO slides' Gaussian walk, Riemannian Brownian
motion (with the right drift), geodesic walks and MMALA; one :class:`WalkResult`.

Modules: :mod:`.walk` (:func:`random_walk`, the driver), :mod:`.geometry` (``L Lᵀ = M⁻¹``, the
Brownian drift from one batched geodesic-acceleration call, ``∇·M⁻¹``, the exp-map step),
:mod:`.mmala` (the Metropolis–Hastings-corrected Langevin step), :mod:`.result` (:class:`WalkResult`,
:class:`WalkStatus`), :mod:`.support` (fraction of steps within the data support).
"""

from .result import WalkResult, WalkStatus, decode_trajectories
from .support import matched_step_sizes, mixture_log_prob, nearest_code_distance, support_fraction, support_threshold
from .walk import METHODS, random_walk

__all__ = ["random_walk", "METHODS", "WalkResult", "WalkStatus", "decode_trajectories", "support_fraction",
           "support_threshold", "nearest_code_distance", "matched_step_sizes", "mixture_log_prob"]
