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
