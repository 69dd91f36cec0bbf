"""Clustering under the geodesic distance of a latent metric.

* :class:`GeodesicKMeans` (:mod:`.kmeans`): scikit-learn-style k-means with geodesic distances,
  Karcher-mean or medoid centres, triangle-inequality pruning of the assignment.
* :func:`frechet_mean` (:mod:`.frechet`): weighted Fréchet (Karcher) means by Riemannian gradient descent.
* :func:`f_measure` (:mod:`.scores`): the class-matched F-measure of *Latent Space Oddity*'s Table 1.
"""

from .frechet import FrechetMeanResult, FrechetStatus, frechet_mean
from .kmeans import GeodesicKMeans
from .scores import f_measure

__all__ = ["GeodesicKMeans", "frechet_mean", "FrechetMeanResult", "FrechetStatus", "f_measure"]
