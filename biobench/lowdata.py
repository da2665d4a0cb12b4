"""Low-data curves: a task's score when the probe sees only k training examples per class.

Tasks with a training split take ``n_train`` directly (``biobench run --n-train``; the store
keeps those runs). The offline tasks are cross-fitted (``Task.cross_fitted``): every example
is predicted by a probe fitted on the other folds, and they refuse ``n_train`` because a
global subsample would leave most examples unpredicted. The honest low-data variant keeps the
folds and subsamples *inside* each fold: the probe of fold f is fitted on k examples per class
drawn from the examples outside fold f, and still predicts every example of fold f. Every
example is then scored exactly once, by a probe that saw k per class and never saw it, so the
curve's points are comparable to the full cross-fitted score (k = all).

These curves are computed by the analysis page from the cached features, not stored as runs:
the stored runs keep the task's own protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def per_class_subsample(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``k`` examples of each class of ``y`` (all of a class with fewer)."""
    if k < 1:
        raise ValueError(f"per_class_subsample: k must be at least 1, got {k}")
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]
    return np.sort(np.concatenate(chosen))


def cross_fitted_predict(probe, x: np.ndarray, y: np.ndarray, *, n_folds: int, seed: int,
                         k_per_class: int | None = None) -> np.ndarray:
    """Out-of-fold predictions of every example, each fold's probe (a clone of ``probe``)
    fitted on at most ``k_per_class`` examples per class from the other folds.

    The folds are the ones ``biobench.tasks._offline.CrossFittedTask.fit_predict`` uses
    (stratified, shuffled with ``seed``, at most the smallest class's size), so with
    ``k_per_class=None`` this is exactly the task's own protocol. The subsample of each fold is
    drawn with its own generator seeded by (seed, fold), so k = 1, 2, 4, ... draw afresh.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    n_folds = min(n_folds, int(np.unique(y, return_counts=True)[1].min()))
    if n_folds < 2:
        raise ValueError("cross_fitted_predict: a class has a single example; cannot cross-fit")
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    pred = np.empty_like(y)
    for fold, (fit_idx, predict_idx) in enumerate(folds.split(x, y)):
        if k_per_class is not None:
            rng = np.random.default_rng([seed, fold])
            fit_idx = fit_idx[per_class_subsample(y[fit_idx], k_per_class, rng)]
        pred[predict_idx] = clone(probe).fit(x[fit_idx], y[fit_idx]).predict(x[predict_idx])
    return pred


@dataclass(frozen=True)
class CurvePoint:
    k_per_class: int | None  # None: every training example (the task's own protocol)
    score: float
    ci_low: float
    ci_high: float


def doubling_ks(smallest_fit_class: int) -> list[int]:
    """1, 2, 4, ... up to (not including) the smallest class's fitting-set size, whose point is
    the full protocol (k = all) anyway."""
    ks, k = [], 1
    while k < smallest_fit_class:
        ks.append(k)
        k *= 2
    return ks


def low_data_curve(probe, x: np.ndarray, y: np.ndarray, task, *, ks: list[int], seed: int = 0,
                   n_folds: int = 5, n_bootstrap: int = 1000) -> list[CurvePoint]:
    """The task's score (``task.score``) with its bootstrap interval (stratified as the task's
    runs are, ``task.bootstrap_strata``) at each k of ``ks`` and at k = all (last)."""
    from biobench.stats import bootstrap_ci

    y = np.asarray(y)
    strata = task.bootstrap_strata(y)
    points = []
    for k in [*ks, None]:
        pred = cross_fitted_predict(probe, x, y, n_folds=n_folds, seed=seed, k_per_class=k)
        iv = bootstrap_ci(task.score, y, pred, n_bootstrap=n_bootstrap, seed=seed, strata=strata)
        points.append(CurvePoint(k, iv.estimate, iv.low, iv.high))
    return points
