"""Probes in torch for the benchmark's large tasks (10^5-10^6 examples, 10^3-10^4 classes).

- ``linear_head``: the BioBench reference's linear head, exactly: LayerNorm(D) -> Linear(D, C)
  (C = the classes seen in training), AdamW (lr 3e-4, weight decay 0.01 on the matrix only),
  cosine decay to 3e-6 over ``max_steps`` (10,000), batches of 2,048 shuffled with
  ``random_state``, unweighted cross-entropy, no search. Mixed precision (bfloat16 autocast)
  on CUDA only, so CPU runs are exact float32 and deterministic.
- ``torch_logreg``: the ``logreg`` probe's model (standardise; multinomial logistic
  regression with the penalty ||W||^2 / (2C) on the sum of the weighted losses, as
  scikit-learn's, so a C means the same model in both; balanced class weights; C chosen on
  stratified folds by ``biobench.metrics.macro_f1``, then a refit), solved by full-batch
  L-BFGS on ``device``, walking the C grid with warm starts: bfloat16 matrix products first
  where the hardware has them, then exact float32 (``_solve``). Every fit is run to a stated
  convergence test (below), checked on the exact gradient, and records its iterations and
  final gradient norm.

Both run on ``device`` ("auto": CUDA when present, else CPU) and touch the data in blocks of
rows, so their memory is the features plus a few blocks of ``LOGREG_BLOCK_ELEMENTS`` floats
(never n x classes for the whole training set).

Convergence test of ``torch_logreg``: a fit at C stops when ||grad F||_2 <= tol * ||W||_2 / C,
F the objective on the sum scale (the intercept's gradient included on the left). F is
(1/C)-strongly convex in W, so ||W - W*|| <= C ||grad F|| <= tol ||W||: the coefficients are
within ``tol`` (relative) of the optimum's, and F - min F <= C/2 ||grad F||^2 <= tol^2 ||W||^2
/ (2C) <= tol^2 F: the excess objective is at most tol^2 of the objective (with the default
tol = 0.01: coefficients within 1%, objective within 0.01%; the unpenalised intercept is held
to the same gradient test but is outside these bounds). The test is relative, so it is as
strict at C = 100 as at C = 0.001, unlike a fixed gradient tolerance, which a warm start at
large C meets without moving (scikit-learn's path, at tol 1e-4). A test on the objective alone
would not do at small C, where the loss dominates F and W may still be far from W* in relative
terms, which is what predictions depend on.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from biobench.metrics import macro_f1
from biobench.probes import (DEFAULT_C_GRID, _check_int, _check_positive, _require_two_classes,
                             register_probe, resolve_device)

log = logging.getLogger(__name__)  # one line per C of the search, at INFO

# rows of a block times the width of its logits: the logistic objective and the predictions
# work on blocks of at most this many float32 values (8 MiB). Small enough that a block's
# buffers are reused from the allocator's free lists instead of fresh pages each time (twice
# as fast on the CPU as 32 MiB blocks), large enough that the matrix products stay efficient.
LOGREG_BLOCK_ELEMENTS = 1 << 21
# L-BFGS keeps this many (step, gradient change) pairs
LBFGS_HISTORY = 10
# relative rounding noise allowed in a float32 objective by the line search's approximate test
F32_NOISE = 1e-5
# a fit whose convergence ratio has not improved by 10% in this many iterations has stalled
STALL_ITERATIONS = 50
# The bfloat16 stage of a fit (``_solve``) hands over to the exact stage at this ratio at the
# lowest. Its gradient is about 0.3% off the exact one, and closer to the optimum its L-BFGS
# pairs grow too noisy to help: on 25,600 x 1,000 synthetic features at tol 0.01, one fold's
# whole C path took 49 s with this floor, 51-53 s with 0.08 or 0.3, 64 s with 0.05, and 69 s
# in float32 alone; at 0.005 the stage crawled, with 1.5x float32's iterations.
FAST_TARGET_FLOOR = 0.15
# ... and otherwise at this fraction of tol, so that the exact check after it passes at once
# unless the bfloat16 error happened to point the wrong way; when stalled, it gives up soon
FAST_TARGET_FRACTION = 0.8
FAST_STALL_ITERATIONS = 5
# multiply-adds of one pass (a batch step, an objective evaluation) below which a CPU fit runs
# on one thread
SMALL_PASS = 1 << 26
# ``TorchLogisticProbe(matmul=...)``: "auto" is "bfloat16" where ``native_bfloat16``
MATMUL_CHOICES = ("auto", "bfloat16", "float32")


def _check_nonnegative(estimator, name: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value)
            or value < 0):
        raise ValueError(f"{type(estimator).__name__}: {name} must be a finite number >= 0, "
                         f"got {value!r}")
    return float(value)


def _validate_float_features(estimator, X):
    """Prediction input, validated like the other probes', except that float32 stays float32
    (no float64 copy of a 10^6 x 768 matrix)."""
    check_is_fitted(estimator)
    return validate_data(estimator, X, dtype=[np.float32, np.float64], reset=False)


def _validate_float_fit_input(estimator, X, y):
    X, y = validate_data(estimator, X, y, dtype=[np.float32, np.float64])
    check_classification_targets(y)
    return X, y


class _FewThreadsWhenSmall:
    """Context for a fit: ``limit(device, multiply_adds)`` drops torch to one CPU thread while
    each pass over the data is smaller than ``SMALL_PASS``, restored on exit. Below that, the
    threads' synchronisation costs more than the work (10x slower on a busy 2-core machine)."""

    def __enter__(self):
        self.before = None
        return self

    def limit(self, device, multiply_adds: int) -> None:
        import torch

        if device.type == "cpu" and multiply_adds < SMALL_PASS and torch.get_num_threads() > 1:
            self.before = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        if self.before is not None:
            torch.set_num_threads(self.before)
        return False


def _blocks(ranges, rows_per_block: int):
    """Consecutive (start, stop) blocks covering each (start, stop) range."""
    for start, stop in ranges:
        for s in range(start, stop, rows_per_block):
            yield s, min(s + rows_per_block, stop)


# ---- linear head -------------------------------------------------------------------------------
@register_probe("linear_head")
class LinearHeadProbe(ClassifierMixin, BaseEstimator):
    """The reference's linear head: LayerNorm then a linear layer, AdamW, cosine decay.

    Fitted attributes: ``ln_weight_``, ``ln_bias_`` (the LayerNorm's affine parameters),
    ``coef_`` (classes x features), ``intercept_``, ``loss_`` (mean training loss over the last
    100 steps), ``n_steps_``, ``n_epochs_`` (passes over the data), ``device_``, ``classes_``,
    ``n_features_in_``.
    """

    def __init__(self, max_steps: int = 10_000, batch_size: int = 2048,
                 learning_rate: float = 3e-4, final_learning_rate: float = 3e-6,
                 weight_decay: float = 0.01, device="auto", random_state=0):
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.final_learning_rate = final_learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # LayerNorm over the features is the protocol, and on scikit-learn's 2-feature check
        # data it keeps only the sign of x1 - x2: the 0.83 training accuracy asked of
        # classifiers there is out of reach by design, not by a bug
        tags.classifier_tags.poor_score = True
        return tags

    def fit(self, X, y):
        with _FewThreadsWhenSmall() as threads:
            return self._fit(X, y, threads)

    def _fit(self, X, y, threads):
        import torch

        max_steps = _check_int(self, "max_steps", self.max_steps, 1)
        batch_size = _check_int(self, "batch_size", self.batch_size, 1)
        lr = _check_positive(self, "learning_rate", self.learning_rate)
        final_lr = _check_nonnegative(self, "final_learning_rate", self.final_learning_rate)
        weight_decay = _check_nonnegative(self, "weight_decay", self.weight_decay)
        seed = _check_int(self, "random_state", self.random_state, 0)
        device = resolve_device(self, self.device)
        X, y = _validate_float_fit_input(self, X, y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        _require_two_classes(self, self.classes_)
        self.device_ = str(device)
        n, dim = X.shape
        threads.limit(device, min(batch_size, n) * dim * len(self.classes_))

        with torch.random.fork_rng(devices=[]):  # seeds the layers' init, not the caller's RNG
            torch.manual_seed(seed)
            norm = torch.nn.LayerNorm(dim)
            linear = torch.nn.Linear(dim, len(self.classes_))
        norm, linear = norm.to(device), linear.to(device)
        optimiser = torch.optim.AdamW(
            [{"params": [linear.weight], "weight_decay": weight_decay},
             {"params": [norm.weight, norm.bias, linear.bias], "weight_decay": 0.0}], lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max_steps,
                                                              eta_min=final_lr)
        with warnings.catch_warnings():
            # cached features arrive memory-mapped read-only; they are only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            features = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32)).to(device)
        targets = torch.as_tensor(y_index).to(device)
        shuffle = torch.Generator().manual_seed(seed)
        use_amp = device.type == "cuda"
        batch_size = min(batch_size, n)
        order, position, losses = torch.randperm(n, generator=shuffle).to(device), 0, []
        for _ in range(max_steps):
            if position + batch_size > n:  # a new epoch: a fresh shuffle, no ragged batch
                order, position = torch.randperm(n, generator=shuffle).to(device), 0
            rows = order[position:position + batch_size]
            position += batch_size
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = linear(norm(features[rows]))
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[rows])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.detach())
        self.loss_ = float(torch.stack(losses[-100:]).mean())
        self.n_steps_ = max_steps
        self.n_epochs_ = max_steps * batch_size / n
        self.ln_weight_ = norm.weight.detach().cpu().numpy()
        self.ln_bias_ = norm.bias.detach().cpu().numpy()
        self.coef_ = linear.weight.detach().cpu().numpy()
        self.intercept_ = linear.bias.detach().cpu().numpy()
        return self

    def _logit_blocks(self, X):
        """(rows, logits) in float64 on the device, block by block (exact, and independent of
        how the rows are batched). Validates X at the call, not at the first block."""
        import torch

        def layer_norm(x, ln_w, ln_b):
            return torch.nn.functional.layer_norm(x, (x.shape[1],), ln_w, ln_b)

        return _affine_blocks(self, _validate_float_features(self, X), layer_norm,
                              (self.ln_weight_, self.ln_bias_))

    def decision_function(self, X):
        """Logits, (n_samples, n_classes); with two classes scikit-learn's one score per
        example, positive when ``classes_[1]`` wins: the logits' difference."""
        blocks = self._logit_blocks(X)
        scores = _collect(blocks, lambda z: z, len(self.classes_), X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X):
        blocks = self._logit_blocks(X)
        return _collect(blocks, lambda z: z.softmax(dim=1), len(self.classes_), X)

    def predict(self, X):
        blocks = self._logit_blocks(X)  # validates (NotFittedError) before classes_ is read
        return self.classes_[_collect(blocks, lambda z: z.argmax(dim=1), 0, X)]


def _affine_blocks(probe, X, normalise, normaliser_arrays):
    """Yield (rows, ``normalise(x) @ coef.T + intercept``) in float64 on the probe's device,
    block by block: exact, and independent of how the rows are batched."""
    import torch

    device = torch.device(probe.device_)
    as64 = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    params = [as64(a) for a in normaliser_arrays]
    coef, bias = as64(probe.coef_), as64(probe.intercept_)
    rows_per_block = max(1, LOGREG_BLOCK_ELEMENTS // max(len(probe.classes_), X.shape[1]))
    for start, stop in _blocks([(0, len(X))], rows_per_block):
        yield slice(start, stop), torch.addmm(bias, normalise(as64(X[start:stop]), *params),
                                              coef.T)


def _collect(blocks, transform, width: int, X) -> np.ndarray:
    """Concatenate ``transform(block)`` over the blocks into one numpy array."""
    parts = [transform(z).cpu().numpy() for _, z in blocks]
    if parts:
        return np.concatenate(parts)
    return np.empty((0, width) if width else (0,))


# ---- tuned logistic regression ----------------------------------------------------------------
@register_probe("torch_logreg")
class TorchLogisticProbe(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression, C picked by stratified CV, L-BFGS in torch.

    The same model and selection as ``logreg`` (``LogisticProbe``): C grid, folds shuffled
    with ``random_state``, balanced class weights over the whole training set, macro-F1 on
    the validation folds, the smallest C among equal scores, refit on everything. Two classes
    use one weight vector (the logistic loss), as scikit-learn does.

    ``tol``: the convergence test of every fit (module docstring): coefficients within
    ``tol`` (relative) of the optimum's, objective within ``tol``^2. ``max_iter``: L-BFGS
    iterations per fit, all stages of ``_solve`` together (bfloat16, float32, float64).
    ``matmul``: "auto" runs each fit's first stage with bfloat16 matrix products where the
    device does them in hardware (``native_bfloat16``), "bfloat16" always, "float32" never;
    the convergence test is met on the exact float32 gradient either way.
    ``patience``: None walks the whole grid; an integer stops the path once the mean
    validation score has not improved for that many consecutive C (the rest of
    ``cv_scores_`` is NaN), which skips the slow large-C fits when small C wins.

    Fitted attributes: ``C_``, ``C_grid_``, ``cv_scores_``, ``cv_fold_scores_`` (as
    ``LogisticProbe``), ``n_folds_``, ``mean_``, ``scale_`` (the standardisation),
    ``coef_`` (classes, or 1 for two classes, x features; on standardised features),
    ``intercept_``, ``n_iter_`` and ``grad_norm_`` (the refit's iterations and final
    ||grad F|| / (||W|| / C), at most ``tol`` when converged), ``path_n_iter_`` and
    ``path_grad_norm_`` (the same for each fold x C of the search; -1 and NaN where skipped),
    ``converged_`` (every fit met the test), ``n_float64_fits_`` (fits finished in float64),
    ``matmul_`` (the resolved ``matmul``), ``device_``, ``classes_``, ``n_features_in_``.
    """

    def __init__(self, C_grid=DEFAULT_C_GRID, n_folds: int = 5, class_weight="balanced",
                 tol: float = 0.01, max_iter: int = 1000, patience=None, matmul="auto",
                 device="auto", random_state=0):
        self.C_grid = C_grid
        self.n_folds = n_folds
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter
        self.patience = patience
        self.matmul = matmul
        self.device = device
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------
    def _checked_params(self):
        grid = np.sort(np.asarray(self.C_grid, dtype=np.float64).ravel())
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError(f"TorchLogisticProbe: C_grid must be a non-empty sequence of "
                             f"positive, finite numbers, got {self.C_grid!r}")
        _check_int(self, "n_folds", self.n_folds, 2)
        _check_positive(self, "tol", self.tol)
        _check_int(self, "max_iter", self.max_iter, 1)
        if self.patience is not None:
            _check_int(self, "patience", self.patience, 1)
        if self.matmul not in MATMUL_CHOICES:
            raise ValueError(f"TorchLogisticProbe: matmul must be 'auto', 'bfloat16' or "
                             f"'float32', got {self.matmul!r}")
        return grid

    def fit(self, X, y):
        with _FewThreadsWhenSmall() as threads:
            return self._fit(X, y, threads)

    def _fit(self, X, y, threads):
        import torch

        grid = self._checked_params()
        device = resolve_device(self, self.device)
        X, y = _validate_float_fit_input(self, X, y)
        self.classes_, y_index, counts = np.unique(y, return_inverse=True, return_counts=True)
        _require_two_classes(self, self.classes_)
        self.device_ = str(device)
        self.C_grid_ = grid
        n_classes = len(self.classes_)
        threads.limit(device, X.shape[0] * X.shape[1] * n_classes)
        weights = compute_class_weight(self.class_weight, classes=self.classes_, y=y)[y_index]

        # Standardise as StandardScaler (population std; constant features keep scale 1)
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        self.scale_ = X.std(axis=0, dtype=np.float64)
        self.scale_[self.scale_ < 10 * np.finfo(np.float64).eps] = 1.0

        self.n_folds_ = min(int(self.n_folds), int(counts.min()))
        folds = (list(StratifiedKFold(self.n_folds_, shuffle=True, random_state=self.random_state)
                      .split(np.zeros(len(y)), y)) if self.n_folds_ >= 2 else [])
        # Reorder the rows fold by fold: each validation fold is a contiguous block and its
        # training set the two blocks around it, so no fold's rows are ever copied.
        order = (np.concatenate([val for _, val in folds]) if folds else np.arange(len(y)))
        edges = np.cumsum([0] + [len(val) for _, val in folds])
        self.matmul_ = self.matmul if self.matmul != "auto" else (
            "bfloat16" if native_bfloat16(device) else "float32")
        problem = _Problem(X, order, self.mean_, self.scale_, y_index[order], weights[order],
                           n_classes, device, matmul=self.matmul_)

        n_grid = len(grid)
        started = time.perf_counter()
        self.cv_fold_scores_ = np.full((len(folds), n_grid), np.nan) if folds else None
        self.path_n_iter_ = np.full((len(folds), n_grid), -1, dtype=np.int64)
        self.path_grad_norm_ = np.full((len(folds), n_grid), np.nan)
        self.n_float64_fits_ = 0
        start_for_refit = None
        if folds:
            thetas = [problem.zeros() for _ in folds]
            best_score, since_best, best_thetas = -np.inf, 0, None
            for j, C in enumerate(grid):
                first_fold_step = None
                for f in range(len(folds)):
                    train_ranges = [(0, edges[f]), (edges[f + 1], edges[-1])]
                    # Warm start: this fold's previous solution, moved by the step the first
                    # fold just took from the previous C to this one. The folds' paths run
                    # nearly parallel, so this lands closer than the previous solution alone
                    # (synthetic 32k x 1,000 features: 2-4 instead of 4-9 iterations at tol
                    # 0.1, about 5% fewer at 0.01).
                    start = thetas[f] if first_fold_step is None else thetas[f] + first_fold_step
                    theta, n_iter, ratio = self._solve(problem, start, train_ranges, C)
                    theta = theta.to(problem.X.dtype)  # float32 warm starts
                    if f == 0:
                        first_fold_step = theta - thetas[0]
                    thetas[f] = theta
                    self.path_n_iter_[f, j], self.path_grad_norm_[f, j] = n_iter, ratio
                    predicted = problem.argmax(thetas[f], [(edges[f], edges[f + 1])])
                    self.cv_fold_scores_[f, j] = macro_f1(
                        problem.y_index[edges[f]:edges[f + 1]], predicted)
                mean = self.cv_fold_scores_[:, j].mean()
                log.info("C=%.4g: iterations %s, macro-F1 %.4f (%.0f s so far)", C,
                         self.path_n_iter_[:, j].tolist(), mean, time.perf_counter() - started)
                if mean > best_score:  # strictly better: the smallest C wins ties
                    best_score, since_best = mean, 0
                    best_thetas = [t.clone() for t in thetas]
                else:
                    since_best += 1
                    if self.patience is not None and since_best >= self.patience:
                        break
            self.cv_scores_ = self.cv_fold_scores_.mean(axis=0)
            self.C_ = float(grid[int(np.nanargmax(self.cv_scores_))])
            # warm start the refit from the folds' solutions at that C (the same optimum to
            # within the convergence test, reached in fewer iterations)
            start_for_refit = torch.stack(best_thetas).mean(dim=0)
        else:
            self.cv_scores_ = None
            self.C_ = float(grid[n_grid // 2])
        theta, self.n_iter_, self.grad_norm_ = self._solve(
            problem, start_for_refit if start_for_refit is not None else problem.zeros(),
            [(0, len(y))], self.C_)
        worst = float(np.nanmax(self.path_grad_norm_, initial=self.grad_norm_))
        self.converged_ = bool(worst <= self.tol)
        if not self.converged_:
            warnings.warn(
                f"TorchLogisticProbe: some fits stopped before the convergence test "
                f"||grad F|| <= tol * ||W|| / C (tol={self.tol}; worst ratio {worst:.3g}; "
                f"see path_grad_norm_ and grad_norm_): raise max_iter (now {self.max_iter}) "
                f"or tol", ConvergenceWarning, stacklevel=2)
        theta = theta.double().cpu().numpy()
        self.coef_ = np.ascontiguousarray(theta[:-1].T)
        self.intercept_ = theta[-1].copy()
        return self

    def _solve(self, problem, theta, ranges, C):
        """One fit (``_solve``, the module's), counted in ``n_float64_fits_`` when it had to
        finish in float64. Returns (theta, iterations, final ratio)."""
        theta, n_iter, ratio, in_float64 = _solve(problem, theta, ranges, C, self.tol,
                                                  self.max_iter)
        self.n_float64_fits_ += in_float64
        return theta, n_iter, ratio

    # -- prediction ------------------------------------------------------------------------
    def _logit_blocks(self, X):
        """(rows, linear scores) in float64 on the device, block by block. Validates X at the
        call, not at the first block."""
        return _affine_blocks(self, _validate_float_features(self, X),
                              lambda x, mean, scale: (x - mean) / scale, (self.mean_, self.scale_))

    def decision_function(self, X):
        blocks = self._logit_blocks(X)
        width = self.coef_.shape[0]
        scores = _collect(blocks, lambda z: z, width, X)
        return scores[:, 0] if width == 1 else scores

    def predict_proba(self, X):
        def proba(z):
            if z.shape[1] == 1:  # two classes: the logistic of the one score
                p = z.sigmoid()
                return torch.cat([1 - p, p], dim=1)
            return z.softmax(dim=1)

        import torch

        blocks = self._logit_blocks(X)
        return _collect(blocks, proba, len(self.classes_), X)

    def predict(self, X):
        def winner(z):
            return (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(dim=1)

        blocks = self._logit_blocks(X)  # validates (NotFittedError) before classes_ is read
        return self.classes_[_collect(blocks, winner, 0, X)]


class _Problem:
    """The standardised training data on the device and the weighted multinomial logistic
    objective over any set of its row ranges (sum of the weighted losses plus
    ||W||^2 / (2C), divided by the ranges' total weight so it is O(1))."""

    def __init__(self, X, order, mean, scale, y_index, weights, n_classes: int, device,
                 dtype=None, matmul: str = "float32"):
        import torch

        dtype = dtype or torch.float32
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.device = device
        self.n_classes = n_classes
        # two classes: one score column against a fixed zero (scikit-learn's binary model)
        self.width = 1 if n_classes == 2 else n_classes
        self.rows_per_block = max(1, LOGREG_BLOCK_ELEMENTS // max(self.width + 1, X.shape[1]))
        # one float32 standardised copy in fold order, filled block by block (no float64
        # or reordered full-size temporaries)
        standardised = np.empty(X.shape, dtype=np_dtype)
        for start, stop in _blocks([(0, len(X))], self.rows_per_block):
            standardised[start:stop] = (X[order[start:stop]] - mean) / scale
        self.X = torch.from_numpy(standardised).to(device)
        # with matmul "bfloat16", a bfloat16 copy for the fast evaluations
        # (``loss_and_grad(fast=True)``); None with "float32"
        self.X_fast = self.X.to(torch.bfloat16) if matmul == "bfloat16" else None
        self.y_index = y_index
        self.y = torch.as_tensor(y_index, device=device)
        self.w = torch.as_tensor(weights, dtype=dtype, device=device)
        # The weighted second moment of the rows (all folds together) in its eigenbasis:
        # L-BFGS's preconditioner (see ``preconditioner``). Correlated features make the
        # Hessian ill-conditioned; this undoes most of it, for O(n D min(n, D)) once.
        self.eigenvalues, self.eigenvectors = _second_moment_eigen(self.X, self.w)
        self.curvature = 0.0  # set by each loss_and_grad
        self.rows_per_block = max(1, LOGREG_BLOCK_ELEMENTS // (self.width + 1))

    def preconditioner(self, C: float, total_weight: float):
        """An approximate inverse Hessian of f (the 1/total-scaled objective) at the last
        point evaluated with ``curvature=True``: per class, (c S + I / (C total))^-1 with S the rows' second moment
        and c the mean softmax curvature p (1 - p) (a Kronecker approximation of the
        multinomial Hessian); 1 / c for the intercept. Returns a function of a theta-shaped
        tensor."""
        import torch

        c = max(self.curvature, 1e-8)
        ridge = 1.0 / (C * total_weight)
        # on the moment's eigenvectors 1 / (c lambda + ridge); on their complement (fewer rows
        # than features) only the penalty's curvature, 1 / ridge
        extra = (1.0 / (c * self.eigenvalues + ridge) - 1.0 / ridge).to(self.X.dtype)
        basis = self.eigenvectors

        def apply(q):
            out = q / ridge
            out[:-1] += basis @ (extra[:, None] * (basis.T @ q[:-1]))
            out[-1] = q[-1] / c
            return out

        return apply

    def in_float64(self) -> "_Problem":
        """The same problem with float64 features and weights (made once, then kept)."""
        import torch

        if self.X.dtype == torch.float64:
            return self
        if getattr(self, "_float64", None) is None:
            twin = object.__new__(_Problem)
            twin.__dict__.update(self.__dict__)
            twin.X, twin.w, twin.X_fast = self.X.double(), self.w.double(), None
            twin.eigenvectors = self.eigenvectors.double()
            twin._float64 = None
            self._float64 = twin
        return self._float64

    def zeros(self):
        import torch

        return torch.zeros((self.X.shape[1] + 1, self.width), dtype=self.X.dtype,
                           device=self.device)

    def total_weight(self, ranges) -> float:
        return float(sum(self.w[a:b].double().sum() for a, b in ranges))

    def loss_and_grad(self, theta, ranges, C: float, total_weight: float,
                      curvature: bool = False, fast: bool = False):
        """f and grad f at ``theta`` (rows 0..D-1: W; row D: intercept); with ``curvature``,
        also the mean softmax curvature there, for ``preconditioner``. ``fast``: the two
        matrix products in bfloat16 (``self.X_fast``, float32 accumulation), everything else
        as usual; the gradient is then within about 0.3% of the exact one."""
        import torch

        X = self.X_fast if fast else self.X
        W, b = theta[:-1], theta[-1]
        W_mm = W.to(X.dtype)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        p_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        grad = torch.zeros_like(theta)
        for start, stop in _blocks(ranges, self.rows_per_block):
            x, y, w = X[start:stop], self.y[start:stop], self.w[start:stop]
            z = torch.mm(x, W_mm).to(theta.dtype).add_(b)
            if self.width == 1:
                z = torch.cat([torch.zeros_like(z), z], dim=1)
            # softmax with one exp: shift by the row max, exponentiate in place, normalise
            z.sub_(z.amax(dim=1, keepdim=True))
            z_true = z.gather(1, y[:, None])[:, 0]
            residual = z.exp_()
            total = residual.sum(dim=1)
            loss += ((total.log() - z_true) * w).sum(dtype=torch.float64)
            residual.div_(total[:, None])  # the softmax p, in place of the logits
            if curvature:
                p_sum += ((residual * (1.0 - residual)).sum(dim=1) * w).sum(dtype=torch.float64)
            residual.mul_(w[:, None])
            residual[torch.arange(len(y), device=self.device), y] -= w  # w (p - onehot)
            if self.width == 1:
                residual = residual[:, 1:]
            grad[:-1] += torch.mm(x.T, residual.to(X.dtype))
            grad[-1] += residual.sum(dim=0)
        if curvature:  # mean over rows and classes of p (1 - p)
            self.curvature = float(p_sum) / (total_weight * self.n_classes)
        loss += 0.5 / C * torch.sum(W * W, dtype=torch.float64)
        grad[:-1].add_(W, alpha=1.0 / C)
        return float(loss) / total_weight, grad.div_(total_weight)

    def argmax(self, theta, ranges) -> np.ndarray:
        import torch

        theta = theta.to(self.X.dtype)
        parts = []
        for start, stop in _blocks(ranges, self.rows_per_block):
            z = torch.addmm(theta[-1], self.X[start:stop], theta[:-1].to(self.X.dtype))
            parts.append((z[:, 0] > 0).long() if self.width == 1 else z.argmax(dim=1))
        return torch.cat(parts).cpu().numpy()


def _second_moment_eigen(X, w):
    """Eigenvalues (float64) and eigenvectors (X's dtype, D x r) of X^T diag(w) X / sum(w),
    r = min(n, D): from the D x D moment when n >= D, else from the n x n Gram matrix
    (V = X_w^T U / sqrt(lambda sum w)), whichever is smaller."""
    import torch

    n, dim = X.shape
    total = float(w.double().sum())
    if n >= dim:
        matrix = torch.zeros((dim, dim), dtype=torch.float64, device=X.device)
        for start, stop in _blocks([(0, n)], max(1, LOGREG_BLOCK_ELEMENTS // dim)):
            x = X[start:stop]
            matrix += (x.T @ (x * w[start:stop, None])).double()
    else:
        xw = (X * w[:, None].sqrt()).double()
        matrix = xw @ xw.T
    matrix /= total
    if matrix.device.type == "cpu":
        # LAPACK's MRRR driver through scipy: several times faster than torch's on the CPU
        from scipy.linalg import eigh

        values, vectors = map(torch.from_numpy, eigh(matrix.numpy(), driver="evr"))
    else:
        values, vectors = torch.linalg.eigh(matrix)
    if n < dim:
        keep = values > values.max() * 1e-10  # the Gram matrix's null space maps to nothing
        values, vectors = values[keep], xw.T @ vectors[:, keep] / (values[keep] * total).sqrt()
    return values.clamp_min(0.0), vectors.to(X.dtype)


class _LbfgsHistory:
    """L-BFGS's memory: the last ``LBFGS_HISTORY`` (step, gradient change, 1 / their dot)
    pairs and the scale of the initial inverse Hessian estimate."""

    def __init__(self):
        self.steps, self.changes, self.rhos, self.gamma = [], [], [], 1.0

    def clear(self) -> None:
        del self.steps[:], self.changes[:], self.rhos[:]


def _lbfgs(problem: _Problem, theta, ranges, C: float, tol: float, max_iter: int, *,
           fast: bool = False, stall_iterations: int = STALL_ITERATIONS, history=None):
    """Minimise the objective at C from ``theta`` by L-BFGS with a backtracking line search
    until ||grad F|| <= tol * ||W|| / C (F on the sum scale), evaluated with
    ``problem.loss_and_grad(..., fast=fast)``. Returns (theta, iterations, that ratio,
    stalled): stalled when rounding stopped progress (no step decreases F, or
    ``stall_iterations`` iterations without a 10% better ratio) before the test was met.
    ``history``: an ``_LbfgsHistory`` to start from and leave the last pairs in (so that a
    later stage of the same fit continues with them), or None for a fresh one."""
    import torch

    def dot(a, b) -> float:
        return float(torch.vdot(a.flatten(), b.flatten()))

    def stationarity(theta, g) -> float:
        # ||grad F|| / (||W|| / C) on the sum scale (F = total * f); inf at W = 0
        scale = math.sqrt(dot(theta[:-1], theta[:-1])) / C
        return math.sqrt(dot(g, g)) * total / scale if scale > 0 else math.inf

    total = problem.total_weight(ranges)
    theta = theta.to(problem.X.dtype)
    f, g = problem.loss_and_grad(theta, ranges, C, total, curvature=True, fast=fast)
    precondition = problem.preconditioner(C, total)  # fixed for the fit: a valid L-BFGS H0
    history = history if history is not None else _LbfgsHistory()
    steps, changes, rhos = history.steps, history.changes, history.rhos
    iteration, ratio = 0, stationarity(theta, g)
    best_ratio, best_at = ratio, 0
    while ratio > tol and iteration < max_iter:
        if iteration - best_at >= stall_iterations:
            return theta, iteration, ratio, True
        # two-loop recursion: q = H g, H the L-BFGS estimate of the inverse Hessian
        q = g.clone()
        alphas = []
        for s, yv, rho in reversed(list(zip(steps, changes, rhos))):
            alphas.append(rho * dot(s, q))
            q.add_(yv, alpha=-alphas[-1])
        q = precondition(q)  # H0 = gamma P: P the preconditioner, gamma from the last pair
        if steps:
            q.mul_(history.gamma)
        for (s, yv, rho), a in zip(zip(steps, changes, rhos), reversed(alphas)):
            q.add_(s, alpha=a - rho * dot(yv, q))
        slope = -dot(g, q)  # of F along -q, per unit step
        if slope >= 0:  # rounding made H lose positive definiteness: restart from the gradient
            if not steps:
                return theta, iteration, ratio, True
            history.clear()
            continue
        t = 1.0
        while t >= 1e-10:
            candidate = theta - t * q
            f_new, g_new = problem.loss_and_grad(candidate, ranges, C, total, fast=fast)
            if f_new <= f + 1e-4 * t * slope:  # Armijo: enough decrease
                break
            # Near the optimum float32 rounding in f can hide the decrease Armijo asks for
            # while the gradient stays informative: Hager and Zhang's approximate Wolfe test
            # (the slope along the step has not overshot, f has not risen beyond its noise)
            if -dot(g_new, q) <= -0.8 * slope and f_new <= f + F32_NOISE * abs(f):
                break
            t *= 0.5
        else:  # no step length decreases F: the memory is stale, or rounding has won
            if not steps:
                return theta, iteration, ratio, True
            history.clear()
            continue
        s, yv = candidate - theta, g_new - g
        sy = dot(s, yv)
        if sy > 1e-10 * dot(yv, yv):  # keep only pairs with positive curvature
            steps.append(s)
            changes.append(yv)
            rhos.append(1.0 / sy)
            history.gamma = sy / dot(yv, precondition(yv))
            if len(steps) > LBFGS_HISTORY:
                steps.pop(0), changes.pop(0), rhos.pop(0)
        theta, f, g = candidate, f_new, g_new
        iteration += 1
        ratio = stationarity(theta, g)
        if ratio < 0.9 * best_ratio:  # progress = a 10% better ratio
            best_ratio, best_at = ratio, iteration
    return theta, iteration, ratio, False


def _solve(problem: _Problem, theta, ranges, C: float, tol: float, max_iter: int):
    """One fit at C, in up to three stages, each continuing from the last one's coefficients:

    1. with ``problem.X_fast`` (bfloat16 matrix products), L-BFGS down to a ratio of
       max(``FAST_TARGET_FRACTION`` * tol, ``FAST_TARGET_FLOOR``): the cheap iterations that
       do most of the work;
    2. exact float32 L-BFGS, keeping stage 1's L-BFGS pairs, until the ratio, now computed
       from the exact gradient, is at most ``tol``;
    3. if float32 rounding stalls stage 2 above ``tol`` (extreme class weights), float64.

    The convergence test is always met (or reported as missed) on an exact gradient, so the
    bounds of the module docstring hold whatever stage 1 did. Returns (theta, iterations of
    all stages, final ratio, whether stage 3 ran)."""
    n_iter, history = 0, _LbfgsHistory()
    if problem.X_fast is not None:
        theta, n_iter, _, _ = _lbfgs(problem, theta, ranges, C,
                                     max(FAST_TARGET_FRACTION * tol, FAST_TARGET_FLOOR),
                                     max_iter, fast=True, stall_iterations=FAST_STALL_ITERATIONS,
                                     history=history)
    # the exact stage keeps the fast stage's pairs: their gradients are ~0.3% off, which
    # matters little to a curvature estimate and saves rebuilding it
    theta, more, ratio, stalled = _lbfgs(problem, theta, ranges, C, tol, max_iter - n_iter,
                                         history=history)
    n_iter += more
    in_float64 = bool(ratio > tol and stalled and n_iter < max_iter)
    if in_float64:
        theta, more, ratio, _ = _lbfgs(problem.in_float64(), theta, ranges, C, tol,
                                       max_iter - n_iter)
        n_iter += more
    return theta, int(n_iter), float(ratio), in_float64


def native_bfloat16(device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports
    bfloat16, or a CPU with AVX512-BF16 or AMX-BF16 (on this project's 2-core AMD EPYC the two
    products of one 25,600 x 768 x 1,000 objective evaluation take 0.18 s in bfloat16 against
    0.62 s in float32). Elsewhere bfloat16 products are emulated and slower than float32."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return _cpu_has_bfloat16()


@functools.lru_cache(maxsize=1)
def _cpu_has_bfloat16() -> bool:
    """The CPU's flags, read once per process (every fit with ``matmul="auto"`` asks)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(cpuinfo.read().split())
    except OSError:  # not Linux: no cheap way to tell, so do not assume
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


# ---- the solver and objective on their own (benchmarks, tests) ----------------------------------
def logistic_path(Xs, y_index, weights, Cs, *, tol: float = 0.01, max_iter: int = 1000,
                  dtype: str = "float32", matmul: str = "float32", device="cpu"):
    """Weighted multinomial logistic regressions on already standardised ``Xs`` (labels
    ``y_index`` in 0..K-1, K >= 2) at each C of ``Cs`` in the given order, each warm started
    from the previous, solved as ``torch_logreg`` solves its fits (``_solve``) in ``dtype``,
    with a bfloat16 first stage when ``matmul`` is "bfloat16". Returns one (coef, intercept,
    iterations, ||grad F|| / (||W|| / C)) per C; coef is (K, D), or (1, D) for two classes."""
    import torch

    device = torch.device(device)
    n_classes = int(np.max(y_index)) + 1
    problem = _Problem(Xs, np.arange(len(Xs)), np.zeros(Xs.shape[1]), np.ones(Xs.shape[1]),
                       np.asarray(y_index), np.asarray(weights), n_classes, device,
                       dtype=getattr(torch, dtype), matmul=matmul)
    theta, fits = problem.zeros(), []
    for C in Cs:
        theta, n_iter, ratio, _ = _solve(problem, theta, [(0, len(Xs))], C, tol, max_iter)
        as_array = theta.double().cpu().numpy()
        fits.append((np.ascontiguousarray(as_array[:-1].T), as_array[-1].copy(), int(n_iter),
                     float(ratio)))
    return fits


def logistic_objective(Xs, y_index, weights, coef, intercept, C: float) -> float:
    """sum_i weights_i * cross-entropy_i + ||coef||^2 / (2C) in float64 numpy, written
    independently of the torch code (scikit-learn's objective times the total weight). Two
    classes: ``coef`` is (1, D), the score of class 1 against a zero for class 0."""
    z = np.asarray(Xs, dtype=np.float64) @ np.asarray(coef, dtype=np.float64).T + intercept
    if z.shape[1] == 1:
        z = np.hstack([np.zeros_like(z), z])
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    losses = log_norm - z[np.arange(len(z)), np.asarray(y_index)]
    return float(np.dot(weights, losses) + np.sum(np.square(coef)) / (2.0 * C))
