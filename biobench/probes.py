"""Lightweight classifiers fitted on frozen features, as scikit-learn estimators.

- ``logreg``: standardise, then multinomial logistic regression whose inverse regularisation
  ``C`` is chosen by stratified k-fold cross-validation on ``biobench.metrics.macro_f1`` (the
  metric the tasks report), then refit on all training data.
- ``simpleshot``: SimpleShot (Wang et al. 2019): subtract the training mean, L2-normalise, and
  predict the nearest class centroid.
- ``knn``: k-nearest neighbours by cosine similarity, majority vote (ties: nearest neighbour's
  class among the tied).
- ``linear_svm``: a linear SVM with fixed ``C`` (NeWT's protocol).

Every probe follows scikit-learn's conventions: hyper-parameters are set in ``__init__`` and
stored unchanged (checked in ``fit``), input is validated like scikit-learn's own estimators
(``n_features_in_``, labels of any type in ``classes_``), and the test suite runs
``sklearn.utils.estimator_checks`` on each. All maths is float64. All are deterministic given
``random_state`` (SimpleShot and kNN have no random step; they accept it so every probe is
built the same way).
"""

from __future__ import annotations

import json
import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import make_scorer
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from biobench.metrics import macro_f1

# C is chosen on the metric the project reports. scikit-learn's f1_score(average="macro")
# averages over the union of true and predicted labels, biobench's over the true labels only,
# so the two can prefer different C. macro_f1 takes no ``labels``/``pos_label`` arguments, so
# LogisticRegressionCV calls it as is on binary problems too.
MACRO_F1_SCORER = make_scorer(macro_f1)
DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))
# kNN compares test rows with all training rows in blocks of at most this many similarities
KNN_BLOCK_ELEMENTS = 1 << 24


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _validate_fit_input(estimator, X, y):
    """X as a float64 matrix and y as a 1-d array of class labels, scikit-learn style (sets
    ``n_features_in_``; rejects NaN, sparse, complex, mismatched lengths, continuous y)."""
    X, y = validate_data(estimator, X, y, dtype=np.float64)
    check_classification_targets(y)
    return X, y


def _validate_predict_input(estimator, X):
    check_is_fitted(estimator)
    return validate_data(estimator, X, dtype=np.float64, reset=False)


def _require_two_classes(estimator, classes):
    if len(classes) < 2:
        raise ValueError(f"{type(estimator).__name__} needs at least 2 classes in y to fit; got "
                         f"one class: {classes[0]!r}")


def _check_int(estimator, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{type(estimator).__name__}: {name} must be an integer >= {minimum}, "
                         f"got {value!r}")
    return int(value)


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression with ``C`` picked by stratified CV.

    Fitted attributes: ``C_`` (the chosen C), ``C_grid_`` (the grid, sorted ascending),
    ``cv_scores_`` (mean validation macro-F1 per ``C_grid_`` entry), ``cv_fold_scores_``
    (n_folds x n_C), both ``None`` when there was too little data to cross-validate,
    ``n_folds_`` (the folds used), ``scaler_``, ``model_`` (the refit ``LogisticRegression``),
    ``n_iter_`` (its solver iterations), ``classes_``, ``n_features_in_``.
    """

    def __init__(self, C_grid=DEFAULT_C_GRID, n_folds: int = 5, max_iter: int = 2000,
                 class_weight="balanced", random_state=0):
        self.C_grid = C_grid
        self.n_folds = n_folds
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.random_state = random_state

    def _checked_grid(self) -> np.ndarray:
        grid = np.sort(np.asarray(self.C_grid, dtype=np.float64).ravel())
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError(f"LogisticProbe: C_grid must be a non-empty sequence of positive, "
                             f"finite numbers, got {self.C_grid!r}")
        return grid

    def fit(self, X, y):
        grid = self._checked_grid()
        n_folds = _check_int(self, "n_folds", self.n_folds, 2)
        max_iter = _check_int(self, "max_iter", self.max_iter, 1)
        X, y = _validate_fit_input(self, X, y)
        self.classes_, counts = np.unique(y, return_counts=True)
        _require_two_classes(self, self.classes_)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.C_grid_ = grid
        # Folds cannot exceed the smallest class; with a single example in some class there is
        # nothing to cross-validate and the middle of the grid is used.
        self.n_folds_ = min(n_folds, int(counts.min()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.n_folds_ >= 2:
                # LogisticRegressionCV walks the C grid with warm starts: several times faster
                # than refitting from scratch for every (fold, C). Its scorer sees the
                # original labels, so macro_f1 scores exactly what predict would return.
                search = LogisticRegressionCV(
                    Cs=list(grid), cv=StratifiedKFold(self.n_folds_, shuffle=True,
                                                      random_state=self.random_state),
                    scoring=MACRO_F1_SCORER, class_weight=self.class_weight, max_iter=max_iter,
                    random_state=self.random_state, l1_ratios=(0.0,), refit=False,
                    use_legacy_attributes=False,
                ).fit(Xs, y)
                # scores_ is (n_folds, n_l1_ratios=1, n_C), in the order of grid
                self.cv_fold_scores_ = search.scores_[:, 0, :]
                self.cv_scores_ = self.cv_fold_scores_.mean(axis=0)
                # argmax takes the first maximum: among equally good C, the smallest
                # (strongest regularisation) wins
                self.C_ = float(grid[int(np.argmax(self.cv_scores_))])
            else:
                self.cv_fold_scores_ = None
                self.cv_scores_ = None
                self.C_ = float(grid[len(grid) // 2])
            # the final model is an ordinary fit on all training data with the chosen C
            self.model_ = LogisticRegression(C=self.C_, max_iter=max_iter,
                                             class_weight=self.class_weight,
                                             random_state=self.random_state).fit(Xs, y)
        self.n_iter_ = self.model_.n_iter_
        return self

    def predict_proba(self, X):
        X = _validate_predict_input(self, X)
        return self.model_.predict_proba(self.scaler_.transform(X))

    def predict(self, X):
        X = _validate_predict_input(self, X)
        return self.model_.predict(self.scaler_.transform(X))


class SimpleShotProbe(ClassifierMixin, BaseEstimator):
    """Centre on the training mean, L2-normalise, nearest class centroid (Euclidean).

    ``squared_distances(X)`` gives the squared distance of each normalised example to each
    class centroid, ``(n_samples, n_classes)`` in the order of ``classes_``.
    ``decision_function`` is its negation (larger = closer) with more than two classes; with
    two it is scikit-learn's binary convention, one score per example, positive when
    ``classes_[1]`` is the nearer: ``d(classes_[0]) - d(classes_[1])``.
    """

    def __init__(self, random_state=0):
        self.random_state = random_state  # unused (deterministic); every probe takes one

    def _normalised(self, X: np.ndarray) -> np.ndarray:
        return l2_normalise(X - self.mean_)

    def fit(self, X, y):
        X, y = _validate_fit_input(self, X, y)
        self.mean_ = X.mean(axis=0)
        Z = self._normalised(X)
        # only the classes that occur in training get a centroid: labels need not be 0..C-1
        self.classes_, class_index, counts = np.unique(y, return_inverse=True,
                                                       return_counts=True)
        order = np.argsort(class_index, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.centroids_ = np.add.reduceat(Z[order], starts, axis=0) / counts[:, None]
        return self

    def squared_distances(self, X) -> np.ndarray:
        Z = self._normalised(_validate_predict_input(self, X))
        # |z - c|^2 expanded: an (n_samples, n_classes) matrix, never (n_samples, n_classes,
        # n_features); clipped because rounding can make a zero distance slightly negative
        sq = ((Z ** 2).sum(axis=1)[:, None] - 2.0 * Z @ self.centroids_.T
              + (self.centroids_ ** 2).sum(axis=1)[None, :])
        return np.maximum(sq, 0.0)

    def decision_function(self, X):
        scores = -self.squared_distances(X)
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict(self, X):
        # argmin takes the first minimum, as the binary decision_function > 0 rule does
        nearest = np.argmin(self.squared_distances(X), axis=1)
        return self.classes_[nearest]


class KNNProbe(ClassifierMixin, BaseEstimator):
    """k-nearest neighbours by cosine similarity with a majority vote.

    Ties in the vote go to the tied class whose nearest member is closest; equal similarities
    keep the training order. With fewer than ``k`` training examples, all of them vote.
    """

    def __init__(self, k: int = 5, random_state=0):
        self.k = k
        self.random_state = random_state  # unused (deterministic); every probe takes one

    def fit(self, X, y):
        _check_int(self, "k", self.k, 1)
        X, y = _validate_fit_input(self, X, y)
        self.X_ = l2_normalise(X)
        self.y_ = y
        self.classes_, self._y_index = np.unique(y, return_inverse=True)
        return self

    def predict(self, X):
        Q = l2_normalise(_validate_predict_input(self, X))
        k = min(self.k, len(self.X_))
        pred = np.empty(len(Q), dtype=np.intp)
        block = max(1, KNN_BLOCK_ELEMENTS // len(self.X_))
        for start in range(0, len(Q), block):
            sims = Q[start:start + block] @ self.X_.T
            # stable sort: equal similarities keep training order, so results are deterministic
            nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            pred[start:start + block] = _vote(self._y_index[nearest])
        return self.classes_[pred]


def _vote(neighbour_classes: np.ndarray) -> np.ndarray:
    """Row-wise ``majority_vote`` on class indices, neighbours ordered nearest first."""
    # votes[i, j]: how many of row i's neighbours share neighbour j's class (k x k, k small)
    votes = (neighbour_classes[:, :, None] == neighbour_classes[:, None, :]).sum(axis=2)
    winner = np.argmax(votes == votes.max(axis=1, keepdims=True), axis=1)  # first = nearest
    return neighbour_classes[np.arange(len(neighbour_classes)), winner]


def majority_vote(neighbour_labels: np.ndarray):
    """Majority label; among tied labels, the one whose first neighbour is nearest."""
    values, first_pos, counts = np.unique(neighbour_labels, return_index=True, return_counts=True)
    best = counts == counts.max()
    return values[best][np.argmin(first_pos[best])]


class LinearSVMProbe(ClassifierMixin, BaseEstimator):
    """Linear SVM (scikit-learn's ``LinearSVC``: squared hinge loss, L2 penalty, one-vs-rest)
    with a fixed ``C``; no search."""

    def __init__(self, C: float = 1.0, max_iter: int = 10000, random_state=0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y):
        if (isinstance(self.C, bool) or not isinstance(self.C, numbers.Real)
                or not np.isfinite(self.C) or self.C <= 0):
            raise ValueError(f"LinearSVMProbe: C must be a positive finite number, got {self.C!r}")
        max_iter = _check_int(self, "max_iter", self.max_iter, 1)
        X, y = _validate_fit_input(self, X, y)
        _require_two_classes(self, np.unique(y))
        self.model_ = LinearSVC(C=float(self.C), max_iter=max_iter,
                                random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(X, y)
        self.classes_ = self.model_.classes_
        self.n_iter_ = self.model_.n_iter_
        return self

    def decision_function(self, X):
        X = _validate_predict_input(self, X)
        return self.model_.decision_function(X)

    def predict(self, X):
        X = _validate_predict_input(self, X)
        return self.model_.predict(X)


PROBES = {
    "logreg": LogisticProbe,
    "simpleshot": SimpleShotProbe,
    "knn": KNNProbe,
    "linear_svm": LinearSVMProbe,
}


def make_probe(name: str, *, random_state=0, **params):
    """The probe registered as ``name`` with ``random_state`` and any hyper-parameters."""
    if name not in PROBES:
        raise KeyError(f"Unknown probe '{name}'. Valid probes: {', '.join(sorted(PROBES))}")
    cls = PROBES[name]
    valid = cls._get_param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        hint = " ('seed' is now 'random_state')" if "seed" in unknown else ""
        raise ValueError(f"Probe '{name}' ({cls.__name__}) has no parameter(s) "
                         f"{', '.join(map(repr, unknown))}{hint}. Valid parameters: "
                         f"{', '.join(valid)}")
    return cls(random_state=random_state, **params)


def _canonical(value: Any, where: str) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_canonical(v, where) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_canonical(v, where) for v in value]
    if isinstance(value, dict):
        return {_canonical(k, where): _canonical(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r}), which a run's identity "
                    f"cannot record: use a number, string, list or dict")


def probe_params(probe: BaseEstimator) -> dict:
    """``probe.get_params(deep=False)`` with canonical, JSON-serialisable values (tuples and
    arrays become lists, numpy scalars Python numbers), so equal settings give equal JSON and
    ``make_probe(name, **probe_params(probe))`` rebuilds the probe. Dict keys are kept as they
    are (JSON writes a class_weight's int keys as strings)."""
    name = type(probe).__name__
    params = {key: _canonical(value, f"{name}'s parameter '{key}'")
              for key, value in probe.get_params(deep=False).items()}
    json.dumps(params)  # e.g. a tuple dict key: fail here rather than in the store
    return params
