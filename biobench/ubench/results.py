"""The μ-Bench results page's data: stored zero-shot runs -> tidy answers -> tables and figures.

``load_ubench_runs(store)`` reads every run of a μ-Bench task (name starting ``ubench``) with the
``zero_shot`` protocol and turns each run's stored answer matrices into the tidy ``answers``
table of ``biobench.ubench.stats`` (one row per model and answered question slot). An example id
is ``<dataset>/<image_id>`` (``biobench.tasks.ubench``), so the same image carries the same id in
the coarse tasks and in its fine-grained task, and the image-level bootstrap keeps all of its
questions together, across tasks.

The table functions wrap ``biobench.ubench.stats`` with the page's choices: coarse accuracy per
question type, fine-grained accuracy per dataset with the official total (without the datasets
that ``meta`` marks ``in_official_total = False``) and the total over all 22, accuracy per
taxonomy group and slice, every pair of models compared (Holm-adjusted), and the
specialist-minus-base differences of the paper for the pairs present. The totals pool the
datasets answered: with every fine-grained task run, the official total is the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from biobench.store import ResultsStore
from biobench.ubench import stats
from biobench.ubench.meta import COARSE_KINDS, FINE_KIND, UBENCH_DATASETS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TASK_PREFIX = "ubench"
PROTOCOL = "zero_shot"
ALL_DATASETS = "all datasets"
OFFICIAL_TOTAL = "official total"

# Short labels for the models of configs/ubench.toml (the store's display names are longer).
MODEL_LABELS: Mapping[str, str] = {
    "open_clip:ViT-B-32/openai": "OpenCLIP B/32 (OpenAI)",
    "hf:openai/clip-vit-base-patch32": "CLIP B/32",
    "hf:vinid/plip": "PLIP",
    "hf:kakaobrain/align-base": "ALIGN",
    "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224": "BiomedCLIP",
    "open_clip:hf-hub:wisdomik/QuiltNet-B-32": "QuiltNet",
    "blip-itm:Salesforce/blip-itm-base-coco": "BLIP (ITM)",
    "random": "random baseline",
}

# (specialist, generalist base candidates in order of preference), after the paper (spec §8(e)):
# PLIP and QuiltNet are CLIP ViT-B/32 fine-tuned on pathology; BiomedCLIP is compared with
# OpenCLIP. The authors' CLIP is the HF checkpoint; open_clip's copy of the same weights serves
# when only it was run.
SPECIALIST_BASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hf:vinid/plip", ("hf:openai/clip-vit-base-patch32", "open_clip:ViT-B-32/openai")),
    ("open_clip:hf-hub:wisdomik/QuiltNet-B-32",
     ("hf:openai/clip-vit-base-patch32", "open_clip:ViT-B-32/openai")),
    ("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
     ("open_clip:ViT-B-32/openai",)),
)


class UbenchResultsError(ValueError):
    """A stored μ-Bench run that cannot be read as answers; the message names the run."""


@dataclass(frozen=True)
class UbenchRuns:
    """The stored μ-Bench zero-shot runs and their answers.

    ``runs``: the store's rows used (one per model and task: the newest when a model was run on
    a task with several settings); ``superseded``: the older rows left out; ``answers``: the
    tidy table (columns of ``stats.REQUIRED_COLUMNS``); ``labels``: model -> short label."""

    runs: pd.DataFrame
    superseded: pd.DataFrame
    answers: pd.DataFrame
    labels: Mapping[str, str]

    @property
    def empty(self) -> bool:
        return self.runs.empty

    @property
    def models(self) -> tuple[str, ...]:
        """Models in the order of ``MODEL_LABELS``, then the others by name."""
        present = set(self.runs["model"])
        known = [m for m in MODEL_LABELS if m in present]
        return tuple(known + sorted(present - set(known)))

    def label(self, model: str) -> str:
        return self.labels.get(model, model)


def _slot_names(run: Mapping, width: int) -> list[str]:
    slots = run["extra"].get("zero_shot_slots")
    where = f"run {run['run_id']} ({run['model']} on {run['task']})"
    if not slots:
        raise UbenchResultsError(f"{where} records no zero_shot_slots: it was stored by an older "
                                 "biobench; recompute it with `biobench run ... --force`")
    if len(slots) != width:
        raise UbenchResultsError(f"{where}: {width} answer columns but {len(slots)} slot names "
                                 f"{slots}; recompute it with `biobench run ... --force`")
    return list(slots)


def run_answers(run: Mapping, predictions: pd.DataFrame) -> pd.DataFrame:
    """The tidy answers of one stored run (``store.runs`` row, ``store.predictions`` table)."""
    where = f"run {run['run_id']} ({run['model']} on {run['task']})"
    if predictions.empty:
        raise UbenchResultsError(f"{where} has no stored predictions")
    y_true = np.asarray(list(predictions["y_true"]))
    y_pred = np.asarray(list(predictions["y_pred"]))
    if y_true.ndim == 1:  # one slot stored flat
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    slots = _slot_names(run, y_true.shape[1])
    parts = predictions["example_id"].str.split("/", n=1)
    datasets = parts.str[0]
    unknown = sorted(set(datasets) - set(UBENCH_DATASETS))
    if unknown or (parts.str.len() != 2).any():
        raise UbenchResultsError(
            f"{where}: example ids must be '<μ-Bench dataset>/<image id>'; found datasets "
            f"{unknown[:3] or 'none'} (e.g. {predictions['example_id'].iloc[0]!r})")
    return stats.tidy_answers(run["model"], list(datasets), list(parts.str[1]), slots,
                              y_true, y_pred)


def _newest_per_model_task(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    ordered = runs.sort_values(["created_at", "run_id"])
    newest = ordered.duplicated(["model", "task"], keep="last")
    return ordered[~newest].sort_values(["task", "model"]), ordered[newest]


def load_ubench_runs(store: ResultsStore, *, source: str = "own",
                     protocol: str = PROTOCOL) -> UbenchRuns:
    """Every stored μ-Bench run of ``source`` and ``protocol``, with its answers."""
    runs = store.runs(source, protocol=protocol)
    runs = runs[runs["task"].str.startswith(TASK_PREFIX)]
    used, superseded = _newest_per_model_task(runs)
    if used.empty:
        columns = list(stats.REQUIRED_COLUMNS)
        return UbenchRuns(used, superseded, pd.DataFrame(columns=columns), {})
    answers = pd.concat([run_answers(run, store.predictions(int(run["run_id"])))
                         for run in used.to_dict("records")], ignore_index=True)
    displays = store.models(source).set_index("model")["display"].dropna().to_dict()
    labels = {m: MODEL_LABELS.get(m) or displays.get(m) or m for m in used["model"]}
    return UbenchRuns(used.reset_index(drop=True), superseded.reset_index(drop=True), answers,
                      labels)


# ---- tables -----------------------------------------------------------------------------------

def _of_kinds(answers: pd.DataFrame, kinds: Sequence[str]) -> pd.DataFrame:
    return answers[answers["kind"].isin(kinds)]


def coarse_accuracy(answers: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> pd.DataFrame:
    """Accuracy per coarse question type and over all five (``value`` "all"), per model; empty
    when no coarse question was answered."""
    coarse = _of_kinds(answers, COARSE_KINDS)
    if coarse.empty:
        return pd.DataFrame()
    return stats.accuracy_table(coarse, ("kind", "total"), n_boot=n_boot, seed=seed, level=level)


def fine_accuracy(answers: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> pd.DataFrame:
    """Fine-grained accuracy per dataset, the official total (``OFFICIAL_TOTAL``: the datasets
    answered that are in the official total) and the total over every dataset answered
    (``ALL_DATASETS``)."""
    fine = _of_kinds(answers, (FINE_KIND,))
    if fine.empty:
        return pd.DataFrame()
    table = stats.accuracy_table(fine, ("dataset", "total"), n_boot=n_boot, seed=seed,
                                 level=level)
    table.loc[table["by"] == "total", "value"] = ALL_DATASETS
    official = fine[fine["dataset"].map(lambda d: UBENCH_DATASETS[d].in_official_total)]
    if not official.empty:
        total = stats.accuracy_table(official, ("total",), n_boot=n_boot, seed=seed, level=level)
        table = pd.concat([table, total.assign(value=OFFICIAL_TOTAL)], ignore_index=True)
    return table


def group_slice_accuracy(answers: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> pd.DataFrame:
    """Accuracy per taxonomy group and per slice, for coarse and fine questions separately
    (column ``part``)."""
    tables = []
    for part, kinds in (("coarse", COARSE_KINDS), ("fine", (FINE_KIND,))):
        rows = _of_kinds(answers, kinds)
        if rows.empty:
            continue
        # every dataset has a group, so the table is never empty (a dataset may be in no slice)
        tables.append(stats.accuracy_table(rows, ("group", "slice"), metadata=UBENCH_DATASETS,
                                           n_boot=n_boot, seed=seed, level=level).assign(part=part))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def pairwise_comparisons(answers: pd.DataFrame, models: Sequence[str], *, n_boot: int = 1000,
                         n_perm: int = 1000, seed: int = 0, level: float = 0.95,
                         alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of ``models``, coarse and fine separately, on the questions all of them
    answered; Holm-adjusted over the whole table. Empty with fewer than two models."""
    if len(models) < 2:
        return pd.DataFrame()
    return stats.paired_comparison(answers, list(models), ("part",), n_boot=n_boot,
                                   n_perm=n_perm, seed=seed, level=level, alpha=alpha)


def specialist_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """The (specialist, base) pairs of ``SPECIALIST_BASES`` whose two models are both present
    (the first base candidate present)."""
    present = set(models)
    pairs = []
    for specialist, bases in SPECIALIST_BASES:
        base = next((b for b in bases if b in present), None)
        if specialist in present and base is not None:
            pairs.append((specialist, base))
    return pairs


def specialist_differences(answers: pd.DataFrame, models: Sequence[str], *, n_boot: int = 1000,
                           n_perm: int = 1000, seed: int = 0, level: float = 0.95,
                           alpha: float = 0.05) -> pd.DataFrame:
    """Specialist minus base for the pairs present, coarse and fine; empty when none is."""
    pairs = specialist_pairs(models)
    if not pairs:
        return pd.DataFrame()
    return stats.specialist_minus_base(answers, pairs, ("part",), n_boot=n_boot, n_perm=n_perm,
                                       seed=seed, level=level, alpha=alpha)


# ---- display ----------------------------------------------------------------------------------

def percent_interval(value: float, low: float, high: float, *, signed: bool = False) -> str:
    """``52.1 [49.0, 55.3]`` (percent), with signs when ``signed``."""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(100 * value)} [{fmt.format(100 * low)}, {fmt.format(100 * high)}]"


def accuracy_wide(table: pd.DataFrame, labels: Mapping[str, str],
                  order: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows ``value``, columns model labels, cells "acc [low, high]" in %."""
    cells = table.assign(
        cell=[percent_interval(a, lo, hi) for a, lo, hi in
              table[["accuracy", "low", "high"]].to_numpy()],
        model=table["model"].map(lambda m: labels.get(m, m)))
    wide = cells.pivot(index="value", columns="model", values="cell")
    rows = [v for v in (order or []) if v in wide.index]
    rows += [v for v in wide.index if v not in rows]
    columns = list(dict.fromkeys(labels.get(m, m) for m in table["model"]))
    return wide.loc[rows, columns].fillna("–")


def comparison_display(table: pd.DataFrame, labels: Mapping[str, str], *,
                       a: str = "model_a", b: str = "model_b") -> pd.DataFrame:
    """A comparison table (``paired_comparison`` or ``specialist_minus_base``) for a page."""
    return pd.DataFrame({
        "comparison": [f"{labels.get(x, x)} − {labels.get(y, y)}"
                       for x, y in zip(table[a], table[b])],
        "questions": table["value"],
        "difference, pp [95% interval]": [
            percent_interval(d, lo, hi, signed=True)
            for d, lo, hi in table[["difference", "low", "high"]].to_numpy()],
        "p": table["p_value"].map(lambda p: f"{p:.3g}"),
        "p (Holm)": table["p_holm"].map(lambda p: f"{p:.3g}"),
        "significant": table["reject"].map({True: "yes", False: "no"}),
        "images": table["n_images"],
    })


def interval_figure(table: pd.DataFrame, labels: Mapping[str, str], *,
                    order: Sequence[str] | None = None, value_labels: Mapping[str, str] | None = None,
                    title: str = "", ax=None, legend: bool = True) -> "Figure":
    """Accuracy (%) with its interval: one row per ``value``, one marker per model (dodged);
    the legend, if any, below the axes (so it never covers a point)."""
    import matplotlib.pyplot as plt

    values = [v for v in (order or []) if v in set(table["value"])]
    values += [v for v in dict.fromkeys(table["value"]) if v not in values]
    models = list(dict.fromkeys(table["model"]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 0.9 + 0.22 * len(values) * max(len(models), 2)))
    else:
        fig = ax.figure
    step = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        rows = table[table["model"] == model].set_index("value")
        y = [values.index(v) - 0.4 + step * (i + 0.5) for v in rows.index]
        ax.errorbar(100 * rows["accuracy"], y,
                    xerr=[100 * (rows["accuracy"] - rows["low"]),
                          100 * (rows["high"] - rows["accuracy"])],
                    fmt="o", ms=4, capsize=2, label=labels.get(model, model))
    ax.set_yticks(range(len(values)),
                  [(value_labels or {}).get(v, v) for v in values])
    ax.invert_yaxis()
    ax.set(xlabel="accuracy (%)", xlim=(-2, 102), title=title)
    ax.grid(axis="y", visible=False)
    if legend:
        axes_inches = fig.get_figheight() * ax.get_position().height
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.7 / axes_inches),
                  ncol=min(len(models), 4), fontsize=8, frameon=False)
    return fig
