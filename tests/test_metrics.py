"""macro-F1 and accuracy against hand-computed values and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from biobench.metrics import accuracy, macro_f1, per_class_f1


def test_macro_f1_hand_computed():
    # class 0: TP=2 FP=1 FN=0 -> F1 = 4/5; class 1: TP=1 FP=0 FN=1 -> F1 = 2/3
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1])
    assert macro_f1(y_true, y_pred) == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_predicted_only_class_is_not_averaged_but_costs_recall():
    # class 2 never occurs in truth: it is not in the average, but the miss lowers class 1
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 2])
    # class 0: F1 = 1; class 1: TP=1 FN=1 FP=0 -> 2/3
    assert macro_f1(y_true, y_pred) == pytest.approx((1 + 2 / 3) / 2)


def test_absent_class_ids_are_not_scored_zero():
    # labels 0 and 5 only: the reference's "every id up to the max" rule would average over
    # six classes with four zeros; ours averages over the two classes that occur.
    y_true = np.array([0, 5, 5, 0])
    assert macro_f1(y_true, y_true) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn_over_true_labels(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 7, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 9, 200))
    expected = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro")
    assert macro_f1(y_true, y_pred) == pytest.approx(expected)


def test_string_labels_and_per_class():
    y_true = np.array(["a", "b", "b"])
    y_pred = np.array(["a", "b", "a"])
    pc = per_class_f1(y_true, y_pred)
    assert pc["a"]["f1"] == pytest.approx(2 / 3) and pc["b"]["recall"] == pytest.approx(0.5)
    assert macro_f1(y_true, y_pred) == pytest.approx(np.mean([pc["a"]["f1"], pc["b"]["f1"]]))


def test_accuracy_and_shape_check():
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)
    assert accuracy(np.array([[1, 0], [1, 1]]), np.array([[1, 0], [0, 1]])) == 0.5
    with pytest.raises(ValueError, match="shape"):
        macro_f1(np.array([1, 2]), np.array([1]))
