"""Charts of embedded latent manifolds: analyse manifold-latent decoders in free coordinates.

* :mod:`.hyperbolic` — :class:`PoincareChart` (hyperboloid ↔ Poincaré ball) and
  :func:`poincare_decoder` (a decoder wrapper re-expressed on the ball).
"""

from .hyperbolic import PoincareChart, poincare_decoder

__all__ = ["PoincareChart", "poincare_decoder"]
