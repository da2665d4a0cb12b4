"""The book's task chapters (``book/tasks/*.md``): the facts, sizes and example images of a task.

A chapter is prose plus one cell, ``show_task("<name>")``. Every fact it shows comes from the
task's class attributes or from its data on disk, so nothing is typed twice. When the data is
not on this machine the cell shows a note naming the command that fetches it, and returns at
once: nothing is loaded or drawn. Nothing here writes to stderr (a strict book build turns
stderr into a failure): no progress bars, no warnings.

A second cell, ``show_published_scores("<name>")``, shows what the published leaderboard says
about the task (spread, Spearman ρ with the ImageNet-1K linear probe, the top models with their
intervals) and glues those numbers for the chapter's prose; without the file it shows a note.
Pages print the default data folder as ``$BIOBENCH_DATA/<name>``, never the build machine's path.
"""

from __future__ import annotations

import html
import io
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from biobench.metrics import METRIC_LABELS
from biobench.probes import PROBES
from biobench.tasks import Task, TaskData, TaskDataMissing, get_task, list_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.figure import Figure

    from biobench.published import Published
    from biobench.tasks import Example

GROUP_LABELS = {
    "offline": "offline (data from the package registry)",
    "benchmark": "BioBench benchmark",
    "prior_work": "prior work (not in the benchmark mean)",
    "synthetic": "synthetic (tests only)",
}
# The order of the book's task part: offline tasks first, prior work last.
GROUP_ORDER = ("offline", "benchmark", "prior_work")
UNKNOWN_LABEL = -1  # open-set tasks (FungiCLEF) label an unknown species -1
THUMBNAIL_PX = 256  # images are shrunk before drawing: herbarium sheets are several megapixels
ROW_LABEL_CHARS = 28


# ---- facts --------------------------------------------------------------------------------
DATA_FOLDER_VARIABLE = "$BIOBENCH_DATA"


def shown_data_folder(task: Task, root: Path | None = None) -> str:
    """Where the task's data lives, as a page may print it: ``$BIOBENCH_DATA/<name>`` for the
    default location (a built site must not carry the build machine's paths), the folder itself
    when the caller named one."""
    return str(root) if root is not None else f"{DATA_FOLDER_VARIABLE}/{task.name}"


def portable_text(text: str, task: Task, root: Path | None = None) -> str:
    """``text`` with the default data folder of ``task`` (and the data root above it) replaced
    by ``$BIOBENCH_DATA``: error messages name absolute paths, pages must not."""
    if root is not None:
        return text
    from biobench import config

    text = text.replace(str(task.data_path()), shown_data_folder(task))
    return text.replace(str(config.data_dir()), DATA_FOLDER_VARIABLE)


def _as_task(task: str | Task) -> Task:
    return get_task(task) if isinstance(task, str) else task


def download_command(task: str | Task) -> str:
    """What a user runs to fetch the task's data: its own hint, else ``biobench download``."""
    task = _as_task(task)
    return task.download_hint or f"biobench download {task.name}"


def probe_summary(name: str) -> str:
    """``name: first line of the probe's docstring`` (the name alone for an unknown probe)."""
    probe = PROBES.get(name)
    doc = (probe.__doc__ or "").strip().splitlines() if probe else []
    return f"{name}: {doc[0].replace('``', '')}" if doc else name


def task_facts(task: str | Task, root: Path | None = None) -> dict[str, str]:
    """The facts of a task, from its class attributes, in the order a page shows them.

    ``root`` is the task's data folder (default: ``$BIOBENCH_DATA/<name>``).
    """
    task = _as_task(task)
    return {
        "task": task.name,
        "title": task.display,
        "group": GROUP_LABELS.get(task.group, task.group),
        "kingdom": task.kingdom,
        "modality": task.modality,
        "metric": f"{METRIC_LABELS.get(task.metric_name, task.metric_name)} ({task.metric_name})",
        "default probe": probe_summary(task.default_probe),
        "pooling (examples of several images)": task.pooling,
        "data folder": shown_data_folder(task, root),
        "data on this machine": "yes" if task.is_present(root) else "no",
        "download": download_command(task),
        "citation": task.citation,
    }


# ---- sizes --------------------------------------------------------------------------------
def examples_by_class(examples: Sequence[Example]) -> dict[int, list[Example]]:
    """Examples grouped by class id, in input order. A multi-label example (a tuple of 0/1,
    e.g. FishNet's traits) joins every class it has; the unknown class keeps its id, -1."""
    groups: dict[int, list[Example]] = defaultdict(list)
    for ex in examples:
        if np.ndim(ex.label) == 0:
            groups[int(ex.label)].append(ex)
        else:
            for i in np.flatnonzero(np.asarray(ex.label)):
                groups[int(i)].append(ex)
    return dict(sorted(groups.items()))


def label_name(class_names: Sequence[str], label: int) -> str:
    """The name of class id ``label`` in ``class_names``; ``unknown`` for the open-set id -1,
    ``class <id>`` for an id the list does not cover."""
    if 0 <= label < len(class_names):
        return str(class_names[label])
    return "unknown" if label == UNKNOWN_LABEL else f"class {label}"


def class_name(data: TaskData, label: int) -> str:
    return label_name(data.class_names, label)


def _describe_extra(value: Any) -> str | None:
    """A short text for an entry of ``TaskData.extra``: a scalar as it is, a list by its length,
    a small {split: count} map in one line; None for bulky maps (per-task details), which a
    page would only flood."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, str, np.floating)):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return f"{len(value):,}"
    if isinstance(value, dict) and 0 < len(value) <= 4 and all(
            isinstance(v, (int, np.integer)) for v in value.values()):
        return ", ".join(f"{k} {v:,}" for k, v in value.items())
    return None


def _extra_label(key: str) -> str:
    # "n_individuals" -> "individuals", "clips_dropped_under_16_frames" -> "clips dropped ..."
    return key.removeprefix("n_").replace("_", " ")


def data_sizes(task: str | Task, root: Path | None = None,
               data: TaskData | None = None) -> dict[str, int | str] | None:
    """Counts of the task's data as loaded (``None`` when the data is not on this machine).

    ``data`` reuses an already loaded ``TaskData``. Images are counted once each, a crop box
    counting as its own image; a clip counts the frames it uses. Class counts include the
    unknown class of an open-set task. The notes that the task's loader records in
    ``TaskData.extra`` (rows dropped, short clips, classes only in test) are appended.
    """
    task = _as_task(task)
    if data is None:
        if not task.is_present(root):
            return None
        data = task.load(root)
    examples = [*data.train, *data.test]
    per_class = [len(group) for group in examples_by_class(examples).values()]
    sizes: dict[str, int | str] = {
        "training examples": len(data.train),
        "test examples": len(data.test),
        "images": len({ref for ex in examples for ref in ex.images}),
        "classes": len(data.class_names),
        "classes with a test example": len(examples_by_class(data.test)),
        "examples in the smallest class": min(per_class, default=0),
        "examples in the largest class": max(per_class, default=0),
    }
    for key, value in data.extra.items():
        text = _describe_extra(value)
        if text is not None:
            sizes[_extra_label(key)] = text
    return sizes


# ---- example images -----------------------------------------------------------------------
def _row_label(text: str) -> str:
    # keep the end: taxonomic labels ("Insecta|Coleoptera|...|species") end in the specific part
    return text if len(text) <= ROW_LABEL_CHARS else "…" + text[-(ROW_LABEL_CHARS - 1):]


def pick_examples(examples: Sequence[Example], per_class: int = 4, max_classes: int = 8,
                  seed: int = 0) -> dict[int, list[Example]]:
    """Up to ``max_classes`` classes and ``per_class`` examples of each, drawn with ``seed``
    (all of them when there are fewer), both kept in their original order."""
    groups = examples_by_class(examples)
    rng = np.random.default_rng(seed)
    labels = list(groups)
    if len(labels) > max_classes:
        labels = [labels[i] for i in sorted(rng.choice(len(labels), max_classes, replace=False))]
    picked = {}
    for label in labels:
        group = groups[label]
        if len(group) > per_class:
            group = [group[i] for i in sorted(rng.choice(len(group), per_class, replace=False))]
        picked[label] = group
    return picked


def _thumbnail(ex: Example):
    from PIL import Image

    from biobench.images import load_image

    with warnings.catch_warnings():
        # dataset files are trusted; a very large scan is shrunk right away
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = load_image(ex.images[0])
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return image


def example_grid(task: str | Task, per_class: int = 4, max_classes: int = 8, seed: int = 0,
                 root: Path | None = None, data: TaskData | None = None) -> Figure | None:
    """A grid of example images, one row per class (``None`` when the data is absent).

    Images come from the training split (from the scored examples when a task has no training
    split). A clip or observation shows its first image. An unreadable image leaves a cell that
    names the file instead of failing the page.
    """
    from matplotlib.figure import Figure

    from biobench.images import UnreadableImage

    task = _as_task(task)
    if data is None:
        if not task.is_present(root):
            return None
        data = task.load(root)
    split, examples = ("training", data.train) if data.train else ("scored", data.test)
    picked = pick_examples(examples, per_class, max_classes, seed)
    if not picked:
        return None
    n_rows = len(picked)
    # a Figure without pyplot: no global state, so a notebook never shows it twice
    fig = Figure(figsize=(1.5 * per_class + 1.8, 1.6 * n_rows + 0.6))
    axes = fig.subplots(n_rows, per_class, squeeze=False)
    for row, (label, row_examples) in zip(axes, picked.items()):
        for ax, ex in zip(row, row_examples):
            try:
                ax.imshow(_thumbnail(ex))
            except UnreadableImage as exc:
                ax.text(0.5, 0.5, f"unreadable:\n{exc.path.name}", ha="center", va="center",
                        fontsize=7, wrap=True, transform=ax.transAxes)
            if len(ex.images) > 1:
                ax.set_xlabel(f"1st of {len(ex.images)} images", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(row_examples):]:
            ax.set_axis_off()
        row[0].set_ylabel(_row_label(class_name(data, label)), rotation=0, ha="right",
                          va="center", fontsize=11)
    n_classes = len(examples_by_class(examples))
    shown = f"{n_rows} of {n_classes} classes" if n_rows < n_classes else f"all {n_classes} classes"
    fig.suptitle(f"{task.display}: {split} examples, {shown}", fontsize=12)
    fig.tight_layout()
    return fig


# ---- facts from the datasets' documentation --------------------------------------------------
# Sizes and class counts as the datasets document them (BioBench task specification, reference
# code at commit 6376d97, and each dataset's own documentation). "≈" counts come from an earlier
# draft of the BioBench paper. These let a chapter inform when the data is not on the machine;
# the counts from the data on disk, when present, are shown separately.
DOCUMENTED_SOURCE = ("BioBench task specification (reference code at commit 6376d97) and each "
                     "dataset's documentation; ≈ marks counts from an earlier draft of the paper")
DOCUMENTED_SIZES: dict[str, dict[str, str]] = {
    "beluga": {"split": "one split, every image scored leave-one-out",
               "classes": "individual whales, from the annotations"},
    "ecdysis": {"split": "per-label temporal 80 / 20 (earliest specimens train)",
                "classes": "from the collection's metadata"},
    "fishnet": {"training images": "≈75,631", "test images": "≈18,901",
                "classes": "9 binary functional traits (multi-label)"},
    "fungiclef": {"training images": "≈295,938 (DF20)",
                  "test images": "≈60,832 (DF21, scored per observation)",
                  "classes": "1,604 known species + unknown (open set)"},
    "herbarium19": {"training images": "34,225", "test images": "2,679 (validation set)",
                    "classes": "683 species"},
    "iwildcam": {"split": "WILDS train / out-of-distribution test", "classes": "182 species"},
    "kabr": {"split": "official train / validation clips", "classes": "8 behaviours"},
    "mammalnet": {"split": "composition train / test clips", "classes": "12 behaviours"},
    "plankton": {"training images": "≈63,074 (2020 lab set)",
                 "test images": "≈151,236 (Utö 2021)", "classes": "from the class folders"},
    "plantnet": {"training images": "≈243,916", "test images": "≈31,118 (validation)",
                 "classes": "1,081 species"},
    "imagenet1k": {"training images": "1.28 M", "test images": "50 K (validation)",
                   "classes": "1,000"},
    "inat21": {"training images": "500 K (train_mini)", "test images": "100 K (validation)",
               "classes": "10,000 species"},
    "newt": {"split": "official per-task train / test", "classes": "164 binary tasks"},
}


def documented_sizes(task: str | Task) -> dict[str, str] | None:
    """The documented sizes of a task (``None`` for a task with no documented entry: the
    offline tasks, whose data the build always has, and a user's own task)."""
    return DOCUMENTED_SIZES.get(_as_task(task).name)


# ---- the published scores of one task ------------------------------------------------------
TOP_MODELS = 5


@dataclass(frozen=True)
class PublishedTaskScores:
    """What the published leaderboard says about one task (scores as fractions).

    ``top``: the best ``TOP_MODELS`` models (model, display, family, score, low, high, tie,
    best), ``tie`` and ``best`` as the file marks them.
    ``imagenet``: ``biobench.analysis.association`` between the published ImageNet-1K
    linear-probe accuracy and this task's score over the models that have both, or ``None``
    for ImageNet-1K itself.
    """

    task: str
    display: str
    metric: str
    n_models: int
    lowest: float
    median: float
    highest: float
    n_tied: int
    n_outside: int
    median_shift_pt: float  # median of bootstrap_mean - mean, percentage points
    top: pd.DataFrame
    imagenet: dict[str, float] | None


def published_task_scores(task: str | Task, published: "Published",
                          top_n: int = TOP_MODELS) -> PublishedTaskScores | None:
    """The task's row of the published leaderboard, summarised; ``None`` when the file does
    not score the task (the offline tasks, a user's own task)."""
    from biobench.analysis import association, ci_excludes_estimate

    name = _as_task(task).name
    results = published.results
    rows = results[results["task"] == name].dropna(subset=["mean"])
    if rows.empty:
        return None
    from biobench.analysis import display_names

    info = published.models.set_index("model")
    names = display_names(info)  # one model at several resolutions gets "@<px>" appended
    ties = {m for t, m in published.ties_with_best() if t == name}
    best = published.bests.set_index("task")["best"].get(name)
    ranked = rows.sort_values("mean", ascending=False)
    top = pd.DataFrame({
        "model": ranked["model"].to_numpy(),
        "display": ranked["model"].map(names).fillna(ranked["model"]).to_numpy(),
        "family": ranked["model"].map(info["family"]).to_numpy(),
        "score": ranked["mean"].to_numpy(), "low": ranked["ci_low"].to_numpy(),
        "high": ranked["ci_high"].to_numpy(),
        "tie": ranked["model"].isin(ties).to_numpy(),
        "best": (ranked["model"] == best).to_numpy(),
    }).head(top_n)
    imagenet = None
    if name != published_imagenet_task():
        x = results[results["task"] == published_imagenet_task()].set_index("model")["mean"]
        both = rows.set_index("model")["mean"].to_frame("y").join(x.rename("x"), how="inner")
        imagenet = association(both["x"].to_numpy(), both["y"].to_numpy()) if len(both) > 2 else None
    outside = ci_excludes_estimate(rows["mean"], rows["ci_low"], rows["ci_high"])
    display = published.task_display.get(name, name)
    from biobench.published import PUBLISHED_METRICS

    metric = PUBLISHED_METRICS.get(name, "")
    return PublishedTaskScores(
        task=name, display=display, metric=METRIC_LABELS.get(metric, metric),
        n_models=len(rows), lowest=float(rows["mean"].min()), median=float(rows["mean"].median()),
        highest=float(rows["mean"].max()), n_tied=len(ties), n_outside=int(np.sum(outside)),
        median_shift_pt=float(100 * (rows["bootstrap_mean"] - rows["mean"]).median()),
        top=top, imagenet=imagenet)


def published_imagenet_task() -> str:
    from biobench.published import IMAGENET_TASK

    return IMAGENET_TASK


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def published_scores_table(scores: PublishedTaskScores) -> pd.DataFrame:
    """The top models as a table a reader can scan: rank, model, family, score [interval]."""
    from biobench.analysis import BEST_MARK, TIE_MARK

    marks = [BEST_MARK if best else TIE_MARK if tie else ""
             for best, tie in zip(scores.top["best"], scores.top["tie"])]
    return pd.DataFrame({
        "model": scores.top["display"].to_numpy(),
        "family": scores.top["family"].to_numpy(),
        f"{scores.metric} (%), 95 % interval": [
            f"{mark + ' ' if mark else ''}{_pct(s)} [{_pct(lo)}, {_pct(hi)}]"
            for mark, s, lo, hi in zip(marks, scores.top["score"], scores.top["low"],
                                       scores.top["high"])],
    }, index=pd.RangeIndex(1, len(scores.top) + 1, name="rank"))


def published_scores_glue(scores: PublishedTaskScores | None) -> dict[str, str]:
    """The numbers a chapter's prose may quote, as text (``published_*`` glue keys); a note in
    place of each number when the file does not score the task or is not available."""
    keys = ("n_models", "lowest", "median", "highest", "r2", "spearman", "n_outside", "n_tied",
            "median_shift")
    if scores is None:
        return {f"published_{k}": "(published scores not available)" for k in keys}
    imagenet = scores.imagenet or {}
    return {
        "published_n_models": str(scores.n_models),
        "published_lowest": f"{_pct(scores.lowest)} %",
        "published_median": f"{_pct(scores.median)} %",
        "published_highest": f"{_pct(scores.highest)} %",
        "published_r2": f"{imagenet['r2']:.3f}" if imagenet else "(not applicable)",
        "published_spearman": f"{imagenet['spearman']:.2f}" if imagenet else "(not applicable)",
        "published_n_outside": str(scores.n_outside),
        "published_n_tied": str(scores.n_tied),
        "published_median_shift": f"{scores.median_shift_pt:+.1f}".replace("-", "−"),
    }


def published_scores_prose(scores: PublishedTaskScores) -> str:
    """One paragraph: the spread of the published scores and how ImageNet rank relates."""
    text = (f"The published leaderboard scores **{scores.n_models} models** on this task "
            f"({scores.metric}, percent): from {_pct(scores.lowest)} to {_pct(scores.highest)}, "
            f"median {_pct(scores.median)}. The file counts {scores.n_tied} model(s) as tied "
            f"with the task's best, the best included (★ best, ≈ tied, in the table below). ")
    if scores.imagenet:
        rho, r2, n = scores.imagenet["spearman"], scores.imagenet["r2"], int(scores.imagenet["n"])
        strength = ("strongly" if abs(rho) >= 0.7 else "moderately" if abs(rho) >= 0.4
                    else "weakly" if abs(rho) >= 0.2 else "hardly")
        text += (f"Across the {n} models that also have an ImageNet-1K linear-probe accuracy, "
                 f"the ImageNet ranking {strength} predicts the ranking here: Spearman "
                 f"ρ = {rho:.2f}, R² = {r2:.3f}. ")
    text += (f"{scores.n_outside} of the {scores.n_models} published intervals exclude their "
             "own point estimate (see the published-leaderboard pages on why).")
    return text


class PublishedMissingNote:
    """The published leaderboard is not available on the machine that built the page."""

    text = ("The published BioBench leaderboard file was not available when this page was "
            "built, so it shows no published scores. Set BIOBENCH_PUBLISHED_RESULTS to a copy "
            "of the file (or run `biobench published` with network access) and rebuild.")

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return ('<div class="admonition note"><p class="admonition-title">Published scores not '
                "available</p><p>The published BioBench leaderboard file was not available when "
                "this page was built, so it shows no published scores. Set "
                "<code>BIOBENCH_PUBLISHED_RESULTS</code> to a copy of the file (or run "
                "<code>biobench published</code> with network access) and rebuild.</p></div>")


def load_published_quietly() -> "Published | None":
    """The published leaderboard, or ``None`` when it is not available (never raises)."""
    from biobench.published import PublishedSchemaError, PublishedUnavailable, load_published

    try:
        return load_published()
    except (PublishedUnavailable, PublishedSchemaError):
        return None


def published_outputs(task: str | Task, published: "Published | None") -> tuple[list, dict[str, str]]:
    """What the chapter shows under "Published scores", and the glue texts for its prose."""
    from IPython.display import Markdown

    task = _as_task(task)
    if published is None:
        return [PublishedMissingNote()], published_scores_glue(None)
    scores = published_task_scores(task, published)
    if scores is None:
        return ([Markdown("The published BioBench leaderboard does not score this task: it is "
                          "one of this book's own tasks, scored on the leaderboard of our runs "
                          "(Analysis of our runs).")],
                published_scores_glue(None))
    return ([Markdown(published_scores_prose(scores)),
             Markdown(f"**The top {len(scores.top)} published models** on {scores.display}:"),
             published_scores_table(scores)],
            published_scores_glue(scores))


# ---- what a page shows ----------------------------------------------------------------------
def _code_html(hint: str) -> str:
    """A download hint as HTML: `quoted` parts become code, a bare command is code as a whole."""
    if "`" in hint:
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(hint))
    return f"<code>{html.escape(hint)}</code>"


class DataMissingNote:
    """A note (an admonition in the book, plain text elsewhere): the data of a task is not on
    this machine, what is missing where, and the command that fetches it."""

    def __init__(self, task: Task, reason: str):
        self.task = task
        self.reason = reason.rstrip(".")  # names the task and the folder it looked in
        self.command = download_command(task)

    @property
    def text(self) -> str:
        return (f"The data is not on this machine: {self.reason}. This page therefore shows no "
                f"sizes and no example images. To fetch the data: {self.command} ; then "
                "rebuild the page (set BIOBENCH_DATA to keep the data elsewhere).")

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        # the theme's own admonition classes, so the note looks like a MyST {note}
        return (
            '<div class="admonition note">'
            '<p class="admonition-title">The data is not on this machine</p>'
            f"<p>{html.escape(self.reason)}. This page therefore shows no sizes and no example "
            "images. To fetch the data:</p>"
            f"<p>{_code_html(self.command)}</p>"
            "<p>then rebuild the page (set <code>BIOBENCH_DATA</code> to keep the data "
            "elsewhere).</p></div>"
        )


class FigureImage:
    """A matplotlib Figure rendered once to PNG, shown by IPython as an image."""

    def __init__(self, figure: Figure, dpi: int = 100):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        self.figure = figure
        self.png = buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        return f"<figure: {self.figure.get_suptitle() or 'example images'}>"


def _table(values: dict[str, Any]) -> pd.DataFrame:
    # one unnamed column: the row labels say what each value is
    return pd.DataFrame({"": pd.Series(values, dtype="object")})


def task_page_outputs(task: str | Task, *, root: Path | None = None, per_class: int = 4,
                      max_classes: int = 8, seed: int = 0) -> list:
    """What ``show_task`` displays, in order: the facts table, then either the sizes table and
    the example grid (each after a one-line caption) or a ``DataMissingNote``. The citation is
    left to the page's own section."""
    from IPython.display import Markdown

    task = _as_task(task)
    facts = task_facts(task, root)
    facts.pop("citation")
    outputs: list = [_table(facts)]
    documented = documented_sizes(task)
    if documented:
        outputs += [Markdown(f"**Sizes as documented** ({DOCUMENTED_SOURCE}):"), _table(documented)]
    try:
        task.check_present(root)
        data = task.load(root)
    except TaskDataMissing as exc:
        # the note shows the command on its own line; keep only what is missing from the message
        reason = portable_text(str(exc).split(". Get it with:")[0], task, root)
        return outputs + [DataMissingNote(task, reason)]
    outputs += [Markdown("**The data on this machine**, as the task loads it:"),
                _table(data_sizes(task, root, data))]
    if not data.train:
        outputs.append(Markdown(
            "This task has no separate training split: every example is scored by a probe "
            "fitted on the other examples."))
    fig = example_grid(task, per_class, max_classes, seed, root, data)
    if fig is not None:
        outputs += [Markdown(f"**Example images**, drawn with seed {seed}:"), FigureImage(fig)]
    return outputs


def show_task(task: str | Task, *, root: Path | None = None, per_class: int = 4,
              max_classes: int = 8, seed: int = 0) -> None:
    """Display a task's facts, sizes and example images (or the note on missing data), and
    glue its citation as ``citation`` for the page's ``{glue:md}`citation``` section."""
    from IPython.display import Markdown, display

    task = _as_task(task)
    outputs = task_page_outputs(task, root=root, per_class=per_class, max_classes=max_classes,
                                seed=seed)
    with pd.option_context("display.max_colwidth", None):  # citations and paths in full
        for output in outputs:
            display(output)
    try:
        from myst_nb import glue
    except ImportError:  # outside a Jupyter Book build: show it in place
        display(Markdown(task.citation))
    else:
        glue("citation", Markdown(task.citation), display=False)


def show_published_scores(task: str | Task, published: "Published | None | str" = "load") -> None:
    """Display what the published leaderboard says about the task (or a note that the file is
    not available) and glue the ``published_*`` texts that the chapter's prose quotes."""
    from IPython.display import display

    task = _as_task(task)
    if isinstance(published, str):  # "load": read the file named by BIOBENCH_PUBLISHED_RESULTS
        published = load_published_quietly()
    outputs, texts = published_outputs(task, published)
    for output in outputs:
        display(output)
    try:
        from myst_nb import glue
    except ImportError:  # outside a Jupyter Book build there is no prose to fill in
        return
    for key, value in texts.items():
        glue(key, value, display=False)


# ---- the part's summary table ---------------------------------------------------------------
def book_task_order() -> list[str]:
    """Tasks in the order of the book's task part: offline, the paper's nine benchmark tasks,
    the benchmark tasks added after the paper (Ecdysis), then prior work."""
    from biobench.analysis import PAPER_TASKS

    order = []
    for group in GROUP_ORDER:
        names = list_tasks(group)
        order += [n for n in PAPER_TASKS if n in names] + [n for n in names if n not in PAPER_TASKS]
    return order


def task_summary(names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per task (book order by default): the facts a reader compares across tasks."""
    from biobench.analysis import PAPER_TASKS

    rows = []
    for name in names if names is not None else book_task_order():
        task = get_task(name)
        facts = task_facts(task)
        group = task.group
        if group == "benchmark":  # the paper's mean covers nine of the benchmark tasks
            group = "benchmark (paper)" if name in PAPER_TASKS else "benchmark (after the paper)"
        rows.append({"task": name, "title": task.display, "group": group.replace("_", " "),
                     "kingdom": task.kingdom, "modality": task.modality,
                     "metric": METRIC_LABELS.get(task.metric_name, task.metric_name),
                     "data here": facts["data on this machine"]})
    return pd.DataFrame(rows).set_index("task")


def task_summary_html(names: Sequence[str] | None = None) -> str:
    """``task_summary`` as an HTML table: each title links to its chapter (a sibling page
    ``<name>.html`` in the built book) and names the task as commands spell it."""
    table = task_summary(names)
    cells = table.apply(lambda column: column.map(lambda v: html.escape(str(v))))
    cells["title"] = [f'<a href="{html.escape(name)}.html">{title}</a><br>'
                      f'<code>{html.escape(name)}</code>'
                      for name, title in zip(table.index, cells["title"])]
    return cells.reset_index(drop=True).to_html(escape=False, index=False, classes="dataframe")
