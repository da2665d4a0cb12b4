"""Scores computed from per-example truths and predictions.

Every metric takes ``(y_true, y_pred)`` indexed by test example on axis 0 and returns a float,
so ``biobench.stats`` can bootstrap any of them by resampling axis 0.

Class-balanced macro-F1, as used here: the unweighted mean of per-class F1 over the classes
that have at least one true example in the evaluated sample. A class that is only predicted
(never true) adds false positives to nothing it is averaged over, but the misses it causes
lower the recall of the true classes. The same rule applies to the full test set and to every
bootstrap resample, so a class absent from a resample is neither scored 0 nor a source of
bias. (The reference implementation instead averages over every integer id up to the largest
seen, scoring absent ids as 0.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _encode(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map labels of any dtype onto 0..K-1 over the union of both arrays."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    classes, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    n = len(y_true)
    return inverse[:n], inverse[n:], len(classes)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """F1, precision, recall and support for each class that has a true example."""
    y_true = np.asarray(y_true)
    classes = np.unique(y_true)
    out = {}
    for c in classes:
        tp = int(np.sum((y_true == c) & (np.asarray(y_pred) == c)))
        fp = int(np.sum((y_true != c) & (np.asarray(y_pred) == c)))
        fn = int(np.sum((y_true == c) & (np.asarray(y_pred) != c)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
        out[c.item()] = {"f1": f1, "precision": precision, "recall": recall, "support": tp + fn}
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Class-balanced macro-F1 over the classes present in ``y_true`` (see module docstring)."""
    t, p, k = _encode(y_true, y_pred)
    if len(t) == 0:
        return float("nan")
    tp = np.bincount(t[t == p], minlength=k)
    true_count = np.bincount(t, minlength=k)
    pred_count = np.bincount(p, minlength=k)
    present = true_count > 0
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (n_pred + n_true)
    f1 = 2 * tp[present] / (pred_count[present] + true_count[present])
    return float(f1.mean())


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if len(y_true) == 0:
        return float("nan")
    if y_true.ndim > 1:  # multi-label: an example is right when every label is
        return float(np.mean(np.all(y_true == y_pred, axis=tuple(range(1, y_true.ndim)))))
    return float(np.mean(y_true == y_pred))


# ---- registry: tasks name their metric; task-specific metrics register here too --------------
METRICS: dict[str, MetricFn] = {
    "macro_f1": macro_f1,
    "accuracy": accuracy,
}

METRIC_LABELS: dict[str, str] = {
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
}


def register_metric(name: str, label: str | None = None) -> Callable[[MetricFn], MetricFn]:
    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        METRIC_LABELS[name] = label or name
        return fn

    return wrap


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        raise KeyError(f"Unknown metric '{name}'. Valid metrics: {', '.join(sorted(METRICS))}")
    return METRICS[name]


# ---- task-specific metrics of the BioBench tasks -----------------------------------------------


@register_metric("fishnet_macro_f1", "mean per-trait macro-F1")
def fishnet_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """FishNet: the mean over traits of each trait's two-class (present/absent) macro-F1.

    ``y_true`` and ``y_pred`` are (n_images, n_traits) arrays of 0/1. Each trait column is scored
    with ``macro_f1`` (the mean of the present-F1 and the absent-F1, over the classes that occur
    in the truth), then the traits are averaged with equal weight. A row holds every trait of one
    image, so a bootstrap that resamples rows resamples all traits together.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"fishnet_macro_f1 needs two (n, traits) arrays; got {y_true.shape} "
                         f"and {y_pred.shape}")
    if len(y_true) == 0:
        return float("nan")
    return float(np.mean([macro_f1(y_true[:, t], y_pred[:, t]) for t in range(y_true.shape[1])]))


# FungiCLEF 2023 costs: classification error (CE) and poisonous/edible confusion (PSC).
FUNGICLEF_UNKNOWN = -1
FUNGICLEF_COSTS = {
    "wrong_known": 1.0,  # a known species predicted as another known species
    "unknown_as_known": 10.0,  # an unknown species predicted as a known one
    "known_as_unknown": 0.1,  # a known species predicted as unknown
    "poisonous_as_edible": 100.0,  # a poisonous species predicted as anything not poisonous
    "edible_as_poisonous": 1.0,  # anything not poisonous predicted as a poisonous species
}


def fungiclef_costs(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The parts of the FungiCLEF 2023 user-focused score, per observation.

    Rows are observations. Column 0 is the class id (``-1`` = unknown species), column 1 is 1
    when that class is on the poison list, else 0 (so unknown counts as "not poisonous", as in
    the challenge's evaluation). With n observations:

    - CE  = (wrong_known + 10 unknown_as_known + 0.1 known_as_unknown) / n
    - PSC = (100 poisonous_as_edible + 1 edible_as_poisonous) / n
    - worst_CE and worst_PSC are the largest values each can take for this ``y_true``. Each
      term is maximised on its own: a known truth costs at most 1 (predicting another known
      species, versus 0.1 for "unknown") and an unknown truth at most 10, so
      worst_CE = (n_known + 10 n_unknown) / n = 1 + 9 n_unknown / n  (the "+1" is right; 0.1
      would be the cost of the milder mistake). Likewise worst_PSC = (100 n_poisonous +
      (n - n_poisonous)) / n. Both worsts are reached by one prediction (every poisonous truth
      called a wrong edible species, every other truth called a wrong poisonous species; this
      needs one edible and one poisonous known species, as FungiCLEF has), so the score below
      is 0 at the worst and 1 when every prediction is right.
    - score = 1 - (CE + PSC) / (worst_CE + worst_PSC)
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != 2:
        raise ValueError("fungiclef metrics need two (n, 2) arrays of [class id, poisonous]; "
                         f"got {y_true.shape} and {y_pred.shape}")
    n = len(y_true)
    if n == 0:
        nan = float("nan")
        return {"ce": nan, "psc": nan, "worst_ce": nan, "worst_psc": nan, "score": nan}
    t_cls, t_poison = y_true[:, 0], y_true[:, 1].astype(bool)
    p_cls, p_poison = y_pred[:, 0], y_pred[:, 1].astype(bool)
    t_known, p_known = t_cls != FUNGICLEF_UNKNOWN, p_cls != FUNGICLEF_UNKNOWN
    c = FUNGICLEF_COSTS
    ce = (c["wrong_known"] * np.sum(t_known & p_known & (t_cls != p_cls))
          + c["unknown_as_known"] * np.sum(~t_known & p_known)
          + c["known_as_unknown"] * np.sum(t_known & ~p_known)) / n
    psc = (c["poisonous_as_edible"] * np.sum(t_poison & ~p_poison)
           + c["edible_as_poisonous"] * np.sum(~t_poison & p_poison)) / n
    worst_ce = (c["wrong_known"] * np.sum(t_known) + c["unknown_as_known"] * np.sum(~t_known)) / n
    worst_psc = (c["poisonous_as_edible"] * np.sum(t_poison)
                 + c["edible_as_poisonous"] * np.sum(~t_poison)) / n
    score = 1.0 - (ce + psc) / (worst_ce + worst_psc)
    return {"ce": float(ce), "psc": float(psc), "worst_ce": float(worst_ce),
            "worst_psc": float(worst_psc), "score": float(score)}


@register_metric("fungiclef_score", "FungiCLEF user-focused score")
def fungiclef_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """1 - (CE + PSC) / (worst_CE + worst_PSC); see ``fungiclef_costs``. 1 is perfect."""
    return fungiclef_costs(y_true, y_pred)["score"]
