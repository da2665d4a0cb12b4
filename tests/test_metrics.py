"""macro-F1 and accuracy against hand-computed values and scikit-learn; the metric registry."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from biobench import metrics
from biobench.metrics import (METRIC_LABELS, METRICS, accuracy, bootstrap_strata, get_metric,
                              macro_f1, metric_label, per_class_f1, register_metric,
                              within_true_class)


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


# ---- the registry: label and strata rule live with the registration -------------------------
def test_builtin_metrics_carry_their_label_and_strata_rule():
    assert get_metric("macro_f1") is macro_f1 and get_metric("accuracy") is accuracy
    assert METRIC_LABELS["macro_f1"] == "macro-F1" and METRIC_LABELS["accuracy"] == "accuracy"
    y = np.array([2, 0, 2, 1])
    # macro-F1 is a class average: resample within true classes; accuracy resamples plainly
    assert np.array_equal(bootstrap_strata("macro_f1", y), y)
    assert bootstrap_strata("accuracy", y) is None
    # the registry entry is the metric: calling it scores
    assert METRICS["macro_f1"](y, y) == 1.0


def test_registering_a_metric_makes_label_and_strata_visible(monkeypatch):
    monkeypatch.setattr(metrics, "METRICS", dict(metrics.METRICS))  # leave the real one alone

    @register_metric("toy_recall", "toy recall", strata=within_true_class)
    def toy_recall(y_true, y_pred):
        return float(np.mean(y_true == y_pred))

    assert get_metric("toy_recall") is toy_recall
    # the label view reads the one registry: no second dict to keep in step
    assert METRIC_LABELS["toy_recall"] == "toy recall" and "toy_recall" in METRIC_LABELS
    assert metric_label("toy_recall") == "toy recall"
    assert np.array_equal(bootstrap_strata("toy_recall", np.array([1, 1, 0])), [1, 1, 0])
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("toy_recall")(lambda t, p: 0.0)
    register_metric("toy_recall", "toy recall", strata=within_true_class)(toy_recall)  # idempotent


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(KeyError, match="Valid metrics: .*macro_f1"):
        get_metric("f1_macro")
    with pytest.raises(KeyError, match="Unknown metric 'f1_macro'"):
        bootstrap_strata("f1_macro", np.array([0, 1]))
    # labels of names no longer registered (old stored runs) fall back to the name
    assert metric_label("f1_macro") == "f1_macro"
    assert METRIC_LABELS.get("f1_macro", "f1_macro") == "f1_macro"


def test_stratifying_by_true_class_needs_one_label_per_example():
    with pytest.raises(ValueError, match="one label per example"):
        bootstrap_strata("macro_f1", np.zeros((4, 2), int))
