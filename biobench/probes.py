"""Lightweight classifiers fitted on frozen features (scikit-learn estimator API).

- ``logreg``: standardise, then multinomial logistic regression whose inverse regularisation
  ``C`` is chosen by stratified k-fold cross-validation on macro-F1 (refit on all training data).
- ``simpleshot``: SimpleShot (Wang et al. 2019): subtract the training mean, L2-normalise, and
  predict the nearest class centroid.
- ``knn``: k-nearest neighbours by cosine similarity, majority vote (ties: nearest neighbour's
  class among the tied).

All are deterministic given ``seed``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression with ``C`` picked by stratified CV."""

    def __init__(self, C_grid=DEFAULT_C_GRID, n_folds: int = 5, max_iter: int = 2000,
                 class_weight: str | None = "balanced", seed: int = 0):
        self.C_grid = C_grid
        self.n_folds = n_folds
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.seed = seed

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=self.max_iter, class_weight=self.class_weight,
                                  random_state=self.seed)

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.classes_ = np.unique(y)
        # Folds cannot exceed the smallest class; with a single example per class there is
        # nothing to cross-validate and the middle of the grid is used.
        n_splits = min(self.n_folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
        if n_splits >= 2 and len(self.classes_) > 1:
            folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.seed)
            scores = np.zeros(len(self.C_grid))
            for train_idx, val_idx in folds.split(Xs, y):
                for j, C in enumerate(self.C_grid):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        model = self._model(C).fit(Xs[train_idx], y[train_idx])
                    scores[j] += f1_score(y[val_idx], model.predict(Xs[val_idx]), average="macro",
                                          zero_division=0.0)
            self.cv_scores_ = scores / n_splits
            # first best = the strongest regularisation among equals
            self.C_ = float(self.C_grid[int(np.argmax(self.cv_scores_))])
        else:
            self.cv_scores_ = None
            self.C_ = float(self.C_grid[len(self.C_grid) // 2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = self._model(self.C_).fit(Xs, y)
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(self.scaler_.transform(np.asarray(X, dtype=np.float64)))

    def predict(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict(self.scaler_.transform(np.asarray(X, dtype=np.float64)))


class SimpleShotProbe(ClassifierMixin, BaseEstimator):
    """Centre on the training mean, L2-normalise, nearest class centroid (Euclidean)."""

    def __init__(self, seed: int = 0):
        self.seed = seed  # unused (deterministic); kept so every probe takes a seed

    def _transform(self, X):
        return _l2_normalise(np.asarray(X, dtype=np.float64) - self.mean_)

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.mean_ = X.mean(axis=0)
        Z = self._transform(X)
        # only the classes that occur in training get a centroid: labels need not be 0..C-1
        self.classes_ = np.unique(y)
        self.centroids_ = np.stack([Z[y == c].mean(axis=0) for c in self.classes_])
        return self

    def decision_function(self, X):
        check_is_fitted(self, "centroids_")
        Z = self._transform(X)
        # negative squared distance: larger is better
        return -(((Z[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(axis=2))

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


class KNNProbe(ClassifierMixin, BaseEstimator):
    """k-nearest neighbours by cosine similarity with a majority vote."""

    def __init__(self, k: int = 5, seed: int = 0):
        self.k = k
        self.seed = seed

    def fit(self, X, y):
        self.X_ = _l2_normalise(np.asarray(X, dtype=np.float64))
        self.y_ = np.asarray(y)
        self.classes_ = np.unique(self.y_)
        return self

    def predict(self, X):
        check_is_fitted(self, "X_")
        sims = _l2_normalise(np.asarray(X, dtype=np.float64)) @ self.X_.T
        k = min(self.k, len(self.y_))
        # stable sort: equal similarities keep training order, so results are deterministic
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.array([_vote(self.y_[row]) for row in order])


def _vote(neighbour_labels: np.ndarray):
    """Majority label; among tied labels, the one whose first neighbour is nearest."""
    values, first_pos, counts = np.unique(neighbour_labels, return_index=True, return_counts=True)
    best = counts == counts.max()
    return values[best][np.argmin(first_pos[best])]


PROBES = {
    "logreg": LogisticProbe,
    "simpleshot": SimpleShotProbe,
    "knn": KNNProbe,
}


def make_probe(name: str, seed: int = 0, **params):
    if name not in PROBES:
        raise KeyError(f"Unknown probe '{name}'. Valid probes: {', '.join(sorted(PROBES))}")
    return PROBES[name](seed=seed, **params)
