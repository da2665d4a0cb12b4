"""Bootstrap intervals, stratified resampling, paired comparisons and Holm's correction."""

import numpy as np
import pytest

from biobench.metrics import accuracy, bootstrap_strata, macro_f1
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
    strata = bootstrap_strata("macro_f1", y_true)
    iv = bootstrap_ci(macro_f1, y_true, y_pred, n_bootstrap=500, seed=0, strata=strata)
    assert iv.low < iv.estimate < iv.high
    # every replicate averages over the same eight classes: the replicate mean stays close to
    # the estimate (the reference's absent-class-as-zero rule drags it down)
    reps = bootstrap_replicates(macro_f1, y_true, [y_pred], n_bootstrap=500, seed=0,
                                strata=strata)[0]
    assert abs(reps.mean() - iv.estimate) < 0.02


# ---- stratified resampling -------------------------------------------------------------------
# ten singleton classes, all missed: a plain resample drops some of them (and their zero F1)
MINIMAL_TRUE = np.array([0] * 5 + [1] * 5 + list(range(2, 12)))
MINIMAL_PRED = np.array([0] * 5 + [1] * 5 + [99] * 10)


@pytest.mark.parametrize("seed", range(5))
def test_plain_resampling_puts_the_minimal_case_outside_its_interval(seed):
    """Why macro-F1 stratifies: the plain interval lies above its own estimate."""
    iv = bootstrap_ci(macro_f1, MINIMAL_TRUE, MINIMAL_PRED, n_bootstrap=1000, seed=seed)
    assert iv.estimate == pytest.approx(2 / 12)  # two perfect classes, ten zeros
    assert iv.low > iv.estimate


@pytest.mark.parametrize("seed", range(5))
def test_stratified_interval_of_the_minimal_case_is_its_estimate(seed):
    # every replicate has classes 0 and 1 all right and the ten singletons all wrong
    strata = bootstrap_strata("macro_f1", MINIMAL_TRUE)
    iv = bootstrap_ci(macro_f1, MINIMAL_TRUE, MINIMAL_PRED, n_bootstrap=1000, seed=seed,
                      strata=strata)
    assert iv.low == iv.estimate == iv.high == pytest.approx(2 / 12)


def random_case(rng):
    """Random class sizes (about half the classes singletons) and a random error pattern."""
    n_classes = int(rng.integers(1, 40))
    sizes = np.where(rng.random(n_classes) < 0.5, 1, rng.integers(1, 30, n_classes))
    y_true = np.repeat(np.arange(n_classes), sizes)
    rng.shuffle(y_true)
    error_rate = rng.random()
    wrong = [rng.integers(0, n_classes + 5, len(y_true)),  # other true or only-predicted classes
             (y_true + 1) % n_classes,  # systematic confusion with the next class
             np.full(len(y_true), n_classes + 7)][int(rng.integers(3))]  # one junk class
    y_pred = np.where(rng.random(len(y_true)) < error_rate, wrong, y_true)
    return y_true, y_pred


@pytest.mark.parametrize("case_seed", range(4))
def test_estimate_lies_inside_its_interval_for_macro_f1_and_accuracy(case_seed):
    """Property: low <= estimate <= high over many random cases and bootstrap seeds, for
    macro-F1 resampled within the task's strata and for accuracy resampled plainly."""
    rng = np.random.default_rng(case_seed)
    cases = [random_case(rng) for _ in range(40)] + [(MINIMAL_TRUE, MINIMAL_PRED)]
    for y_true, y_pred in cases:
        for seed in range(3):
            for metric, name in ((macro_f1, "macro_f1"), (accuracy, "accuracy")):
                strata = bootstrap_strata(name, y_true)
                iv = bootstrap_ci(metric, y_true, y_pred, n_bootstrap=200, seed=seed,
                                  strata=strata)
                assert iv.low <= iv.estimate <= iv.high, (name, y_true.tolist(),
                                                          y_pred.tolist(), seed, iv)
    assert bootstrap_strata("accuracy", MINIMAL_TRUE) is None  # accuracy is not a class mean


def test_within_stratum_resampling_keeps_every_class_count():
    rng = np.random.default_rng(5)
    strata = rng.choice([3, 7, 7, 7, 11, 20], size=53)
    idx = resample_indices(len(strata), 300, seed=2, strata=strata)
    assert idx.shape == (300, 53)
    # position j always holds an example of j's own class, so every class keeps its count
    assert (strata[idx] == strata[None, :]).all()
    _, counts = np.unique(strata, return_counts=True)
    for row in idx:
        assert np.array_equal(np.unique(strata[row], return_counts=True)[1], counts)


def test_within_stratum_draws_are_uniform_with_replacement():
    strata = np.array([0] * 4 + [1] * 1 + [2] * 2)
    idx = resample_indices(7, 20000, seed=0, strata=strata)
    # each of the four class-0 examples fills each class-0 slot a quarter of the time
    np.testing.assert_allclose(np.bincount(idx[:, :4].ravel(), minlength=7)[:4] / 80000,
                               0.25, atol=0.01)
    assert (idx[:, 4] == 4).all()  # a singleton is always itself
    assert (idx[:, :4] == idx[:, :4][:, :1]).all(axis=1).mean() == pytest.approx(4 / 4 ** 4,
                                                                                 abs=0.005)


def test_stratified_indices_are_deterministic_and_shared_by_all_models():
    strata = np.array(["b", "a", "b", "c", "a", "b"])
    a = resample_indices(6, 50, seed=9, strata=strata)
    assert np.array_equal(a, resample_indices(6, 50, seed=9, strata=strata))
    assert not np.array_equal(a, resample_indices(6, 50, seed=10, strata=strata))
    # the replicates of two models are scored on exactly these resamples
    y_true = np.array([1, 0, 1, 2, 0, 1])
    preds = [np.array([1, 0, 0, 2, 0, 1]), np.array([0, 0, 1, 2, 1, 1])]
    reps = bootstrap_replicates(accuracy, y_true, preds, n_bootstrap=50, seed=9, strata=strata)
    for m, p in enumerate(preds):
        np.testing.assert_allclose(reps[m], [(y_true[r] == p[r]).mean() for r in a])


def test_plain_indices_are_the_generators_draws():
    # strata=None keeps the plain bootstrap's draws (stored runs and published pages rely on it)
    expected = np.random.default_rng(4).integers(0, 9, size=(30, 9))
    assert np.array_equal(resample_indices(9, 30, 4), expected)
    assert np.array_equal(resample_indices(9, 30, 4, strata=None), expected)


def test_strata_must_match_the_test_set():
    with pytest.raises(ValueError, match="one value per test example"):
        resample_indices(5, 10, 0, strata=np.zeros(4))
    with pytest.raises(ValueError, match="one value per test example"):
        bootstrap_ci(accuracy, np.zeros(5), np.zeros(5), strata=np.zeros((5, 2)))


def test_stratified_accuracy_variance_matches_the_binomial_formula():
    """Within class c (n_c examples, share p_c right) the replicate's correct count is
    Binomial(n_c, p_c), independent across classes, so the replicate accuracy has variance
    sum_c n_c p_c (1 - p_c) / n^2 -- smaller than the plain n p (1 - p) / n^2."""
    rng = np.random.default_rng(6)
    y_true = rng.choice(4, size=200, p=[0.5, 0.3, 0.15, 0.05])
    right_share = np.array([0.95, 0.7, 0.4, 0.1])
    y_pred = np.where(rng.random(200) < right_share[y_true], y_true, 9)
    reps = bootstrap_replicates(accuracy, y_true, [y_pred], n_bootstrap=4000, seed=0,
                                strata=y_true)[0]
    n = len(y_true)
    expected = 0.0
    for c in range(4):
        members = y_true == c
        p_c = np.mean(y_pred[members] == c)
        expected += members.sum() * p_c * (1 - p_c) / n ** 2
    assert reps.mean() == pytest.approx(accuracy(y_true, y_pred), abs=0.002)
    assert reps.var() == pytest.approx(expected, rel=0.08)
    acc = accuracy(y_true, y_pred)
    assert expected < acc * (1 - acc) / n


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


def test_paired_bootstrap_and_ties_resample_within_the_strata():
    """Both comparisons score every model on the stratified resamples: replayed by hand."""
    rng = np.random.default_rng(7)
    n = 120
    y_true = rng.integers(0, 6, n)
    a = np.where(rng.random(n) < 0.8, y_true, (y_true + 1) % 6)
    b = np.where(rng.random(n) < 0.7, y_true, (y_true + 2) % 6)
    idx = resample_indices(n, 300, seed=3, strata=y_true)
    diff = np.array([macro_f1(y_true[r], a[r]) - macro_f1(y_true[r], b[r]) for r in idx])
    cmp = paired_bootstrap(macro_f1, y_true, a, b, n_bootstrap=300, seed=3, strata=y_true)
    assert (cmp.low, cmp.high) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])))
    tail = min(np.sum(diff <= 0), np.sum(diff >= 0))
    assert cmp.p_value == pytest.approx(min(1.0, 2 * (tail + 1) / 301))
    ties = best_and_ties(macro_f1, y_true, {"a": a, "b": b}, n_bootstrap=300, seed=3,
                         strata=y_true)
    assert ties.best == "a"
    assert ties.p_values["b"] == pytest.approx((np.sum(diff <= 0) + 1) / 301)
