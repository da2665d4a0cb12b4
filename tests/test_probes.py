"""Each probe against an independent scikit-learn reference on the same features, plus
scikit-learn's own estimator checks and the probe registry's parameter handling."""

import json
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.estimator_checks import parametrize_with_checks

import biobench.probes as probes
from biobench.metrics import macro_f1
from biobench.probes import (DEFAULT_C_GRID, MACRO_F1_SCORER, PROBES, KNNProbe, LinearSVMProbe,
                             LogisticProbe, SimpleShotProbe, majority_vote, make_probe,
                             probe_params)


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=240, n_features=20, n_informative=8, n_classes=4,
                               n_clusters_per_class=1, random_state=0)
    return X[:160], y[:160], X[160:], y[160:]


# ---- scikit-learn's estimator checks --------------------------------------------------------
# A small C grid and fewer folds keep LogisticProbe's checks fast; they still run the real
# path (stratified CV on macro-F1, then refit). No check is expected to fail.
@parametrize_with_checks([LogisticProbe(C_grid=(0.1, 1.0, 10.0), n_folds=3, max_iter=200),
                          SimpleShotProbe(), KNNProbe(), LinearSVMProbe()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---- logreg ---------------------------------------------------------------------------------
def test_logistic_probe_matches_gridsearch_reference(data):
    Xtr, ytr, Xte, _ = data
    probe = LogisticProbe(random_state=0).fit(Xtr, ytr)
    # scikit-learn's "f1_macro" equals biobench's macro-F1 here: stratified folds put every
    # class in every validation fold, so "true labels" and "true or predicted labels" agree
    ref = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=probe.max_iter, tol=probe.tol,
                                                           class_weight="balanced",
                                                           random_state=0)),
        {"logisticregression__C": list(DEFAULT_C_GRID)}, scoring="f1_macro",
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    ).fit(Xtr, ytr)
    # scaling inside vs outside the folds differs slightly; the chosen C and predictions agree
    assert probe.C_ == pytest.approx(ref.best_params_["logisticregression__C"])
    assert np.mean(probe.predict(Xte) == ref.predict(Xte)) >= 0.97


def test_c_is_chosen_on_biobench_macro_f1_of_each_fold_by_hand():
    X, y = make_classification(n_samples=90, n_features=8, n_informative=4, n_classes=3,
                               n_clusters_per_class=1, flip_y=0.1, random_state=0)
    grid = (0.003, 0.03, 0.3, 3.0)
    probe = LogisticProbe(C_grid=grid, n_folds=3, random_state=0).fit(X, y)
    # by hand: standardise on all training data, the same shuffled stratified folds, class
    # weights balanced over the whole training set (as the probe's search does), a fresh fit
    # per (fold, C), scored with the reported metric
    Xs = StandardScaler().fit_transform(X)
    classes = np.unique(y)
    weights = dict(zip(classes, compute_class_weight("balanced", classes=classes, y=y)))
    by_hand = np.array([
        [macro_f1(y[val], LogisticRegression(C=C, class_weight=weights, max_iter=probe.max_iter,
                                             tol=probe.tol)
                  .fit(Xs[fit], y[fit]).predict(Xs[val])) for C in grid]
        for fit, val in StratifiedKFold(3, shuffle=True, random_state=0).split(Xs, y)])
    np.testing.assert_allclose(probe.cv_fold_scores_, by_hand, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probe.cv_scores_, by_hand.mean(axis=0), rtol=0, atol=1e-12)
    assert probe.C_ == grid[int(np.argmax(by_hand.mean(axis=0)))]
    # the final model is a plain refit on everything with that C
    refit = LogisticRegression(C=probe.C_, class_weight="balanced", max_iter=probe.max_iter,
                               tol=probe.tol, random_state=0).fit(Xs, y)
    np.testing.assert_allclose(probe.model_.coef_, refit.coef_)


def test_selection_scorer_is_the_reported_metric_not_sklearns():
    # 1-NN on one-hot vectors returns exactly the predictions we ask for
    knn = KNNProbe(k=1).fit(np.eye(3), [0, 1, 2])
    X = np.eye(3)[[0, 0, 2, 1, 1, 1]]
    y_true = np.array([0, 0, 0, 1, 1, 1])  # class 2 is predicted once but never true
    y_pred = knn.predict(X)
    np.testing.assert_array_equal(y_pred, [0, 0, 2, 1, 1, 1])
    # by hand: F1(0) = 2*2/(2+3) = 0.8, F1(1) = 2*3/(3+3) = 1; sklearn also averages F1(2) = 0
    assert MACRO_F1_SCORER(knn, X, y_true) == pytest.approx(0.9)
    assert macro_f1(y_true, y_pred) == pytest.approx(0.9)
    assert f1_score(y_true, y_pred, average="macro") == pytest.approx(0.6)


def test_logistic_probe_takes_the_smallest_c_among_ties():
    # two far-apart blobs: each of these C separates them perfectly, so every C scores macro-F1 = 1
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-5, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))])
    y = np.repeat(["a", "b"], 10)
    probe = LogisticProbe(C_grid=(100.0, 1.0, 10.0), n_folds=3).fit(X, y)
    np.testing.assert_array_equal(probe.C_grid_, [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(probe.cv_scores_, [1.0, 1.0, 1.0])
    assert probe.C_ == 1.0
    assert probe.get_params()["C_grid"] == (100.0, 1.0, 10.0)  # the parameter is not touched


def test_logistic_probe_is_deterministic_and_probabilistic(data):
    Xtr, ytr, Xte, _ = data
    a = LogisticProbe(random_state=1).fit(Xtr, ytr)
    b = LogisticProbe(random_state=1).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.predict(Xte), b.predict(Xte))
    proba = a.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(a.classes_[proba.argmax(1)], a.predict(Xte))


def test_logistic_probe_with_single_example_classes():
    X = np.eye(3)
    probe = LogisticProbe().fit(X, np.array([0, 1, 2]))
    assert probe.cv_scores_ is None and probe.n_folds_ == 1
    assert probe.C_ == sorted(DEFAULT_C_GRID)[len(DEFAULT_C_GRID) // 2]
    np.testing.assert_array_equal(probe.predict(X), [0, 1, 2])


def test_logistic_probe_on_a_binary_problem_raises_no_deprecation():
    X, y = make_classification(n_samples=80, n_features=6, random_state=1)
    with warnings.catch_warnings():
        # a scikit-learn deprecation in our calls should fail here, not surprise a run later
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        probe = LogisticProbe(random_state=0).fit(X, y)
    assert probe.cv_scores_.shape == (len(DEFAULT_C_GRID),)
    assert np.mean(probe.predict(X) == y) > 0.8


@pytest.mark.parametrize("params, message", [
    ({"C_grid": ()}, "C_grid"), ({"C_grid": (1.0, -1.0)}, "C_grid"), ({"n_folds": 1}, "n_folds"),
    ({"max_iter": 0}, "max_iter"),
])
def test_logistic_probe_rejects_bad_hyper_parameters_at_fit(params, message):
    probe = LogisticProbe(**params)  # scikit-learn convention: the constructor never checks
    with pytest.raises(ValueError, match=f"LogisticProbe: {message}"):
        probe.fit(np.eye(4), [0, 0, 1, 1])


@pytest.mark.parametrize("cls", [LogisticProbe, LinearSVMProbe])
def test_discriminative_probes_refuse_one_class_by_name(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__} needs at least 2 classes.*'only'"):
        cls().fit(np.eye(3), ["only"] * 3)


# ---- simpleshot -----------------------------------------------------------------------------
def test_simpleshot_matches_nearest_centroid_on_centred_normalised_features(data):
    Xtr, ytr, Xte, _ = data
    probe = SimpleShotProbe().fit(Xtr, ytr)
    mean = Xtr.mean(0)
    ref = make_pipeline(Normalizer(), NearestCentroid()).fit(Xtr - mean, ytr)
    np.testing.assert_array_equal(probe.predict(Xte), ref.predict(Xte - mean))


def test_simpleshot_decision_function_is_negative_squared_distance(data):
    Xtr, ytr, Xte, _ = data
    probe = SimpleShotProbe().fit(Xtr, ytr)
    # brute force: normalise by hand, centroids by hand, the full difference tensor
    z_tr = Xtr - Xtr.mean(0)
    z_tr /= np.linalg.norm(z_tr, axis=1, keepdims=True)
    z_te = Xte - Xtr.mean(0)
    z_te /= np.linalg.norm(z_te, axis=1, keepdims=True)
    centroids = np.stack([z_tr[ytr == c].mean(0) for c in np.unique(ytr)])
    sq = ((z_te[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(probe.squared_distances(Xte), sq, atol=1e-12)
    np.testing.assert_allclose(probe.decision_function(Xte), -sq, atol=1e-12)
    # binary: scikit-learn's one-score convention, d(classes_[0]) - d(classes_[1])
    two = np.isin(ytr, [1, 3])
    binary = SimpleShotProbe().fit(Xtr[two], ytr[two])
    d = binary.squared_distances(Xte)
    np.testing.assert_allclose(binary.decision_function(Xte), d[:, 0] - d[:, 1])
    np.testing.assert_array_equal(binary.predict(Xte),
                                  np.where(binary.decision_function(Xte) > 0, 3, 1))


def test_simpleshot_with_label_gaps_and_strings():
    # labels need not be 0..C-1 (the reference assumed they were), nor numbers
    X = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    for y in (np.array([3, 3, 7, 7]), np.array(["owl", "owl", "wren", "wren"])):
        probe = SimpleShotProbe().fit(X, y)
        np.testing.assert_array_equal(probe.predict(X), y)


# ---- knn ------------------------------------------------------------------------------------
def test_knn_matches_sklearn_cosine(data):
    Xtr, ytr, Xte, _ = data
    ours = KNNProbe(k=5).fit(Xtr, ytr).predict(Xte)
    ref = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(Xtr, ytr)
    neighbours = ref.kneighbors(Xte, return_distance=False)  # nearest first
    for pred, ref_pred, nb in zip(ours, ref.predict(Xte), neighbours):
        labels, counts = np.unique(ytr[nb], return_counts=True)
        tied = labels[counts == counts.max()]
        if len(tied) == 1:
            assert pred == ref_pred  # a clear majority: identical to scikit-learn
        else:
            # a tied vote: we take the tied class of the nearest neighbour (sklearn: smallest label)
            assert pred == next(lab for lab in ytr[nb] if lab in tied)


def test_knn_tie_break_prefers_nearest():
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 1])
    probe = KNNProbe(k=2).fit(X, y)
    assert probe.predict(np.array([[0.2, 1.0]]))[0] == 1


def test_knn_blocks_and_vote_match_brute_force(monkeypatch):
    # coarse integer features make many equal similarities and an even k many tied votes
    rng = np.random.default_rng(3)
    Xtr = rng.integers(0, 3, (40, 3)).astype(float) + 0.5
    ytr = rng.choice(np.array(["a", "b", "c"]), 40)
    Xte = rng.integers(0, 3, (25, 3)).astype(float) + 0.5
    monkeypatch.setattr(probes, "DISTANCE_BLOCK_ELEMENTS", 7 * 40)  # four blocks of test rows
    ours = KNNProbe(k=4).fit(Xtr, ytr).predict(Xte)
    # brute force, one row at a time: cosine, ties in similarity by training index, then the
    # documented vote
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    for pred, q in zip(ours, Xte):
        sims = np.array([unit(q) @ unit(x) for x in Xtr])
        order = sorted(range(len(Xtr)), key=lambda i: (-sims[i], i))[:4]
        assert pred == majority_vote(ytr[order])


def test_knn_uses_every_example_when_k_exceeds_the_training_set():
    probe = KNNProbe(k=10).fit(np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]]), ["x", "x", "y"])
    assert probe.predict([[0.0, 1.0]])[0] == "x"  # 2 votes to 1, however near the "y"


# ---- registry and run identity --------------------------------------------------------------
def test_make_probe_unknown_lists_valid():
    with pytest.raises(KeyError, match="knn, linear_head, linear_svm, logreg, simpleshot, "
                                       "torch_logreg"):
        make_probe("svm")


def test_make_probe_unknown_parameter_names_probe_and_valid_parameters():
    with pytest.raises(ValueError, match=r"'knn' \(KNNProbe\) has no parameter.*'n_neighbors'.*"
                                         r"Valid parameters: device, k, random_state"):
        make_probe("knn", n_neighbors=3)
    with pytest.raises(ValueError, match="'seed' is now 'random_state'"):
        make_probe("logreg", seed=1)


def test_make_probe_passes_random_state_and_params():
    probe = make_probe("linear_svm", random_state=7, C=0.5)
    assert isinstance(probe, LinearSVMProbe)
    assert probe.get_params() == {"C": 0.5, "max_iter": 10000, "random_state": 7}


@pytest.mark.parametrize("name, params", [
    ("logreg", {"C_grid": np.array([0.1, 1.0]), "n_folds": np.int64(3), "class_weight": None}),
    ("logreg", {"class_weight": {0: 1.0, 1: np.float64(2.0)}}),
    ("simpleshot", {}),
    ("knn", {"k": np.int32(7)}),
    ("linear_svm", {"C": np.float32(0.25), "max_iter": 50}),
])
def test_probe_params_are_canonical_and_round_trip(name, params):
    probe = make_probe(name, random_state=np.int64(3), **params)
    recorded = probe_params(probe)
    assert json.loads(json.dumps(recorded)) is not None  # serialisable
    assert set(recorded) == set(PROBES[name]._get_param_names())
    assert recorded["random_state"] == 3 and type(recorded["random_state"]) is int
    for value in recorded.values():
        assert not isinstance(value, (tuple, np.generic, np.ndarray))
    rebuilt = make_probe(name, **recorded)
    assert probe_params(rebuilt) == recorded
    assert clone(rebuilt).get_params() == rebuilt.get_params()


def test_probe_params_of_defaults_and_unrecordable_values():
    assert probe_params(LogisticProbe())["C_grid"] == list(DEFAULT_C_GRID)
    with pytest.raises(TypeError, match="KNNProbe's parameter 'random_state' is a RandomState"):
        probe_params(KNNProbe(random_state=np.random.RandomState(0)))
