"""Clustering under the geodesic distance of a latent metric.

* :class:`GeodesicKMeans` (:mod:`.kmeans`): scikit-learn-style k-means with geodesic distances,
  Karcher-mean or medoid centres, triangle-inequality pruning of the assignment.
* :func:`frechet_mean` (:mod:`.frechet`): weighted Fréchet (Karcher) means by Riemannian gradient descent.
"""

from .frechet import FrechetMeanResult, FrechetStatus, frechet_mean
from .kmeans import GeodesicKMeans

__all__ = ["GeodesicKMeans", "frechet_mean", "FrechetMeanResult", "FrechetStatus"]
