"""latentgeo — Riemannian geometry of generative models' latent spaces.

Entry points::

    import latentgeo as lg
    dec = lg.GaussianDecoder(mean=mean_net, std=std_net)
    metric = lg.PullbackMetric(dec, kind="expected")
    G = metric.tensor(z)                 # (N, d, d)
"""

from .decoders import BernoulliDecoder, CategoricalDecoder, Decoder, DeterministicDecoder, GaussianDecoder
from .metric import Metric, MetricField, PullbackMetric
from .variance import RBFPrecision, fit_rbf_variance

__version__ = "0.1.0"

__all__ = [
    "Decoder",
    "GaussianDecoder",
    "BernoulliDecoder",
    "CategoricalDecoder",
    "DeterministicDecoder",
    "Metric",
    "PullbackMetric",
    "MetricField",
    "RBFPrecision",
    "fit_rbf_variance",
]
