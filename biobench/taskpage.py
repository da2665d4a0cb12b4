"""The book's task chapters (``book/tasks/*.md``): the facts, sizes and example images of a task.

A chapter is prose plus one cell, ``show_task("<name>")``. Every fact it shows comes from the
task's class attributes or from its data on disk, so nothing is typed twice. When the data is
not on this machine the cell shows a note naming the command that fetches it, and returns at
once: nothing is loaded or drawn. Nothing here writes to stderr (a strict book build turns
stderr into a failure): no progress bars, no warnings.
"""

from __future__ import annotations

import html
import io
import re
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from biobench.metrics import METRIC_LABELS
from biobench.probes import PROBES
from biobench.tasks import Task, TaskData, TaskDataMissing, get_task, list_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.figure import Figure

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
        "data folder": str(task.data_path(root)),
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
    try:
        task.check_present(root)
        data = task.load(root)
    except TaskDataMissing as exc:
        # the note shows the command on its own line; keep only what is missing from the message
        reason = str(exc).split(". Get it with:")[0]
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
