"""biobench.lowdata: per-fold subsampling of cross-fitted tasks."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from biobench import lowdata
from biobench.stats import bootstrap_ci
from biobench.tasks.base import Example, ImageRef, TaskData
from biobench.tasks.plankton_flowcam import PlanktonFlowCam


def _blobs(seed=0, n_classes=4, per_class=(12, 9, 15, 10), dim=6):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(0, 2.0, (n_classes, dim))
    x = centres[y] + rng.normal(0, 1.5, (len(y), dim))
    return x, y


def _task_data(y):
    examples = [Example(f"e{i}", (ImageRef(f"/none/{i}.png"),), int(label))
                for i, label in enumerate(y)]
    return TaskData([], examples, [f"c{c}" for c in np.unique(y)])


class RecordingProbe(ClassifierMixin, BaseEstimator):
    """Nearest centroid that logs the rows it was fitted on and asked to predict (clones share
    the class-level log)."""

    log: list = []

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.centroids_ = np.stack([X[y == c].mean(0) for c in self.classes_])
        RecordingProbe.log.append(("fit", X.copy(), y.copy()))
        return self

    def predict(self, X):
        RecordingProbe.log.append(("predict", X.copy(), None))
        d = ((X[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        return self.classes_[d.argmin(1)]


def test_all_examples_reproduce_the_tasks_own_cross_fitting():
    x, y = _blobs()
    probe = LogisticRegression(max_iter=500)
    task = PlanktonFlowCam()
    own = task.fit_predict(probe, np.zeros((0, x.shape[1])), np.zeros(0), x, _task_data(y),
                           seed=3).y_pred
    ours = lowdata.cross_fitted_predict(probe, x, y, n_folds=task.n_folds, seed=3)
    np.testing.assert_array_equal(ours, own)


@pytest.mark.parametrize("k", [1, 2, 4, 20])
def test_each_fold_fits_k_per_class_from_outside_the_fold(k):
    x, y = _blobs(seed=1)
    x[:, 0] = np.arange(len(y))  # column 0 identifies the row
    RecordingProbe.log = []
    pred = lowdata.cross_fitted_predict(RecordingProbe(), x, y, n_folds=5, seed=0, k_per_class=k)
    assert pred.shape == y.shape
    fits = [entry for entry in RecordingProbe.log if entry[0] == "fit"]
    predicts = [entry for entry in RecordingProbe.log if entry[0] == "predict"]
    assert len(fits) == len(predicts) == 5
    predicted_rows = []
    for (_, fx, fy), (_, px, _) in zip(fits, predicts):
        fit_rows, predict_rows = set(fx[:, 0].astype(int)), set(px[:, 0].astype(int))
        assert not fit_rows & predict_rows  # never fitted on what it predicts
        np.testing.assert_array_equal(fy, y[fx[:, 0].astype(int)])
        available = np.bincount(np.delete(y, sorted(predict_rows)), minlength=4)
        np.testing.assert_array_equal(np.bincount(fy, minlength=4), np.minimum(k, available))
        predicted_rows += sorted(predict_rows)
    assert sorted(predicted_rows) == list(range(len(y)))  # every example predicted once


def test_subsamples_differ_between_folds_and_are_seeded():
    x, y = _blobs(seed=2)
    a = lowdata.cross_fitted_predict(LogisticRegression(max_iter=500), x, y, n_folds=5, seed=0,
                                     k_per_class=2)
    b = lowdata.cross_fitted_predict(LogisticRegression(max_iter=500), x, y, n_folds=5, seed=0,
                                     k_per_class=2)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    idx = lowdata.per_class_subsample(y, 3, rng)
    np.testing.assert_array_equal(np.bincount(y[idx]), [3, 3, 3, 3])
    assert np.all(np.diff(idx) > 0)
    with pytest.raises(ValueError, match="at least 1"):
        lowdata.per_class_subsample(y, 0, rng)


def test_doubling_ks():
    assert lowdata.doubling_ks(1) == []
    assert lowdata.doubling_ks(8) == [1, 2, 4]
    assert lowdata.doubling_ks(9) == [1, 2, 4, 8]


def test_curve_last_point_is_the_full_protocol_with_the_tasks_interval():
    x, y = _blobs(seed=4)
    task = PlanktonFlowCam()
    probe = LogisticRegression(max_iter=500)
    points = lowdata.low_data_curve(probe, x, y, task, ks=[1, 4], seed=0, n_bootstrap=200)
    assert [p.k_per_class for p in points] == [1, 4, None]
    full = lowdata.cross_fitted_predict(probe, x, y, n_folds=5, seed=0)
    iv = bootstrap_ci(task.score, y, full, n_bootstrap=200, seed=0,
                      strata=task.bootstrap_strata(y))
    assert (points[-1].score, points[-1].ci_low, points[-1].ci_high) == (iv.estimate, iv.low,
                                                                         iv.high)
    for p in points:
        assert p.ci_low <= p.score <= p.ci_high
    # separable blobs: one example per class is clearly worse than all of them
    assert points[0].score < points[-1].score
