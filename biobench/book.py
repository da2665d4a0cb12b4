"""The book's generated structure, written from a grid's run pages on disk.

- the "Runs" part of ``_toc.yml`` (between its generated-block markers): one chapter per task
  (an index page) with one section per run page, in grid order;
- one index page per task introducing its run pages;
- the execution cache of the analysis pages, dropped when the store's own runs changed.

``biobench.grid`` executes the cells and then calls ``write_book_pages`` and
``drop_stale_book_cache`` with its ``Grid`` (anything with ``tasks``, ``seeds``, ``protocol``,
``source`` and ``cells()``: this module does not import the grid, which imports it); nothing here
executes a notebook or computes a score.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from biobench.atomic import write_text_if_changed
from biobench.names import safe_name

TOC_BEGIN = "# BEGIN generated run pages"
TOC_END = "# END generated run pages"


class TocError(ValueError):
    """``_toc.yml`` lacks the generated-block markers; the message says where they go."""


# ---- table of contents -------------------------------------------------------------------
@dataclass(frozen=True)
class TaskPages:
    task: str
    title: str
    pages: tuple[tuple[str, str], ...]  # (page stem, link text), in grid order


def run_pages(grid: Any, runs_dir: Path) -> list[TaskPages]:
    """The run pages that exist on disk, grouped by task in grid order."""
    from biobench.backbones import model_info
    from biobench.tasks import get_task

    out = []
    for task in grid.tasks:
        pages = tuple(
            (cell.page_name, model_info(cell.model).display
             + (f", seed {cell.seed}" if cell.page_name != cell.model else ""))
            for cell in grid.cells() if cell.task == task and cell.notebook_path(runs_dir).is_file()
        )
        if pages:
            out.append(TaskPages(task, get_task(task).display, pages))
    return out


def toc_block(task_pages: Sequence[TaskPages], runs_dir_in_book: str) -> str:
    """YAML for the run part of ``_toc.yml``: one chapter per task (its index page) with one
    section per model page. Indented to sit inside the top-level ``parts:`` list."""
    if not task_pages:
        return ""
    part = {"caption": "Runs", "chapters": [
        {"file": f"{runs_dir_in_book}/{safe_name(tp.task)}/index",
         "sections": [{"file": f"{runs_dir_in_book}/{safe_name(tp.task)}/{stem}"}
                      for stem, _ in tp.pages]}
        for tp in task_pages
    ]}
    text = yaml.safe_dump([part], sort_keys=False, default_flow_style=False, indent=2)
    return "".join(f"  {line}\n" for line in text.splitlines())


def render_toc(toc_text: str, block: str, toc_name: str = "_toc.yml") -> str:
    """Replace what lies between the generated-block markers of ``toc_text`` with ``block``."""
    lines = toc_text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == TOC_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == TOC_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise TocError(f"{toc_name} must hold exactly one '{TOC_BEGIN}' line followed by one "
                        f"'{TOC_END}' line, inside its `parts:` list")
    text = "".join(lines[: starts[0] + 1]) + block + "".join(lines[ends[0]:])
    yaml.safe_load(text)  # never write a table of contents that is not YAML
    return text


TASK_CHAPTERS = "book/tasks"  # the book's per-task chapters, <name>.md, when one exists


def task_index_page(tp: TaskPages, grid: Any, root: Path | None = None) -> str:
    """Markdown (no code, so nothing to execute) introducing one task's run pages."""
    from biobench.metrics import METRIC_LABELS
    from biobench.tasks import get_task

    task = get_task(tp.task)
    protocol = grid.protocol or task.default_probe
    links = "\n".join(f"- {{doc}}`{text} <{stem}>`" for stem, text in tp.pages)
    chapter = f"{TASK_CHAPTERS}/{tp.task}"
    about = (f" About the task: {{doc}}`/{chapter}`."
             if root is not None and (root / f"{chapter}.md").is_file() else "")
    return (
        f"# {tp.title}\n\n"
        f"Task `{tp.task}`: {task.modality}, {task.kingdom}. "
        f"Metric: {METRIC_LABELS.get(task.metric_name, task.metric_name)}; probe `{protocol}`; "
        f"seed(s) {', '.join(map(str, grid.seeds))}.{about}\n\n"
        f"Source: {task.citation}\n\n"
        f"Each page below is `notebooks/evaluate.md` executed by papermill for one model "
        f"(grid `{Path(grid.source).name}`).\n\n{links}\n"
    )


def write_book_pages(grid: Any, runs_dir: Path, toc_path: Path) -> list[TaskPages]:
    """Rewrite the task index pages and the run block of ``_toc.yml`` for the pages on disk."""
    pages = run_pages(grid, runs_dir)
    for tp in pages:
        write_text_if_changed(runs_dir / safe_name(tp.task) / "index.md",
                         task_index_page(tp, grid, toc_path.resolve().parent))
    runs_in_book = runs_dir.resolve().relative_to(toc_path.resolve().parent).as_posix()
    write_text_if_changed(toc_path, render_toc(toc_path.read_text(), toc_block(pages, runs_in_book),
                                          toc_path.name))
    return pages


# ---- keeping the book's execution cache honest -------------------------------------------
FINGERPRINT_FILE = ".biobench-store-fingerprint"


def store_fingerprint(store) -> str:
    """Hash of the own runs and models, which the analysis pages of our runs read. Published
    runs are left out: their pages import a checksummed file themselves on every execution."""
    h = hashlib.sha256()
    h.update(store.runs("own").to_json(orient="records", date_format="iso").encode())
    h.update(store.models("own").to_json(orient="records").encode())
    return h.hexdigest()


def drop_stale_book_cache(store, build_dir: Path) -> bool:
    """Analysis pages run under ``execute_notebooks: cache``, whose key is the page's code, not
    the store it reads. When the store changed since the last build, drop the execution cache
    and Sphinx's parsed pages so every page that reads it runs again. Returns True if dropped."""
    marker = build_dir / FINGERPRINT_FILE
    fingerprint = store_fingerprint(store)
    if marker.is_file() and marker.read_text() == fingerprint:
        return False
    for stale in (build_dir / ".jupyter_cache", build_dir / ".doctrees"):
        shutil.rmtree(stale, ignore_errors=True)
    write_text_if_changed(marker, fingerprint)
    return True


