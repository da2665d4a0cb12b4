"""The torch probes (``linear_head``, ``torch_logreg``) and the torch distance code of
SimpleShot and kNN, against scikit-learn and brute-force references on small data, on CPU."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.estimator_checks import parametrize_with_checks

import biobench.probes as probes
from biobench.probes import (PROBES, KNNProbe, LogisticProbe, SimpleShotProbe, make_probe,
                             probe_params, register_probe)
from biobench.torch_probes import (LinearHeadProbe, TorchLogisticProbe, logistic_objective,
                                   logistic_path)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny problems: a second thread only adds synchronisation, which on a shared 2-core
    # machine costs more than the work
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=240, n_features=12, n_informative=6, n_classes=3,
                               n_clusters_per_class=1, random_state=0)
    return X[:160], y[:160], X[160:], y[160:]


# ---- scikit-learn's estimator checks --------------------------------------------------------
# A fast learning rate lets the linear head fit the checks' small problems in few steps; the
# checks test the estimator API, not the reference protocol's defaults.
@parametrize_with_checks([
    TorchLogisticProbe(C_grid=(0.1, 1.0, 10.0), n_folds=3, device="cpu"),
    LinearHeadProbe(max_steps=150, learning_rate=0.05, final_learning_rate=0.0, device="cpu"),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---- torch_logreg: the solver against scikit-learn at a fixed C --------------------------------
def sklearn_tight(Xs, y, C, class_weight="balanced"):
    return LogisticRegression(C=C, tol=1e-12, max_iter=100_000,
                              class_weight=class_weight).fit(Xs, y)


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_torch_logreg_fit_matches_sklearn_at_fixed_c(data, C, n_classes):
    Xtr, ytr, Xte, _ = data
    if n_classes == 2:
        ytr = (ytr > 0).astype(int)
    tol = 1e-3
    ours = TorchLogisticProbe(C_grid=(C,), n_folds=2, tol=tol, device="cpu").fit(Xtr, ytr)
    scaler = StandardScaler().fit(Xtr)
    ref = sklearn_tight(scaler.transform(Xtr), ytr, C)
    assert ours.C_ == C and ours.converged_ and ours.grad_norm_ <= tol
    # Strong convexity (modulus 1/C) turns the convergence test into a bound on the distance
    # to the optimum: ||W - W*|| <= C ||grad|| <= tol ||W||. float32 adds ~1e-6 relative.
    distance = np.linalg.norm(ours.coef_ - ref.coef_)
    assert distance <= tol * np.linalg.norm(ours.coef_) * 1.01 + 1e-5
    # the same model: scores, probabilities and predictions
    np.testing.assert_allclose(ours.predict_proba(Xte), ref.predict_proba(scaler.transform(Xte)),
                               atol=5 * tol)
    agree = np.mean(ours.predict(Xte) == ref.predict(scaler.transform(Xte)))
    assert agree >= 0.98
    # The excess objective: at most tol^2 of it from the coefficients' gradient (strong
    # convexity); the unpenalised intercept is outside that bound (seen up to 1.6x here)
    weights = compute_class_weight("balanced", classes=np.unique(ytr), y=ytr)[ytr]
    Xs = scaler.transform(Xtr)
    f = logistic_objective(Xs, ytr, weights, ours.coef_, ours.intercept_, C)
    f_star = logistic_objective(Xs, ytr, weights, ref.coef_, ref.intercept_, C)
    assert 0 <= f - f_star <= 2 * tol ** 2 * f_star


def test_logistic_objective_is_sklearns_weighted_log_loss_plus_penalty(data):
    Xtr, ytr, _, _ = data
    Xs = StandardScaler().fit_transform(Xtr)
    model = LogisticRegression(C=0.5, max_iter=1000).fit(Xs, ytr)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(ytr))
    expected = (log_loss(ytr, model.predict_proba(Xs), sample_weight=weights, normalize=False)
                + np.sum(model.coef_ ** 2) / (2 * 0.5))
    got = logistic_objective(Xs, ytr, weights, model.coef_, model.intercept_, 0.5)
    assert got == pytest.approx(expected, rel=1e-12)


def test_logistic_path_in_float64_reaches_the_sklearn_optimum_at_each_c(data):
    Xtr, ytr, _, _ = data
    Xs = StandardScaler().fit_transform(Xtr)
    weights = np.ones(len(ytr))
    fits = logistic_path(Xs, ytr, weights, [0.1, 3.0], tol=1e-6, dtype="float64")
    for C, (coef, intercept, n_iter, ratio) in zip([0.1, 3.0], fits):
        ref = sklearn_tight(Xs, ytr, C, class_weight=None)
        assert ratio <= 1e-6 and n_iter > 0
        # the convergence test bounds ||coef - coef*|| by 1e-6 ||coef||
        np.testing.assert_allclose(coef, ref.coef_, rtol=0, atol=2e-6 * np.linalg.norm(coef))
        np.testing.assert_allclose(intercept, ref.intercept_, atol=1e-5)


@pytest.mark.parametrize("matmul", ["bfloat16", "float32"])
def test_torch_logreg_matches_sklearn_whichever_matmul_precision(data, matmul):
    # bfloat16 products only speed up the first stage of each fit; the convergence test is
    # checked on the exact float32 gradient, so both reach the optimum within tol
    Xtr, ytr, _, _ = data
    tol, C = 1e-3, 3.0
    ours = TorchLogisticProbe(C_grid=(C,), n_folds=2, tol=tol, matmul=matmul,
                              device="cpu").fit(Xtr, ytr)
    ref = sklearn_tight(StandardScaler().fit_transform(Xtr), ytr, C)
    assert ours.matmul_ == matmul and ours.converged_ and ours.grad_norm_ <= tol
    assert np.linalg.norm(ours.coef_ - ref.coef_) <= tol * np.linalg.norm(ours.coef_) * 1.01 + 1e-5


def test_fast_objective_is_the_exact_one_up_to_bfloat16_rounding():
    from biobench.torch_probes import _Problem

    rng = np.random.default_rng(0)
    n, dim, k = 3000, 64, 7
    X = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, k, n)
    weights = rng.uniform(0.5, 2.0, n)
    problem = _Problem(X, np.arange(n), np.zeros(dim), np.ones(dim), y, weights, k,
                       torch.device("cpu"), matmul="bfloat16")
    theta = torch.as_tensor(rng.normal(0, 0.1, (dim + 1, k)), dtype=torch.float32)
    total = problem.total_weight([(0, n)])
    exact_f, exact_g = problem.loss_and_grad(theta, [(0, n)], 2.0, total)
    fast_f, fast_g = problem.loss_and_grad(theta, [(0, n)], 2.0, total, fast=True)
    # the exact evaluation is the independent numpy objective
    expected = logistic_objective(X, y, weights, theta[:-1].T.numpy(), theta[-1].numpy(), 2.0)
    assert exact_f == pytest.approx(expected / total, rel=1e-5)
    # bfloat16 keeps 8 bits of mantissa: the objective within 1e-3, the gradient within 1%
    assert fast_f == pytest.approx(exact_f, rel=1e-3)
    assert float((fast_g - exact_g).norm() / exact_g.norm()) < 0.01
    assert not torch.equal(fast_g, exact_g)  # it did use bfloat16


def test_torch_logreg_matmul_auto_follows_the_hardware_and_bad_values_are_named(data):
    from biobench.torch_probes import native_bfloat16

    Xtr, ytr, _, _ = data
    probe = TorchLogisticProbe(C_grid=(1.0,), n_folds=2, device="cpu").fit(Xtr, ytr)
    expected = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"
    assert probe.matmul_ == expected
    with pytest.raises(ValueError, match="matmul must be"):
        TorchLogisticProbe(matmul="float16", device="cpu").fit(Xtr, ytr)


# ---- torch_logreg: the search ---------------------------------------------------------------
@pytest.fixture(scope="module")
def clear_optimum():
    # label noise and few informative features: too little C underfits, too much overfits
    X, y = make_classification(n_samples=150, n_features=60, n_informative=4, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, flip_y=0.1, class_sep=1.5,
                               random_state=7)
    grid = (0.001, 0.03, 1.0, 30.0)
    return X, y, grid


def test_torch_logreg_selects_the_same_c_as_logreg(clear_optimum):
    X, y, grid = clear_optimum
    ref = LogisticProbe(C_grid=grid, n_folds=3, random_state=0).fit(X, y)
    ours = TorchLogisticProbe(C_grid=grid, n_folds=3, random_state=0, device="cpu").fit(X, y)
    # the optimum is clear: the winner beats the runner-up by more than a few examples' worth
    best, runner_up = np.sort(ref.cv_scores_)[::-1][:2]
    assert best - runner_up > 0.03
    assert ours.C_ == ref.C_
    np.testing.assert_array_equal(ours.C_grid_, ref.C_grid_)
    # same folds, same metric, models within the tolerance: the same validation scores up to
    # an example or two changing side
    np.testing.assert_allclose(ours.cv_scores_, ref.cv_scores_, atol=0.02)
    assert np.mean(ours.predict(X) == ref.predict(X)) >= 0.98


def test_torch_logreg_records_converged_fits(clear_optimum):
    X, y, grid = clear_optimum
    probe = TorchLogisticProbe(C_grid=grid, n_folds=3, device="cpu").fit(X, y)
    assert probe.path_n_iter_.shape == probe.path_grad_norm_.shape == (3, len(grid))
    assert np.all(probe.path_n_iter_ > 0)
    assert np.all(probe.path_grad_norm_ <= probe.tol) and probe.grad_norm_ <= probe.tol
    assert probe.converged_ and probe.device_ == "cpu"
    assert probe.n_iter_ >= 0 and isinstance(probe.n_iter_, int)


def test_torch_logreg_warns_when_max_iter_stops_a_fit(clear_optimum):
    X, y, grid = clear_optimum
    with pytest.warns(Warning, match="raise max_iter"):
        probe = TorchLogisticProbe(C_grid=(30.0,), n_folds=2, max_iter=2, device="cpu").fit(X, y)
    assert not probe.converged_ and probe.grad_norm_ > probe.tol


def test_torch_logreg_patience_stops_the_path_after_the_best_c(clear_optimum):
    X, y, grid = clear_optimum
    full = TorchLogisticProbe(C_grid=grid, n_folds=3, device="cpu").fit(X, y)
    early = TorchLogisticProbe(C_grid=grid, n_folds=3, patience=1, device="cpu").fit(X, y)
    best = int(np.argmax(full.cv_scores_))
    assert early.C_ == full.C_
    # scored up to one C past the best, NaN (and no iterations) beyond
    np.testing.assert_allclose(early.cv_scores_[:best + 2], full.cv_scores_[:best + 2], atol=1e-12)
    assert np.all(np.isnan(early.cv_scores_[best + 2:]))
    assert np.all(early.path_n_iter_[:, best + 2:] == -1)


def test_torch_logreg_is_deterministic_given_the_seed(clear_optimum):
    X, y, grid = clear_optimum
    a = TorchLogisticProbe(C_grid=grid, n_folds=3, random_state=4, device="cpu").fit(X, y)
    b = TorchLogisticProbe(C_grid=grid, n_folds=3, random_state=4, device="cpu").fit(X, y)
    c = TorchLogisticProbe(C_grid=grid, n_folds=3, random_state=5, device="cpu").fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.cv_fold_scores_, b.cv_fold_scores_)
    assert not np.array_equal(a.cv_fold_scores_, c.cv_fold_scores_)  # other folds


def test_torch_logreg_keeps_labels_and_float32_input():
    X, y = make_classification(n_samples=90, n_features=5, n_informative=3, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, class_sep=3, random_state=1)
    labels = np.array(["owl", "wren", "kite"])[y]
    probe = TorchLogisticProbe(C_grid=(1.0,), n_folds=3, device="cpu").fit(X.astype(np.float32),
                                                                           labels)
    np.testing.assert_array_equal(probe.classes_, ["kite", "owl", "wren"])
    assert np.mean(probe.predict(X) == labels) > 0.9
    np.testing.assert_allclose(probe.predict_proba(X).sum(axis=1), 1.0)


# ---- linear_head ------------------------------------------------------------------------------
def reference_linear_head(X, y_index, n_classes, steps, seed, batch_size=2048):
    """The reference protocol written out step by step (spec §3): LayerNorm -> Linear,
    AdamW(lr 3e-4, weight decay 0.01 on the weight matrix only), lr_t = 3e-6 + (3e-4 - 3e-6)
    (1 + cos(pi t / steps)) / 2, shuffled batches, unweighted cross-entropy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        norm, linear = torch.nn.LayerNorm(X.shape[1]), torch.nn.Linear(X.shape[1], n_classes)
    params = [linear.weight, norm.weight, norm.bias, linear.bias]
    adam = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.01},
                              {"params": params[1:], "weight_decay": 0.0}], lr=3e-4)
    x, t = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y_index)
    shuffle = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(x))
    order, position = torch.randperm(len(x), generator=shuffle), 0
    for step in range(steps):
        for group in adam.param_groups:
            group["lr"] = 3e-6 + (3e-4 - 3e-6) * (1 + np.cos(np.pi * step / steps)) / 2
        if position + batch_size > len(x):
            order, position = torch.randperm(len(x), generator=shuffle), 0
        rows = order[position:position + batch_size]
        position += batch_size
        loss = torch.nn.functional.cross_entropy(linear(norm(x[rows])), t[rows])
        adam.zero_grad()
        loss.backward()
        adam.step()
    return linear.weight.detach().numpy(), norm.weight.detach().numpy()


def test_linear_head_follows_the_reference_protocol(data):
    Xtr, ytr, _, _ = data
    probe = LinearHeadProbe(max_steps=60, batch_size=64, device="cpu", random_state=2)
    probe.fit(Xtr, ytr)
    # the same protocol with batches of 64 (the default 2,048 exceeds these 160 rows)
    weight, ln_weight = reference_linear_head(Xtr, ytr, 3, 60, seed=2, batch_size=64)
    # the closed-form schedule vs torch's recursive CosineAnnealingLR: equal to rounding
    np.testing.assert_allclose(probe.coef_, weight, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probe.ln_weight_, ln_weight, rtol=0, atol=1e-6)
    assert probe.n_steps_ == 60 and probe.n_epochs_ == pytest.approx(60 * 64 / 160)


def test_linear_head_agrees_with_sklearn_on_separable_classes():
    X, y = make_classification(n_samples=300, n_features=16, n_informative=6, n_classes=4,
                               n_clusters_per_class=1, class_sep=3.0, random_state=0)
    head = LinearHeadProbe(max_steps=2000, device="cpu").fit(X[:200], y[:200])
    ref = LogisticRegression(max_iter=1000).fit(StandardScaler().fit_transform(X[:200]), y[:200])
    ref_pred = ref.predict(StandardScaler().fit(X[:200]).transform(X[200:]))
    # different models (no penalty search, a fixed step budget) with the same decisions where
    # the classes are far apart
    assert np.mean(head.predict(X[200:]) == ref_pred) >= 0.95
    proba = head.predict_proba(X[200:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(head.classes_[proba.argmax(axis=1)], head.predict(X[200:]))


def test_linear_head_is_deterministic_given_the_seed(data):
    Xtr, ytr, _, _ = data
    a = LinearHeadProbe(max_steps=20, device="cpu", random_state=1).fit(Xtr, ytr)
    b = LinearHeadProbe(max_steps=20, device="cpu", random_state=1).fit(Xtr, ytr)
    c = LinearHeadProbe(max_steps=20, device="cpu", random_state=2).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.array_equal(a.coef_, c.coef_)


def test_linear_head_outputs_only_the_classes_seen():
    X = np.eye(4)
    probe = LinearHeadProbe(max_steps=5, device="cpu").fit(X, [3, 3, 70, 70])
    assert probe.coef_.shape == (2, 4)  # not 71 outputs, as "largest label + 1" would give
    assert set(probe.predict(X)) <= {3, 70}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_linear_head_on_cuda_uses_mixed_precision_and_agrees_with_cpu(data):
    Xtr, ytr, Xte, _ = data
    gpu = LinearHeadProbe(max_steps=200, batch_size=64, device="cuda").fit(Xtr, ytr)
    cpu = LinearHeadProbe(max_steps=200, batch_size=64, device="cpu").fit(Xtr, ytr)
    assert gpu.device_.startswith("cuda")
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, atol=0.02)  # bfloat16 matmuls
    assert np.mean(gpu.predict(Xte) == cpu.predict(Xte)) >= 0.95


# ---- devices and registry ---------------------------------------------------------------------
@pytest.mark.parametrize("cls, params", [
    (TorchLogisticProbe, {"C_grid": (1.0,)}), (LinearHeadProbe, {"max_steps": 3}),
    (SimpleShotProbe, {}), (KNNProbe, {})])
def test_device_auto_is_cpu_here_and_bad_devices_are_named(cls, params, data):
    Xtr, ytr, _, _ = data
    if not torch.cuda.is_available():
        assert cls(device="auto", **params).fit(Xtr[:30], ytr[:30]).device_ == "cpu"
        with pytest.raises(ValueError, match=f"{cls.__name__}: device 'cuda'.*no CUDA.*'cpu'"):
            cls(device="cuda", **params).fit(Xtr, ytr)
    with pytest.raises(ValueError, match=f"{cls.__name__}: device must be"):
        cls(device="tpu", **params).fit(Xtr, ytr)


def test_torch_probes_are_registered_and_round_trip():
    for name, cls in (("linear_head", LinearHeadProbe), ("torch_logreg", TorchLogisticProbe)):
        assert PROBES[name] is cls
        probe = make_probe(name, random_state=3)
        assert probe_params(make_probe(name, **probe_params(probe))) == probe_params(probe)
    with pytest.raises(ValueError, match="'knn' registered twice"):
        register_probe("knn")(type("Other", (), {}))


# ---- SimpleShot and kNN: blocked distances on the device --------------------------------------
def test_simpleshot_blocks_are_bounded_and_agree_with_one_block(monkeypatch, data):
    Xtr, ytr, Xte, _ = data
    whole = SimpleShotProbe().fit(Xtr, ytr)
    expected = whole.squared_distances(Xte)
    budget = 5 * Xtr.shape[1]  # five rows per block
    monkeypatch.setattr(probes, "DISTANCE_BLOCK_ELEMENTS", budget)
    blocked = SimpleShotProbe().fit(Xtr, ytr)
    np.testing.assert_allclose(blocked.centroids_, whole.centroids_, rtol=0, atol=1e-14)
    sizes = [sq.numel() for _, sq in blocked._distance_blocks(Xte)]
    assert len(sizes) == int(np.ceil(len(Xte) / 5)) and max(sizes) <= budget
    np.testing.assert_allclose(blocked.squared_distances(Xte), expected, rtol=0, atol=1e-12)
    index, distance = blocked.nearest_centroid(Xte)
    np.testing.assert_array_equal(index, expected.argmin(axis=1))
    np.testing.assert_allclose(distance, expected.min(axis=1), rtol=0, atol=1e-12)


def test_knn_similarity_blocks_are_bounded_and_use_topk(monkeypatch, data):
    Xtr, ytr, Xte, _ = data
    expected = KNNProbe(k=3).fit(Xtr, ytr).predict(Xte)
    seen = []
    real_topk = torch.topk

    def recording_topk(values, k, *args, **kwargs):
        seen.append(values.numel())
        return real_topk(values, k, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    monkeypatch.setattr(probes, "DISTANCE_BLOCK_ELEMENTS", 10 * len(Xtr))
    np.testing.assert_array_equal(KNNProbe(k=3).fit(Xtr, ytr).predict(Xte), expected)
    assert len(seen) == int(np.ceil(len(Xte) / 10)) and max(seen) <= 10 * len(Xtr)


def test_knn_orders_equal_similarities_by_training_index():
    # six identical training rows: every one ties with every other; stable order = 0, 1, 2
    X = np.ones((6, 2))
    probe = KNNProbe(k=3).fit(X, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(probe.kneighbors([[1.0, 1.0]]), [[0, 1, 2]])
    # a tie inside the k but not at the cut: the nearer first, then the tied by index
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.1]])
    np.testing.assert_array_equal(KNNProbe(k=3).fit(X, [0, 1, 2, 3]).kneighbors([[1.0, 0.0]]),
                                  [[0, 2, 3]])


@pytest.mark.parametrize("n_rows", [20, 80])  # fewer rows than features (Gram route), more
def test_preconditioner_basis_is_the_weighted_second_moment(n_rows):
    from biobench.torch_probes import _second_moment_eigen

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 50))
    w = rng.uniform(0.5, 2.0, n_rows)
    values, vectors = _second_moment_eigen(torch.as_tensor(X), torch.as_tensor(w))
    moment = X.T @ (X * w[:, None]) / w.sum()
    assert vectors.shape == (50, min(n_rows, 50))
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(vectors.shape[1]), atol=1e-8)
    np.testing.assert_allclose((vectors * values) @ vectors.T, moment, atol=1e-10)
