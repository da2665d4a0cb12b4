"""The published BioBench leaderboard: fetch, validate, import into the results store.

The reference project publishes its leaderboard as one JSON file (85 checkpoints x 13 tasks).
This module finds that file, checks it and imports it into :class:`biobench.store.ResultsStore`
as ``source='published'`` runs, so one analysis (``biobench.analysis``) serves published and own
results alike.

Where the file comes from, first match wins:

1. ``BIOBENCH_PUBLISHED_RESULTS``: a local path (tests and CI point it at the shared copy);
2. the cache ``$BIOBENCH_HOME/published/biobench_results.json`` when its sha256 is right;
3. a download from :data:`PUBLISHED_URL` (override with ``BIOBENCH_PUBLISHED_URL``), checked
   against :data:`PUBLISHED_SHA256` before it is moved into the cache.

The file is never committed to this repository. Scores use the file's ``mean`` (the point
estimate on the full test set), never ``bootstrap_mean`` (biased, see the book's page on the
published intervals).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import socket
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from biobench import config
from biobench.store import ModelRecord, ResultsStore, RunKey, RunRecord

PATH_ENV = "BIOBENCH_PUBLISHED_RESULTS"
URL_ENV = "BIOBENCH_PUBLISHED_URL"

# Public home of the file: the reference repository, pinned to the commit the spec describes.
PUBLISHED_REPO = "samuelstevens/biobench"
PUBLISHED_COMMIT = "6376d97"
PUBLISHED_URL = (
    f"https://raw.githubusercontent.com/{PUBLISHED_REPO}/{PUBLISHED_COMMIT}/docs/data/results.json"
)
PUBLISHED_SHA256 = "677911dc79eb49b23863031e490f21e0f9beefdfc1c8d7bde46d76438b8e43e4"
CACHE_NAME = "biobench_results.json"
# Short: a book build offline must fail over to the "not available" pages, not hang.
FETCH_TIMEOUT_S = 5.0

SOURCE = "published"
PROTOCOL = "published"
IMAGENET_TASK = "imagenet1k"
IMAGENET_SOURCE = "BioBench linear probe on frozen features"

# The metric each published task reports (spec: biobench-tasks.md).
PUBLISHED_METRICS: dict[str, str] = {
    "imagenet1k": "accuracy",
    "inat21": "accuracy",
    "newt": "accuracy",
    "fishnet": "fishnet_macro_f1",
    "fungiclef": "fungiclef_reference_score",
    **{t: "macro_f1" for t in (
        "beluga", "ecdysis", "herbarium19", "iwildcam", "kabr", "mammalnet", "plankton",
        "plantnet")},
}

HOW_TO_PROVIDE = (
    f"To provide it, set the environment variable {PATH_ENV} to a local copy of the file (the "
    f"project's Makefile sets it to ../shared/reference/biobench_results.json when that file "
    f"exists), or, with network access, run 'biobench published' (or 'make published') "
    f"to download it from {PUBLISHED_URL} into the cache."
)

_TOP_KEYS = ("meta", "models", "benchmark_tasks", "prior_work_tasks", "results", "bests")
_MODEL_KEYS = ("ckpt", "display", "family", "resolution", "params", "release_ms")
_RESULT_KEYS = ("task", "model", "mean", "bootstrap_mean", "ci_low", "ci_high")
_SCORE_KEYS = ("mean", "bootstrap_mean", "ci_low", "ci_high")


class PublishedUnavailable(RuntimeError):
    """The published leaderboard could not be found or fetched; the message says how to provide it."""


class PublishedSchemaError(ValueError):
    """The file does not have the layout this module understands."""


@dataclass(frozen=True)
class Published:
    """The parsed leaderboard.

    ``models``: one row per checkpoint (model, display, family, resolution, params, release).
    ``results``: one row per (task, model): mean, bootstrap_mean, ci_low, ci_high.
    ``bests``: one row per task: best and ties (a tuple that includes best).
    ``tasks``: name, display, group ('benchmark' or 'prior_work').
    """

    models: pd.DataFrame
    results: pd.DataFrame
    bests: pd.DataFrame
    tasks: pd.DataFrame
    meta: dict[str, Any]
    origin: str  # the path or URL it was read from
    sha256: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def task_display(self) -> dict[str, str]:
        return dict(zip(self.tasks["name"], self.tasks["display"]))

    def ties_with_best(self) -> set[tuple[str, str]]:
        """(task, model) pairs that the file marks as tied with the task's best."""
        return {(row.task, m) for row in self.bests.itertuples() for m in row.ties}


# ---- locating and fetching --------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # a few hundred kB: one read


def cache_path() -> Path:
    return config.home_dir() / "published" / CACHE_NAME


def _reachable(url: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds when the host can not be reached (e.g. offline)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except (OSError, TypeError) as exc:
        raise PublishedUnavailable(
            f"Could not reach {parts.hostname or url} to download the published leaderboard "
            f"({exc}). {HOW_TO_PROVIDE}"
        ) from exc


def fetch_published(url: str | None = None, dest: Path | None = None, *,
                    sha256: str = PUBLISHED_SHA256, timeout: float = FETCH_TIMEOUT_S) -> Path:
    """Download the file to ``dest`` (default: the cache), refusing a wrong sha256.

    ``biobench.download.download_file`` writes a ``.part`` file and renames it only after the
    checksum passes, so a failed or refused download leaves nothing that looks complete.
    """
    url = url or os.environ.get(URL_ENV) or PUBLISHED_URL
    dest = Path(dest) if dest is not None else cache_path()
    _reachable(url, timeout)
    from biobench.download import DownloadError, download_file

    try:
        return download_file(url, dest, sha256=sha256, progress=False, retries=0)
    except DownloadError as exc:
        raise PublishedUnavailable(f"{exc} {HOW_TO_PROVIDE}") from exc


def published_path(*, timeout: float = FETCH_TIMEOUT_S) -> Path:
    """The local file to read: the setting, else a verified cache, else a fresh download."""
    setting = os.environ.get(PATH_ENV)
    if setting:
        path = Path(setting).expanduser()
        if not path.is_file():
            raise PublishedUnavailable(
                f"{PATH_ENV} points to {path}, which is not a file. {HOW_TO_PROVIDE}"
            )
        return path
    cached = cache_path()
    if cached.is_file() and _sha256(cached) == PUBLISHED_SHA256:
        return cached
    return fetch_published(dest=cached, timeout=timeout)


# ---- parsing and validation -------------------------------------------------------------------
def _check(condition: bool, origin: str, problem: str) -> None:
    if not condition:
        raise PublishedSchemaError(
            f"{origin}: {problem}. This module reads schema 1 of the BioBench results file "
            f"(docs/data/results.json at commit {PUBLISHED_COMMIT}); point {PATH_ENV} at that file."
        )


def _records(raw: dict, key: str, required: tuple[str, ...], origin: str) -> pd.DataFrame:
    rows = raw[key]
    _check(isinstance(rows, list) and len(rows) > 0, origin, f"'{key}' must be a non-empty list")
    for i, row in enumerate(rows):
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        _check(not missing, origin, f"'{key}'[{i}] lacks {', '.join(missing)}")
    return pd.DataFrame(rows)


def parse_published(raw: dict, origin: str = "<published results>", sha256: str = "") -> Published:
    """Validate the decoded JSON and turn it into typed tables."""
    _check(isinstance(raw, dict), origin, "the top level must be a JSON object")
    missing = [k for k in _TOP_KEYS if k not in raw]
    _check(not missing, origin, f"missing top-level keys {', '.join(missing)}")

    models = _records(raw, "models", _MODEL_KEYS, origin).rename(columns={"ckpt": "model"})
    _check(models["model"].is_unique, origin, "duplicate 'ckpt' in 'models'")
    models["release"] = pd.to_datetime(models["release_ms"], unit="ms", utc=True)

    tasks = pd.concat([
        _records(raw, "benchmark_tasks", ("name", "display"), origin).assign(group="benchmark"),
        _records(raw, "prior_work_tasks", ("name", "display"), origin).assign(group="prior_work"),
    ], ignore_index=True)
    _check(tasks["name"].is_unique, origin, "a task is listed twice")
    unknown = sorted(set(tasks["name"]) - set(PUBLISHED_METRICS))
    _check(not unknown, origin, f"tasks with no known metric: {', '.join(unknown)} "
           "(add them to biobench.published.PUBLISHED_METRICS)")

    results = _records(raw, "results", _RESULT_KEYS, origin)[list(_RESULT_KEYS)]
    for col in _SCORE_KEYS:
        values = pd.to_numeric(results[col], errors="coerce")
        bad = results.loc[~values.between(0, 1), ["task", "model"]]
        _check(bad.empty, origin, f"'{col}' must be a number in [0, 1]; first bad row: "
               f"{bad.head(1).to_dict('records')}")
        results[col] = values.astype(float)
    stray_models = sorted(set(results["model"]) - set(models["model"]))
    _check(not stray_models, origin, f"results for unlisted models: {', '.join(stray_models[:5])}")
    stray_tasks = sorted(set(results["task"]) - set(tasks["name"]))
    _check(not stray_tasks, origin, f"results for unlisted tasks: {', '.join(stray_tasks)}")
    dup = results.duplicated(["task", "model"])
    _check(not dup.any(), origin, f"duplicate (task, model) rows, e.g. "
           f"{results.loc[dup, ['task', 'model']].head(1).to_dict('records')}")

    bests = _records(raw, "bests", ("task", "best", "ties"), origin)
    bests["ties"] = bests["ties"].map(tuple)
    for row in bests.itertuples():
        _check(row.task in set(tasks["name"]), origin, f"'bests' names unknown task {row.task}")
        _check(row.best in row.ties, origin, f"'bests' for {row.task}: best is not in its ties")
        scored = set(results.loc[results["task"] == row.task, "model"])
        _check(set(row.ties) <= scored, origin, f"'bests' for {row.task} ties unscored models")

    return Published(models=models, results=results, bests=bests, tasks=tasks,
                     meta=dict(raw["meta"]), origin=origin, sha256=sha256)


def load_published(path: str | Path | None = None, *, timeout: float = FETCH_TIMEOUT_S) -> Published:
    """Read and validate the leaderboard from ``path`` or from :func:`published_path`."""
    path = Path(path) if path is not None else published_path(timeout=timeout)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishedUnavailable(f"Could not read {path}: {exc}. {HOW_TO_PROVIDE}") from exc
    except json.JSONDecodeError as exc:
        raise PublishedSchemaError(f"{path} is not valid JSON ({exc}). {HOW_TO_PROVIDE}") from exc
    notes = ()
    digest = _sha256(path)
    if digest != PUBLISHED_SHA256:
        notes = (f"{path} has sha256 {digest}, not the pinned {PUBLISHED_SHA256}: "
                 "figures may differ from the book's reference values.",)
    return replace(parse_published(raw, origin=str(path), sha256=digest), notes=notes)


# ---- import into the store --------------------------------------------------------------------
def _ci_excludes_point(score: float, low: float, high: float) -> bool:
    # Imported here so that the published module and the analysis agree on one definition.
    from biobench.analysis import ci_excludes_estimate

    return bool(ci_excludes_estimate(score, low, high))


def import_published(store: ResultsStore, published: Published | None = None, *,
                     progress: Callable | None = None) -> int:
    """Write the leaderboard into ``store`` as ``source='published'``; returns the runs written.

    Re-importing replaces every earlier published run, so the store never mixes two versions
    of the file. ``score`` is the file's ``mean``; ``extra`` keeps ``bootstrap_mean``, whether
    the interval excludes the point estimate, and whether the model ties with the task's best.
    """
    published = published or load_published()
    imagenet = published.results[published.results["task"] == IMAGENET_TASK]
    imagenet_top1 = dict(zip(imagenet["model"], imagenet["mean"]))
    store.save_models(replace_source=SOURCE, records=[
        ModelRecord(
            source=SOURCE, model=m.model, display=m.display, family=m.family,
            params=int(m.params), resolution=int(m.resolution),
            imagenet_top1=imagenet_top1.get(m.model), imagenet_source=IMAGENET_SOURCE,
            extra={"release": None if pd.isna(m.release) else m.release.date().isoformat()},
        )
        for m in published.models.itertuples()
    ])

    best = dict(zip(published.bests["task"], published.bests["best"]))
    ties = published.ties_with_best()
    display = published.task_display
    group = dict(zip(published.tasks["name"], published.tasks["group"]))
    alpha = published.meta.get("alpha")
    provenance = {"file_sha256": published.sha256, "origin": published.origin,
                  "generated_ms": published.meta.get("generated"),
                  "bootstrap_seed": published.meta.get("seed")}

    rows = published.results.itertuples()
    if progress is not None:
        rows = progress(rows, total=len(published.results), desc="importing published runs")
    records = [
        RunRecord(
            key=RunKey(model=r.model, task=r.task, protocol=PROTOCOL, seed=0, n_train=-1,
                       source=SOURCE),
            metric=PUBLISHED_METRICS[r.task],
            score=r.mean,
            ci_low=r.ci_low,
            ci_high=r.ci_high,
            ci_level=None if alpha is None else 1 - alpha,
            n_bootstrap=published.meta.get("n_bootstraps"),
            git_commit=published.meta.get("git_commit"),
            versions={"published_schema": str(published.meta.get("schema"))},
            extra={
                "bootstrap_mean": r.bootstrap_mean,
                "ci_excludes_point": _ci_excludes_point(r.mean, r.ci_low, r.ci_high),
                "is_best": best.get(r.task) == r.model,
                "tied_with_best": (r.task, r.model) in ties,
                "task_display": display[r.task],
                "task_group": group[r.task],
                **provenance,
            },
        )
        for r in rows
    ]
    # one transaction: a re-import replaces the old rows all at once or not at all
    return store.save_runs(records, replace_source=SOURCE)


# ---- book pages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedStatus:
    """What a book page needs to know: is the leaderboard in the store, and if not, why."""

    available: bool
    message: str
    n_runs: int = 0
    origin: str = ""

    def banner_html(self) -> str:
        """A note for the top of a page (HTML, so it renders the same in Jupyter and the book)."""
        kind, title = ("note", "Data") if self.available else (
            "warning", "Published leaderboard not available")
        return (f'<div class="admonition {kind}"><p class="admonition-title">{html.escape(title)}</p>'
                f"<p>{html.escape(self.message)}</p></div>")


def refresh_store(store: ResultsStore, *, timeout: float = FETCH_TIMEOUT_S) -> PublishedStatus:
    """Import the leaderboard into ``store`` if it can be had; never raises for a missing file.

    A page calls this first: when the file is unavailable it says so and shows no published
    figures, rather than quietly using an older import that may linger in the store.
    """
    try:
        published = load_published(timeout=timeout)
    except PublishedUnavailable as exc:
        return PublishedStatus(False, f"The published BioBench leaderboard was not available, so "
                                      f"this page shows no published figures. {exc}")
    n_runs = len(published.results)
    if not is_imported(store, published):
        import_published(store, published)
    # a page shows where the file came from without the build machine's absolute path
    shown = published.origin if "://" in published.origin else Path(published.origin).name
    message = (f"Published BioBench leaderboard read from {shown} "
               f"(sha256 {published.sha256[:12]}…) and imported into the results store. "
               + " ".join(published.notes))
    return PublishedStatus(True, message.strip(), n_runs, published.origin)


def is_imported(store: ResultsStore, published: Published) -> bool:
    """Whether ``store`` holds exactly this file's import (every run, from a file with this sha256).

    Lets each book page skip a re-import (one transaction per run) when an earlier page did it;
    an interrupted import has fewer runs and is redone.
    """
    runs = store.runs(SOURCE)
    if len(runs) != len(published.results) or len(store.models(SOURCE)) != len(published.models):
        return False
    return bool(runs["extra"].map(lambda e: e.get("file_sha256") == published.sha256).all())


@dataclass
class PageGlue:
    """Glue every number and figure a page quotes, under keys declared up front.

    With data, ``finish`` checks that every declared key was glued (so prose never points at a
    figure the code forgot). Without data, ``finish`` glues "n/a" and a placeholder figure
    under every key, so the page still builds and its prose shows plainly that nothing was
    computed.
    """

    available: bool
    texts: tuple[str, ...]
    figures: tuple[str, ...] = ()
    glued: set[str] = field(default_factory=set)

    def _glue(self, key: str, value: Any, declared: tuple[str, ...]) -> None:
        from myst_nb import glue

        if key not in declared:
            raise KeyError(f"glue key '{key}' is not declared for this page; add it to the PageGlue")
        glue(key, value, display=False)
        self.glued.add(key)

    def text(self, key: str, value: str) -> str:
        self._glue(key, str(value), self.texts)
        return str(value)

    def number(self, key: str, value: float, digits: int = 3) -> str:
        return self.text(key, f"{value:.{digits}f}")

    def percent(self, key: str, value: float, digits: int = 1) -> str:
        return self.text(key, f"{100 * value:.{digits}f} %")

    def figure(self, key: str, fig) -> None:
        import matplotlib.pyplot as plt

        self._glue(key, fig, self.figures)
        plt.close(fig)

    def finish(self) -> None:
        missing = [k for k in (*self.texts, *self.figures) if k not in self.glued]
        if self.available and missing:
            raise RuntimeError(f"declared but never glued: {', '.join(missing)}")
        for key in missing:
            if key in self.texts:
                self.text(key, "n/a")
            else:
                self.figure(key, _placeholder_figure())


def _placeholder_figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.text(0.5, 0.5, "Published leaderboard not available: nothing to plot.", ha="center",
            va="center")
    ax.set_axis_off()
    return fig
