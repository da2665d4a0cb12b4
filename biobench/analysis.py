"""Does ImageNet accuracy predict ecology performance? Pure functions over store DataFrames.

Everything here takes the DataFrames that :class:`biobench.store.ResultsStore` returns
(``store.runs(source)`` and ``store.models(source)``) and returns numbers or DataFrames, so the
same analysis serves the imported published leaderboard and our own runs.

Definitions (they follow the spec of the published-results analysis):

- **x** is a model's ImageNet-1K top-1 from the store's ``models`` table (for the published
  leaderboard: the linear-probe accuracy on frozen features). A task score is the run's
  ``score`` (the point estimate on the full test set).
- **Pooled**: y is the unweighted mean of a model's scores over the task set; each statistic is
  computed between x and y.
- **Per-task mean**: the statistic is computed between x and each task's scores on the same
  model set, and the per-task values are averaged arithmetically.
- **R²**: OLS of y on x with an intercept (equal to Pearson r²).
- **Spearman ρ**: Pearson correlation of average ranks. **Kendall τ**: τ-b.
- **Mis-ordered share**: over unordered pairs of models, discordant / (concordant + discordant);
  pairs tied on either axis count as neither.
- **Above the threshold**: x >= threshold (inclusive).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import rankdata

from biobench.stats import resample_indices

PAPER_TASKS: tuple[str, ...] = (
    "beluga", "fishnet", "fungiclef", "herbarium19", "iwildcam", "kabr", "mammalnet", "plankton",
    "plantnet",
)
ECDYSIS = "ecdysis"
BENCHMARK_TASKS_WITH_ECDYSIS: tuple[str, ...] = tuple(sorted((*PAPER_TASKS, ECDYSIS)))
PRIOR_WORK_TASKS: tuple[str, ...] = ("imagenet1k", "newt", "inat21")
IMAGENET_TASK = "imagenet1k"
THRESHOLD = 0.75
BIOLOGY_FAMILY = "cv4ecology"  # BioCLIP, BioCLIP-2, BioCLIP-2.5, BioCAP, BioTrove-CLIP, MegaDescriptor
DEFAULT_SWEEP: tuple[float, ...] = tuple(np.round(np.arange(0.60, 0.8801, 0.01), 2))

# What the paper and its drafts claim (spec: published-results.md, section 3), for comparison.
PAPER_CLAIMS: dict[str, float] = {
    "variance_explained": 0.34,  # "ImageNet top-1 accuracy explains only 34% of variance"
    "misranked_above": 0.30,  # "mis-ranks 30% of models above 75% accuracy"
    "spearman_above": 0.55,  # draft / third-party summary
    "spearman_below": 0.82,  # draft: "0.82 below 75%"
    "n_checkpoints": 46,
}


@dataclass(frozen=True)
class ModelSetSpec:
    name: str
    label: str
    tasks: tuple[str, ...]
    exclude_families: tuple[str, ...] = ()


MODEL_SETS: dict[str, ModelSetSpec] = {s.name: s for s in (
    ModelSetSpec("all", "all models", PAPER_TASKS),
    ModelSetSpec("ten_tasks", "10 tasks (with Ecdysis)", BENCHMARK_TASKS_WITH_ECDYSIS),
    ModelSetSpec("excl_cv4ecology", "excl. cv4ecology", PAPER_TASKS, (BIOLOGY_FAMILY,)),
    ModelSetSpec("vit_only", "ViT-only (excl. cv4ecology, CNN, SAM2)", PAPER_TASKS,
                 (BIOLOGY_FAMILY, "CNN", "SAM2")),
)}


# ---- from store rows to a models x tasks matrix -----------------------------------------------
def score_matrix(runs: pd.DataFrame, *, value: str = "score", agg: str | None = None) -> pd.DataFrame:
    """Models x tasks table of ``value`` from ``store.runs(...)`` rows.

    One row per (model, task) is expected; filter by source/protocol first. With ``agg``
    (e.g. ``'mean'`` over seeds) duplicates are aggregated instead of refused.
    """
    missing = {"model", "task", value} - set(runs.columns)
    if missing:
        raise ValueError(f"runs lack columns {sorted(missing)}; pass store.runs(...) output")
    dup = runs.duplicated(["model", "task"], keep=False)
    if dup.any() and agg is None:
        example = runs.loc[dup, ["model", "task"]].iloc[0].to_dict()
        raise ValueError(
            f"{int(dup.sum())} runs share a (model, task), e.g. {example}: filter the runs to "
            "one source, protocol, seed and n_train, or pass agg='mean'"
        )
    matrix = runs.pivot_table(index="model", columns="task", values=value, aggfunc=agg or "first")
    matrix.columns.name = None
    return matrix


def task_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Task name -> display name, from ``extra['task_display']`` where runs carry it."""
    shown = runs["extra"].map(lambda e: (e or {}).get("task_display"))
    labels = dict(zip(runs["task"], shown))
    return {task: label or task for task, label in labels.items()}


def model_info(models: pd.DataFrame) -> pd.DataFrame:
    """The store's ``models`` rows indexed by model (display, family, params, resolution, ...)."""
    if models["model"].duplicated().any():
        raise ValueError("the models table has a model twice; pass store.models(source) for one source")
    return models.set_index("model")


def display_names(info: pd.DataFrame) -> pd.Series:
    """Model -> a unique label: the display name, plus the input resolution (then the model id)
    where several checkpoints share a display name (e.g. one model at three resolutions)."""
    ids = pd.Series(info.index, index=info.index)
    names = info["display"].fillna(ids) if "display" in info else ids
    if "resolution" in info:
        shared = names.duplicated(keep=False) & info["resolution"].notna()
        names = names.where(~shared, names + " @" + info["resolution"].astype("Int64").astype(str) + "px")
    shared = names.duplicated(keep=False)
    return names.where(~shared, names + " [" + ids + "]").rename("display")


@dataclass(frozen=True)
class ModelSet:
    """Models with ImageNet top-1 and every task of ``tasks``: x, task scores and metadata."""

    name: str
    label: str
    tasks: tuple[str, ...]
    imagenet: pd.Series  # x, indexed by model
    scores: pd.DataFrame  # models x tasks
    info: pd.DataFrame  # display, family, ... indexed by model

    @property
    def n(self) -> int:
        return len(self.imagenet)

    @property
    def ecology_mean(self) -> pd.Series:
        return self.scores.mean(axis=1).rename("ecology_mean")

    def subset(self, keep: pd.Series | np.ndarray, suffix: str) -> "ModelSet":
        keep = np.asarray(keep, bool)
        return replace(self, name=f"{self.name}{suffix}", label=f"{self.label}{suffix}",
                       imagenet=self.imagenet[keep], scores=self.scores[keep], info=self.info[keep])

    def above(self, threshold: float = THRESHOLD) -> "ModelSet":
        return self.subset(self.imagenet >= threshold, f" (ImageNet ≥ {threshold:g})")

    def below(self, threshold: float = THRESHOLD) -> "ModelSet":
        return self.subset(self.imagenet < threshold, f" (ImageNet < {threshold:g})")

    def display_names(self) -> pd.Series:
        """Unique labels, fixed over all models of the set's source (see ``display_names``)."""
        return self.info["display"]


def model_set(matrix: pd.DataFrame, models: pd.DataFrame, name: str = "all", *,
              tasks: Sequence[str] | None = None,
              exclude_families: Sequence[str] | None = None) -> ModelSet:
    """The models that have ImageNet top-1 and every task of a named set (see ``MODEL_SETS``).

    ``tasks`` and ``exclude_families`` override the named set's choices (e.g. for own results
    on other tasks).
    """
    if name not in MODEL_SETS and tasks is None:
        raise KeyError(f"Unknown model set '{name}'. Valid: {', '.join(MODEL_SETS)}, "
                       "or pass tasks=...")
    spec = MODEL_SETS.get(name, ModelSetSpec(name, name, tuple(tasks or ())))
    tasks = tuple(tasks) if tasks is not None else spec.tasks
    excluded = tuple(exclude_families) if exclude_families is not None else spec.exclude_families
    absent = [t for t in tasks if t not in matrix.columns]
    if absent:
        raise ValueError(f"no scores for tasks {', '.join(absent)}; tasks with scores: "
                         f"{', '.join(map(str, matrix.columns))}")
    info = model_info(models)
    info["display"] = display_names(info)
    x = info["imagenet_top1"].astype(float).reindex(matrix.index)
    complete = x.notna() & matrix[list(tasks)].notna().all(axis=1)
    if excluded:
        family = info["family"].reindex(matrix.index)
        complete &= ~family.isin(excluded)
    keep = matrix.index[complete]
    return ModelSet(name=name, label=spec.label, tasks=tasks, imagenet=x[keep],
                    scores=matrix.loc[keep, list(tasks)].astype(float), info=info.reindex(keep))


# ---- regression and rank agreement -------------------------------------------------------------
@dataclass(frozen=True)
class OLSFit:
    n: int
    r2: float
    r: float
    slope: float
    slope_low: float  # 95 % confidence interval of the slope
    slope_high: float
    intercept: float
    fitted: pd.Series = field(repr=False)
    residuals: pd.Series = field(repr=False)


def ols_fit(x: pd.Series, y: pd.Series, level: float = 0.95) -> OLSFit:
    """statsmodels OLS of y on x with an intercept."""
    x = pd.Series(x, dtype=float)
    y = pd.Series(y, dtype=float)
    result = sm.OLS(y.to_numpy(), sm.add_constant(x.to_numpy())).fit()
    low, high = result.conf_int(alpha=1 - level)[1]
    slope = float(result.params[1])
    return OLSFit(
        n=int(result.nobs), r2=float(result.rsquared),
        r=float(np.sign(slope) * np.sqrt(result.rsquared)), slope=slope,
        slope_low=float(low), slope_high=float(high), intercept=float(result.params[0]),
        fitted=pd.Series(result.fittedvalues, index=y.index, name="fitted"),
        residuals=pd.Series(result.resid, index=y.index, name="residual"),
    )


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def rank_stats_batch(x: np.ndarray, y: np.ndarray, chunk: int = 256) -> dict[str, np.ndarray]:
    """Rank agreement between rows of ``x`` and ``y`` (both (B, n)): one value per row.

    Returns ``pearson``, ``spearman``, ``kendall`` (τ-b), ``concordant``, ``discordant`` and
    ``misordered`` = discordant / (concordant + discordant), pairs tied on either axis excluded.
    Vectorised over rows so that thousands of bootstrap replicates stay fast.
    """
    x = np.atleast_2d(np.asarray(x, float))
    y = np.atleast_2d(np.asarray(y, float))
    if x.shape != y.shape:
        raise ValueError(f"x has shape {x.shape} but y has {y.shape}")
    n = x.shape[1]
    i, j = np.triu_indices(n, 1)
    out = {k: np.empty(len(x)) for k in ("concordant", "discordant", "kendall")}
    for start in range(0, len(x), chunk):  # bounds memory: (chunk, n(n-1)/2) pair signs
        rows = slice(start, start + chunk)
        sx = np.sign(x[rows][:, i] - x[rows][:, j])
        sy = np.sign(y[rows][:, i] - y[rows][:, j])
        agree = sx * sy
        out["concordant"][rows] = (agree > 0).sum(axis=1)
        out["discordant"][rows] = (agree < 0).sum(axis=1)
        # τ-b = (C - D) / sqrt((pairs untied in x) * (pairs untied in y))
        with np.errstate(invalid="ignore", divide="ignore"):
            out["kendall"][rows] = agree.sum(axis=1) / np.sqrt(
                np.abs(sx).sum(axis=1) * np.abs(sy).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["misordered"] = out["discordant"] / (out["concordant"] + out["discordant"])
    out["pearson"] = _rowwise_pearson(x, y)
    out["spearman"] = _rowwise_pearson(rankdata(x, axis=1), rankdata(y, axis=1))
    return out


def association(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """n, R², Spearman ρ, Kendall τ-b, concordant/discordant pair counts and mis-ordered share."""
    stats = {k: float(v[0]) for k, v in rank_stats_batch(np.asarray(x)[None], np.asarray(y)[None]).items()}
    return {"n": len(x), "r2": stats.pop("pearson") ** 2, **stats}


def per_task_association(ms: ModelSet) -> pd.DataFrame:
    """One row per task: the association between x and that task's scores."""
    return pd.DataFrame({t: association(ms.imagenet, ms.scores[t]) for t in ms.tasks}).T


def set_summary(ms: ModelSet, threshold: float = THRESHOLD) -> dict[str, float]:
    """Every headline figure for one model set: pooled and per-task means, all / above / below.

    Keys: ``n``, ``r2``, ``spearman``, ``kendall``, ``misordered``, ``concordant``,
    ``discordant``, ``pairs`` and ``task_mean_{r2,spearman,kendall,misordered}``, each also
    with the prefix ``above_`` or ``below_``; plus the all-models OLS ``r``, ``slope``,
    ``slope_low``, ``slope_high``.
    """
    out: dict[str, float] = {}
    for prefix, part in (("", ms), ("above_", ms.above(threshold)), ("below_", ms.below(threshold))):
        enough = part.n >= 3  # fewer models leave correlations undefined
        pooled = association(part.imagenet, part.ecology_mean) if enough else {}
        per_task = per_task_association(part).mean() if enough else {}
        out[f"{prefix}n"] = part.n
        for stat in ("r2", "spearman", "kendall", "misordered", "concordant", "discordant"):
            out[f"{prefix}{stat}"] = pooled.get(stat, np.nan)
        for stat in ("r2", "spearman", "kendall", "misordered"):
            out[f"{prefix}task_mean_{stat}"] = per_task.get(stat, np.nan)
        out[f"{prefix}pairs"] = out[f"{prefix}concordant"] + out[f"{prefix}discordant"]
    fit = ols_fit(ms.imagenet, ms.ecology_mean)
    out.update(r2=fit.r2, r=fit.r, slope=fit.slope, slope_low=fit.slope_low, slope_high=fit.slope_high)
    return out


def compare_model_sets(matrix: pd.DataFrame, models: pd.DataFrame,
                       names: Iterable[str] = tuple(MODEL_SETS),
                       threshold: float = THRESHOLD) -> pd.DataFrame:
    """``set_summary`` for each named model set: one row per set."""
    rows = {}
    for name in names:
        ms = model_set(matrix, models, name)
        rows[name] = {"label": ms.label, **set_summary(ms, threshold)}
    return pd.DataFrame(rows).T


def task_vs_imagenet(matrix: pd.DataFrame, models: pd.DataFrame, tasks: Sequence[str],
                     threshold: float = THRESHOLD) -> pd.DataFrame:
    """Each task against ImageNet over every model that has both, all and above ``threshold``."""
    rows = {}
    for task in tasks:
        ms = model_set(matrix, models, task, tasks=(task,), exclude_families=())
        above = ms.above(threshold)
        every = association(ms.imagenet, ms.scores[task])
        top = association(above.imagenet, above.scores[task])
        rows[task] = {"n": ms.n, "r2": every["r2"], "spearman": every["spearman"],
                      "kendall": every["kendall"], "above_n": above.n,
                      "above_spearman": top["spearman"], "above_misordered": top["misordered"]}
    return pd.DataFrame(rows).T


# ---- threshold sweep with bootstrap bands over models ------------------------------------------
SWEEP_STATISTICS = ("spearman", "kendall", "misordered")


def threshold_sweep(ms: ModelSet, thresholds: Iterable[float] = DEFAULT_SWEEP, *,
                    n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0,
                    min_models: int = 5) -> pd.DataFrame:
    """Rank agreement over the models with x >= t, for each t, with percentile bootstrap bands.

    A replicate resamples the models above t with replacement (a duplicated model forms tied
    pairs, which the mis-ordered share and τ-b leave out). Long format: one row per
    (threshold, aggregation, statistic) with ``estimate``, ``low``, ``high``; thresholds that
    leave fewer than ``min_models`` models get ``n`` and NaN statistics.
    """
    alpha = 1 - level
    x_all = ms.imagenet.to_numpy()
    y_all = ms.scores.to_numpy()
    rows = []
    for t in thresholds:
        keep = x_all >= t
        n = int(keep.sum())
        x, y = x_all[keep], y_all[keep]
        for aggregation in ("pooled", "per-task mean"):
            if n < min_models:
                rows += [dict(threshold=t, n=n, aggregation=aggregation, statistic=s,
                              estimate=np.nan, low=np.nan, high=np.nan) for s in SWEEP_STATISTICS]
                continue
            idx = np.vstack([np.arange(n), resample_indices(n, n_bootstrap, seed)])
            if aggregation == "pooled":
                stats = rank_stats_batch(x[idx], y.mean(axis=1)[idx])
            else:
                per_task = [rank_stats_batch(x[idx], y[:, k][idx]) for k in range(y.shape[1])]
                stats = {s: np.mean([p[s] for p in per_task], axis=0) for s in SWEEP_STATISTICS}
            for s in SWEEP_STATISTICS:
                low, high = np.nanquantile(stats[s][1:], [alpha / 2, 1 - alpha / 2])
                rows.append(dict(threshold=t, n=n, aggregation=aggregation, statistic=s,
                                 estimate=stats[s][0], low=low, high=high))
    return pd.DataFrame(rows)


# ---- surprises and rank stability --------------------------------------------------------------
def descending_rank(values: pd.Series) -> pd.Series:
    """Rank 1 = highest value; ties share the best (lowest) rank."""
    return values.rank(ascending=False, method="min").astype(int)


def surprises(ms: ModelSet) -> pd.DataFrame:
    """Each model's ImageNet rank against its ecology rank (pooled mean), largest shifts first.

    ``rank_shift`` = ImageNet rank - ecology rank: positive means the model does better on the
    ecology tasks than its ImageNet accuracy predicts. ``residual`` is the OLS residual of the
    ecology mean on x. ``biology_specific`` flags the cv4ecology family (BioCLIP and kin).
    """
    fit = ols_fit(ms.imagenet, ms.ecology_mean)
    family = ms.info["family"] if "family" in ms.info else pd.Series(index=ms.info.index, dtype=object)
    table = pd.DataFrame({
        "display": ms.display_names(),
        "family": family,
        "biology_specific": family == BIOLOGY_FAMILY,
        "imagenet": ms.imagenet,
        "ecology_mean": ms.ecology_mean,
        "imagenet_rank": descending_rank(ms.imagenet),
        "ecology_rank": descending_rank(ms.ecology_mean),
        "residual": fit.residuals,
    })
    table["rank_shift"] = table["imagenet_rank"] - table["ecology_rank"]
    return table.reindex(table["rank_shift"].abs().sort_values(ascending=False, kind="stable").index)


@dataclass(frozen=True)
class RankStability:
    top_model: str  # best by the mean over the full task set
    top_retention: float  # share of resampled task sets whose best is still ``top_model``
    top_share: pd.Series  # model -> share of resampled task sets it tops
    kendall: np.ndarray  # τ-b between the full ranking and each resampled one
    ranks: pd.DataFrame  # model -> full rank, median and interval of resampled ranks
    n_resamples: int
    seed: int


def rank_stability(ms: ModelSet, n_resamples: int = 1000, seed: int = 0,
                   level: float = 0.90) -> RankStability:
    """Resample the task set with replacement and re-rank the models by their mean score."""
    scores = ms.scores.to_numpy()
    full_mean = scores.mean(axis=1)
    task_idx = resample_indices(scores.shape[1], n_resamples, seed)  # (B, n_tasks)
    resampled = scores[:, task_idx].mean(axis=2).T  # (B, n_models)
    models = ms.scores.index
    top = models[np.argmax(full_mean)]
    winners = pd.Series(models[np.argmax(resampled, axis=1)])
    kendall = rank_stats_batch(np.broadcast_to(full_mean, resampled.shape), resampled)["kendall"]
    ranks = pd.DataFrame(rankdata(-resampled, method="min", axis=1).T, index=models)
    alpha = 1 - level
    rank_table = pd.DataFrame({
        "display": ms.display_names(),
        "full_rank": descending_rank(pd.Series(full_mean, models)),
        "median_rank": ranks.median(axis=1),
        "rank_low": ranks.quantile(alpha / 2, axis=1),
        "rank_high": ranks.quantile(1 - alpha / 2, axis=1),
    }).sort_values("full_rank")
    return RankStability(
        top_model=top, top_retention=float((winners == top).mean()),
        top_share=winners.value_counts(normalize=True).rename("share"),
        kendall=kendall, ranks=rank_table, n_resamples=n_resamples, seed=seed,
    )


def leave_one_task_out(ms: ModelSet) -> pd.DataFrame:
    """Drop each task in turn: who is on top, and τ-b against the full ranking."""
    full = ms.ecology_mean
    rows = {}
    for task in ms.tasks:
        reduced = ms.scores.drop(columns=task).mean(axis=1)
        rows[task] = {"top_model": reduced.idxmax(),
                      "kendall": association(full, reduced)["kendall"]}
    return pd.DataFrame(rows).T


# ---- intervals that exclude their own estimate -------------------------------------------------
def ci_excludes_estimate(score, low, high):
    """True where the point estimate lies outside [low, high]; a missing bound is never flagged."""
    score, low, high = (np.asarray(v, float) for v in (score, low, high))
    outside = (score < low) | (score > high)
    return outside & ~np.isnan(low) & ~np.isnan(high)


def ci_exclusion_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task: how many runs have an interval that excludes the run's own score.

    When runs carry ``extra['bootstrap_mean']`` (the published file does), the median of
    bootstrap_mean - score is given in percentage points: the bias of the replicates.
    """
    flagged = runs.assign(outside=ci_excludes_estimate(runs["score"], runs["ci_low"], runs["ci_high"]))
    boot = runs["extra"].map(lambda e: (e or {}).get("bootstrap_mean", np.nan)).astype(float)
    flagged["shift_pt"] = 100 * (boot - runs["score"])
    table = flagged.groupby("task").agg(
        n_runs=("outside", "size"), n_outside=("outside", "sum"),
        median_bootstrap_shift_pt=("shift_pt", "median"))
    table["share_outside"] = table["n_outside"] / table["n_runs"]
    return table.sort_values(["n_outside", "n_runs"], ascending=False)


# ---- leaderboard --------------------------------------------------------------------------------
def ties_from_extra(runs: pd.DataFrame, flag: str = "tied_with_best") -> pd.DataFrame:
    """Models x tasks booleans read from each run's ``extra[flag]`` (as imported runs carry)."""
    marked = runs.assign(_tie=runs["extra"].map(lambda e: bool((e or {}).get(flag, False))))
    return score_matrix(marked, value="_tie").fillna(False).astype(bool)


def leaderboard(runs: pd.DataFrame, models: pd.DataFrame, tasks: Sequence[str], *,
                ties: pd.DataFrame | None = None,
                mean_tasks: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Models x tasks with score, interval and tie-with-best flag, plus benchmark means.

    Columns: display, family, params, resolution, imagenet_top1, one column per entry of
    ``mean_tasks`` (default: ``mean_paper`` over the 9 paper tasks and ``mean_with_ecdysis``
    over 10; NaN unless the model has every one of them), then per task ``<task>``,
    ``<task>_low``, ``<task>_high``, ``<task>_tie``. Sorted by the first mean.
    """
    mean_tasks = mean_tasks or {"mean_paper": PAPER_TASKS, "mean_with_ecdysis": BENCHMARK_TASKS_WITH_ECDYSIS}
    score = score_matrix(runs)
    low, high = score_matrix(runs, value="ci_low"), score_matrix(runs, value="ci_high")
    ties = ties if ties is not None else ties_from_extra(runs)
    info = model_info(models).reindex(score.index)
    table = info.reindex(columns=["display", "family", "params", "resolution", "imagenet_top1"])
    table["display"] = display_names(info)
    for name, group in mean_tasks.items():
        present = [t for t in group if t in score.columns]
        table[name] = score[present].mean(axis=1, skipna=False) if len(present) == len(group) else np.nan
    for task in tasks:
        table[task] = score.get(task)
        table[f"{task}_low"] = low.get(task)
        table[f"{task}_high"] = high.get(task)
        tied = ties[task] if task in ties else pd.Series(False, index=ties.index)
        table[f"{task}_tie"] = tied.reindex(score.index).fillna(False).astype(bool)
    first_mean = next(iter(mean_tasks))
    return table.sort_values(first_mean, ascending=False, na_position="last")


_SORT_SCRIPT = """
(function () {
  var table = document.getElementById("%(id)s");
  if (!table) { return; }
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.getAttribute("data-dir") === "desc" ? "asc" : "desc";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", dir);
      var text = th.getAttribute("data-type") === "text";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        if (x === "" || y === "") { return (x === "") - (y === ""); }  // blanks always last
        var c = text ? x.localeCompare(y) : parseFloat(x) - parseFloat(y);
        return dir === "asc" ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var toggle = document.getElementById("%(id)s-details");
  if (toggle) {
    toggle.addEventListener("click", function () {
      var shown = table.classList.toggle("show-details");
      toggle.textContent = shown ? "Hide model details" : "Show model details (%(details)s)";
      toggle.setAttribute("aria-expanded", shown ? "true" : "false");
    });
  }
})();
"""

# Layout: the model column stays put while the scores scroll sideways, headers wrap instead of
# widening their column, and the model details are collapsed, so that a 784 px content column
# shows the model name next to several task scores on load.
_TABLE_STYLE = """
#%(id)s { border-collapse: separate; border-spacing: 0; font-size: 0.8em; }
#%(id)s th { cursor: pointer; position: sticky; top: 0; z-index: 2; background: #f4f4f4;
  padding: 2px 5px; vertical-align: bottom; white-space: normal; min-width: 3.8em;
  max-width: 7em; line-height: 1.15; }
#%(id)s th:first-child, #%(id)s td:first-child { position: sticky; left: 0;
  border-right: 1px solid #ccc; }
#%(id)s th:first-child { z-index: 3; min-width: 9em; }
#%(id)s td:first-child { z-index: 1; background: #fff; white-space: normal; min-width: 9em;
  max-width: 13em; }
#%(id)s th[data-dir="desc"]::after { content: " \\25BC"; }
#%(id)s th[data-dir="asc"]::after { content: " \\25B2"; }
#%(id)s td { padding: 1px 5px; text-align: right; border-top: 1px solid #e4e4e4;
  white-space: nowrap; }
#%(id)s td.text { text-align: left; }
#%(id)s td.tie { font-weight: bold; background: #e8f3e8; }
#%(id)s .optional { display: none; }
#%(id)s.show-details .optional { display: table-cell; }
#%(id)s small { color: #666; font-weight: normal; }
"""

TIE_MARK = "≈"  # "tied with the task's best"
BEST_MARK = "★"  # the task's best


def _number_cell(value, fmt: str, scale: float = 1.0, **kwargs) -> str:
    missing = value is None or pd.isna(value)
    return _cell(None if missing else scale * value, "" if missing else format(scale * value, fmt), **kwargs)


def _cell(value, shown: str, *, text: bool = False, cls: str = "", title: str = "") -> str:
    missing = value is None or (not isinstance(value, str) and pd.isna(value))
    sort_key = "" if missing else (str(value) if text else repr(float(value)))
    classes = " ".join(c for c in ("text" if text else "", cls) if c)
    attrs = f' data-sort="{html.escape(sort_key)}"'
    attrs += f' class="{classes}"' if classes else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    return f"<td{attrs}>{'–' if missing else shown}</td>"


def _head(label: str, *, text: bool = False, kind: str = "", cls: str = "", title: str = "") -> str:
    attrs = ' data-type="text"' if text else ""
    attrs += f' data-kind="{kind}"' if kind else ""
    attrs += f' class="{cls}"' if cls else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    return f"<th{attrs}>{html.escape(label)}</th>"


def best_in_column(scores: pd.Series, ties: pd.Series) -> object | None:
    """The task's best model: the highest score among the models marked tied with the best
    (every marked set includes its best); the highest score overall when nothing is marked."""
    pool = scores[ties.reindex(scores.index).fillna(False).astype(bool)].dropna()
    pool = pool if len(pool) else scores.dropna()
    return pool.idxmax() if len(pool) else None


def score_cell_text(score: float, low: float, high: float, *, mark: str = "") -> str:
    """``82.1`` over ``79.0–85.3`` (percent, one decimal, as the prose rounds) with a tie mark."""
    shown = f"{mark}\u2009{100 * score:.1f}" if mark else f"{100 * score:.1f}"
    if pd.isna(low) or pd.isna(high):
        return shown
    return f"{shown}<br><small>{100 * low:.1f}–{100 * high:.1f}</small>"


def leaderboard_html(table: pd.DataFrame, tasks: Sequence[str], *,
                     task_labels: dict[str, str] | None = None,
                     mean_labels: dict[str, str] | None = None,
                     table_id: str = "leaderboard",
                     imagenet_label: str | None = "ImageNet-1K top-1",
                     imagenet_definition: str = "") -> str:
    """A self-contained sortable HTML table (inline CSS and JS, no network) of ``leaderboard``.

    Scores show in percent with one decimal and the 95 % interval on a second line; the task's
    best is marked ★ and the models tied with it ≈ (bold on a green ground). The model column
    stays visible while the scores scroll sideways; family, parameters and resolution are
    collapsed behind a "Show model details" button. ``imagenet_label`` names the models table's
    ImageNet figure (``imagenet_top1``) and ``imagenet_definition`` says what it is (the header's
    tooltip); pass ``imagenet_label=None`` when ImageNet-1K is already one of ``tasks`` (as on
    the published leaderboard, where both would be the same linear-probe accuracy). Click a
    header to sort; blanks always sort last.
    """
    task_labels = task_labels or {}
    mean_labels = mean_labels or {"mean_paper": "Mean (9 paper tasks)",
                                  "mean_with_ecdysis": "Mean (10 tasks, with Ecdysis)"}
    means = [m for m in mean_labels if m in table.columns]
    details = ["family", "parameters", "resolution"]
    heads = [_head("Model", text=True),
             _head("Family", text=True, cls="optional"),
             _head("Params (M)", cls="optional", title="parameters, millions"),
             _head("Resolution (px)", cls="optional", title="input resolution, pixels")]
    if imagenet_label is not None:
        heads.append(_head(imagenet_label, kind="imagenet", title=imagenet_definition))
    heads += [_head(mean_labels[m], kind="mean") for m in means]
    heads += [_head(task_labels.get(t, t), kind="task") for t in tasks]
    best = {t: best_in_column(table[t], table[f"{t}_tie"]) for t in tasks}
    body = []
    for model, row in table.iterrows():
        display = row.get("display") if isinstance(row.get("display"), str) else str(model)
        cells = [
            _cell(display, html.escape(display), text=True, title=str(model)),
            _cell(row.get("family"), html.escape(str(row.get("family"))), text=True, cls="optional"),
            _number_cell(row.get("params"), ",.0f", 1e-6, cls="optional"),
            _number_cell(row.get("resolution"), ".0f", cls="optional"),
        ]
        if imagenet_label is not None:
            cells.append(_number_cell(row.get("imagenet_top1"), ".1f", 100))
        cells += [_number_cell(row[m], ".1f", 100) for m in means]
        for t in tasks:
            score, low, high, tie = row[t], row[f"{t}_low"], row[f"{t}_high"], bool(row[f"{t}_tie"])
            is_best = model == best[t]
            mark = BEST_MARK if is_best else TIE_MARK if tie else ""
            title = "the task's best" if is_best else "tied with the task's best" if tie else ""
            if not pd.isna(low):
                title = f"{title}; " if title else ""
                title += f"95 % interval {100 * low:.1f}–{100 * high:.1f}"
            cells.append(_cell(score, score_cell_text(score, low, high, mark=mark)
                               if not pd.isna(score) else "",
                               cls="tie" if tie else "", title=title))
        body.append(f"<tr>{''.join(cells)}</tr>")
    style = _TABLE_STYLE % {"id": table_id}
    script = _SORT_SCRIPT % {"id": table_id, "details": ", ".join(details)}
    button = (f'<button type="button" id="{table_id}-details" aria-expanded="false" '
              f'style="font-size: 0.8em; margin: 0 0 0.4em 0;">Show model details '
              f'({", ".join(details)})</button>')
    legend = (f'<p style="font-size: 0.8em; margin: 0 0 0.3em 0;">Percent, 95 % interval below; '
              f'{BEST_MARK} best on the task, {TIE_MARK} tied with the best.</p>')
    return (f"<style>{style}</style>{legend}{button}"
            f'<div style="overflow: auto; max-height: 40em;">'
            f'<table id="{table_id}"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            f"<script>{script}</script>")
