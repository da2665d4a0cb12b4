"""Lightweight classifiers fitted on frozen features (scikit-learn estimator API).

- ``logreg``: standardise, then multinomial logistic regression whose inverse regularisation
  ``C`` is chosen by stratified k-fold cross-validation on macro-F1 (refit on all training data).
- ``simpleshot``: SimpleShot (Wang et al. 2019): subtract the training mean, L2-normalise, and
  predict the nearest class centroid.
- ``knn``: k-nearest neighbours by cosine similarity, majority vote (ties: nearest neighbour's
  class among the tied).
- ``linear_svm``: a linear SVM with fixed ``C`` (NeWT's protocol).

All are deterministic given ``seed``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import f1_score, make_scorer
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

# Not the "f1_macro" string: on binary problems scikit-learn 1.9's LogisticRegressionCV passes
# pos_label twice to that built-in scorer and raises TypeError.
MACRO_F1_SCORER = make_scorer(f1_score, average="macro", zero_division=0.0)
DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))


def l2_normalise(x: np.ndarray) -> np.ndarray:
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

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.classes_ = np.unique(y)
        # Folds cannot exceed the smallest class; with a single example per class there is
        # nothing to cross-validate and the middle of the grid is used.
        n_splits = min(self.n_folds, int(np.unique(y, return_counts=True)[1].min()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if n_splits >= 2 and len(self.classes_) > 1:
                # LogisticRegressionCV walks the C grid with warm starts: several times faster
                # than refitting from scratch for every (fold, C).
                self.model_ = LogisticRegressionCV(
                    Cs=list(self.C_grid), cv=StratifiedKFold(n_splits, shuffle=True,
                                                             random_state=self.seed),
                    scoring=MACRO_F1_SCORER, class_weight=self.class_weight, max_iter=self.max_iter,
                    random_state=self.seed, l1_ratios=(0.0,), use_legacy_attributes=False,
                ).fit(Xs, y)
                self.C_ = float(self.model_.C_)
                # mean validation macro-F1 per C; scores_ is (n_folds, n_l1_ratios=1, n_Cs)
                self.cv_scores_ = self.model_.scores_.mean(axis=0)[0]
            else:
                self.C_ = float(self.C_grid[len(self.C_grid) // 2])
                self.cv_scores_ = None
                self.model_ = LogisticRegression(C=self.C_, max_iter=self.max_iter,
                                                 class_weight=self.class_weight,
                                                 random_state=self.seed).fit(Xs, y)
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
        return l2_normalise(np.asarray(X, dtype=np.float64) - self.mean_)

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
        self.X_ = l2_normalise(np.asarray(X, dtype=np.float64))
        self.y_ = np.asarray(y)
        self.classes_ = np.unique(self.y_)
        return self

    def predict(self, X):
        check_is_fitted(self, "X_")
        sims = l2_normalise(np.asarray(X, dtype=np.float64)) @ self.X_.T
        k = min(self.k, len(self.y_))
        # stable sort: equal similarities keep training order, so results are deterministic
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.array([majority_vote(self.y_[row]) for row in order])


def majority_vote(neighbour_labels: np.ndarray):
    """Majority label; among tied labels, the one whose first neighbour is nearest."""
    values, first_pos, counts = np.unique(neighbour_labels, return_index=True, return_counts=True)
    best = counts == counts.max()
    return values[best][np.argmin(first_pos[best])]


class LinearSVMProbe(ClassifierMixin, BaseEstimator):
    """Linear SVM (hinge loss, L2 penalty) with a fixed ``C``; no search."""

    def __init__(self, C: float = 1.0, max_iter: int = 10000, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X, y):
        self.model_ = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X):
        check_is_fitted(self, "model_")
        return self.model_.decision_function(X)

    def predict(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict(X)


PROBES = {
    "logreg": LogisticProbe,
    "simpleshot": SimpleShotProbe,
    "knn": KNNProbe,
    "linear_svm": LinearSVMProbe,
}


def make_probe(name: str, seed: int = 0, **params):
    if name not in PROBES:
        raise KeyError(f"Unknown probe '{name}'. Valid probes: {', '.join(sorted(PROBES))}")
    return PROBES[name](seed=seed, **params)
