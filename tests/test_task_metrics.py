"""Task-specific metrics of the BioBench tasks, against hand-computed values and scikit-learn."""

from itertools import product

import numpy as np
import pytest
from sklearn.metrics import f1_score

from biobench.metrics import (FUNGICLEF_COSTS, METRIC_LABELS, fishnet_macro_f1, fungiclef_costs,
                              fungiclef_score, get_metric)


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


# ---- FungiCLEF 2023 user-focused score ------------------------------------------------------
# rows: [class id (-1 = unknown), poisonous 0/1]; class 7 is poisonous, 3 and 5 are edible
FUNGI_TRUE = np.array([[3, 0], [7, 1], [-1, 0], [3, 0], [5, 0]])
FUNGI_PRED = np.array([[3, 0], [3, 0], [7, 1], [-1, 0], [7, 1]])


def test_fungiclef_score_by_hand():
    # CE: wrong known = obs 2 (7->3) and obs 5 (5->7): 2; unknown as known = obs 3: 10;
    #     known as unknown = obs 4: 0.1  -> (2 + 10 + 0.1) / 5 = 2.42
    # PSC: poisonous as edible = obs 2: 100; edible as poisonous = obs 3 and obs 5: 2
    #      -> 102 / 5 = 20.4
    # worst CE = (4 known * 1 + 1 unknown * 10) / 5 = 2.8; worst PSC = (100 * 1 + 4) / 5 = 20.8
    parts = fungiclef_costs(FUNGI_TRUE, FUNGI_PRED)
    assert parts["ce"] == pytest.approx(2.42)
    assert parts["psc"] == pytest.approx(20.4)
    assert parts["worst_ce"] == pytest.approx(2.8)
    assert parts["worst_psc"] == pytest.approx(20.8)
    assert fungiclef_score(FUNGI_TRUE, FUNGI_PRED) == pytest.approx(1 - (2.42 + 20.4) / (2.8 + 20.8))
    assert get_metric("fungiclef_score") is fungiclef_score


def test_fungiclef_score_perfect_is_one_and_poison_dominates():
    assert fungiclef_score(FUNGI_TRUE, FUNGI_TRUE) == 1.0
    # calling the one poisonous mushroom edible costs far more than calling an edible one unknown
    eats_poison = FUNGI_TRUE.copy()
    eats_poison[1] = [3, 0]
    cautious = FUNGI_TRUE.copy()
    cautious[0] = [-1, 0]
    assert fungiclef_score(FUNGI_TRUE, eats_poison) < fungiclef_score(FUNGI_TRUE, cautious)


def test_fungiclef_worst_case_normalisation_is_the_true_maximum():
    """Brute force every prediction over a small label space: the largest CE + PSC equals
    worst_CE + worst_PSC, with worst_CE = 1 + 9 n_unknown / n (the '+1', not '+0.1'), so the
    score's minimum is exactly 0."""
    poisonous = {7}
    label_space = [-1, 3, 5, 7]
    y_true = np.array([[3, 0], [7, 1], [-1, 0], [5, 0]])

    def rows(labels):
        return np.array([[c, int(c in poisonous)] for c in labels])

    costs = [fungiclef_costs(y_true, rows(p)) for p in product(label_space, repeat=len(y_true))]
    worst_total = max(c["ce"] + c["psc"] for c in costs)
    n, n_unknown = len(y_true), 1
    assert costs[0]["worst_ce"] == pytest.approx(1 + 9 * n_unknown / n)
    assert worst_total == pytest.approx(costs[0]["worst_ce"] + costs[0]["worst_psc"])
    assert min(c["score"] for c in costs) == pytest.approx(0.0)
    # the CE part alone is also tight: its maximum over predictions is worst_CE
    assert max(c["ce"] for c in costs) == pytest.approx(costs[0]["worst_ce"])
    assert FUNGICLEF_COSTS["known_as_unknown"] < FUNGICLEF_COSTS["wrong_known"]


def test_fungiclef_unknown_counts_as_not_poisonous():
    # a poisonous mushroom called "unknown" is not called poisonous: it costs 100 in PSC
    y_true = np.array([[7, 1], [3, 0]])
    y_pred = np.array([[-1, 0], [3, 0]])
    parts = fungiclef_costs(y_true, y_pred)
    assert parts["psc"] == pytest.approx(100 / 2)
    assert parts["ce"] == pytest.approx(0.1 / 2)


def test_fungiclef_needs_class_and_poison_columns():
    with pytest.raises(ValueError, match="class id, poisonous"):
        fungiclef_score(np.array([1, 2]), np.array([1, 2]))
