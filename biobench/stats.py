"""Bootstrap confidence intervals and paired comparisons over test examples.

Every function resamples *test examples* (axis 0 of ``y_true``/``y_pred``), exactly one
resample per replicate, and the same resample indices serve every model that is compared on a
task (a paired bootstrap: all models share one test set). The classifier is not refitted: the
interval reflects test-set sampling only, which is what the scores' uncertainty is about when the
training set is fixed.

**Stratified resampling for class-balanced metrics.** Every function takes ``strata``: one value
per test example (``None``: plain resampling). With strata, each replicate draws, within each
stratum, as many examples as that stratum has, with replacement. The metric registry says which
metrics stratify (``biobench.metrics.bootstrap_strata``): macro-F1 stratifies by true class.
Why: macro-F1 averages per-class F1 over the classes that occur in the evaluated sample. A plain
resample misses a class with one test example about e^-1 = 37% of the time, and a missed
singleton class whose example was predicted wrongly leaves the average together with its zero
F1, so plain replicates are biased upwards; with many such classes the whole percentile interval
can lie above the full-test-set score (``y_true = [0]*5 + [1]*5 + [2..11]``, the ten singletons
all missed: estimate 0.167, plain interval about [0.18, 0.33]). Resampling within true classes
keeps every class and its size in every replicate, so each replicate averages over exactly the
classes, with exactly the weights, of the full test set. The interval is then *conditional on
the test set's class composition*: it covers the variation from drawing other examples of the
same classes in the same numbers, not from drawing another class mix. A class with a single test
example always contributes that example: its recall is fixed, its precision still varies with
the false positives of the other classes. FishNet's per-trait macro-F1 stratifies on rare trait
values only (see ``biobench.metrics.within_rare_trait_values``). Metrics that are not class
averages (accuracy, BioBench's FungiCLEF score) resample plainly. Within a stratum the draws
depend only on ``seed`` and the strata (which come from ``y_true`` alone), so every model
compared on a task gets the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from statsmodels.stats.multitest import multipletests

ScoreFn = Callable[[np.ndarray, np.ndarray], float]


def resample_indices(n: int, n_bootstrap: int, seed: int, strata=None) -> np.ndarray:
    """(n_bootstrap, n) indices drawn with replacement; one row per replicate.

    With ``strata`` (one value per example), column j of every row is drawn from the examples of
    example j's stratum, so each replicate holds exactly as many examples of each stratum as the
    test set. Without, every column is drawn from all n examples.
    """
    if n == 0:
        raise ValueError("cannot bootstrap an empty test set")
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_bootstrap, n))
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata must hold one value per test example, shape ({n},); got "
                         f"{strata.shape}. Pass the task's bootstrap_strata(y_true).")
    _, stratum_of, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    members = np.argsort(stratum_of, kind="stable")  # examples grouped by stratum, in order
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where each stratum starts in members
    positions = rng.integers(0, sizes[stratum_of], size=(n_bootstrap, n))
    positions += first[stratum_of]  # in place: this array can be large (ImageNet: 50k x 1000)
    return members[positions]


def bootstrap_replicates(score_fn: ScoreFn, y_true, predictions: Sequence, *,
                         n_bootstrap: int = 1000, seed: int = 0, strata=None) -> np.ndarray:
    """Replicate scores, shape (n_models, n_bootstrap), on shared resamples (paired).

    ``strata``: one value per test example to resample within (see the module docstring), or
    None for plain resampling."""
    y_true = np.asarray(y_true)
    preds = [np.asarray(p) for p in predictions]
    for p in preds:
        if p.shape != y_true.shape:
            raise ValueError(f"predictions of shape {p.shape} do not match y_true {y_true.shape}")
    idx = resample_indices(len(y_true), n_bootstrap, seed, strata)
    out = np.empty((len(preds), n_bootstrap))
    for b, rows in enumerate(idx):
        t = y_true[rows]
        for m, p in enumerate(preds):
            out[m, b] = score_fn(t, p[rows])
    return out


@dataclass(frozen=True)
class Interval:
    estimate: float  # the score on the full test set
    low: float
    high: float
    level: float
    n_bootstrap: int

    @property
    def contains_estimate(self) -> bool:
        return self.low <= self.estimate <= self.high


def percentile_interval(estimate: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    alpha = 1 - level
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), level, len(replicates))


def bootstrap_ci(score_fn: ScoreFn, y_true, y_pred, *, n_bootstrap: int = 1000,
                 level: float = 0.95, seed: int = 0, strata=None) -> Interval:
    """Percentile bootstrap interval of ``score_fn`` over test examples (within ``strata``)."""
    estimate = score_fn(np.asarray(y_true), np.asarray(y_pred))
    reps = bootstrap_replicates(score_fn, y_true, [y_pred], n_bootstrap=n_bootstrap, seed=seed,
                                strata=strata)[0]
    return percentile_interval(estimate, reps, level)


@dataclass(frozen=True)
class PairedComparison:
    difference: float  # score(a) - score(b) on the full test set
    low: float  # percentile interval of the difference
    high: float
    p_value: float  # two-sided


def paired_bootstrap(score_fn: ScoreFn, y_true, pred_a, pred_b, *, n_bootstrap: int = 1000,
                     level: float = 0.95, seed: int = 0, strata=None) -> PairedComparison:
    """Paired bootstrap of score(a) - score(b) on the same test examples.

    The two-sided p-value inverts the percentile interval of the difference: twice the smaller
    tail share of replicate differences on either side of zero (with the +1 correction that
    keeps a bootstrap p-value above zero).
    """
    y_true = np.asarray(y_true)
    reps = bootstrap_replicates(score_fn, y_true, [pred_a, pred_b], n_bootstrap=n_bootstrap,
                                seed=seed, strata=strata)
    diff = reps[0] - reps[1]
    d_hat = score_fn(y_true, np.asarray(pred_a)) - score_fn(y_true, np.asarray(pred_b))
    tail = min(np.sum(diff <= 0), np.sum(diff >= 0))
    p = min(1.0, 2 * (tail + 1) / (n_bootstrap + 1))
    iv = percentile_interval(d_hat, diff, level)
    return PairedComparison(float(d_hat), iv.low, iv.high, float(p))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down correction: (reject, adjusted p-values)."""
    if len(p_values) == 0:
        return np.zeros(0, bool), np.zeros(0)
    reject, adjusted, _, _ = multipletests(np.asarray(p_values, float), alpha=alpha, method="holm")
    return reject, adjusted


@dataclass(frozen=True)
class BestAndTies:
    best: str
    ties: tuple[str, ...]  # includes best
    p_values: dict[str, float]  # one-sided, unadjusted, for each non-best model
    adjusted: dict[str, float]


def best_and_ties(score_fn: ScoreFn, y_true, predictions: dict[str, np.ndarray], *,
                  n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0,
                  strata=None) -> BestAndTies:
    """The best model by point estimate, and every model not significantly worse than it.

    For each other model m, a one-sided paired bootstrap p-value of "best is not better than
    m": the share of replicates where m scores at least as high as best (+1 corrected). Holm's
    correction runs over all those comparisons; models whose null is not rejected tie with best.
    """
    names = list(predictions)
    y_true = np.asarray(y_true)
    estimates = {m: score_fn(y_true, np.asarray(predictions[m])) for m in names}
    best = max(names, key=lambda m: (estimates[m], -names.index(m)))
    others = [m for m in names if m != best]
    reps = bootstrap_replicates(score_fn, y_true, [predictions[m] for m in [best, *others]],
                                n_bootstrap=n_bootstrap, seed=seed, strata=strata)
    p = {m: float((np.sum(reps[i + 1] >= reps[0]) + 1) / (n_bootstrap + 1))
         for i, m in enumerate(others)}
    reject, adjusted = holm([p[m] for m in others], alpha)
    ties = (best, *[m for m, r in zip(others, reject) if not r])
    return BestAndTies(best, ties, p, dict(zip(others, map(float, adjusted))))
