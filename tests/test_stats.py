"""Bootstrap intervals, paired comparisons and Holm's correction."""

import numpy as np
import pytest

from biobench.metrics import accuracy, macro_f1
from biobench.stats import (
    best_and_ties, bootstrap_ci, bootstrap_replicates, holm, paired_bootstrap, resample_indices,
)


def test_replicates_resample_whole_examples_once_per_replicate():
    y_true = np.array([0, 1, 1, 0, 1])
    y_pred = np.array([0, 1, 0, 0, 1])
    reps = bootstrap_replicates(accuracy, y_true, [y_pred], n_bootstrap=20, seed=3)[0]
    idx = resample_indices(5, 20, 3)
    # each replicate is the accuracy of exactly one resample of the five examples
    expected = [(y_true[r] == y_pred[r]).mean() for r in idx]
    np.testing.assert_allclose(reps, expected)


def test_accuracy_interval_matches_binomial_spread():
    rng = np.random.default_rng(0)
    n, p = 400, 0.7
    y_true = np.zeros(n, int)
    y_pred = (rng.random(n) > p).astype(int)  # correct with probability p
    iv = bootstrap_ci(accuracy, y_true, y_pred, n_bootstrap=2000, seed=1)
    acc = iv.estimate
    se = np.sqrt(acc * (1 - acc) / n)
    # percentile bootstrap of a proportion ~ normal interval +- 1.96 se
    assert iv.low == pytest.approx(acc - 1.96 * se, abs=0.012)
    assert iv.high == pytest.approx(acc + 1.96 * se, abs=0.012)
    assert iv.contains_estimate


def test_macro_f1_interval_contains_estimate_on_imbalanced_classes():
    rng = np.random.default_rng(1)
    y_true = rng.choice(8, size=300, p=[0.4, 0.2, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02])
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 8, 300))
    iv = bootstrap_ci(macro_f1, y_true, y_pred, n_bootstrap=500, seed=0)
    assert iv.low < iv.estimate < iv.high
    # unbiased resampling: replicate mean stays close to the estimate (the reference's
    # absent-class-as-zero rule drags it down)
    reps = bootstrap_replicates(macro_f1, y_true, [y_pred], n_bootstrap=500, seed=0)[0]
    assert abs(reps.mean() - iv.estimate) < 0.02


def test_same_seed_same_interval():
    y = np.array([0, 1, 0, 1, 1, 0])
    a = bootstrap_ci(accuracy, y, y[::-1], n_bootstrap=100, seed=5)
    b = bootstrap_ci(accuracy, y, y[::-1], n_bootstrap=100, seed=5)
    assert a == b


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    n = 300
    y_true = rng.integers(0, 3, n)
    good = np.where(rng.random(n) < 0.9, y_true, (y_true + 1) % 3)
    bad = np.where(rng.random(n) < 0.6, y_true, (y_true + 1) % 3)
    cmp = paired_bootstrap(accuracy, y_true, good, bad, n_bootstrap=1000, seed=0)
    assert cmp.difference == pytest.approx(accuracy(y_true, good) - accuracy(y_true, bad))
    assert cmp.low > 0 and cmp.p_value < 0.01
    same = paired_bootstrap(accuracy, y_true, good, good, n_bootstrap=200, seed=0)
    assert same.difference == 0 and same.p_value == 1.0


def test_pairing_shrinks_the_interval_of_a_difference():
    # two models that agree on most examples: the paired difference is far tighter than an
    # unpaired one would be (independent resamples per model)
    rng = np.random.default_rng(3)
    n = 500
    y_true = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.8, y_true, 1 - y_true)
    b = a.copy()
    flip = rng.choice(n, 10, replace=False)
    b[flip] = 1 - b[flip]
    cmp = paired_bootstrap(accuracy, y_true, a, b, n_bootstrap=1000, seed=0)
    ra = bootstrap_replicates(accuracy, y_true, [a], n_bootstrap=1000, seed=1)[0]
    rb = bootstrap_replicates(accuracy, y_true, [b], n_bootstrap=1000, seed=2)[0]
    unpaired = np.quantile(ra - rb, [0.025, 0.975])
    assert (cmp.high - cmp.low) < 0.5 * (unpaired[1] - unpaired[0])


def test_holm_hand_computed():
    # sorted p: 0.01 (x3 -> 0.03), 0.02 (x2 -> 0.04), 0.04 (x1 -> 0.04); all rejected at 0.05
    reject, adj = holm([0.04, 0.01, 0.02], alpha=0.05)
    np.testing.assert_allclose(adj, [0.04, 0.03, 0.04])
    assert reject.all()
    reject, adj = holm([0.03, 0.01, 0.02], alpha=0.05)  # 0.01*3=0.03, 0.02*2=0.04, 0.03*1->0.04
    np.testing.assert_allclose(adj, [0.04, 0.03, 0.04])
    reject, _ = holm([0.02, 0.04], alpha=0.05)  # 0.02*2 = 0.04 ok; 0.04 ok
    assert reject.tolist() == [True, True]
    reject, _ = holm([0.03, 0.04], alpha=0.05)  # 0.03*2 = 0.06 > 0.05: stop
    assert reject.tolist() == [False, False]


def test_best_and_ties():
    rng = np.random.default_rng(4)
    n = 400
    y_true = rng.integers(0, 4, n)

    def model(p):
        return np.where(rng.random(n) < p, y_true, (y_true + 1) % 4)

    preds = {"strong": model(0.9), "twin": None, "weak": model(0.5)}
    twin = preds["strong"].copy()
    twin[:3] = (y_true[:3] + 1) % 4  # three more errors: not distinguishable
    preds["twin"] = twin
    result = best_and_ties(accuracy, y_true, preds, n_bootstrap=500, seed=0)
    assert result.best == "strong"
    assert set(result.ties) == {"strong", "twin"}
    assert result.p_values["weak"] < 0.01
