"""μ-Bench accuracy with intervals that respect the benchmark's design: images are the unit.

Every μ-Bench image carries several questions (5 coarse, 1 fine; a contrastive model answers
each in two phrasings), and the answers about one image are strongly correlated (an image a
model misreads tends to be misread on every question). Resampling questions as if independent
gives intervals that are far too narrow (``question_vs_image_resampling_demo`` shows how much).
So every interval here resamples **images**, with all of their questions, and within each
source dataset (stratified: every replicate keeps each dataset's image count, so the dataset
mix of the benchmark is fixed, as it is by design).

Input: a tidy table ``answers``, one row per (model, question) with columns ``model``,
``image_id``, ``dataset``, ``kind`` (question type: domain, ..., classification), ``slot`` (the
answer-matrix column, e.g. ``domain_0``) and ``correct`` (bool). ``tidy_answers`` builds it from
a stored (n_examples, n_slots) answer matrix. An image is a (dataset, image_id) pair; images are
ordered by (dataset, image_id), and that order indexes the resamples
(``biobench.stats.resample_indices`` with the dataset as stratum, the same draws as the rest of
the project).

Groups (``by``): ``kind`` (question type), ``part`` (coarse / fine), ``dataset``, ``group``
(taxonomy group), ``slice`` (a dataset can sit in several) and ``total``. ``group`` and ``slice``
read per-dataset metadata passed in (anything with ``.group`` and ``.slices``, e.g.
``biobench.ubench.meta.UBENCH_DATASETS``).

Two averages, named for what they are:

* **micro** (``micro_accuracy``): correct / questions, pooled over every question of the
  group. This is what the official μ-Bench code reports (the paper calls it "macro", spec §6).
* **macro** (``macro_accuracy``): the unweighted mean over datasets of each dataset's pooled
  accuracy in the group (the "mean over tasks" of the authors' fine-grained notebook, §8(c)).

Intervals are percentile intervals of the bootstrap replicates. A replicate in which a group has
no question at all (possible only for a group that covers part of a dataset's images, e.g. a
question type null on some images) is undefined and left out; ``n_boot`` reports how many
replicates were used. The percentile interval of a ratio can in principle miss its own estimate
when the replicate distribution is very skewed (more than ``(1 - level) / 2`` of the replicates
strictly on one side); then the violated end is moved to the estimate and ``widened`` is True, so
every reported interval contains its estimate. (The official code prints scipy's "basic"
interval over questions; the percentile interval over images is this project's choice.)

Paired comparisons (``paired_comparison``, ``specialist_minus_base``) score both models on the
same questions (the (dataset, image_id, kind) triples every compared model answered), take the
interval of the difference from the same image resamples for both models (a paired bootstrap),
and the two-sided p-value from a **sign-flip permutation test over images**: under the null that
the two models are exchangeable on each image, each image's (correct, questions) counts of the two
models are swapped with probability 1/2, and p = (1 + #{|flipped difference| >= |observed|}) /
(1 + n_perm). P-values are Holm-adjusted (``holm``) across every row of the returned table.

Scale: replicates are computed a chunk at a time; per chunk the resample indices become image
weights (``np.bincount``), and each dataset's block of weights is multiplied with that dataset's
(image, model, cell) count matrix, a cell being a (group, dataset) pair. No Python loop runs per
replicate. At μ-Bench's size (16,130 images, 12 models, 2 M answers, 1,000 replicates, every
grouping) ``accuracy_table`` took about 8 s and ``paired_comparison`` of all 66 pairs about 9 s
on two CPU cores.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from biobench.stats import iter_resample_indices
from biobench.ubench.meta import COARSE_KINDS, FINE_KIND
from biobench.zeroshot.base import MISSING

Average = Literal["micro", "macro"]
DIMENSIONS: tuple[str, ...] = ("kind", "part", "dataset", "group", "slice", "total")
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "image_id", "dataset", "kind", "slot", "correct")
PART_OF_KIND: dict[str, str] = {**{k: "coarse" for k in COARSE_KINDS}, FINE_KIND: "fine"}
TOTAL = "all"  # the value of the ``total`` dimension
# At most this many elements in any (replicates, images) or (replicates, cells) array of a chunk.
CHUNK_ELEMENTS = 2 ** 21


class DatasetMeta(Protocol):
    """What this module reads of a dataset's metadata (``biobench.ubench.meta.UbenchDataset``)."""

    group: str
    slices: tuple[str, ...]


# ---- tidy input -------------------------------------------------------------------------------

def kind_of_slot(slot: str) -> str:
    """The question type of an answer slot: ``domain_1`` -> ``domain``, ``stain`` -> ``stain``."""
    return re.sub(r"_\d+$", "", slot)


def tidy_answers(model: str, dataset: str | Sequence[str], image_ids: Sequence,
                 slot_names: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """The ``answers`` rows of one model's stored (n_examples, n_slots) matrices.

    Cells with ``y_true == MISSING`` are not questions and give no row; an unreadable answer
    (``y_pred == MISSING``) counts as wrong. ``dataset``: one key for every example, or one per
    example.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(image_ids)
    if y_true.shape != (n, len(slot_names)) or y_pred.shape != y_true.shape:
        raise ValueError(f"model {model!r}: y_true {y_true.shape} and y_pred {y_pred.shape} must "
                         f"both be (n_examples={n}, n_slots={len(slot_names)})")
    datasets = np.full(n, dataset, dtype=object) if isinstance(dataset, str) \
        else np.asarray(dataset, dtype=object)
    if datasets.shape != (n,):
        raise ValueError(f"model {model!r}: {len(datasets)} dataset keys for {n} examples")
    example, slot = np.nonzero(y_true != MISSING)
    slots = np.asarray(slot_names, dtype=object)
    return pd.DataFrame({
        "model": model,
        "image_id": np.asarray(image_ids, dtype=object)[example],
        "dataset": datasets[example],
        "kind": [kind_of_slot(s) for s in slots[slot]],
        "slot": slots[slot],
        "correct": y_pred[example, slot] == y_true[example, slot],
    })


@dataclass(frozen=True)
class _Coded:
    """The answers as integer codes, one entry per answer row.

    ``image``: the image's rank among all (dataset, image_id) pairs of the table, sorted by
    dataset then image_id; ``image_dataset[image]`` its dataset code (dataset codes follow the
    sorted ``dataset_names``, kind codes the sorted ``kind_names``)."""

    models: tuple[str, ...]
    model: np.ndarray
    image: np.ndarray
    image_dataset: np.ndarray
    dataset_names: np.ndarray
    kind: np.ndarray
    kind_names: np.ndarray
    correct: np.ndarray

    def where(self, keep: np.ndarray) -> "_Coded":
        return _Coded(self.models, self.model[keep], self.image[keep], self.image_dataset,
                      self.dataset_names, self.kind[keep], self.kind_names, self.correct[keep])


def _coded(answers: pd.DataFrame, models: Sequence[str] | None) -> _Coded:
    """``answers`` checked and coded, restricted to ``models`` (their order sets the codes)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in answers.columns]
    if missing:
        raise ValueError(f"answers table lacks columns {missing}; it needs "
                         f"{list(REQUIRED_COLUMNS)} (see tidy_answers)")
    if len(answers) == 0:
        raise ValueError("answers table is empty: no questions to score")
    null_dataset = answers["dataset"].isna()
    if null_dataset.any():
        raise ValueError(f"{int(null_dataset.sum())} answers have no dataset (μ-Bench's Held et "
                         "al. 2010 rows have dataset=null on the Hub: resolve them from their "
                         "stain, biobench.ubench.meta.HELD_BY_STAIN)")
    for column in ("model", "image_id", "kind", "slot", "correct"):
        if answers[column].isna().any():
            raise ValueError(f"answers column {column!r} has missing values")
    correct = answers["correct"].to_numpy()
    if correct.dtype != bool:
        if not np.isin(pd.unique(correct), [0, 1]).all():
            raise ValueError("answers column 'correct' must be boolean (or 0/1)")
    model_code, present = pd.factorize(answers["model"])
    present = list(present)
    if models is None:
        models = present
    else:
        models = list(models)
        unknown = [m for m in models if m not in present]
        if unknown:
            raise ValueError(f"unknown models {unknown}: the answers table holds {present}")
        if len(set(models)) != len(models):
            raise ValueError(f"models listed twice: {models}")
    # codes in the order of ``models``; -1 for rows of other models
    recode = np.array([models.index(m) if m in models else -1 for m in present], dtype=np.int64)
    model = recode[model_code]
    keep = model >= 0

    dataset_code, dataset_names = pd.factorize(answers["dataset"], sort=True)
    image_id_code, image_ids = pd.factorize(answers["image_id"], sort=True)
    pair = dataset_code.astype(np.int64) * len(image_ids) + image_id_code
    image_keys, image = np.unique(pair, return_inverse=True)  # sorted: by dataset, then id
    kind, kind_names = pd.factorize(answers["kind"], sort=True)
    slot, slot_names = pd.factorize(answers["slot"])
    key = ((image.reshape(-1)[keep] * len(models) + model[keep]) * len(slot_names)
           + slot[keep])
    unique_keys, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        twice = unique_keys[counts > 1][0]
        row = np.flatnonzero(keep)[np.flatnonzero(key == twice)[0]]
        first = answers.iloc[row]
        raise ValueError(f"{int(np.sum(counts[counts > 1] - 1))} duplicate answers, e.g. model "
                         f"{first['model']!r} image {first['dataset']}/{first['image_id']} slot "
                         f"{first['slot']!r}: each (model, image, slot) must appear once")
    return _Coded(tuple(models), model[keep], image.reshape(-1)[keep],
                  (image_keys // len(image_ids)).astype(np.int64),
                  np.asarray(dataset_names, dtype=object), kind[keep].astype(np.int64),
                  np.asarray(kind_names, dtype=object), correct[keep].astype(np.int64))


# ---- point estimates --------------------------------------------------------------------------

def micro_accuracy(answers: pd.DataFrame) -> float:
    """Accuracy pooled over questions (correct / questions): μ-Bench's official number.
    ``answers``: the rows of one model (and one group)."""
    if len(answers) == 0:
        raise ValueError("micro accuracy of no questions is undefined")
    return float(np.mean(answers["correct"].to_numpy(dtype=float)))


def macro_accuracy(answers: pd.DataFrame) -> float:
    """The unweighted mean over datasets of each dataset's pooled accuracy, on the rows of one
    model (and one group)."""
    if len(answers) == 0:
        raise ValueError("macro accuracy of no questions is undefined")
    return float(answers.groupby("dataset")["correct"].mean().mean())


# ---- the count structure ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Counts:
    """Per-image counts of every (model, cell), a cell being a (group, dataset) pair.

    Images are ordered by (dataset, image_id), so each dataset is a contiguous block
    ``blocks[d]``; cells are ordered by dataset, so each dataset's cells are the contiguous
    ``cell_blocks[d]``. ``correct[d]``/``total[d]``: (n_images_d, n_models, n_cells_d)."""

    models: tuple[str, ...]
    groups: pd.DataFrame  # columns by, value; row g is group g
    image_dataset: np.ndarray  # dataset code of each image
    blocks: tuple[slice, ...]
    cell_blocks: tuple[slice, ...]
    cell_group: np.ndarray  # (n_cells,) group of each cell
    correct: tuple[np.ndarray, ...]
    total: tuple[np.ndarray, ...]
    n_images: np.ndarray  # (n_models, n_groups) images with a question of the group
    n_questions: np.ndarray  # (n_models, n_groups)

    @property
    def n(self) -> int:
        return len(self.image_dataset)

    @property
    def n_cells(self) -> int:
        return len(self.cell_group)

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """(correct, total), each (n_models, n_cells), of the full test set."""
        return (np.concatenate([c.sum(axis=0) for c in self.correct], axis=-1),
                np.concatenate([t.sum(axis=0) for t in self.total], axis=-1))

    def indicator(self) -> np.ndarray:
        """(n_cells, n_groups): 1 where the cell belongs to the group."""
        out = np.zeros((self.n_cells, len(self.groups)))
        out[np.arange(self.n_cells), self.cell_group] = 1
        return out


def _check_by(by: Sequence[str], datasets: Sequence[str],
              metadata: Mapping[str, DatasetMeta] | None) -> None:
    unknown = [b for b in by if b not in DIMENSIONS]
    if unknown or not by:
        raise ValueError(f"unknown grouping {unknown or list(by)}: choose from {list(DIMENSIONS)}")
    if len(set(by)) != len(by):
        raise ValueError(f"grouping listed twice: {list(by)}")
    if {"group", "slice"} & set(by):
        if metadata is None:
            raise ValueError("grouping by taxonomy group or slice needs the per-dataset metadata: "
                             "pass metadata=biobench.ubench.meta.UBENCH_DATASETS (or your own)")
        absent = sorted(set(datasets) - set(metadata))
        if absent:
            raise ValueError(f"no metadata for datasets {absent}: add them to the metadata "
                             "mapping (taxonomy group and slices)")


def _group_values(dim: str, dataset: str, kind: str,
                  metadata: Mapping[str, DatasetMeta] | None) -> tuple[str, ...]:
    """The values of ``dim`` that questions of ``kind`` about ``dataset`` belong to."""
    if dim == "kind":
        return (kind,)
    if dim == "part":
        if kind not in PART_OF_KIND:
            raise ValueError(f"question kind {kind!r} is neither coarse {list(COARSE_KINDS)} nor "
                             f"fine ({FINE_KIND!r}): it has no part")
        return (PART_OF_KIND[kind],)
    if dim == "dataset":
        return (dataset,)
    if dim == "group":
        return (metadata[dataset].group,)
    if dim == "slice":
        return tuple(metadata[dataset].slices)
    return (TOTAL,)


def _count_structure(coded: _Coded, by: Sequence[str],
                     metadata: Mapping[str, DatasetMeta] | None) -> _Counts:
    """Count every model's correct answers and questions per image and cell."""
    image_keys, image = np.unique(coded.image, return_inverse=True)  # only images with questions
    image = image.reshape(-1)
    image_dataset = coded.image_dataset[image_keys]  # non-decreasing: images sorted by dataset
    datasets = np.unique(image_dataset)
    _check_by(by, list(coded.dataset_names[datasets]), metadata)
    n, n_models, n_kinds = len(image_keys), len(coded.models), len(coded.kind_names)
    flat = (image * n_models + coded.model) * n_kinds + coded.kind
    per_kind_correct = np.bincount(flat, coded.correct, n * n_models * n_kinds).reshape(
        n, n_models, n_kinds)
    per_kind_total = np.bincount(flat, minlength=n * n_models * n_kinds).reshape(
        n, n_models, n_kinds).astype(float)
    starts = np.searchsorted(image_dataset, np.append(datasets, datasets[-1] + 1))
    blocks = [slice(starts[i], starts[i + 1]) for i in range(len(datasets))]

    # the groups of each (dataset, kind) with questions
    members: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for block, d in zip(blocks, datasets):
        for k in np.flatnonzero(per_kind_total[block].sum(axis=(0, 1)) > 0):
            members[d, k] = [(dim, value) for dim in by for value in _group_values(
                dim, coded.dataset_names[d], coded.kind_names[k], metadata)]
    group_list = sorted({g for gs in members.values() for g in gs},
                        key=lambda g: (list(by).index(g[0]), g[1]))
    if not group_list:  # only a slice can be empty: a dataset may sit in no slice
        raise ValueError(f"no question falls in any group of by={list(by)}: none of the datasets "
                         f"{list(coded.dataset_names[datasets])} is in a slice of the metadata")
    group_of = {g: i for i, g in enumerate(group_list)}

    correct, total, cell_group, cell_blocks = [], [], [], []
    n_images = np.zeros((n_models, len(group_list)), dtype=np.int64)
    n_questions = np.zeros_like(n_images)
    for block, d in zip(blocks, datasets):
        kinds = [k for k in range(n_kinds) if (d, k) in members]
        cells = sorted({group_of[g] for k in kinds for g in members[d, k]})
        # kind_to_cell[k, c] = 1: questions of kind k count towards cell c
        kind_to_cell = np.zeros((n_kinds, len(cells)))
        for k in kinds:
            for g in members[d, k]:
                kind_to_cell[k, cells.index(group_of[g])] = 1
        c = per_kind_correct[block] @ kind_to_cell
        t = per_kind_total[block] @ kind_to_cell
        correct.append(c)
        total.append(t)
        cell_blocks.append(slice(len(cell_group), len(cell_group) + len(cells)))
        cell_group.extend(cells)
        # an image is in one dataset, so it reaches a group through one cell only
        n_images[:, cells] += np.count_nonzero(t > 0, axis=0)
        n_questions[:, cells] += t.sum(axis=0).astype(np.int64)
    groups = pd.DataFrame(group_list, columns=["by", "value"], dtype=object)
    return _Counts(coded.models, groups, image_dataset, tuple(blocks), tuple(cell_blocks),
                   np.asarray(cell_group, dtype=np.int64), tuple(correct), tuple(total),
                   n_images, n_questions)


def _statistic(correct: np.ndarray, total: np.ndarray, valid: np.ndarray, indicator: np.ndarray,
               average: Average) -> np.ndarray:
    """Accuracy per group from cell counts (..., n_cells) -> (..., n_groups); NaN where undefined.

    ``valid`` (broadcast to the counts): the cells the full test set has questions in; a macro
    average runs over those datasets only, and is undefined in a replicate that empties one."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if average == "micro":
            return (correct @ indicator) / (total @ indicator)
        ratio = np.where(valid, correct / total, 0.0)  # NaN kept where a valid cell is empty
        return (ratio @ indicator) / (valid.astype(float) @ indicator)


def _check_average(average: str) -> None:
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' (pooled over questions) or 'macro' (mean over "
                         f"datasets); got {average!r}")


def _rows_per_chunk(width: int, n_rows: int) -> int:
    return max(1, min(n_rows, CHUNK_ELEMENTS // max(width, 1)))


def _bootstrap_statistics(counts: _Counts, n_boot: int, seed: int,
                          average: Average) -> Iterator[np.ndarray]:
    """Chunks of (rows, n_models, n_groups) replicate accuracies, images resampled within
    datasets: row b uses ``resample_indices(n_images, n_boot, seed, strata=dataset)[b]``."""
    full_correct, full_total = counts.full()
    valid, indicator = full_total > 0, counts.indicator()
    n, n_models = counts.n, len(counts.models)
    rows = _rows_per_chunk(max(n, n_models * counts.n_cells), n_boot)
    for idx in iter_resample_indices(n, n_boot, seed, strata=counts.image_dataset,
                                     rows_per_chunk=rows):
        r = len(idx)
        # how often each image is drawn in each replicate
        weights = np.bincount((idx + (np.arange(r) * n)[:, None]).reshape(-1),
                              minlength=r * n).reshape(r, n).astype(float)
        correct = np.empty((r, n_models, counts.n_cells))
        total = np.empty_like(correct)
        for block, cells, c, t in zip(counts.blocks, counts.cell_blocks, counts.correct,
                                      counts.total):
            w = weights[:, block]
            correct[:, :, cells] = (w @ c.reshape(len(c), -1)).reshape(r, n_models, -1)
            total[:, :, cells] = (w @ t.reshape(len(t), -1)).reshape(r, n_models, -1)
        yield _statistic(correct, total, valid, indicator, average)


# ---- accuracy with intervals ------------------------------------------------------------------

@dataclass(frozen=True)
class AccuracyReplicates:
    """Point estimates and bootstrap replicates, one column per (model, by, value) row."""

    rows: pd.DataFrame  # model, by, value, n_images, n_questions
    estimate: np.ndarray  # (n_rows,)
    replicates: np.ndarray  # (n_boot, n_rows); NaN: the group had no question in that replicate
    average: Average


def accuracy_replicates(answers: pd.DataFrame, by: Sequence[str] = ("kind", "total"), *,
                        metadata: Mapping[str, DatasetMeta] | None = None,
                        models: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0,
                        average: Average = "micro") -> AccuracyReplicates:
    """Every model's accuracy per group, and its image-level replicates (stratified by dataset;
    all models share the same resamples). Rows exist for the groups a model has questions in."""
    _check_average(average)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    counts = _count_structure(_coded(answers, models), by, metadata)
    full_correct, full_total = counts.full()
    estimate = _statistic(full_correct, full_total, full_total > 0, counts.indicator(), average)
    reps = np.concatenate(list(_bootstrap_statistics(counts, n_boot, seed, average)))
    model_idx, group_idx = np.nonzero(counts.n_questions > 0)
    rows = pd.DataFrame({
        "model": np.asarray(counts.models, dtype=object)[model_idx],
        "by": counts.groups["by"].to_numpy()[group_idx],
        "value": counts.groups["value"].to_numpy()[group_idx],
        "n_images": counts.n_images[model_idx, group_idx],
        "n_questions": counts.n_questions[model_idx, group_idx],
    })
    return AccuracyReplicates(rows, estimate[model_idx, group_idx],
                              reps[:, model_idx, group_idx], average)


def percentile_intervals(estimate: np.ndarray, replicates: np.ndarray, level: float = 0.95
                         ) -> pd.DataFrame:
    """Percentile intervals of each column of ``replicates`` (NaN replicates left out), with
    the end that misses its estimate, if any, moved to the estimate (``widened``).

    Columns: low, high, n_boot (replicates used), widened."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1; got {level}")
    estimate = np.asarray(estimate, dtype=float)
    replicates = np.asarray(replicates, dtype=float).reshape(-1, len(estimate))
    used = np.sum(~np.isnan(replicates), axis=0)
    alpha = 1 - level
    low = np.full(len(estimate), np.nan)
    high = np.full(len(estimate), np.nan)
    some = used > 0
    if some.any():
        low[some], high[some] = np.nanquantile(replicates[:, some], [alpha / 2, 1 - alpha / 2],
                                               axis=0)
    widened = (estimate < low) | (estimate > high)
    low, high = np.fmin(low, estimate), np.fmax(high, estimate)
    return pd.DataFrame({"low": low, "high": high, "n_boot": used, "widened": widened})


def accuracy_table(answers: pd.DataFrame, by: Sequence[str] = ("kind", "total"), *,
                   metadata: Mapping[str, DatasetMeta] | None = None,
                   models: Sequence[str] | None = None, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, average: Average = "micro") -> pd.DataFrame:
    """Accuracy per model and group with an image-level percentile bootstrap interval.

    One row per (model, by, value): accuracy (``average``: "micro" pools the group's questions,
    μ-Bench's official number; "macro" is the mean over datasets), low, high, level, n_boot,
    widened, n_images, n_questions, average. The official μ-Bench tables are
    ``by=("kind", "total")`` on the coarse kinds and ``by=("dataset", "total")`` on the fine one
    (spec §6); pass the rows of those kinds (and datasets) only.
    """
    reps = accuracy_replicates(answers, by, metadata=metadata, models=models, n_boot=n_boot,
                               seed=seed, average=average)
    intervals = percentile_intervals(reps.estimate, reps.replicates, level)
    table = reps.rows[["model", "by", "value"]].assign(accuracy=reps.estimate)
    table = pd.concat([table, intervals], axis=1)
    return table.assign(level=level, n_images=reps.rows["n_images"],
                        n_questions=reps.rows["n_questions"], average=average)[
        ["model", "by", "value", "accuracy", "low", "high", "level", "n_boot", "widened",
         "n_images", "n_questions", "average"]]


# ---- paired comparisons -----------------------------------------------------------------------

def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction: (reject at ``alpha``, adjusted p-values), in input order.

    The i-th smallest p-value is multiplied by (m - i + 1) (i from 1), capped at 1, and made
    non-decreasing along the sorted order; a hypothesis is rejected when its adjusted p-value is
    at most ``alpha``. Controls the family-wise error rate under any dependence.
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must lie in [0, 1]; got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted <= alpha, adjusted


def sign_flips(n_images: int, n_perm: int, seed: int, *, rows_per_chunk: int | None = None
               ) -> Iterator[np.ndarray]:
    """Chunks of the (n_perm, n_images) 0/1 swap matrix of the permutation test (1: the two
    models' answers on that image are swapped); the chunking does not change the draws."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))  # not the bootstrap's stream
    rows = rows_per_chunk or _rows_per_chunk(n_images, n_perm)
    for start in range(0, n_perm, rows):
        yield (rng.random((min(rows, n_perm - start), n_images)) < 0.5).astype(float)


@dataclass(frozen=True)
class PairedReplicates:
    """Differences model_a - model_b per group on shared questions, with their paired image
    bootstrap replicates and sign-flip permutation replicates."""

    rows: pd.DataFrame  # model_a, model_b, by, value, n_images, n_questions_a, n_questions_b
    difference: np.ndarray  # (n_rows,)
    bootstrap: np.ndarray  # (n_boot, n_rows)
    flips: np.ndarray  # (n_perm, n_rows)
    average: Average


def _shared(coded: _Coded) -> _Coded:
    """The rows on the (image, kind) questions every model of ``coded`` answered (a contrastive
    model's two phrasings and a generative model's one answer are the same question)."""
    n_models, n_kinds = len(coded.models), len(coded.kind_names)
    question = coded.image * n_kinds + coded.kind
    answered_by = np.unique(question * n_models + coded.model) // n_models
    models_per_question = np.bincount(answered_by, minlength=question.max() + 1)
    shared = coded.where(models_per_question[question] == n_models)
    if len(shared.model) == 0:
        raise ValueError(f"models {list(coded.models)} share no question: compare models run on "
                         "the same images")
    return shared


def paired_replicates(answers: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                      by: Sequence[str] = ("total",), *,
                      metadata: Mapping[str, DatasetMeta] | None = None, n_boot: int = 1000,
                      n_perm: int = 1000, seed: int = 0, average: Average = "micro"
                      ) -> PairedReplicates:
    """The differences of ``pairs`` on the questions all their models share, with replicates."""
    _check_average(average)
    if not pairs:
        raise ValueError("no pairs of models to compare")
    if n_boot < 1 or n_perm < 1:
        raise ValueError(f"n_boot and n_perm must be at least 1; got {n_boot}, {n_perm}")
    for a, b in pairs:
        if a == b:
            raise ValueError(f"cannot compare model {a!r} with itself")
    models = list(dict.fromkeys(m for pair in pairs for m in pair))
    counts = _count_structure(_shared(_coded(answers, models)), by, metadata)
    a_idx = np.array([counts.models.index(a) for a, _ in pairs])
    b_idx = np.array([counts.models.index(b) for _, b in pairs])

    full_correct, full_total = counts.full()
    valid, indicator = full_total > 0, counts.indicator()
    estimate = _statistic(full_correct, full_total, valid, indicator, average)
    difference = estimate[a_idx] - estimate[b_idx]  # (n_pairs, n_groups)
    boot = np.concatenate([s[:, a_idx] - s[:, b_idx]
                           for s in _bootstrap_statistics(counts, n_boot, seed, average)])

    # swapping image i moves (b - a) of its counts from b to a: a' = a + S @ (b - a), b' = ...
    n_pairs = len(pairs)
    flip_chunks = []
    for swap in sign_flips(counts.n, n_perm, seed,
                           rows_per_chunk=_rows_per_chunk(max(counts.n, n_pairs * counts.n_cells),
                                                          n_perm)):
        r = len(swap)
        moved_correct = np.empty((r, n_pairs, counts.n_cells))
        moved_total = np.empty_like(moved_correct)
        for block, cells, c, t in zip(counts.blocks, counts.cell_blocks, counts.correct,
                                      counts.total):
            s = swap[:, block]
            for moved, x in ((moved_correct, c), (moved_total, t)):
                delta = x[:, b_idx] - x[:, a_idx]
                moved[:, :, cells] = (s @ delta.reshape(len(delta), -1)).reshape(r, n_pairs, -1)
        stat_a = _statistic(full_correct[a_idx] + moved_correct, full_total[a_idx] + moved_total,
                            valid[a_idx], indicator, average)
        stat_b = _statistic(full_correct[b_idx] - moved_correct, full_total[b_idx] - moved_total,
                            valid[b_idx], indicator, average)
        flip_chunks.append(stat_a - stat_b)
    flips = np.concatenate(flip_chunks)

    pair_idx, group_idx = np.nonzero((counts.n_questions[a_idx] > 0)
                                     & (counts.n_questions[b_idx] > 0))
    rows = pd.DataFrame({
        "model_a": np.array([a for a, _ in pairs], dtype=object)[pair_idx],
        "model_b": np.array([b for _, b in pairs], dtype=object)[pair_idx],
        "by": counts.groups["by"].to_numpy()[group_idx],
        "value": counts.groups["value"].to_numpy()[group_idx],
        # shared questions: both models have questions on the same images
        "n_images": counts.n_images[a_idx[pair_idx], group_idx],
        "n_questions_a": counts.n_questions[a_idx[pair_idx], group_idx],
        "n_questions_b": counts.n_questions[b_idx[pair_idx], group_idx],
    })
    return PairedReplicates(rows, difference[pair_idx, group_idx],
                            boot[:, pair_idx, group_idx], flips[:, pair_idx, group_idx], average)


def permutation_p_values(difference: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Two-sided sign-flip p-values, (1 + #{|flip| >= |observed|}) / (1 + #flips), per column;
    a relative tolerance absorbs rounding so that a flip equal to the observed value counts."""
    observed = np.abs(np.asarray(difference, dtype=float))
    flips = np.abs(np.asarray(flips, dtype=float))
    used = np.sum(~np.isnan(flips), axis=0)
    at_least = np.sum(flips >= observed * (1 - 1e-12) - 1e-15, axis=0)
    return (1 + at_least) / (1 + used)


def _comparison_table(reps: PairedReplicates, level: float, alpha: float) -> pd.DataFrame:
    intervals = percentile_intervals(reps.difference, reps.bootstrap, level)
    p = permutation_p_values(reps.difference, reps.flips)
    reject, adjusted = holm(p, alpha)
    table = reps.rows[["model_a", "model_b", "by", "value"]].assign(difference=reps.difference)
    table = pd.concat([table, intervals], axis=1)
    return table.assign(level=level, p_value=p, p_holm=adjusted, reject=reject,
                        n_images=reps.rows["n_images"], n_questions_a=reps.rows["n_questions_a"],
                        n_questions_b=reps.rows["n_questions_b"], average=reps.average)[
        ["model_a", "model_b", "by", "value", "difference", "low", "high", "level", "n_boot",
         "widened", "p_value", "p_holm", "reject", "n_images", "n_questions_a", "n_questions_b",
         "average"]]


def paired_comparison(answers: pd.DataFrame, models: Sequence[str],
                      by: Sequence[str] = ("total",), *,
                      metadata: Mapping[str, DatasetMeta] | None = None, n_boot: int = 1000,
                      n_perm: int = 1000, level: float = 0.95, alpha: float = 0.05,
                      seed: int = 0, average: Average = "micro") -> pd.DataFrame:
    """Every pair of ``models``: accuracy difference (a - b, a listed first) per group.

    All pairs use the questions every listed model answered, so the table compares like with
    like. Interval: paired image-level bootstrap (percentile, stratified by dataset). p_value:
    two-sided sign-flip permutation test over images; p_holm: Holm-adjusted over all rows of
    the table; reject: p_holm <= alpha.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"a paired comparison needs at least two models; got {models}")
    reps = paired_replicates(answers, list(itertools.combinations(models, 2)), by,
                             metadata=metadata, n_boot=n_boot, n_perm=n_perm, seed=seed,
                             average=average)
    return _comparison_table(reps, level, alpha)


def specialist_minus_base(answers: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                          by: Sequence[str] = ("part",), *,
                          metadata: Mapping[str, DatasetMeta] | None = None,
                          n_boot: int = 1000, n_perm: int = 1000, level: float = 0.95,
                          alpha: float = 0.05, seed: int = 0, average: Average = "micro"
                          ) -> pd.DataFrame:
    """Fine-tuned specialist minus its generalist base (spec §8(e): e.g. ("plip", "clip")),
    for coarse and fine questions separately (``by=("part",)``).

    Each pair is compared on the questions both of its models answered (pairs are independent
    of each other); columns as ``paired_comparison`` with model_a/model_b named specialist/base,
    p-values Holm-adjusted over all rows.
    """
    if not pairs:
        raise ValueError("no (specialist, base) pairs given, e.g. [('plip', 'clip')]")
    parts = [paired_replicates(answers, [pair], by, metadata=metadata, n_boot=n_boot,
                               n_perm=n_perm, seed=seed, average=average) for pair in pairs]
    merged = PairedReplicates(pd.concat([p.rows for p in parts], ignore_index=True),
                              np.concatenate([p.difference for p in parts]),
                              np.concatenate([p.bootstrap for p in parts], axis=1),
                              np.concatenate([p.flips for p in parts], axis=1), average)
    return _comparison_table(merged, level, alpha).rename(
        columns={"model_a": "specialist", "model_b": "base",
                 "n_questions_a": "n_questions_specialist", "n_questions_b": "n_questions_base"})


# ---- why images, not questions ----------------------------------------------------------------

@dataclass(frozen=True)
class ResamplingDemo:
    """Spread of pooled accuracy: the truth (simulated datasets) vs two bootstraps.

    ``*_sd``: standard deviation; ``*_width``: width of the central 95% range (for a bootstrap,
    of its percentile interval). Bootstrap figures are means over ``n_observed`` datasets, with
    the standard error of that mean (``*_se``); ``true_sd_se`` is the simulation error of
    ``true_sd``."""

    n_images: int
    questions_per_image: int
    accuracy: float  # the model's expected accuracy under the generative model
    true_sd: float
    true_sd_se: float
    true_width: float
    image_level_sd: float
    image_level_sd_se: float
    image_level_width: float
    question_level_sd: float
    question_level_sd_se: float
    question_level_width: float
    binomial_sd: float  # sqrt(p (1 - p) / questions): what independent questions would give


def question_vs_image_resampling_demo(seed: int = 0, *, n_images: int = 150,
                                      questions_per_image: int = 6, difficulty_sd: float = 2.0,
                                      mean_logit: float = 0.5, n_simulations: int = 4000,
                                      n_observed: int = 30, n_boot: int = 400) -> ResamplingDemo:
    """Constructed data where an image's questions share a latent difficulty.

    Image i has difficulty z_i ~ N(0, difficulty_sd^2); each of its questions is answered
    correctly with probability sigmoid(mean_logit + z_i), independently given z_i. The
    estimator is pooled (micro) accuracy. The true sampling SD comes from ``n_simulations``
    datasets; each of ``n_observed`` further datasets is bootstrapped by this module twice:
    over images (``accuracy_replicates``) and over questions (the same code with every question
    made its own "image").
    """
    rng = np.random.default_rng(seed)

    def simulate(n_sets: int) -> np.ndarray:  # (n_sets, n_images, questions) correct
        z = rng.normal(0.0, difficulty_sd, size=(n_sets, n_images, 1))
        p = 1 / (1 + np.exp(-(mean_logit + z)))
        return rng.random((n_sets, n_images, questions_per_image)) < p

    truth = simulate(n_simulations).mean(axis=(1, 2))
    true_sd = float(truth.std(ddof=1))
    alpha_range = np.quantile(truth, [0.025, 0.975])
    z = np.random.default_rng(seed + 1).normal(0.0, difficulty_sd, 200_000)
    accuracy = float(np.mean(1 / (1 + np.exp(-(mean_logit + z)))))

    image_sd, image_width, question_sd, question_width = [], [], [], []
    image_ids = np.repeat(np.arange(n_images), questions_per_image)
    kinds = np.tile([f"q{j}" for j in range(questions_per_image)], n_images)
    for b, correct in enumerate(simulate(n_observed)):
        table = pd.DataFrame({"model": "m", "image_id": image_ids, "dataset": "constructed",
                              "kind": kinds, "slot": kinds, "correct": correct.reshape(-1)})
        by_question = table.assign(image_id=np.arange(len(table)))
        for target_sd, target_width, t in ((image_sd, image_width, table),
                                           (question_sd, question_width, by_question)):
            reps = accuracy_replicates(t, ("total",), n_boot=n_boot, seed=seed + 10 + b)
            iv = percentile_intervals(reps.estimate, reps.replicates)
            target_sd.append(reps.replicates[:, 0].std(ddof=1))
            target_width.append(float(iv["high"].iloc[0] - iv["low"].iloc[0]))

    def mean_and_se(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))

    image_level_sd, image_level_sd_se = mean_and_se(image_sd)
    question_level_sd, question_level_sd_se = mean_and_se(question_sd)
    return ResamplingDemo(
        n_images=n_images, questions_per_image=questions_per_image, accuracy=accuracy,
        true_sd=true_sd, true_sd_se=float(true_sd / np.sqrt(2 * (n_simulations - 1))),
        true_width=float(alpha_range[1] - alpha_range[0]),
        image_level_sd=image_level_sd, image_level_sd_se=image_level_sd_se,
        image_level_width=float(np.mean(image_width)),
        question_level_sd=question_level_sd, question_level_sd_se=question_level_sd_se,
        question_level_width=float(np.mean(question_width)),
        binomial_sd=float(np.sqrt(accuracy * (1 - accuracy)
                                  / (n_images * questions_per_image))))
