"""latentgeo — Riemannian geometry of generative models' latent spaces.

Entry points::

    import latentgeo as lg
    dec = lg.GaussianDecoder(mean=mean_net, std=std_net)
    metric = lg.PullbackMetric(dec, kind="expected")
    G = metric.tensor(z)                 # (N, d, d)
"""

from ._version import __version__
from .decoders import BernoulliDecoder, CategoricalDecoder, Decoder, DeterministicDecoder, GaussianDecoder
from .metric import Metric, MetricField, PullbackMetric
from .variance import RBFPrecision, fit_rbf_variance
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import Dataset, load_dataset
from .models import VAE
from .training import History, TrainConfig, Trainer, iwae_log_likelihood, train_vae
from . import geodesics, plotting, report
from .geodesics import (
    Collocation,
    DistanceMatrix,
    GeodesicConvergenceError,
    GeodesicResult,
    GeodesicStatus,
    Shooting,
    christoffel,
    connecting_geodesic,
    distance_matrix,
    exp_map,
    geodesic_acceleration,
    log_map,
)
from .report import register_section, report_sections, write_report
from . import walks
from .walks import WalkResult, random_walk


__all__ = [
    "__version__",
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
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "Dataset",
    "load_dataset",
    "VAE",
    "History",
    "TrainConfig",
    "Trainer",
    "iwae_log_likelihood",
    "train_vae",
    "geodesics",
    "geodesic_acceleration",
    "christoffel",
    "exp_map",
    "connecting_geodesic",
    "Collocation",
    "Shooting",
    "GeodesicResult",
    "GeodesicStatus",
    "log_map",
    "distance_matrix",
    "DistanceMatrix",
    "GeodesicConvergenceError",
    "LatentGraph",
    "plotting",
    "report",
    "register_section",
    "report_sections",
    "write_report",
    "walks",
    "random_walk",
    "clustering",
    "GeodesicKMeans",
    "frechet_mean",
    "WalkResult",
]


def __getattr__(name):
    # heavy optional pieces load on first use, so `import latentgeo` stays cheap
    if name == "LatentGraph":
        from .geodesics.graph import LatentGraph

        return LatentGraph
    if name in ("GeodesicKMeans", "frechet_mean", "clustering"):  # scikit-learn's estimator base: ~0.4 s
        import importlib

        clustering = importlib.import_module(".clustering", __name__)
        return clustering if name == "clustering" else getattr(clustering, name)
    if name == "backends":  # serial/Dask execution of blocks of pairs; dask itself loads only when used
        import importlib

        return importlib.import_module(".backends", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
