"""What a run page (``notebooks/evaluate.md``) shows about one stored run, for every label shape.

The page reads a run back from the results store, its row (with the ``extra`` dict) and its
per-example predictions, and builds a ``RunView`` from them. Everything below is a function of
that view: tables are DataFrames, figures are matplotlib ``Figure`` objects made without pyplot
(no global state, so a notebook never shows one twice), and the page's prose is Markdown text
whose numbers come from the store. Nothing here reads task data or recomputes a stored score.

Which breakdown a page shows follows the shape of the labels and the task's metric, not the
task's name:

- one label per example (1-D): per-class F1 and the confusion matrix; above ``MANY_CLASSES``
  classes a histogram of per-class F1, the worst and best classes and the most frequent
  confusions instead (a bar per class or a 1,000-row heatmap cannot be read);
- an (n, T) array of 0/1 (multi-label traits, e.g. FishNet): per-trait F1;
- an (n, 2) array under an open-set metric (``is_open_set_metric``: FungiCLEF's, whose labels
  are ``[class id or -1 for an unknown species, poisonous 0/1]``): known/unknown and
  poisonous/edible confusions, the challenge's losses, then per-species F1 on the class ids.

Extras that a protocol stored with the run add sections: re-identification figures (``top1``,
``map``, ...: Beluga) and per-sub-task accuracies (``per_task_accuracy``: NeWT).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from biobench import metrics
from biobench.metrics import METRIC_LABELS
from biobench.taskpage import UNKNOWN_LABEL, FigureImage, _row_label, examples_by_class, label_name

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from biobench.tasks import Task, TaskData

# Above this many classes a bar per class and an annotated heatmap are unreadable; the page
# shows a histogram, the extremes and the most frequent confusions instead.
MANY_CLASSES = 30
N_EXTREMES = 10  # worst and best classes listed
N_CONFUSIONS = 15  # most frequent (true, predicted) mix-ups listed
N_WORST_SUBTASKS = 10
# Metrics whose labels are [class id (-1 = unknown), poisonous]: FungiCLEF's scores, whatever
# their variant (the project's score and the challenge's official losses share the labels).
OPEN_SET_METRIC_PREFIX = "fungiclef"

SINGLE_LABEL = "single-label"
MULTI_LABEL = "multi-label"
OPEN_SET = "open-set"

PLURALS = {"class": "classes", "individual": "individuals", "species": "species"}

# Readable names of the figures a task stores under extra["metric_extras"]; a key missing here
# is spelled out from its words (see ``readable_name``), so a new figure still renders.
METRIC_EXTRA_NAMES = {
    "track1_classification_error": "Track 1: classification error (every mistake costs 1)",
    "track2_poison_confusion_cost": "Track 2: poisonous/edible confusion cost (PSC)",
    "track3_user_focused_loss": "Track 3: user-focused loss (Track 1 error + PSC)",
    "track4_unknown_cost_error": "Track 4: classification error, unknown species cost 10",
    "ce": "classification error (CE, Track 4 costs)",
    "psc": "poisonous/edible confusion cost (PSC)",
    "worst_ce": "worst possible CE",
    "worst_psc": "worst possible PSC",
    "score": "BioBench's FungiCLEF score: 1 - (Track 4 CE + PSC) / (worst CE + worst PSC)",
}
ACRONYMS = {"ce": "CE", "psc": "PSC", "f1": "F1", "map": "mAP", "auc": "AUC", "roc": "ROC",
            "id": "ID", "ood": "OOD", "ci": "CI"}
REID_FIGURES = (
    ("k", "neighbours that vote for the predicted individual (k)"),
    ("top1", "top-1: the nearest other image shows the same individual"),
    ("top5", "top-5: one of the 5 nearest other images shows the same individual"),
    ("map", "mAP: mean average precision of the ranking"),
    ("n_queries_with_match", "queries whose individual has another image (mAP is over these)"),
)


class UnrenderableRun(ValueError):
    """A stored run whose predictions the page cannot lay out; the message names the run."""


# ---- the run, as the store holds it ---------------------------------------------------------
def decode_labels(column: Sequence[Any]) -> np.ndarray:
    """A predictions column (JSON-decoded per example: ints, or lists for multi-column labels)
    as one array indexed by example on axis 0."""
    return np.asarray(list(column))


def is_open_set_metric(metric: str) -> bool:
    return metric.startswith(OPEN_SET_METRIC_PREFIX)


def label_kind(y_true: np.ndarray, metric: str, where: str = "this run") -> str:
    """``SINGLE_LABEL``, ``MULTI_LABEL`` or ``OPEN_SET``, from the labels' shape and the metric."""
    y = np.asarray(y_true)
    if y.ndim == 1:
        return SINGLE_LABEL
    if y.ndim == 2 and is_open_set_metric(metric):
        if y.shape[1] != 2:
            raise UnrenderableRun(f"{where}: metric '{metric}' expects labels [class id, "
                                  f"poisonous] (n, 2), but the store holds shape {y.shape}; "
                                  "re-run it with force=True")
        return OPEN_SET
    if y.ndim == 2 and np.isin(y, (0, 1)).all():
        return MULTI_LABEL
    raise UnrenderableRun(f"{where}: no page layout for labels of shape {y.shape} under metric "
                          f"'{metric}' (known: one label per example, (n, traits) of 0/1, or "
                          f"[class id, poisonous] under a {OPEN_SET_METRIC_PREFIX}* metric); "
                          "add one to "
                          "biobench/runpage.py")


@dataclass(frozen=True)
class RunView:
    """One stored run: its row's figures and extras, and its per-example labels."""

    model: str
    task: str
    metric: str
    score: float
    extra: Mapping[str, Any]
    class_names: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    kind: str

    @classmethod
    def from_store(cls, run: Mapping[str, Any], predictions: pd.DataFrame) -> RunView:
        """``run`` is ``store.get_run(key)``, ``predictions`` is ``store.predictions(run_id)``."""
        where = f"run {run.get('run_id')} ({run['model']} on {run['task']})"
        if predictions.empty:
            raise UnrenderableRun(f"{where}: the store holds no per-example predictions for it; "
                                  "re-run it with force=True")
        y_true = decode_labels(predictions["y_true"])
        y_pred = decode_labels(predictions["y_pred"])
        if y_true.shape != y_pred.shape:
            raise UnrenderableRun(f"{where}: stored truths have shape {y_true.shape} but "
                                  f"predictions {y_pred.shape}; re-run it with force=True")
        extra = dict(run.get("extra") or {})
        return cls(model=run["model"], task=run["task"], metric=run["metric"],
                   score=float(run["score"]), extra=extra,
                   class_names=[str(n) for n in extra.get("class_names", [])],
                   y_true=y_true, y_pred=y_pred, kind=label_kind(y_true, run["metric"], where))

    @property
    def n_test(self) -> int:
        return len(self.y_true)

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    @property
    def has_reid(self) -> bool:
        """The protocol stored re-identification figures (a leave-one-out ranking)."""
        return {"top1", "map"} <= set(self.extra)

    @property
    def has_subtasks(self) -> bool:
        """The protocol stored one accuracy per sub-task (many binary tasks pooled)."""
        per_task = self.extra.get("per_task_accuracy")
        return isinstance(per_task, Mapping) and len(per_task) > 0

    @property
    def noun(self) -> str:
        """What one label is called on the page."""
        if self.kind == OPEN_SET:
            return "species"
        return "individual" if self.has_reid else "class"


def probe_settings(run: Mapping[str, Any]) -> str:
    """The run's probe hyper-parameters (stored as canonical JSON) as ``name=value, ...``."""
    raw = run.get("probe_params")
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return "not recorded"
    params = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "none"


# ---- one label per example ------------------------------------------------------------------
def _encode(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted labels of both arrays, y_true and y_pred as indices into them)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    return labels, inverse[: len(y_true)], inverse[len(y_true):]


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray,
                    class_names: Sequence[str]) -> pd.DataFrame:
    """F1, precision, recall and support of every class with a true example, in label order.

    Counted with ``bincount`` (10,000 iNat21 classes would take a loop per class): the mean of
    ``f1`` is the class-balanced macro-F1 of ``biobench.metrics.macro_f1``. Precision of a class
    never predicted is 0.
    """
    labels, t, p = _encode(y_true, y_pred)
    k = len(labels)
    tp = np.bincount(t[t == p], minlength=k)
    support = np.bincount(t, minlength=k)
    predicted = np.bincount(p, minlength=k)
    present = support > 0
    table = pd.DataFrame({
        "label": labels,
        "class": [label_name(class_names, int(label)) for label in labels],
        "f1": 2 * tp / np.maximum(support + predicted, 1),
        "precision": np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0),
        "recall": tp / np.maximum(support, 1),
        "support": support,
    })
    return table[present].reset_index(drop=True)


def extreme_classes(table: pd.DataFrame, n: int = N_EXTREMES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` worst and ``n`` best rows of ``per_class_table`` by F1; among equal F1 the
    class with more test examples first (a large class at F1 0 is the worse news)."""
    order = ["f1", "support", "label"]
    worst = table.sort_values(order, ascending=[True, False, True], kind="stable").head(n)
    best = table.sort_values(order, ascending=[False, False, True], kind="stable").head(n)
    return worst.reset_index(drop=True), best.reset_index(drop=True)


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray,
                    class_names: Sequence[str]) -> pd.DataFrame:
    """Counts of (true, predicted) over every label seen in either array: rows true, columns
    predicted, both named."""
    labels, t, p = _encode(y_true, y_pred)
    k = len(labels)
    matrix = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    names = [label_name(class_names, int(label)) for label in labels]
    return pd.DataFrame(matrix, index=pd.Index(names, name="true"),
                        columns=pd.Index(names, name="predicted"))


def top_confusions(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str],
                   n: int = N_CONFUSIONS) -> pd.DataFrame:
    """The ``n`` most frequent mistakes as (true class, predicted as, examples, share of the
    true class's test examples), most frequent first. No square matrix is built: 10,000
    classes would make one of 10^8 cells."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    columns = ["true class", "predicted as", "examples", "share of the true class"]
    wrong = y_true != y_pred
    if not wrong.any():
        return pd.DataFrame(columns=columns)
    pairs, counts = np.unique(np.stack([y_true[wrong], y_pred[wrong]], axis=1), axis=0,
                              return_counts=True)
    labels, support = np.unique(y_true, return_counts=True)
    true_support = support[np.searchsorted(labels, pairs[:, 0])]
    # most frequent first; ties by label order, so the table is deterministic
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))[:n]
    return pd.DataFrame({
        "true class": [label_name(class_names, int(pairs[i, 0])) for i in order],
        "predicted as": [label_name(class_names, int(pairs[i, 1])) for i in order],
        "examples": counts[order],
        "share of the true class": counts[order] / true_support[order],
    }, columns=columns)


# ---- many 0/1 traits per example ------------------------------------------------------------
TRAIT_MACRO = "two-class macro-F1"
TRAIT_PRESENT = "F1 of 'present'"


def per_trait_table(y_true: np.ndarray, y_pred: np.ndarray,
                    trait_names: Sequence[str]) -> pd.DataFrame:
    """One row per trait (column): its two-class macro-F1 (``metrics.macro_f1`` of the column:
    the mean of the present-F1 and the absent-F1 over the values that occur in the truth, so the
    mean over traits is ``fishnet_macro_f1``), the F1 of 'present' alone (NaN when no image has
    or is predicted to have the trait: 0/0), and how often the trait is present and predicted."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rows = []
    for t in range(y_true.shape[1]):
        truth, pred = y_true[:, t] == 1, y_pred[:, t] == 1
        tp = int(np.sum(truth & pred))
        fp, fn = int(np.sum(~truth & pred)), int(np.sum(truth & ~pred))
        rows.append({
            "trait": trait_names[t] if t < len(trait_names) else f"trait {t}",
            TRAIT_MACRO: metrics.macro_f1(y_true[:, t], y_pred[:, t]),
            TRAIT_PRESENT: 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "images with the trait": int(truth.sum()),
            "share present": float(truth.mean()),
            "share predicted present": float(pred.mean()),
        })
    return pd.DataFrame(rows)


# ---- open set: [class id or -1, poisonous] --------------------------------------------------
def known_unknown_confusion(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """2x2 counts: true known/unknown species (rows) against predicted known/unknown."""
    t_known = np.asarray(y_true)[:, 0] != UNKNOWN_LABEL
    p_known = np.asarray(y_pred)[:, 0] != UNKNOWN_LABEL
    return _two_by_two(t_known, p_known, ("known species", "unknown species"))


def poison_confusion(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """2x2 counts: truly poisonous/edible (rows) against predicted. As in the challenge, an
    unknown species counts as edible (not on the poison list)."""
    return _two_by_two(np.asarray(y_true)[:, 1] == 1, np.asarray(y_pred)[:, 1] == 1,
                       ("poisonous", "edible"))


def _two_by_two(truth: np.ndarray, pred: np.ndarray, names: tuple[str, str]) -> pd.DataFrame:
    counts = [[int(np.sum(truth & pred)), int(np.sum(truth & ~pred))],
              [int(np.sum(~truth & pred)), int(np.sum(~truth & ~pred))]]
    return pd.DataFrame(counts, index=pd.Index(list(names), name="true"),
                        columns=pd.Index(list(names), name="predicted"))


def readable_name(key: str) -> str:
    """``worst_ce`` -> ``worst possible CE``; an unlisted key is spelled out word by word."""
    if key in METRIC_EXTRA_NAMES:
        return METRIC_EXTRA_NAMES[key]
    return " ".join(ACRONYMS.get(word.lower(), word) for word in key.split("_") if word)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def metric_extras_table(extras: Mapping[str, Any] | None) -> pd.DataFrame:
    """The figures under ``extra["metric_extras"]`` (any keys; nested dicts flattened), one row
    each: a readable name, the value, and the key as stored."""
    rows = []
    for key, value in _flatten(extras or {}).items():
        name = ": ".join(readable_name(part) for part in key.split("."))
        if isinstance(value, (bool, np.bool_)):
            value = "yes" if value else "no"
        elif isinstance(value, (int, float, np.integer, np.floating)) and value is not None:
            value = float(value)
        rows.append({"figure": name, "value": value, "stored as": key})
    return pd.DataFrame(rows, columns=["figure", "value", "stored as"]).set_index("figure")


def open_set_facts(view: RunView) -> pd.DataFrame:
    """How the run split known from unknown: counts from the predictions, and the threshold
    and quantile the protocol stored."""
    extra = view.extra
    n_unknown = int(np.sum(view.y_true[:, 0] == UNKNOWN_LABEL))
    facts = {
        "test observations": view.n_test,
        "of species unseen in training (true unknown)": n_unknown,
        "called unknown (stored by the protocol)": extra.get("n_predicted_unknown", "not recorded"),
        "distance threshold (nearest centroid)": extra.get("distance_threshold", "not recorded"),
        "quantile of training distances used": extra.get("unknown_quantile", "not recorded"),
    }
    return pd.DataFrame({"": pd.Series(facts, dtype="object")})


# ---- re-identification and sub-tasks --------------------------------------------------------
def reid_table(view: RunView) -> pd.DataFrame:
    """The stored re-identification figures, next to the task's metric."""
    figures = {label: view.extra[key] for key, label in REID_FIGURES if key in view.extra}
    figures[f"{view.metric_label} over {PLURALS[view.noun]} (the task's metric)"] = view.score
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    return pd.DataFrame({"": pd.Series(figures, dtype="object")})


def subtask_table(per_task_accuracy: Mapping[str, float]) -> pd.DataFrame:
    """One row per sub-task, worst first (ties by name)."""
    table = pd.DataFrame({"sub-task": list(per_task_accuracy),
                          "accuracy": [float(v) for v in per_task_accuracy.values()]})
    return table.sort_values(["accuracy", "sub-task"], kind="stable").reset_index(drop=True)


# ---- figures --------------------------------------------------------------------------------
def _legend_above(ax: Axes) -> None:
    # outside the axes, above them: a legend inside would cover bars
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), borderaxespad=0.0, frameon=False,
              ncol=2)


def _integer_counts(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # no half classes on a count axis


def per_class_bars(table: pd.DataFrame, mean_label: str, noun: str = "class") -> Figure:
    """A horizontal bar per row of ``per_class_table`` and a dashed line at their mean."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.4 * len(table) + 1.8))
    ax = fig.subplots()
    rows = np.arange(len(table))
    ax.barh(rows, table["f1"], color="tab:blue")
    ax.set_yticks(rows, [_row_label(name) for name in table["class"]])
    ax.invert_yaxis()  # first label on top
    ax.axvline(table["f1"].mean(), color="black", linestyle="--", label=mean_label)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"F1 of each {noun} on the test examples")
    _legend_above(ax)
    fig.tight_layout()
    return fig


def f1_histogram(values: Sequence[float], mean_label: str, noun: str = "class",
                 xlabel: str | None = None) -> Figure:
    """How many classes (or sub-tasks) reach each F1 (or accuracy), in bins of 0.05, with a
    dashed line at the mean."""
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=float)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    ax.hist(values, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(values.mean(), color="black", linestyle="--", label=mean_label)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel or f"F1 of one {noun}")
    ax.set_ylabel(PLURALS.get(noun, f"{noun}s"))
    _integer_counts(ax)
    _legend_above(ax)
    fig.tight_layout()
    return fig


def confusion_heatmap(matrix: pd.DataFrame) -> Figure:
    """``confusion_table`` annotated with its counts (for up to ``MANY_CLASSES`` labels)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    size = max(4.0, 0.6 * len(matrix) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    sns.heatmap(matrix.rename(index=_row_label, columns=_row_label), annot=True, fmt="d",
                cmap="Blues", cbar=False, square=True, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for label in ax.get_xticklabels():
        label.set_rotation(45)
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def per_trait_bars(table: pd.DataFrame) -> Figure:
    """Two bars per trait (two-class macro-F1, F1 of 'present') and a dashed line at the mean
    macro-F1, which is the task's metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.55 * len(table) + 1.8))
    ax = fig.subplots()
    rows = np.arange(len(table))
    height = 0.4
    ax.barh(rows - height / 2, table[TRAIT_MACRO], height, color="tab:blue", label=TRAIT_MACRO)
    # a NaN (trait never present nor predicted) draws no bar
    ax.barh(rows + height / 2, table[TRAIT_PRESENT].fillna(0), height, color="tab:orange",
            label=TRAIT_PRESENT)
    ax.axvline(table[TRAIT_MACRO].mean(), color="black", linestyle="--",
               label="mean macro-F1 = the task's metric")
    ax.set_yticks(rows, table["trait"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 on the test images")
    _legend_above(ax)
    fig.tight_layout()
    return fig


def subtask_histogram(table: pd.DataFrame, pooled: float, mean: float) -> Figure:
    """Sub-task accuracies in bins of 0.05, one tick per sub-task underneath (a strip), and
    lines at the pooled accuracy (the metric) and the mean over sub-tasks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    ax.hist(table["accuracy"], bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.plot(table["accuracy"], np.zeros(len(table)), "|", color="black", markersize=12,
            clip_on=False)
    ax.axvline(pooled, color="black", linestyle="--", label="pooled over images (the metric)")
    ax.axvline(mean, color="tab:red", linestyle=":", label="mean over sub-tasks")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy of one sub-task")
    ax.set_ylabel("sub-tasks")
    _integer_counts(ax)
    _legend_above(ax)
    fig.tight_layout()
    return fig


# ---- the page's prose and blocks ------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f") -> str:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return format(value, spec)
    return "not recorded"


def breakdown_prose(view: RunView) -> str:
    """The paragraph that opens the page's breakdown: what is shown and why, with the run's
    numbers (read from the store)."""
    plural = PLURALS[view.noun]
    if view.kind == MULTI_LABEL:
        table = per_trait_table(view.y_true, view.y_pred, view.class_names)
        return (f"Every one of the {view.n_test:,} test images has {len(table)} present/absent "
                f"traits. For each trait the bars show its two-class macro-F1 (the mean of the "
                f"F1 of 'present' and of 'absent') and the F1 of 'present' alone. The mean of "
                f"the {len(table)} macro-F1 values, {table[TRAIT_MACRO].mean():.3f}, is the "
                f"task's {view.metric_label} ({view.score:.3f} in the store).")
    if view.kind == OPEN_SET:
        n_unknown = int(np.sum(view.y_true[:, 0] == UNKNOWN_LABEL))
        return (f"Of the {view.n_test:,} test observations, {n_unknown:,} are of species never "
                f"seen in training. The probe called "
                f"{_fmt(view.extra.get('n_predicted_unknown'), ',')} observations unknown: "
                f"those whose distance to the nearest class centroid exceeds "
                f"{_fmt(view.extra.get('distance_threshold'))}, the "
                f"{_fmt(view.extra.get('unknown_quantile'), '.0%')} quantile of the training "
                f"images' own distances. The task's metric, {view.metric_label}, is "
                f"{view.score:.3f}; it charges each kind of mistake differently. The tables "
                f"show how many of each kind the run made, the challenge's losses as stored "
                f"with the run, then the F1 of each species (unknown counted as one more "
                f"class).")
    if view.has_subtasks:
        table = subtask_table(view.extra["per_task_accuracy"])
        worst = table.iloc[0]
        return (f"The {view.n_test:,} test images belong to {len(table):,} binary sub-tasks, "
                f"each with its own probe. The metric pools them: {view.metric_label} "
                f"{view.score:.3f} over all images. The mean of the per-sub-task accuracies is "
                f"{_fmt(view.extra.get('mean_task_accuracy'))}; the worst sub-task, "
                f"`{worst['sub-task']}`, reaches {worst['accuracy']:.3f}. Per-class F1 is not "
                f"shown: label 0 means something different in every sub-task.")
    n_classes = len(np.unique(view.y_true))
    text = ""
    if view.has_reid:
        text = (f"Re-identification: each of the {view.n_test:,} images is a query against all "
                f"the others. The nearest other image shows the same individual for "
                f"{_fmt(view.extra.get('top1'), '.1%')} of the queries (top-1), one of the 5 "
                f"nearest for {_fmt(view.extra.get('top5'), '.1%')} (top-5); the mean average "
                f"precision over the {_fmt(view.extra.get('n_queries_with_match'), ',')} queries "
                f"whose individual has another image is {_fmt(view.extra.get('map'))}. The "
                f"predicted individual is the vote of the {_fmt(view.extra.get('k'), ',')} "
                f"nearest images, and the {view.metric_label} scores those predictions. ")
    mean_note = ("their mean is the macro-F1" if view.metric == "macro_f1" else
                 f"their mean is not the task's metric ({view.metric_label})")
    source = f"From the {view.n_test:,} stored predictions: "
    if n_classes <= MANY_CLASSES:
        return text + source + (f"the bars are the F1 of each of the {n_classes:,} {plural} "
                                f"with a test example ({mean_note}); below them the confusion "
                                "matrix.")
    return text + source + (f"with {n_classes:,} {plural} (more than {MANY_CLASSES}), a bar per "
                   f"{view.noun} and a full confusion matrix would be unreadable: a histogram "
                   f"of the per-{view.noun} F1 ({mean_note}), the {N_EXTREMES} worst and best "
                   f"{plural}, and the {N_CONFUSIONS} most frequent confusions instead.")


def _caption(text: str):
    from IPython.display import Markdown

    return Markdown(f"**{text}**")


def _rounded(table: pd.DataFrame, index: str) -> pd.DataFrame:
    return table.drop(columns="label", errors="ignore").set_index(index).round(3)


def single_label_blocks(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str],
                        metric: str, noun: str = "class") -> list:
    """Per-class F1 and confusions for one label per example: bars and a heatmap up to
    ``MANY_CLASSES`` classes, a histogram, the extremes and the top confusions above."""
    plural = PLURALS[noun]
    table = per_class_table(y_true, y_pred, class_names)
    mean_label = f"mean over {plural}" + (" = macro-F1" if metric == "macro_f1" else "")
    blocks: list = []
    if len(table) <= MANY_CLASSES:
        blocks += [_caption(f"Per-{noun} F1"), FigureImage(per_class_bars(table, mean_label, noun)),
                   _rounded(table, "class")]
    else:
        worst, best = extreme_classes(table)
        blocks += [_caption(f"Per-{noun} F1 of the {len(table):,} {plural} with a test example"),
                   FigureImage(f1_histogram(table["f1"], mean_label, noun)),
                   _caption(f"The {len(worst)} worst {plural}"), _rounded(worst, "class"),
                   _caption(f"The {len(best)} best {plural}"), _rounded(best, "class")]
    if len(np.union1d(y_true, y_pred)) <= MANY_CLASSES:  # the matrix is built only when small
        blocks += [_caption("Confusion matrix (rows: true, columns: predicted)"),
                   FigureImage(confusion_heatmap(confusion_table(y_true, y_pred, class_names)))]
    else:
        confusions = top_confusions(y_true, y_pred, class_names)
        blocks += [_caption(f"The {len(confusions)} most frequent confusions"),
                   confusions.round(3)]
    return blocks


def breakdown_blocks(view: RunView) -> list:
    """What the page displays after the prose, in order: captions (Markdown), tables
    (DataFrames) and figures (``FigureImage``)."""
    if view.kind == MULTI_LABEL:
        table = per_trait_table(view.y_true, view.y_pred, view.class_names)
        return [_caption("Per-trait F1"), FigureImage(per_trait_bars(table)),
                table.set_index("trait").round(3)]
    if view.kind == OPEN_SET:
        return [_caption("Known and unknown species"), open_set_facts(view),
                _caption("Known/unknown confusion"),
                known_unknown_confusion(view.y_true, view.y_pred),
                _caption("Poisonous/edible confusion (an unknown species counts as edible)"),
                poison_confusion(view.y_true, view.y_pred),
                _caption("The challenge's losses, as stored with the run"),
                metric_extras_table(view.extra.get("metric_extras")),
                *single_label_blocks(view.y_true[:, 0], view.y_pred[:, 0], view.class_names,
                                     view.metric, view.noun)]
    if view.has_subtasks:
        table = subtask_table(view.extra["per_task_accuracy"])
        mean = view.extra.get("mean_task_accuracy", float(table["accuracy"].mean()))
        return [_caption("Per-sub-task accuracy"),
                FigureImage(subtask_histogram(table, view.score, mean)),
                _caption(f"The {min(N_WORST_SUBTASKS, len(table))} worst sub-tasks"),
                table.head(N_WORST_SUBTASKS).set_index("sub-task").round(3)]
    blocks: list = []
    if view.has_reid:
        blocks += [_caption("Re-identification"), reid_table(view)]
    return blocks + single_label_blocks(view.y_true, view.y_pred, view.class_names, view.metric,
                                        view.noun)


# ---- the dataset section (reads the task's data, when it is on this machine) ----------------
def dataset_outputs(task: Task, root: Path | None = None, *, seed: int = 0,
                    per_class: int = 5) -> list:
    """What the page's dataset section displays: any warning the task's loader raised (as a
    note on the page: stderr would fail the strict book build), the class counts and a grid of
    example images; or, when the data is not on this machine, the note saying how to fetch it."""
    from IPython.display import Markdown

    from biobench.taskpage import DataMissingNote, example_grid
    from biobench.tasks import TaskDataMissing

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = task.load(root)
        except TaskDataMissing as missing:
            # the note shows the command on its own line; keep what is missing from the message
            return [DataMissingNote(task, str(missing).split(". Get it with:")[0])]
    outputs: list = [Markdown(f"**Note from the task's loader:** {w.message}") for w in caught]
    outputs.append(class_counts(data))
    grid = example_grid(task, per_class=per_class, root=root, data=data, seed=seed)
    if grid is not None:
        outputs.append(FigureImage(grid))
    return outputs


def class_counts(data: TaskData) -> pd.DataFrame:
    """Examples per class and split, with a total row; above ``MANY_CLASSES`` classes a summary
    per split instead (classes, examples, and the smallest, median and largest class)."""
    splits = {"train": data.train, "test": data.test} if data.train else {"examples": data.test}
    per_split = {split: {label: len(group) for label, group in examples_by_class(examples).items()}
                 for split, examples in splits.items()}
    labels = sorted({label for counts in per_split.values() for label in counts})
    if len(labels) <= MANY_CLASSES:
        counts = pd.DataFrame({split: {label_name(data.class_names, label): n
                                       for label, n in counts.items()}
                               for split, counts in per_split.items()}).fillna(0).astype(int)
        counts.loc["total"] = [len(examples) for examples in splits.values()]
        return counts
    summary = {}
    for split, counts in per_split.items():
        sizes = np.array(list(counts.values()))
        summary[split] = {"examples": len(splits[split]), "classes": len(sizes),
                          "smallest class": int(sizes.min()),
                          "median class": float(np.median(sizes)),
                          "largest class": int(sizes.max())}
    return pd.DataFrame(summary)
