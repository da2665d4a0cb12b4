"""Lightweight classifiers fitted on frozen features, as scikit-learn estimators.

- ``logreg``: standardise, then multinomial logistic regression whose inverse regularisation
  ``C`` is chosen by stratified k-fold cross-validation on ``biobench.metrics.macro_f1`` (the
  metric the tasks report), then refit on all training data.
- ``simpleshot``: SimpleShot (Wang et al. 2019): subtract the training mean, L2-normalise, and
  predict the nearest class centroid.
- ``knn``: k-nearest neighbours by cosine similarity, majority vote (ties: nearest neighbour's
  class among the tied).
- ``linear_svm``: a linear SVM with fixed ``C`` (NeWT's protocol).
- ``linear_head`` and ``torch_logreg`` (``biobench.torch_probes``): the reference's linear head
  and a tuned logistic regression in torch, for the large tasks.

Every probe follows scikit-learn's conventions: hyper-parameters are set in ``__init__`` and
stored unchanged (checked in ``fit``), input is validated like scikit-learn's own estimators
(``n_features_in_``, labels of any type in ``classes_``), and the test suite runs
``sklearn.utils.estimator_checks`` on each. All maths here is float64. All are deterministic
given ``random_state`` (SimpleShot and kNN have no random step; they accept it so every probe
is built the same way).

SimpleShot and kNN compute their distances in torch on ``device`` ("auto": CUDA when present,
else CPU), from matrix products over blocks of query rows, so memory is bounded by
``DISTANCE_BLOCK_ELEMENTS``, never by n_test x n_train or n_test x classes x features.

A probe registers itself with ``@register_probe("name")``: adding one is a one-file change.
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
# SimpleShot and kNN work on blocks of query rows holding at most this many float64 similarities
# or distances (128 MiB), whatever the number of training rows or classes
DISTANCE_BLOCK_ELEMENTS = 1 << 24
# LogisticProbe's L-BFGS tolerance. scikit-learn's default, 1e-4, leaves the warm-started path
# up to 28% above the optimum's objective at large C; 1e-5 up to 0.85%; 1e-6 up to 0.1%
# (benchmarks/scale.py --only gap, 4,000 x 10 x 768, well- and ill-conditioned): every C is
# then scored on a fit within 1% of the optimum, with a tenfold margin, for 3-4x the time.
LOGREG_TOL = 1e-6
PROBES: dict[str, type] = {}


def register_probe(name: str):
    """Class decorator: make the probe available to ``make_probe(name)`` and as a protocol."""
    def add(cls):
        if PROBES.get(name, cls) is not cls:
            raise ValueError(f"probe name '{name}' registered twice ({PROBES[name].__name__} "
                             f"and {cls.__name__})")
        PROBES[name] = cls
        return cls
    return add


def resolve_device(estimator, device):
    """``device`` as a ``torch.device``: "auto" is CUDA when available, else CPU. A CUDA
    device that is not there is an error naming the probe, not a silent fallback."""
    import torch

    name = type(estimator).__name__
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                         f"got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: device {device!r} requested but torch sees no CUDA device "
                         f"here; use device='auto' (CUDA when present, else CPU) or 'cpu'")
    return resolved


def row_blocks(n_rows: int, elements_per_row: int, budget: int):
    """Consecutive slices of ``range(n_rows)`` of at most ``budget // elements_per_row`` rows
    (at least one row each)."""
    step = max(1, budget // max(1, elements_per_row))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


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


def _check_positive(estimator, name: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value)
            or value <= 0):
        raise ValueError(f"{type(estimator).__name__}: {name} must be a positive finite number, "
                         f"got {value!r}")
    return float(value)


def _check_int(estimator, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{type(estimator).__name__}: {name} must be an integer >= {minimum}, "
                         f"got {value!r}")
    return int(value)


@register_probe("logreg")
class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression with ``C`` picked by stratified CV.

    Fitted attributes: ``C_`` (the chosen C), ``C_grid_`` (the grid, sorted ascending),
    ``cv_scores_`` (mean validation macro-F1 per ``C_grid_`` entry), ``cv_fold_scores_``
    (n_folds x n_C), both ``None`` when there was too little data to cross-validate,
    ``n_folds_`` (the folds used), ``scaler_``, ``model_`` (the refit ``LogisticRegression``),
    ``n_iter_`` (its solver iterations), ``classes_``, ``n_features_in_``.

    ``tol`` is L-BFGS's stopping tolerance on the largest gradient entry of the mean loss.
    scikit-learn's default (1e-4) stops the warm-started path after a handful of iterations
    at large C, far from the optimum; ``LOGREG_TOL`` is set so that every C is scored on a
    fit within 1% of the optimum's objective (``benchmarks/scale.py --only gap``).
    """

    def __init__(self, C_grid=DEFAULT_C_GRID, n_folds: int = 5, max_iter: int = 10000,
                 tol: float = LOGREG_TOL, class_weight="balanced", random_state=0):
        self.C_grid = C_grid
        self.n_folds = n_folds
        self.max_iter = max_iter
        self.tol = tol
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
        tol = _check_positive(self, "tol", self.tol)
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
                    tol=tol, random_state=self.random_state, l1_ratios=(0.0,), refit=False,
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
            self.model_ = LogisticRegression(C=self.C_, max_iter=max_iter, tol=tol,
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


@register_probe("simpleshot")
class SimpleShotProbe(ClassifierMixin, BaseEstimator):
    """Centre on the training mean, L2-normalise, nearest class centroid (Euclidean).

    ``squared_distances(X)`` gives the squared distance of each normalised example to each
    class centroid, ``(n_samples, n_classes)`` in the order of ``classes_``;
    ``nearest_centroid(X)`` gives only the nearest one's index and squared distance, in memory
    bounded by ``DISTANCE_BLOCK_ELEMENTS`` whatever the number of classes.
    ``decision_function`` is the negated distances (larger = closer) with more than two
    classes; with two it is scikit-learn's binary convention, one score per example, positive
    when ``classes_[1]`` is the nearer: ``d(classes_[0]) - d(classes_[1])``.
    """

    def __init__(self, device="auto", random_state=0):
        self.device = device
        self.random_state = random_state  # unused (deterministic); every probe takes one

    def fit(self, X, y):
        device = resolve_device(self, self.device)
        X, y = _validate_fit_input(self, X, y)
        self.device_ = str(device)
        self.mean_ = X.mean(axis=0)
        # only the classes that occur in training get a centroid: labels need not be 0..C-1
        self.classes_, class_index, counts = np.unique(y, return_inverse=True,
                                                       return_counts=True)
        # sum each class's normalised rows block by block: never a normalised copy of all of X.
        # Sorting a block by class and reducing contiguous runs is deterministic (an
        # index_add on CUDA is not), and this O(n x features) step is cheap on the CPU.
        sums = np.zeros((len(self.classes_), X.shape[1]))
        for rows in row_blocks(len(X), X.shape[1], DISTANCE_BLOCK_ELEMENTS):
            z = l2_normalise(X[rows] - self.mean_)
            order = np.argsort(class_index[rows], kind="stable")
            present, starts = np.unique(class_index[rows][order], return_index=True)
            sums[present] += np.add.reduceat(z[order], starts, axis=0)
        self.centroids_ = sums / counts[:, None]
        return self

    def _distance_blocks(self, X):
        """(rows, squared distances to every centroid) on the device, one block at a time."""
        import torch

        X = _validate_predict_input(self, X)
        device = torch.device(self.device_)
        centroids = torch.from_numpy(self.centroids_).to(device)
        centroid_sq = (centroids ** 2).sum(dim=1)
        mean = torch.from_numpy(self.mean_).to(device)
        width = max(len(self.classes_), X.shape[1])
        for rows in row_blocks(len(X), width, DISTANCE_BLOCK_ELEMENTS):
            z = torch.from_numpy(X[rows]).to(device) - mean
            z /= torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(1e-12)
            # |z - c|^2 expanded into a matrix product: (rows, classes), never (rows, classes,
            # features); clipped because rounding can make a zero distance slightly negative
            sq = torch.addmm(centroid_sq[None, :], z, centroids.T, alpha=-2.0)
            sq += (z ** 2).sum(dim=1, keepdim=True)
            yield rows, sq.clamp_min_(0.0)

    def squared_distances(self, X) -> np.ndarray:
        X = _validate_predict_input(self, X)
        out = np.empty((len(X), len(self.classes_)))
        for rows, sq in self._distance_blocks(X):
            out[rows] = sq.cpu().numpy()
        return out

    def nearest_centroid(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Index into ``classes_`` of each example's nearest centroid (the first among equals)
        and the squared distance to it; never holds more than one block of distances."""
        X = _validate_predict_input(self, X)
        index = np.empty(len(X), dtype=np.intp)
        distance = np.empty(len(X))
        for rows, sq in self._distance_blocks(X):
            # torch documents min over a dimension as returning the first minimal index
            best, where = sq.min(dim=1)
            index[rows], distance[rows] = where.cpu().numpy(), best.cpu().numpy()
        return index, distance

    def decision_function(self, X):
        scores = -self.squared_distances(X)
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict(self, X):
        # the first minimum, as the binary decision_function > 0 rule takes (and computed
        # before classes_ is read, so an unfitted probe raises NotFittedError)
        nearest = self.nearest_centroid(X)[0]
        return self.classes_[nearest]


@register_probe("knn")
class KNNProbe(ClassifierMixin, BaseEstimator):
    """k-nearest neighbours by cosine similarity with a majority vote.

    Ties in the vote go to the tied class whose nearest member is closest; equal similarities
    keep the training order. With fewer than ``k`` training examples, all of them vote.
    """

    def __init__(self, k: int = 5, device="auto", random_state=0):
        self.k = k
        self.device = device
        self.random_state = random_state  # unused (deterministic); every probe takes one

    def fit(self, X, y):
        _check_int(self, "k", self.k, 1)
        device = resolve_device(self, self.device)
        X, y = _validate_fit_input(self, X, y)
        self.device_ = str(device)
        self.X_ = l2_normalise(X)
        self.y_ = y
        self.classes_, self._y_index = np.unique(y, return_inverse=True)
        return self

    def kneighbors(self, X) -> np.ndarray:
        """Indices of each row's ``k`` most similar training rows, most similar first; equal
        similarities in training order. Blocks of query rows against all training rows
        (``DISTANCE_BLOCK_ELEMENTS`` similarities at a time), top-k by ``torch.topk``."""
        import torch

        Q = l2_normalise(_validate_predict_input(self, X))
        device = torch.device(self.device_)
        train = torch.from_numpy(self.X_).to(device)
        k = min(self.k, len(self.X_))
        out = np.empty((len(Q), k), dtype=np.intp)
        for rows in row_blocks(len(Q), len(self.X_), DISTANCE_BLOCK_ELEMENTS):
            sims = torch.from_numpy(Q[rows]).to(device) @ train.T
            out[rows] = _top_k_in_training_order(sims, k).cpu().numpy()
        return out

    def predict(self, X):
        neighbours = self.kneighbors(X)
        return self.classes_[_vote(self._y_index[neighbours])]


def _top_k_in_training_order(sims, k: int):
    """Column indices of each row's k largest values, largest first, equal values by column:
    the order of a stable descending sort, without sorting whole rows. ``torch.topk`` picks
    arbitrarily among values equal to the k-th, so rows with such a tie at the cut (rare
    with real features) are redone with a stable sort."""
    import torch

    values, index = torch.topk(sims, k, dim=1)
    # within the k: order by (-value, column)
    by_column = torch.argsort(index, dim=1)
    values, index = values.gather(1, by_column), index.gather(1, by_column)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    index = index.gather(1, by_value)
    cut = values.gather(1, by_value)[:, -1:]
    tied = torch.nonzero((sims >= cut).sum(dim=1) > k).flatten()
    if len(tied):
        index[tied] = torch.sort(sims[tied], dim=1, descending=True,
                                 stable=True).indices[:, :k]
    return index


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


@register_probe("linear_svm")
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


# the torch probes register themselves; imported last because they build on this module
from biobench import torch_probes  # noqa: E402,F401
