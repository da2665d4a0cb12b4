"""Bootstrap confidence intervals and paired comparisons over test examples.

Every function resamples *test examples* (axis 0 of ``y_true``/``y_pred``), exactly one
resample per replicate, and the same resample indices serve every model that is compared on a
task (a paired bootstrap: all models share one test set). The classifier is not refitted: the
interval reflects test-set sampling only, which is what the scores' uncertainty is about when the
training set is fixed.

**Stratified resampling for class-balanced metrics.** Every function takes ``strata``: one value
per test example (``None``: plain resampling). With strata, each replicate draws, within each
stratum, as many examples as that stratum has, with replacement. The metric registry says which
metrics stratify (``biobench.metrics.bootstrap_strata``): macro-F1 stratifies by true class.
Why: macro-F1 averages per-class F1 over the classes that occur in the evaluated sample. A plain
resample misses a class with one test example about e^-1 = 37% of the time, and a missed
singleton class whose example was predicted wrongly leaves the average together with its zero
F1, so plain replicates are biased upwards; with many such classes the whole percentile interval
can lie above the full-test-set score (``y_true = [0]*5 + [1]*5 + [2..11]``, the ten singletons
all missed: estimate 0.167, plain interval about [0.18, 0.33]). Resampling within true classes
keeps every class and its size in every replicate, so each replicate averages over exactly the
classes, with exactly the weights, of the full test set. The interval is then *conditional on
the test set's class composition*: it covers the variation from drawing other examples of the
same classes in the same numbers, not from drawing another class mix. A class with a single test
example always contributes that example: its recall is fixed, its precision still varies with
the false positives of the other classes. FishNet's per-trait macro-F1 stratifies on rare trait
values only (see ``biobench.metrics.within_rare_trait_values``). Metrics that are not class
averages (accuracy, BioBench's FungiCLEF score) resample plainly. Within a stratum the draws
depend only on ``seed`` and the strata (which come from ``y_true`` alone), so every model
compared on a task gets the same indices.

**Scale.** Replicates are computed a chunk of replicates at a time (``CHUNK_ELEMENTS`` bounds
every (replicates, n) array), and the indices themselves are drawn per chunk from the one
generator: numpy's bounded integer draws consume its bit stream number by number, so consecutive
chunks are exactly the rows of ``resample_indices`` (a test pins this). Stratified draws, which
numpy makes in a slow per-element loop when each column has its own bound, are reproduced bit
for bit by a vectorised version of numpy's own algorithm (``_StratifiedDraws``, checked against
numpy once per process). A metric that registers a count form (``biobench.metrics.CountForm``;
all the built-in ones do) is scored without a Python loop per replicate: each example is reduced
once to its cell (for macro-F1, its (true, predicted) pair), ``np.bincount`` over
``replicate * n_cells + cell`` counts every replicate of a chunk, and the metric is computed
from those counts, vectorised, bit for bit equal to calling it on each replicate. All models
compared are scored on each chunk as it is drawn. Any other score function is called once per
replicate, as before. The bound ``Task.score`` of a task that does not override it counts as its
registered metric. ``benchmarks/scale_bootstrap.py`` measures both paths.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Literal, Sequence, Union

import numpy as np
from statsmodels.stats.multitest import multipletests

from biobench import metrics

ScoreFn = Callable[[np.ndarray, np.ndarray], float]
# a score function, a registry entry, or a registered metric's name
Scorer = Union[ScoreFn, metrics.Metric, str]

# At most this many elements in any (replicates, n) or (replicates, n_cells) array of a chunk:
# 2**21 int64 = 16 MiB each, two or three alive at once (larger chunks were no faster).
CHUNK_ELEMENTS = 2 ** 21
COUNT_STEP_ELEMENTS = 2 ** 17  # keys counted per np.bincount: 1 MiB, cache-sized


class _StratifiedDraws:
    """``rng.integers(0, high, size=(rows, len(high))) + offset`` for a fixed per-column
    ``high``, bit for bit, about twice as fast.

    numpy draws such an array element by element through a generic broadcasting loop. For each
    element with high > 1 it takes the generator's next 32-bit number u (a 64-bit output gives
    its low half, then its high half) and returns (u * high) >> 32, unless the low 32 bits of
    u * high fall below 2**32 mod high: Lemire's rejection, rare unless ``high`` is large, after
    which the element tries the next number. An element with high == 1 takes no number and is
    0. Here a step of elements multiplies one slice of the 32-bit stream by their ``high`` at
    once; at a rejection the elements before it are kept and drawing resumes after the rejected
    number. ``matches_numpy()`` checks this against numpy itself, once per process; where it
    does not hold, the resampler uses numpy's loop.
    """

    STEP = 2 ** 15  # numbers per step: few enough for a step's arrays to stay in the CPU cache

    def __init__(self, bit_generator, high: np.ndarray):
        self._bit_generator = bit_generator
        self._n = len(high)
        self._drawn = np.flatnonzero(high > 1)  # the columns that take a number
        self._high = high[self._drawn].astype(np.uint64)
        self._threshold = (np.uint64(1 << 32) % self._high).astype(np.uint32)
        # rows per step: about one rejection per four steps, so a rejection wastes little
        rejections_per_row = float(self._threshold.sum(dtype=np.float64)) / 2 ** 32
        self._block_rows = max(1, int(0.25 / rejections_per_row)) if rejections_per_row else None
        self._stream = np.zeros(0, np.uint32)  # 32-bit numbers drawn from the generator
        self._next = 0  # the first of them not used yet

    def _numbers(self, count: int) -> np.ndarray:
        """The next ``count`` 32-bit numbers of the stream, without using them up."""
        available = len(self._stream) - self._next
        if available < count:
            fresh = self._bit_generator.random_raw((count - available + 1) // 2)
            fresh = fresh.view(np.uint32)  # little-endian: low half first, as numpy takes them
            self._stream = np.concatenate([self._stream[self._next:], fresh]) if available \
                else fresh
            self._next = 0
        return self._stream[self._next:self._next + count]

    def draw(self, rows: int, offset: np.ndarray) -> np.ndarray:
        width = len(self._drawn)
        every_column = width == self._n
        out = np.empty((rows, self._n), dtype=np.int64)
        if not every_column:
            out[:] = offset  # columns with high == 1 draw 0
        if width == 0:
            return out
        drawn = out.reshape(-1) if every_column else np.empty(rows * width, np.int64)
        drawn_offset = offset[self._drawn]
        total, e = rows * width, 0
        while e < total:
            col = e % width
            if col or width >= self.STEP:  # a stretch of one row
                count = min(width - col, self.STEP)
                stretch = slice(col, col + count)
                high, threshold = self._high[stretch], self._threshold[stretch]
                base = drawn_offset[stretch]
            else:  # whole rows
                block = min((total - e) // width, self.STEP // width)
                if self._block_rows is not None:
                    block = min(block, self._block_rows)
                high, threshold, base = self._high, self._threshold, drawn_offset
                count = block * width
            product = self._numbers(count).reshape(-1, len(high)).astype(np.uint64)
            product *= high
            low_halves = product.reshape(-1).view(np.uint32)[0::2]  # little-endian
            rejected = low_halves.reshape(-1, len(high)) < threshold
            good = int(rejected.argmax()) if rejected.any() else count
            product >>= 32  # the draws
            if good == count:  # the usual case: the whole block at once
                np.add(product.view(np.int64), base, out=drawn[e:e + count].reshape(product.shape))
            else:
                drawn[e:e + good] = product.reshape(-1)[:good].view(np.int64) \
                    + np.resize(base, good)
            self._next += good + (good < count)  # a rejected number is used up too
            e += good
        if not every_column:
            out[:, self._drawn] = drawn.reshape(rows, width)
        self._stream, self._next = self._stream[self._next:].copy(), 0  # keep only what is left
        return out

    @staticmethod
    @lru_cache(maxsize=1)
    def matches_numpy() -> bool:
        """Whether these draws equal numpy's on a case with many rejections and with columns
        that take no number, over several blocks and rows."""
        if sys.byteorder != "little":
            return False
        high = np.array([3_000_000_001, 1, 7, 2, 1, 2 ** 31 + 5, 100_000, 3, 1, 4_000_000_000])
        offset = np.arange(len(high)) * 10
        expected = np.random.default_rng(1).integers(0, high, size=(40, len(high))) + offset
        draws = _StratifiedDraws(np.random.default_rng(1).bit_generator, high)
        got = np.concatenate([draws.draw(rows, offset) for rows in (1, 3, 16, 20)])
        return bool(np.array_equal(got, expected))


class _Resampler:
    """Draws the rows of ``resample_indices`` a chunk at a time, from one generator.

    A chunk is drawn as *positions* (rows, n); ``examples(positions)`` turns them into example
    indices. With strata, a position indexes the examples grouped by stratum (``members``), so a
    per-example array can be reordered once (``per_position``) instead of once per chunk.
    """

    def __init__(self, n: int, seed: int, strata=None):
        if n == 0:
            raise ValueError("cannot bootstrap an empty test set")
        self.n = n
        self._rng = np.random.default_rng(seed)
        self._stratified = None
        if strata is None:
            self.members = None
            self._high, self._first = n, None
            return
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata must hold one value per test example, shape ({n},); got "
                             f"{strata.shape}. Pass the task's bootstrap_strata(y_true).")
        _, stratum_of, sizes = np.unique(strata, return_inverse=True, return_counts=True)
        stratum_of = stratum_of.reshape(-1)
        # examples grouped by stratum, in order, and where each stratum starts among them
        self.members = np.argsort(stratum_of, kind="stable")
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._high, self._first = sizes[stratum_of], first[stratum_of]
        if n < 2 ** 31 and _StratifiedDraws.matches_numpy():
            self._stratified = _StratifiedDraws(self._rng.bit_generator, self._high)

    def draw(self, rows: int) -> np.ndarray:
        if self._stratified is not None:
            return self._stratified.draw(rows, self._first)
        positions = self._rng.integers(0, self._high, size=(rows, self.n))
        if self._first is not None:
            positions += self._first  # in place: this array can be large
        return positions

    def examples(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.members is None else self.members[positions]

    def per_position(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per example) indexed by position: values[examples(p)] = result[p]."""
        return values if self.members is None else values[self.members]

    def chunks(self, n_bootstrap: int, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first replicate, positions of the chunk's replicates), in order."""
        for start in range(0, n_bootstrap, rows_per_chunk):
            yield start, self.draw(min(rows_per_chunk, n_bootstrap - start))


def resample_indices(n: int, n_bootstrap: int, seed: int, strata=None) -> np.ndarray:
    """(n_bootstrap, n) indices drawn with replacement; one row per replicate.

    With ``strata`` (one value per example), column j of every row is drawn from the examples of
    example j's stratum, so each replicate holds exactly as many examples of each stratum as the
    test set. Without, every column is drawn from all n examples.
    """
    resampler = _Resampler(n, seed, strata)
    return resampler.examples(resampler.draw(n_bootstrap))


def iter_resample_indices(n: int, n_bootstrap: int, seed: int, strata=None, *,
                          rows_per_chunk: int | None = None) -> Iterator[np.ndarray]:
    """The rows of ``resample_indices(n, n_bootstrap, seed, strata)``, ``rows_per_chunk`` at a
    time (default: as many as fit in ``CHUNK_ELEMENTS``), without holding them all."""
    resampler = _Resampler(n, seed, strata)
    rows = rows_per_chunk or _rows_per_chunk(n, n_bootstrap)
    for _, positions in resampler.chunks(n_bootstrap, rows):
        yield resampler.examples(positions)


def _rows_per_chunk(width: int, n_bootstrap: int) -> int:
    return max(1, min(n_bootstrap, CHUNK_ELEMENTS // max(width, 1)))


def registered_metric(scorer: Scorer) -> metrics.Metric | None:
    """The registry entry a scorer stands for: itself, the metric of that name, the entry of a
    registered function, or the metric of a task's ``score`` (when the task does not override
    it); None for any other function."""
    if isinstance(scorer, metrics.Metric):
        return scorer
    if isinstance(scorer, str):
        return metrics.metric_spec(scorer)
    spec = metrics.registered_metric_of(scorer)
    if spec is not None:
        return spec
    task, method = getattr(scorer, "__self__", None), getattr(scorer, "__func__", None)
    if getattr(method, "__qualname__", None) == "Task.score":
        from biobench.tasks.base import Task  # lazy: the tasks package loads every task module

        if isinstance(task, Task) and method is Task.score:
            return metrics.metric_spec(task.metric_name)
    return None


def _count_forms(scorer: Scorer, y_true: np.ndarray, preds: list[np.ndarray]):
    """Each model's CountForm, or None when the scorer or any of these predictions has none."""
    spec = registered_metric(scorer)
    if spec is None or spec.count_form is None:
        return None
    forms = [spec.count_form(y_true, p) for p in preds]
    return None if any(f is None for f in forms) else forms


def bootstrap_replicates(score_fn: Scorer, y_true, predictions: Sequence, *,
                         n_bootstrap: int = 1000, seed: int = 0, strata=None,
                         method: Literal["auto", "counts", "loop"] = "auto") -> np.ndarray:
    """Replicate scores, shape (n_models, n_bootstrap), on shared resamples (paired).

    ``strata``: one value per test example to resample within (see the module docstring), or
    None for plain resampling. ``method``: "counts" scores every chunk of replicates from cell
    counts (the metric's count form; an error when it has none), "loop" calls ``score_fn`` once
    per replicate and model, "auto" counts when it can. Both give identical replicates."""
    y_true = np.asarray(y_true)
    preds = [np.asarray(p) for p in predictions]
    for p in preds:
        if p.shape != y_true.shape:
            raise ValueError(f"predictions of shape {p.shape} do not match y_true {y_true.shape}")
    if method not in ("auto", "counts", "loop"):
        raise ValueError(f"method must be 'auto', 'counts' or 'loop'; got {method!r}")
    resampler = _Resampler(len(y_true), seed, strata)
    forms = None if method == "loop" else _count_forms(score_fn, y_true, preds)
    if forms is None and method == "counts":
        raise ValueError(f"{getattr(score_fn, '__name__', score_fn)!r} has no count form for "
                         f"labels of shape {y_true.shape}: register one with "
                         "register_metric(..., count_form=...), or use method='auto'")
    if forms is not None:
        return _replicates_from_counts(forms, resampler, n_bootstrap)
    return _replicates_by_loop(_callable(score_fn), y_true, preds, resampler, n_bootstrap)


def _callable(scorer: Scorer) -> ScoreFn:
    return metrics.metric_spec(scorer) if isinstance(scorer, str) else scorer


def _replicates_by_loop(score_fn: ScoreFn, y_true: np.ndarray, preds: list[np.ndarray],
                        resampler: _Resampler, n_bootstrap: int) -> np.ndarray:
    """The reference: the score function called on every replicate of every model."""
    out = np.empty((len(preds), n_bootstrap))
    for start, positions in resampler.chunks(n_bootstrap, _rows_per_chunk(resampler.n,
                                                                          n_bootstrap)):
        for b, rows in enumerate(resampler.examples(positions), start):
            t = y_true[rows]
            for m, p in enumerate(preds):
                out[m, b] = score_fn(t, p[rows])
    return out


def _replicates_from_counts(forms: list[metrics.CountForm], resampler: _Resampler,
                            n_bootstrap: int) -> np.ndarray:
    """Every model's replicates from per-chunk (replicate, cell) counts; all models read the
    same chunk of resamples, drawn once."""
    # each model's cell per resampling position, so a chunk needs one gather per model
    cells = [resampler.per_position(np.asarray(f.cell_of_example, dtype=np.intp)) for f in forms]
    rows_per_chunk = _rows_per_chunk(max(resampler.n, *(f.n_cells for f in forms)), n_bootstrap)
    out = np.empty((len(forms), n_bootstrap))
    start = 0
    while start < n_bootstrap:
        positions = resampler.draw(min(rows_per_chunk, n_bootstrap - start))
        rows = len(positions)
        for m, (form, cell) in enumerate(zip(forms, cells)):
            counts = np.empty((rows, form.n_cells), dtype=np.int64)
            # counted a few rows at a time, so that the keys stay in the CPU cache (~30% faster)
            step = max(1, COUNT_STEP_ELEMENTS // resampler.n)
            for first in range(0, rows, step):
                keys = cell[positions[first:first + step]]
                keys += (np.arange(len(keys), dtype=np.intp) * form.n_cells)[:, None]
                counts[first:first + step] = np.bincount(
                    keys.reshape(-1), minlength=len(keys) * form.n_cells).reshape(len(keys), -1)
            out[m, start:start + rows] = form.score_counts(counts)
            del counts, keys  # free each chunk's arrays before the next one is made
        del positions
        start += rows
    return out


@dataclass(frozen=True)
class Interval:
    estimate: float  # the score on the full test set
    low: float
    high: float
    level: float
    n_bootstrap: int

    @property
    def contains_estimate(self) -> bool:
        return self.low <= self.estimate <= self.high


def percentile_interval(estimate: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    alpha = 1 - level
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), level, len(replicates))


def bootstrap_ci(score_fn: Scorer, y_true, y_pred, *, n_bootstrap: int = 1000,
                 level: float = 0.95, seed: int = 0, strata=None) -> Interval:
    """Percentile bootstrap interval of ``score_fn`` over test examples (within ``strata``)."""
    estimate = _callable(score_fn)(np.asarray(y_true), np.asarray(y_pred))
    reps = bootstrap_replicates(score_fn, y_true, [y_pred], n_bootstrap=n_bootstrap, seed=seed,
                                strata=strata)[0]
    return percentile_interval(estimate, reps, level)


@dataclass(frozen=True)
class PairedComparison:
    difference: float  # score(a) - score(b) on the full test set
    low: float  # percentile interval of the difference
    high: float
    p_value: float  # two-sided


def paired_bootstrap(score_fn: Scorer, y_true, pred_a, pred_b, *, n_bootstrap: int = 1000,
                     level: float = 0.95, seed: int = 0, strata=None) -> PairedComparison:
    """Paired bootstrap of score(a) - score(b) on the same test examples.

    The two-sided p-value inverts the percentile interval of the difference: twice the smaller
    tail share of replicate differences on either side of zero (with the +1 correction that
    keeps a bootstrap p-value above zero).
    """
    y_true = np.asarray(y_true)
    reps = bootstrap_replicates(score_fn, y_true, [pred_a, pred_b], n_bootstrap=n_bootstrap,
                                seed=seed, strata=strata)
    diff = reps[0] - reps[1]
    score = _callable(score_fn)
    d_hat = score(y_true, np.asarray(pred_a)) - score(y_true, np.asarray(pred_b))
    tail = min(np.sum(diff <= 0), np.sum(diff >= 0))
    p = min(1.0, 2 * (tail + 1) / (n_bootstrap + 1))
    iv = percentile_interval(d_hat, diff, level)
    return PairedComparison(float(d_hat), iv.low, iv.high, float(p))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down correction: (reject, adjusted p-values)."""
    if len(p_values) == 0:
        return np.zeros(0, bool), np.zeros(0)
    reject, adjusted, _, _ = multipletests(np.asarray(p_values, float), alpha=alpha, method="holm")
    return reject, adjusted


@dataclass(frozen=True)
class BestAndTies:
    best: str
    ties: tuple[str, ...]  # includes best
    p_values: dict[str, float]  # one-sided, unadjusted, for each non-best model
    adjusted: dict[str, float]


def best_and_ties(score_fn: Scorer, y_true, predictions: dict[str, np.ndarray], *,
                  n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0,
                  strata=None) -> BestAndTies:
    """The best model by point estimate, and every model not significantly worse than it.

    For each other model m, a one-sided paired bootstrap p-value of "best is not better than
    m": the share of replicates where m scores at least as high as best (+1 corrected). Holm's
    correction runs over all those comparisons; models whose null is not rejected tie with best.
    """
    names = list(predictions)
    y_true = np.asarray(y_true)
    score = _callable(score_fn)
    estimates = {m: score(y_true, np.asarray(predictions[m])) for m in names}
    best = max(names, key=lambda m: (estimates[m], -names.index(m)))
    others = [m for m in names if m != best]
    reps = bootstrap_replicates(score_fn, y_true, [predictions[m] for m in [best, *others]],
                                n_bootstrap=n_bootstrap, seed=seed, strata=strata)
    p = {m: float((np.sum(reps[i + 1] >= reps[0]) + 1) / (n_bootstrap + 1))
         for i, m in enumerate(others)}
    reject, adjusted = holm([p[m] for m in others], alpha)
    ties = (best, *[m for m, r in zip(others, reject) if not r])
    return BestAndTies(best, ties, p, dict(zip(others, map(float, adjusted))))
