"""Scores computed from per-example truths and predictions.

Every metric takes ``(y_true, y_pred)`` indexed by test example on axis 0 and returns a float,
so ``biobench.stats`` can bootstrap any of them by resampling axis 0. Each metric is registered
once, with ``@register_metric``, together with its label and its *strata rule*: how a bootstrap
of it must resample (``bootstrap_strata``).

Class-balanced macro-F1, as used here: the unweighted mean of per-class F1 over the classes
that have at least one true example in the evaluated sample. A class that is only predicted
(never true) is not averaged over, but the misses it causes lower the recall of the true
classes. (The reference implementation instead averages over every integer id up to the largest
seen, scoring absent ids as 0.)

Because the class set is that of the evaluated sample, a *plain* bootstrap resample that misses
a class (a class with one test example is missed about 37% of the time) averages over fewer
classes than the full test set: a missed class that was predicted wrongly takes its zero F1
out of the average, so plain replicates are biased upwards and the interval can exclude the
estimate. Macro-F1 therefore registers the strata rule ``within_true_class``: a bootstrap
resamples within each true class, so every replicate has the test set's classes in the test
set's numbers (see ``biobench.stats``). FishNet's per-trait macro-F1 stratifies on rare trait
values only (``within_rare_trait_values``); metrics that are not class averages (accuracy,
BioBench's FungiCLEF score) resample plainly.

**Count forms: bootstraps without a loop per replicate.** A metric may also register a *count
form* (``count_form=`` in ``register_metric``): a rule that puts each test example in one *cell*
(for macro-F1, its (true class, predicted class) pair) such that the metric of any resample is a
function of how many examples of each cell it holds, and a vectorised ``score_counts`` that scores
a whole block of replicates from their (replicate, cell) counts. ``biobench.stats`` then counts
cells per chunk of replicates with ``np.bincount`` instead of calling the metric once per
replicate. A count form must reproduce the metric bit for bit (``tests/test_stats.py`` checks
every registered one against the per-replicate loop); a metric without one is bootstrapped by
that loop, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]
# y_true -> one stratum value per test example, or None for plain resampling
StrataRule = Callable[[np.ndarray], "np.ndarray | None"]


# ---- strata rules: how a bootstrap of a metric resamples ------------------------------------
def within_true_class(y_true: np.ndarray) -> np.ndarray:
    """Strata for a single-label class-balanced metric: each example's true class."""
    y_true = np.asarray(y_true)
    if y_true.ndim != 1:
        raise ValueError(f"stratifying by true class needs one label per example; got y_true "
                         f"of shape {y_true.shape} (a multi-label metric needs its own rule)")
    return y_true


# A trait value with at least this many test examples is missing from a plain resample with
# probability about e^-10 = 5e-5, so it needs no stratum of its own.
RARE_TRAIT_VALUE_COUNT = 10


def within_rare_trait_values(y_true: np.ndarray) -> np.ndarray | None:
    """Strata for a per-trait class-balanced metric of (n, traits) labels, e.g. FishNet's.

    Fixing every trait's class counts would mean stratifying by the row's whole label pattern,
    and with nine traits most patterns are unique, so most rows would never vary. Only a trait
    value with fewer than ``RARE_TRAIT_VALUE_COUNT`` test examples can drop out of a resample
    (and take its F1 out of that trait's average), so the strata are the rows' values on those
    rare trait values only: every rare value keeps its count in every replicate, and the rows
    that carry no rare value form one stratum resampled plainly. None when no value is rare.
    """
    y_true = np.asarray(y_true)
    if y_true.ndim != 2:
        raise ValueError(f"per-trait strata need (n, traits) labels; got shape {y_true.shape}")
    key = np.zeros(y_true.shape, dtype=np.int64)  # 0 = a common value, k + 1 = rare value k
    for t in range(y_true.shape[1]):
        _, codes, counts = np.unique(y_true[:, t], return_inverse=True, return_counts=True)
        rare = counts[codes] < RARE_TRAIT_VALUE_COUNT
        key[rare, t] = codes[rare] + 1
    if not key.any():
        return None
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)


# ---- count forms: a metric as a function of per-cell counts (for fast bootstraps) ---------------
@dataclass(frozen=True)
class CountForm:
    """One test set's examples reduced to cells, and the metric as a function of cell counts.

    ``cell_of_example`` puts each example in a cell 0..n_cells-1, chosen so that the metric of any
    multiset of these examples depends only on how many examples of each cell it holds.
    ``score_counts`` maps a (replicates, n_cells) int64 array of such counts to the replicates'
    scores, shape (replicates,), and must equal the metric on those examples bit for bit.
    """
    cell_of_example: np.ndarray
    n_cells: int
    score_counts: Callable[[np.ndarray], np.ndarray]


# (y_true, y_pred) -> the metric's CountForm for these examples, or None where it has none (e.g.
# labels of a shape it does not handle): a bootstrap then calls the metric once per replicate.
CountFormRule = Callable[[np.ndarray, np.ndarray], "CountForm | None"]


# ---- the registry: one entry per metric, with everything known about it ---------------------
@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    label: str  # for tables and plots
    strata_rule: StrataRule | None  # None: a bootstrap resamples test examples plainly
    count_form: CountFormRule | None = None  # None: a bootstrap loops over replicates

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return self.fn(y_true, y_pred)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, label: str | None = None, *, strata: StrataRule | None = None,
                    count_form: CountFormRule | None = None) -> Callable[[MetricFn], MetricFn]:
    """Register a metric under ``name``. ``strata`` maps y_true to the strata its bootstrap
    resamples within: ``within_true_class`` for a class-balanced single-label metric (a class
    average whose class set must not change between replicates), None for plain resampling.
    ``count_form`` (optional) builds the metric's ``CountForm`` for a test set, so that
    ``biobench.stats`` bootstraps it without a Python loop per replicate."""
    def wrap(fn: MetricFn) -> MetricFn:
        if name in METRICS and METRICS[name].fn is not fn:
            raise ValueError(f"metric name '{name}' registered twice (by "
                             f"{METRICS[name].fn.__module__} and {fn.__module__}); rename one")
        METRICS[name] = Metric(name, fn, label or name, strata, count_form)
        return fn

    return wrap


def registered_metric_of(fn) -> Metric | None:
    """The registry entry whose function is ``fn`` itself, or None."""
    return next((spec for spec in METRICS.values() if spec.fn is fn), None)


def metric_spec(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"Unknown metric '{name}'. Valid metrics: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def get_metric(name: str) -> MetricFn:
    return metric_spec(name).fn


def metric_label(name: str) -> str:
    """The metric's label, or its name when it is not registered (e.g. an old stored run)."""
    return METRICS[name].label if name in METRICS else name


class _LabelView(Mapping):
    """Read-only ``name -> label`` view of the registry (labels live in ``METRICS`` only)."""

    def __getitem__(self, name: str) -> str:
        return METRICS[name].label

    def __iter__(self) -> Iterator[str]:
        return iter(METRICS)

    def __len__(self) -> int:
        return len(METRICS)


METRIC_LABELS: Mapping[str, str] = _LabelView()


def bootstrap_strata(metric_name: str, y_true: np.ndarray) -> np.ndarray | None:
    """The strata a bootstrap of ``metric_name`` resamples within, one value per example of
    ``y_true``, or None for plain resampling (see ``biobench.stats``)."""
    rule = metric_spec(metric_name).strata_rule
    return None if rule is None else rule(np.asarray(y_true))


# ---- building blocks of count forms -----------------------------------------------------------
def row_means(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Each row's ``np.mean(values[row][keep[row]])``, bit for bit, without a loop per row.

    numpy sums pairwise, in an order set by how many values it sums, so a row's sum equals the
    per-row ``np.mean``'s only when it runs over exactly the row's kept values (zeros in their
    place change the rounding). Rows are therefore grouped by how many values they keep (a single
    group when every row keeps the same number, as in a stratified bootstrap) and each group is
    summed as one (rows, length) block, whose rows numpy sums exactly as it sums a 1-D array. A
    row that keeps nothing is nan, like ``np.mean`` of nothing.
    """
    values = np.asarray(values, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    lengths = keep.sum(axis=1)
    if len(values) and (lengths == keep.shape[1]).all():  # every row keeps every value
        return values.sum(axis=1) / keep.shape[1]
    order = np.argsort(lengths, kind="stable")
    kept = values[order][keep[order]]  # row by row (rows sorted by length), in column order
    out = np.empty(len(values))
    row = start = 0
    for length, n_rows in zip(*np.unique(lengths[order], return_counts=True)):
        length, n_rows = int(length), int(n_rows)
        rows = order[row:row + n_rows]
        if length == 0:
            out[rows] = np.nan
        else:
            out[rows] = kept[start:start + length * n_rows].reshape(n_rows, length).sum(axis=1) \
                / length
        row, start = row + n_rows, start + length * n_rows
    return out


class _CellGroups:
    """Sums (replicates, n_cells) counts over the cells of each group: (replicates, n_groups),
    zero for a group with no cell. Groups are integers 0..n_groups-1, one per cell."""

    def __init__(self, group_of_cell: np.ndarray, n_groups: int):
        self.group_of_cell = np.asarray(group_of_cell, dtype=np.intp)
        self.n_groups = n_groups
        ordered = self.group_of_cell
        # cells already sorted by group (e.g. by true class): contiguous runs, no scatter needed
        self.sorted = bool(np.all(ordered[1:] >= ordered[:-1]))
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) \
            else np.zeros(0, np.intp)
        self._keys: tuple[int, np.ndarray] | None = None  # (replicates, bincount keys) cache

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        n_rows = len(counts)
        out = np.zeros((n_rows, self.n_groups), dtype=np.int64)
        if not len(self.group_of_cell):
            return out
        if self.sorted:
            out[:, self.group_of_cell[self.starts]] = np.add.reduceat(counts, self.starts, axis=1)
            return out
        # a weighted bincount scatters in one pass (gathering columns into group order is ~4x
        # slower); float64 weights hold integer counts exactly
        if self._keys is None or self._keys[0] != n_rows:
            keys = np.arange(n_rows, dtype=np.intp)[:, None] * self.n_groups + self.group_of_cell
            self._keys = (n_rows, keys.reshape(-1))
        summed = np.bincount(self._keys[1], weights=counts.reshape(-1),
                             minlength=n_rows * self.n_groups)
        return summed.reshape(n_rows, self.n_groups).astype(np.int64)


def macro_f1_from_class_counts(tp: np.ndarray, true_count: np.ndarray,
                               pred_count: np.ndarray) -> np.ndarray:
    """Macro-F1 of each row of (replicates, classes) counts: true positives, true examples and
    predictions per class; averaged over the classes with a true example, as ``macro_f1``."""
    present = true_count > 0
    f1 = np.zeros(tp.shape)
    # the same operations as macro_f1: 2 TP / (n_pred + n_true), from integer counts
    np.divide(2 * tp, pred_count + true_count, out=f1, where=present)
    return row_means(f1, present)


def _macro_f1_of_cell_counts(cell_true: np.ndarray, cell_pred: np.ndarray,
                             n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """score_counts for cells that each hold one (true class, predicted class) pair (several
    cells may hold the same pair)."""
    by_true = _CellGroups(cell_true, n_classes)
    by_pred = _CellGroups(cell_pred, n_classes)
    right = np.flatnonzero(cell_true == cell_pred)
    right_by_true = _CellGroups(cell_true[right], n_classes)

    def score_counts(counts: np.ndarray) -> np.ndarray:
        return macro_f1_from_class_counts(right_by_true(counts[:, right]), by_true(counts),
                                          by_pred(counts))

    return score_counts


def _unique_cells(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells = the distinct rows of integer ``codes`` (n, k): each example's cell and one
    example of each cell."""
    _, first, cell_of_example = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    return cell_of_example.reshape(-1), first


# ---- single-label metrics --------------------------------------------------------------------
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


def _macro_f1_count_form(y_true: np.ndarray, y_pred: np.ndarray) -> CountForm | None:
    """Cells: the (true class, predicted class) pairs that occur."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        return None  # the metric itself raises, or answers, for these
    t, p, k = _encode(y_true, y_pred)
    pairs, cell_of_example = np.unique(t * k + p, return_inverse=True)
    return CountForm(cell_of_example.reshape(-1), len(pairs),
                     _macro_f1_of_cell_counts(pairs // k, pairs % k, k))


@register_metric("macro_f1", "macro-F1", strata=within_true_class,
                 count_form=_macro_f1_count_form)
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


def _accuracy_count_form(y_true: np.ndarray, y_pred: np.ndarray) -> CountForm | None:
    """Cells: 0 wrong, 1 right."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or len(y_true) == 0:
        return None
    right = y_true == y_pred
    if y_true.ndim > 1:
        right = np.all(right, axis=tuple(range(1, y_true.ndim)))
    n = len(y_true)
    # np.mean of booleans sums them as float64 (exact) and divides by n: the same division
    return CountForm(right.astype(np.intp), 2, lambda counts: counts[:, 1] / n)


@register_metric("accuracy", "accuracy", count_form=_accuracy_count_form)
def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The share of test examples predicted right (multi-label: every label right)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if len(y_true) == 0:
        return float("nan")
    if y_true.ndim > 1:  # multi-label: an example is right when every label is
        return float(np.mean(np.all(y_true == y_pred, axis=tuple(range(1, y_true.ndim)))))
    return float(np.mean(y_true == y_pred))


# ---- task-specific metrics of the BioBench tasks -----------------------------------------------
def _fishnet_count_form(y_true: np.ndarray, y_pred: np.ndarray) -> CountForm | None:
    """Cells: the distinct (true row, predicted row) label patterns; each trait's macro-F1
    groups them by that trait's (true, predicted) values."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or len(y_true) == 0:
        return None
    n_traits = y_true.shape[1]
    encoded = [_encode(y_true[:, t], y_pred[:, t]) for t in range(n_traits)]
    codes = np.stack([e[0] for e in encoded] + [e[1] for e in encoded], axis=1)
    cell_of_example, first = _unique_cells(codes)
    per_trait = [_macro_f1_of_cell_counts(codes[first, t], codes[first, n_traits + t], k)
                 for t, (_, _, k) in enumerate(encoded)]

    def score_counts(counts: np.ndarray) -> np.ndarray:
        scores = np.stack([score(counts) for score in per_trait], axis=1)
        return row_means(scores, np.ones(scores.shape, bool))  # np.mean over traits

    return CountForm(cell_of_example, len(first), score_counts)


@register_metric("fishnet_macro_f1", "mean per-trait macro-F1", strata=within_rare_trait_values,
                 count_form=_fishnet_count_form)
def fishnet_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """FishNet: the mean over traits of each trait's two-class (present/absent) macro-F1.

    ``y_true`` and ``y_pred`` are (n_images, n_traits) arrays of 0/1. Each trait column is scored
    with ``macro_f1`` (the mean of the present-F1 and the absent-F1, over the classes that occur
    in the truth), then the traits are averaged with equal weight. A row holds every trait of one
    image, so a bootstrap that resamples rows resamples all traits together; it stratifies on
    rare trait values only (``within_rare_trait_values``).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"fishnet_macro_f1 needs two (n, traits) arrays; got {y_true.shape} "
                         f"and {y_pred.shape}")
    if len(y_true) == 0:
        return float("nan")
    return float(np.mean([macro_f1(y_true[:, t], y_pred[:, t]) for t in range(y_true.shape[1])]))


# FungiCLEF 2023. Rows are observations: [class id (-1 = unknown species), poisonous 0/1]. The
# challenge scores four tracks (its evaluation script, BohemianVRA/FGVC-Competitions):
#   Track 1  classification error CE: every wrong class id costs 1 (unknown is one more class)
#   Track 2  poisonous/edible confusion PSC: 100 for a poisonous species called anything not
#            poisonous, 1 for anything not poisonous called a poisonous species
#   Track 3  the user-focused loss: Track 1 CE + PSC
#   Track 4  CE with special costs for the unknown class: 10 for an unknown species called a
#            known one, 0.1 for a known species called unknown, 1 for a wrong known species
# BioBench's reference scores FungiCLEF with Track 4 CE + PSC, normalised by its worst value;
# this project keeps that number as the task's metric (comparable with the published
# leaderboard) under a name that says so, and stores the four official losses with each run.
FUNGICLEF_UNKNOWN = -1
FUNGICLEF_TRACK1_CE_COSTS = {"wrong_known": 1.0, "unknown_as_known": 1.0, "known_as_unknown": 1.0}
FUNGICLEF_TRACK4_CE_COSTS = {"wrong_known": 1.0, "unknown_as_known": 10.0, "known_as_unknown": 0.1}
FUNGICLEF_PSC_COSTS = {"poisonous_as_edible": 100.0, "edible_as_poisonous": 1.0}


def _fungiclef_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != 2:
        raise ValueError("fungiclef metrics need two (n, 2) arrays of [class id, poisonous]; "
                         f"got {y_true.shape} and {y_pred.shape}")
    return y_true, y_pred


def _fungiclef_outcomes(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per observation, which costed outcomes it has (booleans). Their counts determine every
    FungiCLEF loss and score, which is what the count form of the score relies on."""
    t_cls, p_cls = y_true[:, 0], y_pred[:, 0]
    t_known, p_known = t_cls != FUNGICLEF_UNKNOWN, p_cls != FUNGICLEF_UNKNOWN
    t_poison, p_poison = y_true[:, 1].astype(bool), y_pred[:, 1].astype(bool)
    return {"wrong_known": t_known & p_known & (t_cls != p_cls),
            "unknown_as_known": ~t_known & p_known,
            "known_as_unknown": t_known & ~p_known,
            "poisonous_as_edible": t_poison & ~p_poison,
            "edible_as_poisonous": ~t_poison & p_poison,
            "known": t_known, "unknown": ~t_known, "poisonous": t_poison, "edible": ~t_poison}


# The losses from outcome counts: ``counts`` maps each outcome to its count, an integer or an
# array of one count per bootstrap replicate (the arithmetic is the same, so both agree exactly).
def _classification_error_of_counts(counts, n: int, costs: Mapping[str, float]):
    return (costs["wrong_known"] * counts["wrong_known"]
            + costs["unknown_as_known"] * counts["unknown_as_known"]
            + costs["known_as_unknown"] * counts["known_as_unknown"]) / n


def _poison_confusion_cost_of_counts(counts, n: int):
    c = FUNGICLEF_PSC_COSTS
    return (c["poisonous_as_edible"] * counts["poisonous_as_edible"]
            + c["edible_as_poisonous"] * counts["edible_as_poisonous"]) / n


def _reference_costs_of_counts(counts, n: int) -> dict:
    ce = _classification_error_of_counts(counts, n, FUNGICLEF_TRACK4_CE_COSTS)
    psc = _poison_confusion_cost_of_counts(counts, n)
    # the worst prediction: every truth gets its costliest wrong class id and poison flag
    ce_cost, psc_cost = FUNGICLEF_TRACK4_CE_COSTS, FUNGICLEF_PSC_COSTS
    worst_ce = (ce_cost["wrong_known"] * counts["known"]
                + ce_cost["unknown_as_known"] * counts["unknown"]) / n
    worst_psc = (psc_cost["poisonous_as_edible"] * counts["poisonous"]
                 + psc_cost["edible_as_poisonous"] * counts["edible"]) / n
    return {"ce": ce, "psc": psc, "worst_ce": worst_ce, "worst_psc": worst_psc,
            "score": 1.0 - (ce + psc) / (worst_ce + worst_psc)}


def _outcome_counts(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.int64]:
    return {name: np.sum(hit) for name, hit in _fungiclef_outcomes(y_true, y_pred).items()}


def fungiclef_classification_error(y_true: np.ndarray, y_pred: np.ndarray,
                                   costs: Mapping[str, float]) -> float:
    """Mean cost per observation of wrong class ids: Track 1 with
    ``FUNGICLEF_TRACK1_CE_COSTS``, Track 4 with ``FUNGICLEF_TRACK4_CE_COSTS``."""
    y_true, y_pred = _fungiclef_arrays(y_true, y_pred)
    if len(y_true) == 0:
        return float("nan")
    return float(_classification_error_of_counts(_outcome_counts(y_true, y_pred), len(y_true),
                                                 costs))


def fungiclef_poison_confusion_cost(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Track 2's PSC: (100 poisonous_as_edible + 1 edible_as_poisonous) / n. "Unknown" is not on
    the poison list, so a poisonous species called unknown costs 100, as in the challenge."""
    y_true, y_pred = _fungiclef_arrays(y_true, y_pred)
    if len(y_true) == 0:
        return float("nan")
    return float(_poison_confusion_cost_of_counts(_outcome_counts(y_true, y_pred), len(y_true)))


def fungiclef_official_losses(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The FungiCLEF 2023 challenge's four losses (lower is better; 0 is perfect)."""
    ce_track1 = fungiclef_classification_error(y_true, y_pred, FUNGICLEF_TRACK1_CE_COSTS)
    psc = fungiclef_poison_confusion_cost(y_true, y_pred)
    return {
        "track1_classification_error": ce_track1,
        "track2_poison_confusion_cost": psc,
        "track3_user_focused_loss": ce_track1 + psc,
        "track4_unknown_cost_error": fungiclef_classification_error(
            y_true, y_pred, FUNGICLEF_TRACK4_CE_COSTS),
    }


def fungiclef_reference_costs(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The parts of BioBench's FungiCLEF score (the reference implementation's number).

    With n observations (column 1 of a row is 1 when its class is on the poison list; unknown
    counts as not poisonous, as in the challenge's evaluation):

    - CE  = the challenge's *Track 4* CE: (wrong_known + 10 unknown_as_known + 0.1
      known_as_unknown) / n. (The challenge's Track 3 user-focused loss uses Track 1's CE,
      where every error costs 1; see ``fungiclef_official_losses``.)
    - PSC = Track 2's (100 poisonous_as_edible + 1 edible_as_poisonous) / n
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
    y_true, y_pred = _fungiclef_arrays(y_true, y_pred)
    n = len(y_true)
    if n == 0:
        nan = float("nan")
        return {"ce": nan, "psc": nan, "worst_ce": nan, "worst_psc": nan, "score": nan}
    costs = _reference_costs_of_counts(_outcome_counts(y_true, y_pred), n)
    return {name: float(value) for name, value in costs.items()}


def _fungiclef_count_form(y_true: np.ndarray, y_pred: np.ndarray) -> CountForm | None:
    """Cells: the distinct combinations of costed outcomes (at most a few dozen)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != 2 \
            or len(y_true) == 0:
        return None
    outcomes = _fungiclef_outcomes(y_true, y_pred)
    names = list(outcomes)
    hits = np.stack([outcomes[name] for name in names], axis=1).astype(np.int64)
    cell_of_example, first = _unique_cells(hits)
    cell_hits = hits[first]  # (n_cells, outcomes): which outcomes each cell has
    n = len(y_true)

    def score_counts(counts: np.ndarray) -> np.ndarray:
        per_outcome = counts @ cell_hits  # integer counts of each outcome per replicate
        return _reference_costs_of_counts(dict(zip(names, per_outcome.T)), n)["score"]

    return CountForm(cell_of_example, len(first), score_counts)


@register_metric("fungiclef_reference_score", "BioBench's FungiCLEF score (Track 4 CE costs)",
                 count_form=_fungiclef_count_form)
def fungiclef_reference_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """BioBench's FungiCLEF score: 1 - (Track 4 CE + PSC) / its worst value; 1 is perfect.

    Not the challenge's Track 3 user-focused loss, which charges every class error 1 (see
    ``fungiclef_reference_costs`` and ``fungiclef_official_losses``).
    """
    return fungiclef_reference_costs(y_true, y_pred)["score"]


# ---- zero-shot question answering --------------------------------------------------------------
def _question_cells(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (test example): how many of its questions were asked (y_true != -1) and how many
    of those were answered right (a -1 in y_pred, an unreadable reply, is wrong)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if y_true.ndim not in (1, 2):
        raise ValueError(f"question_accuracy needs (n,) or (n, slots) answer arrays; got "
                         f"shape {y_true.shape}")
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    asked = y_true != QUESTION_MISSING
    return asked.sum(axis=1), (asked & (y_true == y_pred)).sum(axis=1)


QUESTION_MISSING = -1  # biobench.zeroshot.base.MISSING (kept here: metrics imports nothing)


def _question_accuracy_count_form(y_true: np.ndarray, y_pred: np.ndarray) -> CountForm | None:
    """Cells: the distinct (asked, right) count pairs of rows; a resample's accuracy is the
    ratio of its two integer totals, the same division the metric makes."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim not in (1, 2) or len(y_true) == 0:
        return None
    asked, right = _question_cells(y_true, y_pred)
    cell_of_example, first = _unique_cells(np.stack([asked, right], axis=1))
    cell_asked, cell_right = asked[first].astype(np.int64), right[first].astype(np.int64)

    def score_counts(counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):  # nothing asked: nan, as the metric
            return (counts @ cell_right).astype(np.float64) / (counts @ cell_asked)

    return CountForm(cell_of_example, len(first), score_counts)


@register_metric("question_accuracy", "accuracy over questions",
                 count_form=_question_accuracy_count_form)
def question_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Top-1 accuracy pooled over questions (μ-Bench's micro accuracy).

    ``y_true``/``y_pred`` are (n_examples, n_slots) answer matrices (``biobench.zeroshot``):
    cells with ``y_true == -1`` hold no question and are left out; a ``-1`` in ``y_pred`` (an
    answer that could not be read) counts as wrong. Rows are examples (images), so a bootstrap
    resamples images with all their questions (plain, no strata). A 1-D pair is one question
    per example: plain accuracy.
    """
    asked, right = _question_cells(y_true, y_pred)
    total = int(asked.sum())
    if total == 0:
        return float("nan")
    return float(np.float64(right.sum()) / np.float64(total))
