"""Task-specific metrics of the BioBench tasks, against hand-computed values and scikit-learn."""

from itertools import product

import numpy as np
import pytest
from sklearn.metrics import f1_score

from biobench import stats
from biobench.metrics import (FUNGICLEF_TRACK4_CE_COSTS, METRIC_LABELS, RARE_TRAIT_VALUE_COUNT,
                              bootstrap_strata, fishnet_macro_f1, fungiclef_official_losses,
                              fungiclef_reference_costs, fungiclef_reference_score, get_metric,
                              metric_spec, within_rare_trait_values)
from biobench.tasks import get_task
from biobench.tasks.base import registered_tasks


# ---- FishNet: mean over traits of the two-class macro-F1 -------------------------------------
FISH_TRUE = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0]])
FISH_PRED = np.array([[1, 1, 1], [0, 1, 1], [0, 1, 1], [0, 0, 1]])


def test_fishnet_macro_f1_by_hand():
    # trait 0: present F1 = 2*1/(2*1+0+1) = 2/3, absent F1 = 2*2/(2*2+1+0) = 4/5
    # trait 1: present F1 = 2*2/(2*2+1+0) = 4/5, absent F1 = 2*1/(2*1+0+1) = 2/3
    # trait 2: present F1 = 2*3/(2*3+1+0) = 6/7, absent F1 = 0 (its only example is missed)
    expected = ((2 / 3 + 4 / 5) / 2 + (4 / 5 + 2 / 3) / 2 + (6 / 7 + 0) / 2) / 3
    assert fishnet_macro_f1(FISH_TRUE, FISH_PRED) == pytest.approx(expected)
    assert get_metric("fishnet_macro_f1") is fishnet_macro_f1
    assert METRIC_LABELS["fishnet_macro_f1"] == "mean per-trait macro-F1"


def test_fishnet_macro_f1_matches_sklearn_per_trait():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(200, 9))
    y_pred = np.where(rng.random((200, 9)) < 0.7, y_true, 1 - y_true)
    reference = np.mean([f1_score(y_true[:, t], y_pred[:, t], average="macro", labels=[0, 1])
                         for t in range(9)])
    assert fishnet_macro_f1(y_true, y_pred) == pytest.approx(reference)
    # the per-image "fraction of traits right" (the reference's stored score) is another number
    assert fishnet_macro_f1(y_true, y_pred) != pytest.approx(np.mean(y_true == y_pred))


def test_fishnet_macro_f1_rejects_flat_arrays():
    with pytest.raises(ValueError, match="traits"):
        fishnet_macro_f1(np.array([0, 1]), np.array([0, 1]))


# ---- FishNet's bootstrap: strata on rare trait values only ----------------------------------
def test_rare_trait_value_strata_by_hand():
    # trait 0: value 1 has 2 examples (rare), value 0 has 22 (common); trait 1: 0 and 1 both
    # common (12 each). Rows 0 and 1 carry the rare value; all other rows form one stratum,
    # whatever their trait-1 value.
    y = np.zeros((24, 2), int)
    y[:2, 0] = 1
    y[::2, 1] = 1
    strata = within_rare_trait_values(y)
    assert strata[0] == strata[1] and len(set(strata[2:])) == 1 and strata[0] != strata[2]
    # with 8 rows every value is rare: two rows share a stratum exactly when they share the
    # whole label pattern
    small = y[:8]
    small_strata = within_rare_trait_values(small)
    same_pattern = (small[:, None] == small[None]).all(axis=-1)
    assert np.array_equal(small_strata[:, None] == small_strata[None], same_pattern)
    # no rare value at all: plain resampling
    common = np.repeat([[0, 1], [1, 0]], RARE_TRAIT_VALUE_COUNT, axis=0)
    assert within_rare_trait_values(common) is None
    assert bootstrap_strata("fishnet_macro_f1", common) is None
    with pytest.raises(ValueError, match="traits"):
        within_rare_trait_values(np.array([0, 1, 1]))


def test_rare_trait_values_keep_their_count_in_every_replicate():
    rng = np.random.default_rng(3)
    y = (rng.random((80, 9)) < rng.uniform(0.01, 0.5, 9)).astype(int)
    idx = stats.resample_indices(80, 200, seed=1, strata=bootstrap_strata("fishnet_macro_f1", y))
    counts = y.sum(axis=0)
    rare_value_counts = np.minimum(counts, 80 - counts)
    for t in np.flatnonzero(rare_value_counts < RARE_TRAIT_VALUE_COUNT):
        assert (y[idx, t].sum(axis=1) == counts[t]).all()
    # and the rows that carry no rare value still vary: the interval is not frozen
    assert len({tuple(r) for r in np.sort(idx, axis=1)}) == 200


def fish_case(rng):
    n, traits = int(rng.integers(30, 200)), 9
    prevalence = rng.uniform(0.005, 0.05, traits) if rng.random() < 0.5 else \
        rng.uniform(0.005, 0.6, traits)
    y_true = (rng.random((n, traits)) < prevalence).astype(int)
    y_pred = np.where(rng.random((n, traits)) < rng.uniform(0, 0.5), 1 - y_true, y_true)
    y_pred = np.where((y_true == 1) & (rng.random((n, traits)) < 0.7), 0, y_pred)  # rare misses
    return y_true, y_pred


def test_fishnet_estimate_lies_inside_its_interval_on_random_multi_label_cases():
    """Property over random (n, 9) cases, many with traits whose rarer value has one or two
    examples, with the strata the metric registers."""
    rng = np.random.default_rng(11)
    for case in range(60):
        y_true, y_pred = fish_case(rng)
        strata = bootstrap_strata("fishnet_macro_f1", y_true)
        iv = stats.bootstrap_ci(fishnet_macro_f1, y_true, y_pred, n_bootstrap=200, seed=case,
                                strata=strata)
        assert iv.low <= iv.estimate <= iv.high, (case, iv)


def test_plain_resampling_fails_fishnet_when_every_trait_has_one_missed_example():
    """Why FishNet stratifies: nine traits, each with a single positive that is missed. A
    plain replicate keeps all nine positives with probability (1 - (49/50)^50)^9 = 1.7%, and any
    missing positive takes a zero F1 out of its trait, so the plain interval lies above the
    estimate; the stratified one keeps every positive."""
    y_true = np.zeros((50, 9), int)
    y_true[np.arange(9), np.arange(9)] = 1
    y_pred = np.zeros_like(y_true)
    plain = stats.bootstrap_ci(fishnet_macro_f1, y_true, y_pred, n_bootstrap=1000, seed=0)
    assert plain.low > plain.estimate
    strata = bootstrap_strata("fishnet_macro_f1", y_true)
    fixed = stats.bootstrap_ci(fishnet_macro_f1, y_true, y_pred, n_bootstrap=1000, seed=0,
                               strata=strata)
    assert fixed.contains_estimate and fixed.estimate == pytest.approx((0 + 2 * 49 / 99) / 2)


# ---- FungiCLEF 2023: BioBench's score and the challenge's four losses -----------------------
# rows: [class id (-1 = unknown), poisonous 0/1]; class 7 is poisonous, 3 and 5 are edible
FUNGI_TRUE = np.array([[3, 0], [7, 1], [-1, 0], [3, 0], [5, 0]])
FUNGI_PRED = np.array([[3, 0], [3, 0], [7, 1], [-1, 0], [7, 1]])


def test_fungiclef_reference_score_by_hand():
    # Track 4 CE: wrong known = obs 2 (7->3) and obs 5 (5->7): 2; unknown as known = obs 3:
    #     10; known as unknown = obs 4: 0.1  -> (2 + 10 + 0.1) / 5 = 2.42
    # PSC: poisonous as edible = obs 2: 100; edible as poisonous = obs 3 and obs 5: 2
    #      -> 102 / 5 = 20.4
    # worst CE = (4 known * 1 + 1 unknown * 10) / 5 = 2.8; worst PSC = (100 * 1 + 4) / 5 = 20.8
    parts = fungiclef_reference_costs(FUNGI_TRUE, FUNGI_PRED)
    assert parts["ce"] == pytest.approx(2.42)
    assert parts["psc"] == pytest.approx(20.4)
    assert parts["worst_ce"] == pytest.approx(2.8)
    assert parts["worst_psc"] == pytest.approx(20.8)
    expected = 1 - (2.42 + 20.4) / (2.8 + 20.8)
    assert fungiclef_reference_score(FUNGI_TRUE, FUNGI_PRED) == pytest.approx(expected)
    assert get_metric("fungiclef_reference_score") is fungiclef_reference_score
    assert METRIC_LABELS["fungiclef_reference_score"] == \
        "BioBench's FungiCLEF score (Track 4 CE costs)"
    assert metric_spec("fungiclef_reference_score").strata_rule is None  # not a class average


def test_fungiclef_official_losses_by_hand():
    # Track 1: obs 2, 3, 4, 5 are wrong, each costs 1 -> 4 / 5 = 0.8
    # Track 2: PSC as above, 20.4; Track 3 = 0.8 + 20.4 = 21.2; Track 4 = 2.42 (as above)
    losses = fungiclef_official_losses(FUNGI_TRUE, FUNGI_PRED)
    assert losses == pytest.approx({
        "track1_classification_error": 0.8, "track2_poison_confusion_cost": 20.4,
        "track3_user_focused_loss": 21.2, "track4_unknown_cost_error": 2.42})
    assert all(type(v) is float for v in losses.values())
    assert fungiclef_official_losses(FUNGI_TRUE, FUNGI_TRUE) == pytest.approx(
        dict.fromkeys(losses, 0.0))


def test_the_user_focused_loss_is_not_the_reference_numerator():
    """Truth [unknown, species 3], prediction [species 3, unknown]: the reference's
    CE + PSC charges 10 + 0.1 (Track 4 costs) = 5.05 per observation; the challenge's Track 3
    user-focused loss charges 1 + 1 (Track 1 costs) = 1.0."""
    y_true = np.array([[-1, 0], [3, 0]])
    y_pred = np.array([[3, 0], [-1, 0]])
    parts = fungiclef_reference_costs(y_true, y_pred)
    assert parts["ce"] + parts["psc"] == pytest.approx(5.05)
    losses = fungiclef_official_losses(y_true, y_pred)
    assert losses["track3_user_focused_loss"] == pytest.approx(1.0)
    assert losses["track4_unknown_cost_error"] == pytest.approx(5.05)
    # worst CE = (1 known + 10 unknown) / 2 = 5.5, worst PSC = 2 edible * 1 / 2 = 1
    assert fungiclef_reference_score(y_true, y_pred) == pytest.approx(1 - 5.05 / 6.5)


def test_fungiclef_task_reports_the_official_losses_as_extras():
    task = get_task("fungiclef")
    assert task.metric_name == "fungiclef_reference_score"
    extras = task.metric_extras(FUNGI_TRUE, FUNGI_PRED)
    assert extras == fungiclef_official_losses(FUNGI_TRUE, FUNGI_PRED)
    assert extras["track3_user_focused_loss"] == pytest.approx(21.2)
    assert task.score(FUNGI_TRUE, FUNGI_PRED) == fungiclef_reference_score(FUNGI_TRUE, FUNGI_PRED)
    assert task.bootstrap_strata(FUNGI_TRUE) is None


def test_every_task_names_a_registered_metric():
    for name, cls in registered_tasks().items():
        assert cls.metric_name in METRIC_LABELS, f"task {name}: unknown metric {cls.metric_name}"


def test_fungiclef_score_perfect_is_one_and_poison_dominates():
    assert fungiclef_reference_score(FUNGI_TRUE, FUNGI_TRUE) == 1.0
    # calling the one poisonous mushroom edible costs far more than calling an edible one unknown
    eats_poison = FUNGI_TRUE.copy()
    eats_poison[1] = [3, 0]
    cautious = FUNGI_TRUE.copy()
    cautious[0] = [-1, 0]
    assert (fungiclef_reference_score(FUNGI_TRUE, eats_poison)
            < fungiclef_reference_score(FUNGI_TRUE, cautious))


def test_fungiclef_worst_case_normalisation_is_the_true_maximum():
    """Brute force every prediction over a small label space: the largest CE + PSC equals
    worst_CE + worst_PSC, with worst_CE = 1 + 9 n_unknown / n (the '+1', not '+0.1'), so the
    score's minimum is exactly 0."""
    poisonous = {7}
    label_space = [-1, 3, 5, 7]
    y_true = np.array([[3, 0], [7, 1], [-1, 0], [5, 0]])

    def rows(labels):
        return np.array([[c, int(c in poisonous)] for c in labels])

    costs = [fungiclef_reference_costs(y_true, rows(p))
             for p in product(label_space, repeat=len(y_true))]
    worst_total = max(c["ce"] + c["psc"] for c in costs)
    n, n_unknown = len(y_true), 1
    assert costs[0]["worst_ce"] == pytest.approx(1 + 9 * n_unknown / n)
    assert worst_total == pytest.approx(costs[0]["worst_ce"] + costs[0]["worst_psc"])
    assert min(c["score"] for c in costs) == pytest.approx(0.0)
    # the CE part alone is also tight: its maximum over predictions is worst_CE
    assert max(c["ce"] for c in costs) == pytest.approx(costs[0]["worst_ce"])
    assert FUNGICLEF_TRACK4_CE_COSTS["known_as_unknown"] < FUNGICLEF_TRACK4_CE_COSTS["wrong_known"]


def test_fungiclef_unknown_counts_as_not_poisonous():
    # a poisonous mushroom called "unknown" is not called poisonous: it costs 100 in PSC
    y_true = np.array([[7, 1], [3, 0]])
    y_pred = np.array([[-1, 0], [3, 0]])
    parts = fungiclef_reference_costs(y_true, y_pred)
    assert parts["psc"] == pytest.approx(100 / 2)
    assert parts["ce"] == pytest.approx(0.1 / 2)


def test_fungiclef_needs_class_and_poison_columns():
    with pytest.raises(ValueError, match="class id, poisonous"):
        fungiclef_reference_score(np.array([1, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="class id, poisonous"):
        fungiclef_official_losses(np.array([1, 2]), np.array([1, 2]))
