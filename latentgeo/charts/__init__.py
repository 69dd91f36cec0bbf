"""Charts of curved latent spaces, so the Euclidean-chart analysis (metric, geodesics,
clustering, walks) runs on decoders of spherical and hyperbolic latents.

* :mod:`.sphere` — :class:`StereographicChart`, :class:`ChartDecoder`, :func:`chart_decoder`;
* :mod:`.hyperbolic` — :class:`PoincareChart` (hyperboloid ↔ Poincaré ball) and
  :func:`poincare_decoder` (a decoder wrapper re-expressed on the ball).
"""

from .hyperbolic import PoincareChart, poincare_decoder
from .sphere import ChartDecoder, StereographicChart, chart_decoder

__all__ = ["StereographicChart", "ChartDecoder", "chart_decoder", "PoincareChart", "poincare_decoder"]
