"""Scores of a clustering against known classes.

:func:`f_measure` is the score of *Latent Space Oddity* (Arvanitidis et al., ICLR 2018, Table 1):
for every class, the F1 score of the cluster that matches it best, averaged with the classes'
sizes as weights, in percent. It is 100 exactly when the clusters are the classes (up to naming).

Example:
    >>> from latentgeo.clustering import f_measure
    >>> f_measure([0, 0, 1, 1], [5, 5, 7, 7])
    100.0
    >>> round(f_measure([0, 0, 1, 1], [0, 1, 1, 1]), 2)
    73.33
"""

from __future__ import annotations

import numpy as np

__all__ = ["f_measure"]


def f_measure(truth, labels) -> float:
    """``100 · Σ_c (n_c / n) max_k F1(class c, cluster k)`` for class labels ``truth`` and cluster
    labels ``labels`` (1-D, same length)."""
    truth, labels = np.asarray(truth).reshape(-1), np.asarray(labels).reshape(-1)
    if truth.shape != labels.shape or truth.size == 0:
        raise ValueError(f"truth and labels must be non-empty 1-D arrays of one length, got {truth.shape} and {labels.shape}")
    total = 0.0
    for c in np.unique(truth):
        t = truth == c
        best = 0.0
        for k in np.unique(labels):
            p = labels == k
            tp = float(np.sum(t & p))
            if tp:
                best = max(best, 2 * tp / (t.sum() + p.sum()))
        total += t.mean() * best
    return float(100.0 * total)
