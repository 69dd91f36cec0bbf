"""Charts of curved latent spaces, so the Euclidean-chart analysis (metric, geodesics,
clustering, walks) runs on decoders of spherical (and, to come, hyperbolic) latents.

* :mod:`.sphere` — :class:`StereographicChart`, :class:`ChartDecoder`, :func:`chart_decoder`.
"""

from .sphere import ChartDecoder, StereographicChart, chart_decoder

__all__ = ["StereographicChart", "ChartDecoder", "chart_decoder"]
