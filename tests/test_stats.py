"""Bootstrap intervals, stratified resampling, paired comparisons and Holm's correction."""

import numpy as np
import pytest

from biobench.metrics import accuracy, bootstrap_strata, get_metric, macro_f1
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


# ---- bootstraps that scale: chunked draws, count forms, one pass over many models ------------
from biobench import metrics, stats  # noqa: E402
from biobench.metrics import METRICS, row_means  # noqa: E402
from biobench.tasks import get_task  # noqa: E402


def todays_resample_indices(n, n_bootstrap, seed, strata=None):
    """The draws as the project made them before chunking: one call for the whole matrix."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_bootstrap, n))
    _, stratum_of, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    members = np.argsort(stratum_of, kind="stable")
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return members[rng.integers(0, sizes[stratum_of], size=(n_bootstrap, n)) + first[stratum_of]]


@pytest.mark.parametrize("case_seed", range(3))
def test_chunked_draws_are_todays_draws(case_seed):
    rng = np.random.default_rng(case_seed)
    for _ in range(30):
        n = int(rng.integers(1, 300))
        n_bootstrap = int(rng.integers(1, 40))
        seed = int(rng.integers(1000))
        # strata with singletons (they take no random number), or none
        strata = [None, rng.integers(0, int(rng.integers(1, 60)), n)][int(rng.integers(2))]
        expected = todays_resample_indices(n, n_bootstrap, seed, strata)
        assert np.array_equal(stats.resample_indices(n, n_bootstrap, seed, strata), expected)
        rows = int(rng.integers(1, 8))
        chunks = list(stats.iter_resample_indices(n, n_bootstrap, seed, strata,
                                                  rows_per_chunk=rows))
        assert max(len(c) for c in chunks) <= rows
        assert np.array_equal(np.concatenate(chunks), expected)


def test_stratified_draws_match_numpy_through_many_rejections():
    """The vectorised stratified draws against numpy's own loop, with bounds up to 2**32 - 1
    (where Lemire's rejection hits a third of the draws), bound-1 columns that take no number,
    and blocks of every size, so rejections fall inside rows and across block boundaries."""
    assert stats._StratifiedDraws.matches_numpy()
    rng = np.random.default_rng(0)
    for trial in range(5):
        high = rng.integers(1, 2 ** 32 - 1, 300)
        high[rng.random(300) < 0.2] = 1
        high[:3] = [3_000_000_001, 2, 2 ** 31 + 1]
        offset = rng.integers(0, 1000, 300)
        expected = np.random.default_rng(trial).integers(0, high, size=(37, 300)) + offset
        draws = stats._StratifiedDraws(np.random.default_rng(trial).bit_generator, high)
        got = np.concatenate([draws.draw(rows, offset) for rows in (1, 2, 5, 13, 16)])
        assert np.array_equal(got, expected)


def test_row_means_are_numpys_mean_bit_for_bit():
    rng = np.random.default_rng(1)
    # lengths around numpy's pairwise-summation blocks (8, 128) and far beyond
    values = rng.random((400, 700)) * rng.choice([1e-3, 1.0, 1e3], (400, 700))
    keep_share = rng.choice([0.002, 0.02, 0.2, 0.9, 1.0], 400)
    keep = rng.random((400, 700)) < keep_share[:, None]
    keep[np.arange(400), rng.integers(0, 700, 400)] = True  # at least one value per row...
    keep[0] = False  # ...but here: nothing kept is nan, like np.mean of nothing
    keep[1] = True
    got = row_means(values, keep)
    assert np.isnan(got[0])
    expected = [np.mean(v[k]) for v, k in zip(values[1:], keep[1:])]
    assert np.array_equal(got[1:], expected)  # exact, not approximate
    assert np.array_equal(row_means(values, np.ones_like(keep)),
                          [np.mean(v) for v in values])


def single_label_case(rng, n_min=1):
    """Class ids with -1 unknowns, singletons, absent and only-predicted classes."""
    n = int(rng.integers(n_min, 250))
    n_classes = int(rng.integers(1, 30))
    y_true = rng.integers(-1, n_classes, n)
    wrong = rng.integers(-1, n_classes + 6, n)  # + classes that are only ever predicted
    y_pred = np.where(rng.random(n) < rng.random(), y_true, wrong)
    return y_true, [y_pred, y_true, np.full(n, n_classes + 3)]


def fishnet_case(rng):
    n, traits = int(rng.integers(5, 150)), 9
    y_true = (rng.random((n, traits)) < rng.uniform(0.01, 0.6, traits)).astype(int)
    preds = [np.where(rng.random((n, traits)) < rng.uniform(0, 0.5), 1 - y_true, y_true)
             for _ in range(3)]
    return y_true, preds


def fungiclef_case(rng):
    n = int(rng.integers(1, 200))
    poisonous = {2, 5}

    def rows(classes):
        return np.stack([classes, np.isin(classes, list(poisonous)).astype(int)], axis=1)

    y_true = rows(rng.integers(-1, 8, n))  # -1: unknown species
    preds = [rows(np.where(rng.random(n) < 0.5, y_true[:, 0], rng.integers(-1, 8, n)))
             for _ in range(3)]
    return y_true, preds


def question_matrix_case(rng):
    """(images, slots) answer matrices, -1 where an image has no question in a slot (y_true)
    or no readable answer (y_pred)."""
    n, slots = int(rng.integers(1, 150)), int(rng.integers(1, 4))
    y_true = np.where(rng.random((n, slots)) < 0.2, -1, rng.integers(0, 4, (n, slots)))
    preds = [np.where(rng.random((n, slots)) < 0.5, y_true, rng.integers(-1, 4, (n, slots)))
             for _ in range(3)]
    return y_true, preds


CASES = {"macro_f1": single_label_case, "accuracy": single_label_case,
         "question_accuracy": question_matrix_case,
         "fishnet_macro_f1": fishnet_case, "fungiclef_reference_score": fungiclef_case}


def test_every_count_form_has_a_test_case():
    with_count_form = {name for name, spec in METRICS.items() if spec.count_form is not None}
    assert with_count_form == set(CASES), "add a random case for the new count form to CASES"


@pytest.mark.parametrize("name", sorted(CASES))
def test_count_form_replicates_equal_the_loop_exactly(name):
    """Every registered count form against the per-replicate loop, bit for bit, plain and
    within the metric's strata (and within arbitrary strata), for several models at once."""
    rng = np.random.default_rng(sorted(CASES).index(name))
    for case in range(8 if name == "fishnet_macro_f1" else 25):  # its loop is slow
        y_true, preds = CASES[name](rng)
        strata_options = [None, bootstrap_strata(name, y_true),
                          rng.integers(0, 4, len(y_true))]
        for strata in strata_options:
            kwargs = dict(n_bootstrap=int(rng.integers(1, 60)), seed=case, strata=strata)
            loop = bootstrap_replicates(get_metric(name), y_true, preds, method="loop", **kwargs)
            counted = bootstrap_replicates(get_metric(name), y_true, preds, method="counts",
                                           **kwargs)
            assert np.array_equal(counted, loop), (name, case, strata)
            assert np.array_equal(bootstrap_replicates(name, y_true, preds, **kwargs), loop)


def test_the_loop_is_the_metric_on_todays_resamples():
    rng = np.random.default_rng(2)
    y_true, preds = single_label_case(rng, n_min=50)
    strata = bootstrap_strata("macro_f1", y_true)
    idx = todays_resample_indices(len(y_true), 40, 3, strata)
    expected = [[macro_f1(y_true[r], p[r]) for r in idx] for p in preds]
    assert np.array_equal(bootstrap_replicates(macro_f1, y_true, preds, n_bootstrap=40, seed=3,
                                               strata=strata, method="loop"), expected)


def test_chunk_size_does_not_change_the_replicates(monkeypatch):
    rng = np.random.default_rng(3)
    y_true, preds = single_label_case(rng, n_min=100)
    strata = bootstrap_strata("macro_f1", y_true)
    whole = bootstrap_replicates(macro_f1, y_true, preds, n_bootstrap=50, seed=1, strata=strata)
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 1)  # one replicate per chunk
    assert np.array_equal(bootstrap_replicates(macro_f1, y_true, preds, n_bootstrap=50, seed=1,
                                               strata=strata), whole)


def test_memory_stays_bounded_by_the_chunk(monkeypatch):
    """A (500, 40000) index matrix would take 160 MB; the chunks take a few MB."""
    import tracemalloc

    rng = np.random.default_rng(4)
    n = 40_000
    y_true = rng.integers(0, 300, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 300, n))
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 2 ** 18)  # 2 MiB per int64 chunk array
    tracemalloc.start()
    try:
        bootstrap_replicates(macro_f1, y_true, [y_pred], n_bootstrap=500, seed=0,
                             strata=bootstrap_strata("macro_f1", y_true))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"


def test_an_unregistered_score_function_is_looped():
    calls = []

    def share_right(t, p):
        calls.append(len(t))
        return float(np.mean(t == p))

    y_true = np.array([0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 2, 2, 2, 0])
    reps = bootstrap_replicates(share_right, y_true, [y_pred], n_bootstrap=30, seed=2)[0]
    assert len(calls) == 30  # once per replicate
    idx = resample_indices(6, 30, 2)
    assert np.array_equal(reps, [np.mean(y_true[r] == y_pred[r]) for r in idx])
    with pytest.raises(ValueError, match="count form"):
        bootstrap_replicates(share_right, y_true, [y_pred], n_bootstrap=5, method="counts")


def test_a_new_metric_registers_its_count_form_beside_it(monkeypatch):
    """register_metric(count_form=...) is all a new metric needs: the bootstrap then counts
    cells instead of calling the metric, with the same replicates."""
    monkeypatch.setattr(metrics, "METRICS", dict(metrics.METRICS))
    calls = []

    def error_rate_form(y_true, y_pred):
        wrong = (np.asarray(y_true) != np.asarray(y_pred)).astype(np.intp)
        return metrics.CountForm(wrong, 2, lambda counts: counts[:, 1] / len(wrong))

    @metrics.register_metric("toy_error_rate", "error rate", count_form=error_rate_form)
    def toy_error_rate(y_true, y_pred):
        calls.append(1)
        return float(np.mean(y_true != y_pred))

    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 5, 80)
    y_pred = np.where(rng.random(80) < 0.7, y_true, 0)
    counted = bootstrap_replicates(toy_error_rate, y_true, [y_pred], n_bootstrap=100, seed=0)
    assert calls == []  # not called per replicate
    looped = bootstrap_replicates(toy_error_rate, y_true, [y_pred], n_bootstrap=100, seed=0,
                                  method="loop")
    assert len(calls) == 100 and np.array_equal(counted, looped)


def test_a_tasks_score_counts_as_its_metric_unless_overridden():
    task = get_task("fungiclef")
    assert stats.registered_metric(task.score) is metrics.metric_spec(task.metric_name)
    assert stats.registered_metric("macro_f1") is metrics.metric_spec("macro_f1")
    assert stats.registered_metric(macro_f1) is metrics.metric_spec("macro_f1")

    class Rescored(type(task)):
        def score(self, y_true, y_pred):  # another metric: must not be counted as the old one
            return 0.0

    assert stats.registered_metric(Rescored().score) is None
    assert stats.registered_metric(lambda t, p: 0.0) is None


def test_many_models_share_one_draw_per_chunk(monkeypatch):
    """best_and_ties scores every model on each chunk of resamples as it is drawn, and its
    p-values equal the ones computed from the per-replicate loop."""
    rng = np.random.default_rng(6)
    n = 300
    y_true = rng.integers(0, 12, n)
    preds = {f"m{i}": np.where(rng.random(n) < q, y_true, rng.integers(0, 12, n))
             for i, q in enumerate([0.9, 0.88, 0.8, 0.6, 0.4, 0.2])}
    strata = bootstrap_strata("macro_f1", y_true)
    rows_drawn = []
    draw = stats._Resampler.draw
    monkeypatch.setattr(stats._Resampler, "draw",
                        lambda self, rows: rows_drawn.append(rows) or draw(self, rows))
    result = best_and_ties(macro_f1, y_true, preds, n_bootstrap=400, seed=0, strata=strata)
    assert sum(rows_drawn) == 400  # each replicate drawn once, whatever the number of models
    order = [result.best, *[m for m in preds if m != result.best]]
    loop = bootstrap_replicates(macro_f1, y_true, [preds[m] for m in order], n_bootstrap=400,
                                seed=0, strata=strata, method="loop")
    for i, m in enumerate(order[1:], 1):
        assert result.p_values[m] == (np.sum(loop[i] >= loop[0]) + 1) / 401
    assert set(result.ties) >= {"m0"} and "m5" not in result.ties
