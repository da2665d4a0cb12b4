"""FungiCLEF's open-set rule as a scikit-learn estimator (kept apart so that importing the task
registry does not import scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from biobench.metrics import FUNGICLEF_UNKNOWN


class OpenSetCentroids(ClassifierMixin, BaseEstimator):
    """Wrap a centroid probe: its closed-set prediction, or ``-1`` (unknown) when the distance
    to the nearest centroid exceeds the ``quantile`` of the training examples' distances.

    The wrapped ``probe`` needs ``squared_distances(X)`` to the class centroids, one column
    per class, as SimpleShot has.
    """

    def __init__(self, probe, quantile: float = 0.95):  # FungiCLEF passes its unknown_quantile
        self.probe = probe
        self.quantile = quantile

    def _distance(self, X) -> np.ndarray:
        return self.probe_.squared_distances(X).min(axis=1)

    def fit(self, X, y):
        if not hasattr(self.probe, "squared_distances"):
            raise ValueError(f"{type(self.probe).__name__} has no squared_distances; FungiCLEF's "
                             "unknown-species rule needs distances to centroids: use the "
                             "'simpleshot' probe")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile}")
        self.probe_ = clone(self.probe).fit(X, y)  # the wrapped estimator is never modified
        self.classes_ = self.probe_.classes_
        self.threshold_ = float(np.quantile(self._distance(X), self.quantile))
        return self

    def predict(self, X):
        check_is_fitted(self, "probe_")
        pred = np.asarray(self.probe_.predict(X)).copy()
        pred[self._distance(X) > self.threshold_] = FUNGICLEF_UNKNOWN
        return pred
