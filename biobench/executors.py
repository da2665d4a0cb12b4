"""Where a grid's cells are computed: in the grid's own process (``inline``, the default: one
papermill page after the other), in local worker processes (``local``), or as Slurm jobs
(``slurm``), both through submitit.

    biobench grid CONFIG --executor slurm [--profile FILE] [--no-wait]
    biobench grid CONFIG --executor local [--workers N]
    biobench grid CONFIG --status

With ``local`` and ``slurm`` a grid runs in three steps:

1. **Compute.** The cells whose run is not in the store (and current) are grouped by model, one
   job per model, so a model is loaded once for all its tasks and seeds. A job runs
   ``biobench.evaluate.run_evaluation`` (the one evaluation function of every executor) on each
   of its cells against a private, temporary SQLite store, and exports each finished run,
   atomically, as its own JSON file in the jobs folder (``<store folder>/jobs/cells/`` by
   default; on a cluster it must be on a shared file system). A cell that fails writes a
   ``.failed.json`` file with its traceback instead, and the job goes on with its next cell.
   Jobs never open the shared store, so nothing on a cluster contends for one SQLite file.
   Features go to the shared feature cache (``BIOBENCH_FEATURES``), so a job that is requeued
   after its time limit (the jobs are ``submitit.helpers.Checkpointable``) or a grid that is
   submitted again resumes from the cached features and skips cells it already exported.
2. **Import.** The grid process imports each finished file into the store as it appears.
   Importing is idempotent: a file already imported (same sha256) changes nothing, and a file
   older than the stored run of its key is left out.
3. **Render.** Each run page is executed by papermill in the grid process, exactly as the
   inline executor does; ``run_evaluation`` finds the run current in the store and reads it
   back, so a page never recomputes a score.

Every submitted job is recorded in ``jobs/submissions/`` (job id, cells, log files), so
``--status`` can say, per cell, whether it is done, running, pending or failed, and a grid
started again while jobs are still queued waits for those jobs instead of submitting the cells
twice. A failed cell is reported with its model, task, the job's log file and the last lines
of its error; the other cells go on. A cancelled job is reported as soon as Slurm's accounting
shows it (polled every ``poll_s`` seconds).

Options come from the grid file's ``[slurm]`` or ``[local]`` table, then from a profile
(``--profile FILE``: a TOML file with the same tables, e.g. a site's partition and account),
then from the command line. ``SLURM_KEYS`` and ``LOCAL_KEYS`` list them with their defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from submitit.helpers import Checkpointable

from biobench import config
from biobench.atomic import atomic_file
from biobench.grid import GridError, cell_key, run_is_current
from biobench.names import safe_name
from biobench.progress import stage

if TYPE_CHECKING:
    from biobench.grid import Grid, GridCell
    from biobench.store import ResultsStore, RunKey

EXECUTORS = ("inline", "local", "slurm")
RESULT_FORMAT = 1  # the layout of a cell's result file (see ``export_run``)

# The options of each executor and their defaults. Times are minutes, memory GB.
SLURM_KEYS: dict[str, Any] = {
    "partition": None,          # sbatch --partition (None: the cluster's default)
    "account": None,            # sbatch --account
    "qos": None,                # sbatch --qos
    "time_min": 60,             # time limit of one job (one model's cells), minutes
    "cpus_per_job": 4,          # sbatch --cpus-per-task (torch uses the CPUs Slurm binds)
    "mem_gb": 16,               # sbatch --mem (0: the partition's default)
    "gpus_per_job": 0,          # sbatch --gpus-per-node; features on the GPU when one is given
    "array_parallelism": 16,    # at most this many jobs of one submission run at once
    "max_requeues": 3,          # a job that hits its time limit is requeued this many times
    "signal_delay_s": 90,       # requeue signal this long (and up to 30 s more) before the limit
    "setup": [],                # shell lines run before the job, e.g. ["module load cuda/12"]
    "sbatch": {},               # any other sbatch option, e.g. {constraint = "a100"}
    "python": None,             # the job's Python command (default: this interpreter; shared FS)
    "device": "auto",           # "auto": cuda when a GPU was requested and is usable, else cpu
    "jobs_dir": None,           # logs and cell results (default: <store folder>/jobs); shared FS
    "poll_s": 5.0,              # how often the grid asks Slurm about its jobs
}
LOCAL_KEYS: dict[str, Any] = {
    "workers": None,            # jobs at once (default: GPUs, or CPUs, divided by the per_job value)
    "cpus_per_job": 1,          # torch threads per worker (see GridJob.__call__)
    "gpus_per_job": None,       # None: 1 when GPUs are visible, else 0
    "time_min": 60 * 24,        # then a worker is signalled and requeued, as on Slurm
    "max_requeues": 3,
    "device": "auto",
    "jobs_dir": None,
    "poll_s": 1.0,
}
OPTION_KEYS = {"slurm": SLURM_KEYS, "local": LOCAL_KEYS}

# Slurm's job states, as one of five words (sacct prints e.g. "CANCELLED by 0": first word).
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                  "RESIZING", "SUSPENDED", "PREEMPTED", "SPECIAL_EXIT", "STOPPED", "SIGNALING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT"}
FAILED_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                 "REVOKED"}
FINAL = ("completed", "failed", "cancelled")
# a job that neither accounting nor the queue knows after this long is reported lost
UNKNOWN_GRACE_S = 120.0


class ExecutorError(GridError):
    """An executor that cannot be used as configured; the message says what to change."""


# ---- options ---------------------------------------------------------------------------------
def check_table(kind: str, table: Any, source: str) -> dict[str, Any]:
    """Validate a ``[slurm]`` or ``[local]`` table of a grid or profile file."""
    if not isinstance(table, dict):
        raise ExecutorError(f"{source}: [{kind}] must be a table of options, e.g. "
                            f"[{kind}]\\ntime_min = 30")
    known = OPTION_KEYS[kind]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ExecutorError(f"{source}: unknown [{kind}] option(s) {unknown}; valid options: "
                            f"{', '.join(known)}")
    for key, value in table.items():
        default = known[key]
        if key in ("setup",) and not (isinstance(value, list)
                                       and all(isinstance(v, str) for v in value)):
            raise ExecutorError(f"{source}: [{kind}] {key} must be a list of shell lines")
        elif key == "sbatch" and not isinstance(value, dict):
            raise ExecutorError(f"{source}: [{kind}] sbatch must be a table, e.g. "
                                "sbatch = {constraint = \"a100\"}")
        elif key == "device" and value not in ("auto", "cpu", "cuda") \
                and not str(value).startswith("cuda:"):
            raise ExecutorError(f"{source}: [{kind}] device must be auto, cpu or cuda[:N], "
                                f"got {value!r}")
        elif isinstance(default, (int, float)) or key in ("workers", "gpus_per_job"):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float)) or value < 0):
                raise ExecutorError(f"{source}: [{kind}] {key} must be a non-negative number, "
                                    f"got {value!r}")
    for key in ("time_min", "cpus_per_job", "array_parallelism", "workers", "poll_s"):
        if key in table and table[key] is not None and table[key] <= 0:
            raise ExecutorError(f"{source}: [{kind}] {key} must be above 0")
    return dict(table)


def read_profile(path: str | Path) -> dict[str, dict[str, Any]]:
    """A profile file: ``[slurm]`` and/or ``[local]`` tables, e.g. a site's partition."""
    path = Path(path)
    if not path.is_file():
        raise ExecutorError(f"profile {path} not found (see configs/slurm-example.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ExecutorError(f"{path}: not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(OPTION_KEYS))
    if unknown:
        raise ExecutorError(f"{path}: a profile holds only [slurm] and [local] tables, "
                            f"found {unknown}")
    return {kind: check_table(kind, table, str(path)) for kind, table in data.items()}


def resolve_options(kind: str, grid: Grid | None = None, profile: str | Path | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """The defaults, then the grid's table, then the profile's, then ``overrides`` (not None)."""
    options = dict(OPTION_KEYS[kind])
    if grid is not None:  # a Grid keeps its tables hashable: tuples back to a list and a table
        table = dict(getattr(grid, kind))
        if "setup" in table:
            table["setup"] = list(table["setup"])
        if "sbatch" in table:
            table["sbatch"] = dict(table["sbatch"])
        options.update(table)
    if profile is not None:
        options.update(read_profile(profile).get(kind, {}))
    options.update({k: v for k, v in overrides.items() if v is not None})
    return check_table(kind, options, "options")


# ---- the jobs folder ---------------------------------------------------------------------
@dataclass(frozen=True)
class JobsFolder:
    """``cells/`` (one result or failure file per cell), ``logs/`` (submitit's job files and
    logs), ``submissions/`` (one record per submitted job)."""

    root: Path

    @property
    def cells(self) -> Path:
        return self.root / "cells"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    def result_path(self, stem: str) -> Path:
        return self.cells / f"{stem}.json"

    def failure_path(self, stem: str) -> Path:
        return self.cells / f"{stem}.failed.json"


def jobs_folder(options: Mapping[str, Any], store_path: Path) -> JobsFolder:
    root = options.get("jobs_dir")
    return JobsFolder(Path(root).expanduser().resolve() if root
                      else Path(store_path).resolve().parent / "jobs")


# ---- cells: identity and files ---------------------------------------------------------------
def cell_stem(cell: GridCell, key: RunKey | None = None) -> str:
    """``<task>/<page>.<hash of the run key>``: one file name per run identity."""
    from biobench.store import canonical_json

    key = key or cell_key(cell)
    digest = hashlib.sha256(canonical_json(dataclasses.asdict(key)).encode()).hexdigest()[:12]
    return f"{safe_name(cell.task)}/{cell.page_name}.{digest}"


def describe(cell: GridCell) -> str:
    return f"model '{cell.model}' on task '{cell.task}' (seed {cell.seed})"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)


def _plain(value: Any) -> Any:
    """A value read back through pandas as a JSON value: numpy scalars as Python ones, and a
    missing number (NaN) as None, as it was stored."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def export_run(store: ResultsStore, key: RunKey, dest: Path, *, token: str,
               job: Mapping[str, Any] | None = None) -> Path:
    """Write the run ``key`` of ``store`` (a job's private store), its predictions and its
    model's metadata to ``dest``, atomically: a file that exists is complete."""
    from biobench.store import ModelRecord, RunRecord

    run = store.get_run(key)
    if run is None:
        raise LookupError(f"no run {key} in {store.path} to export")
    preds = store.predictions(int(run["run_id"]))
    models = store.models(key.source)
    record_fields = [f.name for f in dataclasses.fields(RunRecord) if f.name != "key"]
    payload = {
        "format": RESULT_FORMAT, "token": token, "finished_at": _now(), "job": dict(job or {}),
        "key": dataclasses.asdict(key),
        "record": {name: _plain(run[name]) for name in record_fields},
        "predictions": [[str(i), t, p] for i, t, p in zip(preds["example_id"], preds["y_true"],
                                                           preds["y_pred"])],
        "models": [{f.name: _plain(row[f.name]) for f in dataclasses.fields(ModelRecord)}
                   for row in models.to_dict("records") if row["model"] == key.model],
    }
    from biobench.store import canonical_json  # numpy arrays and scalars as JSON

    with atomic_file(dest, suffix=".json") as tmp:
        tmp.write_text(canonical_json(payload))
    return dest


def read_result(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_bytes())
    if data.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path}: result format {data.get('format')!r}, this biobench reads "
                         f"{RESULT_FORMAT}; compute the cell again (biobench grid ... --force)")
    return data


def import_result(store: ResultsStore, path: Path) -> str:
    """Import one cell's result file into ``store``. Returns ``"imported"``, ``"unchanged"``
    (this very file was imported before: importing twice changes nothing) or ``"superseded"``
    (the store holds a run of the same key made after this file, which is kept)."""
    from biobench.store import ModelRecord, RunKey, RunRecord

    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    data = read_result(path)
    key = RunKey(**data["key"])
    stored = store.get_run(key)
    if stored is not None:
        if (stored["extra"] or {}).get("executor", {}).get("result_sha256") == digest:
            return "unchanged"
        if _parse_time(stored["created_at"]) >= _parse_time(data["finished_at"]).replace(
                microsecond=0):
            return "superseded"
    known = {f.name for f in dataclasses.fields(RunRecord)}
    record = RunRecord(key=key, **{k: v for k, v in data["record"].items() if k in known})
    # where the run came from: the job, its log, and this file's digest (what makes a second
    # import a no-op)
    record.extra = {**(record.extra or {}),
                    "executor": {**data.get("job", {}), "result_sha256": digest,
                                 "result_file": str(path)}}
    store.save_run(record, [tuple(row) for row in data["predictions"]], replace=True)
    model_fields = {f.name for f in dataclasses.fields(ModelRecord)}
    store.save_models([ModelRecord(**{k: v for k, v in m.items() if k in model_fields})
                       for m in data.get("models", [])])
    return "imported"


# ---- the job ---------------------------------------------------------------------------------
class CellsFailed(RuntimeError):
    """Raised at the end of a job when some of its cells failed (each has a .failed.json)."""


def _log_tail(path: Path | str | None, lines: int = 8) -> str:
    """The last ``lines`` lines of a log file (reading at most its last 16 KB)."""
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 16384))
        text = f.read().decode(errors="replace")
    # tqdm redraws with carriage returns: keep the last state of each line
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return "\n".join([row for row in rows if row.strip()][-lines:])


def job_environment_info() -> dict[str, Any]:
    """Who ran a cell: executor, job id, attempt, host, GPUs, log file (stored with the run)."""
    env = os.environ
    info: dict[str, Any] = {
        "executor": env.get("SUBMITIT_EXECUTOR", "inline"),
        "job_id": env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID"),
        "array_job": (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
                      if "SLURM_ARRAY_JOB_ID" in env else None),
        "attempt": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        "host": socket.gethostname(),
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_gpus": env.get("SLURM_JOB_GPUS"),
        "log": None,
    }
    try:
        import submitit

        info["log"] = str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # not inside a submitit job (a test calling the job in-process)
        pass
    return info


class GridJob(Checkpointable):
    """One job: one model's cells, run one after the other with the model loaded once.

    Checkpointable: when Slurm signals the time limit (or a preemption), submitit pickles this
    object and requeues it; the requeued attempt skips the cells whose result file this job
    (``token``) already wrote and finds the features of the others in the shared cache.
    """

    def __init__(self, model: str, cells: Sequence[tuple[GridCell, str]], jobs_root: str,
                 token: str, *, device: str = "auto", gpus: int = 0, cpus: int | None = None,
                 env: Mapping[str, str] | None = None):
        self.model = model
        self.cells = list(cells)  # (cell, result file stem)
        self.jobs_root = str(jobs_root)
        self.token = token
        self.device = device
        self.gpus = gpus
        self.cpus = cpus  # torch threads (local workers); None: torch's default
        self.env = dict(env or {})

    # -- steps a test may override (e.g. to stall one attempt) --
    def choose_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if self.gpus and torch.cuda.is_available() else "cpu"

    def build_model(self, device: str):
        """The backbone, built once; None when it must be built by name for each cell (a model
        whose built name differs from the grid's would otherwise change the run's identity)."""
        from biobench.backbones import create_backbone

        backbone = create_backbone(self.model, device=device)
        if backbone.info.name != self.model:
            stage(f"model '{self.model}' builds as '{backbone.info.name}': built per cell")
            return None
        return backbone

    def evaluate(self, model, cell: GridCell, store, device: str):
        from biobench.evaluate import run_evaluation

        return run_evaluation(model, cell.task, protocol=cell.protocol, seed=cell.seed,
                              n_train=cell.n_train, probe_params=dict(cell.probe_params) or None,
                              store=store, n_bootstrap=cell.n_bootstrap, device=device)

    def write_result(self, store, key, dest: Path) -> None:
        export_run(store, key, dest, token=self.token, job=job_environment_info())

    # -- the job --
    def _finished_here(self, path: Path) -> bool:
        """Written by this job (an earlier attempt of it), not by an older submission."""
        try:
            return read_result(path).get("token") == self.token
        except (OSError, ValueError):
            return False

    def __call__(self) -> dict[str, Any]:
        from biobench.store import ResultsStore

        os.environ.update(self.env)
        import torch

        # Local workers share this machine's cores: each gets ``cpus`` torch threads. A Slurm
        # job keeps torch's default, the CPUs the cluster binds it to, as an inline run does:
        # the thread count changes features in their last bits (measured: 5e-6 on a random-init
        # MobileNetV2), enough to move a near-tied probe's score.
        if self.cpus:
            torch.set_num_threads(int(self.cpus))
        folder = JobsFolder(Path(self.jobs_root))
        device = self.choose_device()
        info = job_environment_info()
        stage(f"job {info['job_id']} (attempt {info['attempt']}): {self.model}, "
              f"{len(self.cells)} cell(s), device {device}")
        done, skipped, failed = [], [], []
        backbone: Any = None
        build_error: BaseException | None = None
        scratch = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
        with tempfile.TemporaryDirectory(prefix="biobench-job-", dir=scratch) as tmp:
            # a private store: jobs never open the shared SQLite file
            store = ResultsStore(Path(tmp) / "job.sqlite")
            for cell, stem in self.cells:
                dest = folder.result_path(stem)
                if self._finished_here(dest):
                    skipped.append(stem)  # done by an earlier attempt of this job
                    continue
                try:
                    if build_error is not None:
                        raise build_error
                    if backbone is None:
                        stage(f"loading model {self.model} once for its {len(self.cells)} "
                              "cell(s)")
                        try:
                            backbone = self.build_model(device) or self.model
                        except Exception as err:
                            build_error = err
                            raise
                    result = self.evaluate(backbone, cell, store, device)
                    expected = cell_key(cell)
                    if result.key != expected:  # its file would never make the cell done
                        raise RuntimeError(f"the job computed run {result.key}, but the grid "
                                           f"expects {expected}; report this as a bug")
                    self.write_result(store, result.key, dest)
                    folder.failure_path(stem).unlink(missing_ok=True)
                    done.append(stem)
                except Exception as err:  # one broken cell must not stop the model's others
                    stage(f"FAILED {describe(cell)}: {type(err).__name__}: {err}")
                    traceback.print_exc()
                    self._write_failure(folder, cell, stem, err, info)
                    failed.append(stem)
        summary = {"done": done, "skipped": skipped, "failed": failed}
        if failed:
            # the job ends FAILED in Slurm's accounting; each cell's error is in its file
            raise CellsFailed(f"{len(failed)} of {len(self.cells)} cell(s) of {self.model} "
                              f"failed: {', '.join(failed)}")
        return summary

    def _write_failure(self, folder: JobsFolder, cell: GridCell, stem: str, err: BaseException,
                       info: Mapping[str, Any]) -> None:
        payload = {"token": self.token, "finished_at": _now(), "job": dict(info),
                   "cell": {"model": cell.model, "task": cell.task, "seed": cell.seed},
                   "error": f"{type(err).__name__}: {err}",
                   "traceback": "".join(traceback.format_exception(err))}
        with atomic_file(folder.failure_path(stem), suffix=".json") as tmp:
            tmp.write_text(json.dumps(payload, indent=1, default=str))


# ---- submissions and their state ---------------------------------------------------------
@dataclass
class JobHandle:
    """A submitted job as the grid process follows it."""

    backend: str
    token: str
    model: str
    stems: tuple[str, ...]
    cells: tuple[tuple[str, str, int], ...]  # (model, task, seed) of each stem, for messages
    job_id: str | None = None  # None while a local job waits for a free worker
    log_out: str | None = None
    log_err: str | None = None
    submitted_at: float = field(default_factory=time.time)
    state: str = "pending"  # pending, running, completed, failed, cancelled
    raw_state: str = "PENDING"
    job: Any = None  # the submitit job
    grid_job: Any = None  # a local job not started yet

    def record(self) -> dict[str, Any]:
        return {"backend": self.backend, "token": self.token, "model": self.model,
                "job_id": self.job_id, "stems": list(self.stems),
                "cells": [list(c) for c in self.cells], "log_out": self.log_out,
                "log_err": self.log_err, "submitted_at": self.submitted_at}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> JobHandle:
        return cls(data["backend"], data["token"], data["model"], tuple(data["stems"]),
                   tuple(tuple(c) for c in data["cells"]), data.get("job_id"),
                   data.get("log_out"), data.get("log_err"), data.get("submitted_at", 0.0))

    def describe_cell(self, stem: str) -> str:
        model, task, seed = self.cells[self.stems.index(stem)]
        return f"model '{model}' on task '{task}' (seed {seed})"


def save_submission(folder: JobsFolder, handle: JobHandle) -> None:
    name = f"{handle.backend}-{safe_name(handle.job_id or handle.token)}.json"
    with atomic_file(folder.submissions / name, suffix=".json") as tmp:
        tmp.write_text(json.dumps(handle.record(), indent=1))


def load_submissions(folder: JobsFolder) -> list[JobHandle]:
    """Every recorded submission, oldest first."""
    handles = []
    for path in sorted(folder.submissions.glob("*.json")):
        try:
            handles.append(JobHandle.from_record(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError):
            continue  # a record being written by another grid process
    return sorted(handles, key=lambda h: h.submitted_at)


def slurm_state_word(raw: str) -> str:
    """``"CANCELLED by 0"`` -> ``"cancelled"``; one of pending, running, completed, failed,
    cancelled, unknown."""
    word = (raw or "UNKNOWN").split()[0].upper().rstrip("+")
    if word in PENDING_STATES:
        return "pending"
    if word in RUNNING_STATES:
        return "running"
    if word == "COMPLETED":
        return "completed"
    if word == "CANCELLED":
        return "cancelled"
    if word in FAILED_STATES:
        return "failed"
    return "unknown"


class Backend:
    """Submits GridJobs and reports their states. Subclasses: ``SlurmBackend``, ``LocalBackend``."""

    name = "backend"

    def __init__(self, options: Mapping[str, Any], folder: JobsFolder):
        self.options = dict(options)
        self.folder = folder

    def submit(self, jobs: Sequence[GridJob], job_name: str) -> list[JobHandle]:
        raise NotImplementedError

    def attach(self, handle: JobHandle) -> JobHandle:
        """Follow a job submitted by an earlier grid process."""
        raise NotImplementedError

    def refresh(self, handles: Sequence[JobHandle]) -> None:
        """Update ``state`` and ``raw_state`` of every handle (one cluster query)."""
        raise NotImplementedError

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        raise NotImplementedError

    def job_resources(self) -> dict[str, Any]:
        """What a GridJob needs to know: its device, GPUs, and (local workers only) the torch
        threads to use."""
        return {"device": self.options["device"], "gpus": self.gpus_per_job(),
                "cpus": self.options["cpus_per_job"] if self.name == "local" else None}

    def gpus_per_job(self) -> int:
        return int(self.options.get("gpus_per_job") or 0)


def _handle(backend: str, job: GridJob) -> JobHandle:
    return JobHandle(backend, job.token, job.model, tuple(s for _, s in job.cells),
                     tuple((c.model, c.task, c.seed) for c, _ in job.cells))


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, options, folder, *, submitting: bool = True):
        super().__init__(options, folder)
        needed = ("sbatch", "sacct", "squeue", "scancel", "srun") if submitting else ("sacct",)
        missing = [c for c in needed if shutil.which(c) is None]
        if missing:
            raise ExecutorError(
                f"--executor slurm needs Slurm's commands ({', '.join(missing)} not found on "
                "PATH). On a cluster, run the grid on a login node; on this machine, start the "
                "single-node test cluster: scripts/slurm-cluster.sh install && "
                "scripts/slurm-cluster.sh start && eval \"$(scripts/slurm-cluster.sh env)\"")

    def _executor(self, job_name: str):
        import submitit

        o = self.options
        executor = submitit.AutoExecutor(folder=self.folder.logs, cluster="slurm",
                                         slurm_max_num_timeout=int(o["max_requeues"]),
                                         slurm_python=o["python"])
        params: dict[str, Any] = {
            "name": job_name, "timeout_min": int(o["time_min"]),
            "cpus_per_task": int(o["cpus_per_job"]),
            "slurm_array_parallelism": int(o["array_parallelism"]),
            "slurm_signal_delay_s": int(o["signal_delay_s"]),
        }
        if o["mem_gb"]:
            params["mem_gb"] = o["mem_gb"]
        if self.gpus_per_job():
            params["gpus_per_node"] = self.gpus_per_job()
        for key in ("partition", "account", "qos"):
            if o[key]:
                params[f"slurm_{key}"] = o[key]
        if o["setup"]:
            params["slurm_setup"] = list(o["setup"])
        if o["sbatch"]:
            params["slurm_additional_parameters"] = dict(o["sbatch"])
        executor.update_parameters(**params)
        return executor

    def submit(self, jobs, job_name):
        if not jobs:
            return []
        executor = self._executor(job_name)
        try:
            with executor.batch():  # one array job: the scheduler sees it as one submission
                submitted = [executor.submit(job) for job in jobs]
        except Exception as err:  # sbatch refused: say which options to look at
            raise ExecutorError(
                f"sbatch refused the grid's jobs: {str(err).strip()[-800:]}\nCheck the [slurm] "
                "options (partition, account, cpus_per_job, mem_gb, gpus_per_job, time_min) "
                "against what the cluster offers (sinfo).") from err
        handles = []
        for job, sjob in zip(jobs, submitted):
            handle = _handle(self.name, job)
            handle.job_id, handle.job = str(sjob.job_id), sjob
            handle.log_out, handle.log_err = str(sjob.paths.stdout), str(sjob.paths.stderr)
            handles.append(handle)
        return handles

    def attach(self, handle):
        from submitit.slurm.slurm import SlurmJob

        handle.job = SlurmJob(folder=self.folder.logs, job_id=handle.job_id)
        return handle

    def refresh(self, handles):
        live = [h for h in handles if h.job is not None]
        if not live:
            return
        live[0].job.get_info(mode="force")  # one sacct call for every registered job
        queued = None
        for h in live:
            raw = h.job.get_info(mode="cache").get("State") or "UNKNOWN"
            state = slurm_state_word(raw)
            if state == "unknown" and time.time() - h.submitted_at > UNKNOWN_GRACE_S:
                # accounting does not know the job: ask the queue before calling it lost
                queued = queued if queued is not None else _squeue_states()
                raw = queued.get(h.job_id, "LOST (not in the queue nor in sacct)")
                state = slurm_state_word(raw) if h.job_id in queued else "failed"
            h.raw_state, h.state = raw, state if state != "unknown" else "pending"

    def cancel(self, handles):
        ids = [h.job_id for h in handles if h.job_id and h.state not in FINAL]
        if ids:
            subprocess.run(["scancel", *ids], timeout=30, check=False)


def _squeue_states() -> dict[str, str]:
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split(None, 1) for line in out.splitlines() if " " in line)


def visible_gpus() -> list[int]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when it lists indices, else every
    device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [int(x) for x in listed.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


class LocalBackend(Backend):
    """Worker processes on this machine, at most ``workers`` at once (submitit's local mode
    starts every job at once and has no queue: this backend is the queue). With GPUs, each
    worker gets its own ``gpus_per_job`` of them in CUDA_VISIBLE_DEVICES."""

    name = "local"

    def __init__(self, options, folder, *, launcher: Callable[..., Any] | None = None):
        super().__init__(options, folder)
        gpus = visible_gpus()
        per_job = options.get("gpus_per_job")
        self._gpus_per_job = (1 if gpus else 0) if per_job is None else int(per_job)
        if self._gpus_per_job > len(gpus):
            raise ExecutorError(f"[local] gpus_per_job = {self._gpus_per_job}, but this machine "
                                f"shows {len(gpus)} GPU(s)")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        if options.get("workers"):
            self.workers = int(options["workers"])
        elif self._gpus_per_job:
            self.workers = max(1, len(gpus) // self._gpus_per_job)
        else:
            self.workers = max(1, cpus // int(options["cpus_per_job"]))
        self.free_gpus = list(gpus)
        self.launcher = launcher or self._launch
        self.queue: list[JobHandle] = []
        self.gpus_of: dict[str, list[int]] = {}  # token -> GPUs held by a running worker
        self.max_running_seen = 0

    def gpus_per_job(self) -> int:
        return self._gpus_per_job

    def _launch(self, job: GridJob, gpus: list[int]):
        import submitit

        executor = submitit.LocalExecutor(folder=self.folder.logs,
                                          max_num_timeout=int(self.options["max_requeues"]))
        executor.update_parameters(timeout_min=float(self.options["time_min"]),
                                   gpus_per_node=len(gpus), visible_gpus=tuple(gpus))
        return executor.submit(job)

    def submit(self, jobs, job_name):
        handles = []
        for job in jobs:
            handle = _handle(self.name, job)
            handle.grid_job = job
            handles.append(handle)
            self.queue.append(handle)
        return handles

    def attach(self, handle):
        # a worker of an earlier grid process: followed through its PID while it lives
        return handle

    def _start_queued(self, handles: Sequence[JobHandle]) -> None:
        running = [h for h in handles if h.state == "running"]
        while self.queue and len(running) < self.workers:
            if self._gpus_per_job and len(self.free_gpus) < self._gpus_per_job:
                break
            handle = self.queue.pop(0)
            gpus = [self.free_gpus.pop(0) for _ in range(self._gpus_per_job)]
            self.gpus_of[handle.token] = gpus
            job = self.launcher(handle.grid_job, gpus)
            handle.job, handle.grid_job = job, None
            handle.job_id = str(job.job_id)
            handle.log_out, handle.log_err = str(job.paths.stdout), str(job.paths.stderr)
            handle.submitted_at = time.time()
            handle.state, handle.raw_state = "running", "RUNNING"
            save_submission(self.folder, handle)
            running.append(handle)
        self.max_running_seen = max(self.max_running_seen, len(running))

    def refresh(self, handles):
        for h in handles:
            if h.state in FINAL or h.grid_job is not None:
                continue
            if h.job is None:  # recorded by an earlier grid process: alive while its PID is
                alive = h.job_id is not None and _pid_alive(int(h.job_id))
                h.state, h.raw_state = ("running", "RUNNING") if alive else ("completed",
                                                                            "EXITED")
                continue
            info = h.job.get_info().get("jobState", "UNKNOWN")
            if info == "RUNNING":
                h.state, h.raw_state = "running", "RUNNING"
                continue
            code = getattr(getattr(h.job, "_process", None), "returncode", None)
            if info == "INTERRUPTED" or (code is not None and code < 0):
                h.state, h.raw_state = "cancelled", f"INTERRUPTED (signal {-(code or 0)})"
            elif code not in (None, 0):
                h.state, h.raw_state = "failed", f"FAILED (exit code {code})"
            else:
                h.state, h.raw_state = "completed", "COMPLETED"
            self.free_gpus.extend(self.gpus_of.pop(h.token, []))
        self._start_queued(handles)

    def cancel(self, handles):
        self.queue.clear()
        for h in handles:
            if h.job is not None and h.state not in FINAL:
                h.job.cancel()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_backend(kind: str, options: Mapping[str, Any], folder: JobsFolder) -> Backend:
    if kind == "slurm":
        return SlurmBackend(options, folder)
    if kind == "local":
        return LocalBackend(options, folder)
    raise ExecutorError(f"unknown executor '{kind}'; choose one of {', '.join(EXECUTORS)}")


# ---- computing a grid's cells ------------------------------------------------------------
@dataclass
class ComputeReport:
    computed: list[GridCell] = field(default_factory=list)  # runs exported and imported
    failed: list[tuple[GridCell, str]] = field(default_factory=list)
    pending: list[GridCell] = field(default_factory=list)  # still queued (wait=False)
    jobs: list[str] = field(default_factory=list)  # ids of the jobs submitted this time
    attached: list[str] = field(default_factory=list)  # ids of earlier jobs waited for
    imported: int = 0
    max_running: int = 0


def job_environment() -> dict[str, str]:
    """The paths and switches a job must share with the grid, as absolute values: a cluster
    job does not necessarily inherit the submitting shell's environment."""
    env = {"BIOBENCH_HOME": str(config.home_dir().resolve()),
           "BIOBENCH_DATA": str(config.data_dir().resolve()),
           "BIOBENCH_ASSETS": str(config.assets_dir().resolve()),
           "BIOBENCH_FEATURES": str(config.features_dir().resolve())}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TORCH_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def plan_jobs(cells: Sequence[tuple[GridCell, str]], backend: Backend,
              job_class: type[GridJob] = GridJob) -> list[GridJob]:
    """One job per model, its cells in grid order."""
    by_model: dict[str, list[tuple[GridCell, str]]] = {}
    for cell, stem in cells:
        by_model.setdefault(cell.model, []).append((cell, stem))
    resources = backend.job_resources()
    env = job_environment()
    return [job_class(model, model_cells, str(backend.folder.root), uuid.uuid4().hex,
                      device=resources["device"], gpus=resources["gpus"],
                      cpus=resources["cpus"], env=env)
            for model, model_cells in by_model.items()]


def _failure_message(cell_text: str, error: str, log: str | None, tail: str) -> str:
    lines = [f"{cell_text}: {error}", f"      log: {log or 'none'}"]
    if tail:
        lines.append("      last lines:")
        lines.extend(f"        {row}" for row in tail.splitlines())
    return "\n".join(lines)


def _cell_failure(folder: JobsFolder, handle: JobHandle, stem: str) -> str | None:
    """The message of a cell whose job wrote its failure file, else None."""
    path = folder.failure_path(stem)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("token") != handle.token:
        return None
    tb_tail = "\n".join(data.get("traceback", "").strip().splitlines()[-6:])
    return _failure_message(handle.describe_cell(stem), data.get("error", "failed"),
                            data.get("job", {}).get("log") or handle.log_err, tb_tail)


def follow_jobs(handles: Sequence[JobHandle], backend: Backend, store: ResultsStore,
                cells_by_stem: Mapping[str, GridCell], report: ComputeReport, *,
                poll_s: float | None = None, progress: bool = True,
                on_poll: Callable[[Sequence[JobHandle]], None] | None = None,
                timeout_s: float | None = None) -> None:
    """Wait until every job has ended, importing each cell's result as it appears. A cell
    without a result when its job ends is reported failed (its error, or the job's state and
    the end of its log); the other cells are unaffected. ``timeout_s`` bounds the wait
    (``TimeoutError``, the jobs keep running)."""
    folder = backend.folder
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    poll_s = float(poll_s if poll_s is not None else backend.options["poll_s"])
    open_stems = {s: h for h in handles for s in h.stems}
    last_states: dict[str, str] = {}
    while True:
        backend.refresh(handles)
        if on_poll is not None:
            on_poll(handles)
        for stem, handle in list(open_stems.items()):
            result = folder.result_path(stem)
            if result.is_file():
                try:
                    data = read_result(result)
                except (OSError, ValueError):
                    data = {}
                if data.get("token") == handle.token:
                    outcome = import_result(store, result)
                    report.imported += outcome == "imported"
                    report.computed.append(cells_by_stem[stem])
                    del open_stems[stem]
                    if progress:
                        stage(f"done: {handle.describe_cell(stem)} (job {handle.job_id})")
                    continue
            message = _cell_failure(folder, handle, stem)
            if message is None and handle.state in FINAL:
                message = _failure_message(
                    handle.describe_cell(stem),
                    f"job {handle.job_id} ended {handle.raw_state} before this cell finished",
                    handle.log_err, _log_tail(handle.log_err))
            if message is not None:
                report.failed.append((cells_by_stem[stem], message))
                del open_stems[stem]
                if progress:
                    stage(f"FAILED: {message.splitlines()[0]}")
        for h in handles:
            if progress and last_states.get(h.token) != h.raw_state:
                stage(f"job {h.job_id or '(queued)'} ({h.model}): {h.raw_state}")
                last_states[h.token] = h.raw_state
        if not open_stems:  # every cell is accounted for (a job may still be exiting)
            break
        if deadline is not None and time.monotonic() > deadline:
            states = ", ".join(f"{h.job_id}: {h.raw_state}" for h in handles)
            raise TimeoutError(f"{len(open_stems)} cell(s) unfinished after {timeout_s:.0f} s "
                               f"({states}); the jobs keep running")
        time.sleep(poll_s)
    report.max_running = max(report.max_running, getattr(backend, "max_running_seen", 0))


def compute_cells(grid: Grid, cells: Sequence[GridCell], store: ResultsStore, store_path: Path,
                  executor: str | Backend, *, force: bool = False, profile: str | Path | None
                  = None, workers: int | None = None, wait: bool = True, progress: bool = True,
                  job_class: type[GridJob] = GridJob, poll_s: float | None = None,
                  on_poll: Callable[[Sequence[JobHandle]], None] | None = None,
                  timeout_s: float | None = None) -> ComputeReport:
    """Bring every cell's run into ``store`` through local or Slurm jobs (see the module
    docstring): import finished files, wait for jobs still in flight from an earlier grid
    process, submit one job per model for the rest, follow them and import as they finish."""
    from biobench.tasks import TaskDataMissing, get_task

    if isinstance(executor, Backend):
        backend = executor
    elif executor not in OPTION_KEYS:
        raise ExecutorError(f"unknown executor '{executor}'; choose one of {', '.join(EXECUTORS)}")
    else:
        options = resolve_options(executor, grid, profile,
                                  **({"workers": workers} if executor == "local" else {}))
        backend = make_backend(executor, options, jobs_folder(options, store_path))
    folder = backend.folder
    report = ComputeReport()
    keyed = [(cell, cell_stem(cell)) for cell in cells]
    cells_by_stem = {stem: cell for cell, stem in keyed}

    # 1. files finished since the last grid process looked (e.g. after --no-wait)
    for cell, stem in keyed:
        if folder.result_path(stem).is_file():
            try:
                report.imported += import_result(store, folder.result_path(stem)) == "imported"
            except (OSError, ValueError, KeyError) as err:
                stage(f"cannot import {folder.result_path(stem)}: {err}; the cell is computed "
                      "again")
    todo = [(c, s) for c, s in keyed
            if force or not run_is_current(c, store)]

    # 2. cells of jobs still queued or running from an earlier grid process: wait for those
    live: list[JobHandle] = []
    if todo and not force:
        latest: dict[str, JobHandle] = {}
        for handle in load_submissions(folder):
            if handle.backend == backend.name:
                for stem in handle.stems:
                    latest[stem] = handle
        candidates = {h.token: h for c, s in todo if (h := latest.get(s)) is not None}
        attached = [backend.attach(h) for h in candidates.values() if h.job_id]
        backend.refresh(attached)
        live = [h for h in attached if h.state not in FINAL]
        report.attached = [h.job_id for h in live]
        in_flight = {s for h in live for s in h.stems}
        todo = [(c, s) for c, s in todo if s not in in_flight]
        for h in live:  # follow only the cells this grid still needs
            keep = [i for i, s in enumerate(h.stems) if s in cells_by_stem]
            h.stems = tuple(h.stems[i] for i in keep)
            h.cells = tuple(h.cells[i] for i in keep)

    # 3. every task's data is in place before jobs start (one job must not generate or fetch
    # a task's data while another reads it); a task without data fails its cells here
    ready: list[tuple[GridCell, str]] = []
    data_errors: dict[str, str] = {}
    for task in dict.fromkeys(c.task for c, _ in todo):
        try:
            get_task(task).load()
        except TaskDataMissing as err:
            data_errors[task] = str(err)
    for cell, stem in todo:
        if cell.task in data_errors:
            report.failed.append((cell, f"{describe(cell)}: {data_errors[cell.task]} "
                                        "(not submitted)"))
        else:
            folder.failure_path(stem).unlink(missing_ok=True)  # an older submission's
            ready.append((cell, stem))

    jobs = plan_jobs(ready, backend, job_class)
    name = f"biobench-{safe_name(Path(grid.source).stem)}"
    handles = backend.submit(jobs, name)
    for handle in handles:
        if handle.job_id:
            save_submission(folder, handle)
    report.jobs = [h.job_id or h.token for h in handles]  # a local job has its id once started
    if progress and handles:
        stage(f"{len(handles)} {backend.name} job(s) for {len(ready)} cell(s): "
              f"{', '.join(h.job_id or h.model for h in handles)}; logs in {folder.logs}")
    followed = live + handles
    if not followed:
        return report
    if not wait and backend.name == "slurm":
        report.pending = [cells_by_stem[s] for h in followed for s in h.stems]
        return report
    try:
        follow_jobs(followed, backend, store, cells_by_stem, report, poll_s=poll_s,
                    progress=progress, on_poll=on_poll, timeout_s=timeout_s)
    except (KeyboardInterrupt, TimeoutError):
        if backend.name == "local":
            backend.cancel(followed)  # local workers would outlive the grid otherwise
        else:
            stage(f"interrupted: the Slurm jobs keep running ({', '.join(report.jobs)}); "
                  "run the same grid command again to collect them, or scancel them")
        raise
    report.jobs = [h.job_id or h.token for h in handles]
    return report


# ---- --status --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellStatus:
    cell: GridCell
    state: str  # done, running, pending, failed
    job: str | None
    detail: str


def grid_status(grid: Grid, store_path: Path, executor: str = "slurm",
                profile: str | Path | None = None) -> list[CellStatus]:
    """Per cell: ``done`` (its run is in the store and current, or its result file waits to
    be imported), ``running``, ``pending`` (queued, or never submitted) or ``failed`` (its
    error, or its job's end state, and the log). Asks Slurm once; changes nothing."""
    from biobench.store import ResultsStore

    kind = executor if executor in OPTION_KEYS else "slurm"
    options = resolve_options(kind, grid, profile)
    folder = jobs_folder(options, store_path)
    store = ResultsStore(store_path)
    latest: dict[str, JobHandle] = {}
    for handle in load_submissions(folder):
        for stem in handle.stems:
            latest[stem] = handle
    handles = list({h.token: h for h in latest.values()}.values())
    slurm = [h for h in handles if h.backend == "slurm" and h.job_id]
    if slurm and shutil.which("sacct"):
        backend = SlurmBackend(options, folder, submitting=False)  # only sacct is needed
        for h in slurm:
            backend.attach(h)
        backend.refresh(slurm)
    for h in handles:
        if h.backend == "local" and h.job_id:
            h.state = "running" if _pid_alive(int(h.job_id)) else "completed"
            h.raw_state = h.state.upper()
        elif h.backend == "slurm" and h.job is None:
            h.raw_state = "UNKNOWN (sacct not found)"

    rows = []
    for cell in grid.cells():
        key = cell_key(cell)
        stem = cell_stem(cell, key)
        handle = latest.get(stem)
        job = handle.job_id if handle else None
        result = folder.result_path(stem)
        if run_is_current(cell, store):
            rows.append(CellStatus(cell, "done", job, f"run {store.run_id(key)} in the store"))
            continue
        if handle is not None and result.is_file() and _token_of(result) == handle.token:
            rows.append(CellStatus(cell, "done", job, f"finished, not imported yet: {result}"))
            continue
        if handle is None:
            rows.append(CellStatus(cell, "pending", None, "not submitted"))
            continue
        failure = _cell_failure(folder, handle, stem)
        if failure is not None:
            rows.append(CellStatus(cell, "failed", job, failure.split(": ", 1)[-1]))
        elif handle.state in FINAL:
            rows.append(CellStatus(cell, "failed", job,
                                   f"job ended {handle.raw_state} without a result; log: "
                                   f"{handle.log_err}"))
        elif handle.state == "running":
            rows.append(CellStatus(cell, "running", job, f"log: {handle.log_err}"))
        else:
            rows.append(CellStatus(cell, "pending", job, f"{handle.raw_state.lower()}"))
    return rows


def _token_of(path: Path) -> str | None:
    try:
        return read_result(path).get("token")
    except (OSError, ValueError):
        return None
