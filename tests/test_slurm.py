"""The grid on a real Slurm cluster, through submitit: the single-node cluster that
scripts/slurm-cluster.sh starts (munge, MariaDB + slurmdbd, slurmctld, slurmd; one fake GPU).

Slow: about 6 minutes on 2 busy cores, most of it Slurm's own 2-minute hold of a requeued job,
which passes while the other tests run (the requeue test's job is submitted first). Without a
running cluster every test here is skipped with the command that starts one; in CI
(``CI=true``) a missing cluster is a failure instead.

    scripts/slurm-cluster.sh install && scripts/slurm-cluster.sh start   # or: make slurm-start
    pytest tests/test_slurm.py                                           # or: make test-slurm
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import nbformat
import numpy as np
import pytest

from biobench import executors as E
from biobench import grid as G
from biobench.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"
TEMPLATE = ROOT / "notebooks" / "evaluate.md"
# tiny models that need no download: timm's own test architecture, and random_tiny
MODELS = ["random_tiny", "timm:test_vit@random"]
SLURM_TEST_OPTIONS = {"cpus_per_job": 1, "mem_gb": 1, "time_min": 10, "poll_s": 1}
WAIT_S = 600  # no test waits longer for its jobs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The stalling job class below lives in this module, which the job cannot import: it travels
# by value in the job's pickle.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _cluster_env() -> dict[str, str]:
    if os.environ.get("SLURM_CONF"):
        return {"SLURM_CONF": os.environ["SLURM_CONF"]}
    out = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines()
                if line.startswith("export "))


@pytest.fixture(scope="module")
def cluster():
    """The running test cluster's SLURM_CONF, set for this module (and inherited by jobs)."""
    env = _cluster_env()
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=60)
    if status.returncode != 0 or shutil.which("sbatch") is None:
        reason = ("no Slurm cluster is running (scripts/slurm-cluster.sh status: "
                  f"{' / '.join(status.stdout.splitlines()) or status.stderr.strip()}); start "
                  "one with `scripts/slurm-cluster.sh install && scripts/slurm-cluster.sh start` "
                  "(make slurm-start)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Slurm tests: {reason}")
        pytest.skip(reason)
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    yield env
    patch.undo()


def _book(root: Path) -> dict:
    """A throwaway book folder: its own toc, store, runs folder and (beside the store) jobs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "_toc.yml").write_text((ROOT / "_toc.yml").read_text())
    (root / "_config.yml").write_text("title: test\n")
    return {"root": root, "template": TEMPLATE, "runs_dir": root / "book" / "runs",
            "toc_path": root / "_toc.yml", "store_path": root / "store.sqlite",
            "build_dir": root / "_build"}


def _grid(name: str, models=("random_tiny",), tasks=("synthetic",), **slurm) -> G.Grid:
    return G.parse_grid({"models": list(models), "tasks": list(tasks), "protocol": "simpleshot",
                         "n_bootstrap": 200, "slurm": {**SLURM_TEST_OPTIONS, **slurm}},
                        f"{name}.toml")


def _sacct(job_id: str, *fields: str, duplicates: bool = False) -> list[list[str]]:
    """sacct rows (one per attempt with ``duplicates``) of one job, without its steps."""
    cmd = ["timeout", "10", "sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(fields)]
    out = subprocess.run(cmd + (["--duplicates"] if duplicates else []), capture_output=True,
                         text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def _all_job_ids() -> set[str]:
    out = subprocess.run(["timeout", "10", "sacct", "-X", "-n", "-P", "-a", "-S", "now-1days",
                          "-o", "JobID"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


# ---- a job that hits its time limit: submitted first, checked last --------------------------
class StallsOnFirstAttempt(E.GridJob):
    """A job whose first attempt, once its features are cached and its run computed, stalls
    (as a long probe fit would) until Slurm's time-limit signal makes submitit requeue it.
    Before stalling it records every feature-cache file's inode and mtime, so the test can
    show that the requeued attempt read them instead of extracting the features again."""

    def write_result(self, store, key, dest):
        if os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            cache = Path(os.environ["BIOBENCH_FEATURES"])
            stats = {str(p): [p.stat().st_ino, p.stat().st_mtime_ns]
                     for p in sorted(cache.rglob("*")) if p.is_file()}
            (Path(self.jobs_root) / "attempt0-features.json").write_text(json.dumps(stats))
            time.sleep(600)  # interrupted by the signal: submitit checkpoints and requeues
        super().write_result(store, key, dest)


class RunsUntilCancelled(E.GridJob):
    """A job that, once its run is computed, waits (as a long probe fit would) until it is
    cancelled: a grid's poll always finds it running, however fast the machine."""

    def write_result(self, store, key, dest):
        time.sleep(600)
        super().write_result(store, key, dest)


@pytest.fixture(scope="module", autouse=True)
def timed_out_grid(cluster, tmp_path_factory):
    """Submit the requeue test's job before the other tests: Slurm holds a requeued job for
    2 minutes, which then passes while they run. Its limit is 2 minutes and its signal comes
    30 s (+ up to 30 s) before it, so the first attempt is requeued about 1 minute in."""
    root = tmp_path_factory.mktemp("requeue")
    book = _book(root)
    features = root / "features"
    patch = pytest.MonkeyPatch()
    patch.setenv("BIOBENCH_FEATURES", str(features))  # its own cache: attempt 0 fills it
    grid = _grid("requeue", time_min=2, signal_delay_s=30)
    started = time.monotonic()
    report = G.run_grid(grid, executor="slurm", wait=False, job_class=StallsOnFirstAttempt,
                        progress=False, **book)
    patch.undo()
    assert len(report.jobs) == 1 and len(report.pending) == 1
    yield {"grid": grid, "book": book, "features": features, "job": report.jobs[0],
           "started": started}
    subprocess.run(["timeout", "10", "scancel", report.jobs[0]], check=False)


# ---- the 2 x 2 grid ------------------------------------------------------------------------
def test_a_two_by_two_grid_as_slurm_jobs_stores_the_inline_scores_and_resubmits_nothing(
        cluster, tmp_path, monkeypatch):
    grid = _grid("two-by-two", models=MODELS, tasks=("synthetic", "plankton_flowcam"))
    inline_book, slurm_book = _book(tmp_path / "inline"), _book(tmp_path / "slurm")
    # each path extracts its own features: equal scores are not read from one cache
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features-inline"))
    inline = G.run_grid(grid, progress=False, **inline_book)
    assert len(inline.executed) == 4
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features-slurm"))
    before = _all_job_ids()
    report = G.run_grid(grid, executor="slurm", progress=False, timeout_s=WAIT_S, **slurm_book)
    assert len(report.jobs) == 2 and len(report.computed) == 4 and len(report.executed) == 4
    assert _all_job_ids() - before == set(report.jobs)  # one job per model, nothing else

    inline_store = ResultsStore(inline_book["store_path"])
    slurm_store = ResultsStore(slurm_book["store_path"])
    jobs_of_model: dict[str, set] = {}
    for cell in grid.cells():
        key = E.cell_key(cell)
        a, b = inline_store.get_run(key), slurm_store.get_run(key)
        assert (b["score"], b["ci_low"], b["ci_high"], b["n_test"], b["code_version"]) == \
            (a["score"], a["ci_low"], a["ci_high"], a["n_test"], a["code_version"]), cell
        pa, pb = (s.predictions(int(r["run_id"])) for s, r in ((inline_store, a),
                                                                (slurm_store, b)))
        assert list(pa["example_id"]) == list(pb["example_id"])
        assert np.array_equal(np.asarray(list(pa["y_pred"])), np.asarray(list(pb["y_pred"])))
        # the stored run is the one the job exported (a page that recomputed it would have
        # replaced it, without the job's provenance), and its page shows that run's score
        job = b["extra"]["executor"]
        assert job["executor"] == "slurm" and job["array_job"] in report.jobs
        jobs_of_model.setdefault(cell.model, set()).add(job["array_job"])
        page = nbformat.read(cell.notebook_path(slurm_book["runs_dir"]), as_version=4)
        glued = {o["metadata"]["scrapbook"]["name"]: o["data"] for c in page.cells
                 if c.cell_type == "code" for o in c.get("outputs", [])
                 if "scrapbook" in o.get("metadata", {})}
        assert float(glued["score"]["application/papermill.record/text/plain"]) == b["score"]
    # one job per model, holding both of its tasks; the model was loaded once in it
    assert sorted(len(j) for j in jobs_of_model.values()) == [1, 1]
    assert {next(iter(j)) for j in jobs_of_model.values()} == set(report.jobs)
    for job_id in report.jobs:
        assert _sacct(job_id, "State") == [["COMPLETED"]]
        log = Path(slurm_book["store_path"].parent / "jobs" / "logs" / f"{job_id}_0_log.err")
        assert log.read_text().count("loading model") == 1

    # submitting the finished grid again submits nothing and changes nothing
    runs_before = slurm_store.runs("own")
    before = _all_job_ids()
    again = G.run_grid(grid, executor="slurm", progress=False, **slurm_book)
    assert again.jobs == [] and again.computed == [] and len(again.skipped) == 4
    assert _all_job_ids() == before
    assert slurm_store.runs("own").equals(runs_before)
    states = [row.state for row in E.grid_status(grid, slurm_book["store_path"])]
    assert states == ["done"] * 4


def test_a_failing_cell_is_reported_with_its_log_while_the_other_cells_finish(
        cluster, tmp_path):
    from tests.test_executors import _broken_task

    broken = _broken_task(tmp_path / "broken")
    book = _book(tmp_path / "book")
    grid = _grid("failing", tasks=(broken, "synthetic"))
    with pytest.raises(G.GridFailed) as err:
        G.run_grid(grid, executor="slurm", progress=False, timeout_s=WAIT_S, **book)
    report, message = err.value.report, str(err.value)
    assert [c.task for c, _ in report.failed] == [broken]
    assert f"model 'random_tiny' on task '{broken}'" in message
    assert "UnreadableImage" in message and "corrupt.png" in message  # the error's last lines
    log = message.split("log: ", 1)[1].split()[0]
    assert Path(log).is_file() and "Traceback" in Path(log).read_text()
    # the job went on with its next cell: stored, with its page
    [done] = report.computed
    assert done.task == "synthetic" and done.notebook_path(book["runs_dir"]).is_file()
    assert ResultsStore(book["store_path"]).has_run(E.cell_key(done))
    [job_id] = report.jobs
    assert _sacct(job_id, "State") == [["FAILED"]]  # the job says so in Slurm's accounting too
    states = {row.cell.task: (row.state, row.detail) for row in
              E.grid_status(grid, book["store_path"])}
    assert states["synthetic"][0] == "done"
    assert states[broken][0] == "failed" and "UnreadableImage" in states[broken][1]


def test_a_cancelled_job_is_reported_within_a_minute(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    book = _book(tmp_path / "book")
    grid = _grid("cancelled")
    cancelled_at: list[float] = []

    def cancel_once_running(handles):  # called at every poll of the grid's wait loop
        if not cancelled_at and handles and handles[0].state == "running":
            subprocess.run(["timeout", "10", "scancel", handles[0].job_id], check=True)
            cancelled_at.append(time.monotonic())

    with pytest.raises(G.GridFailed) as err:
        G.run_grid(grid, executor="slurm", progress=False, on_poll=cancel_once_running,
                   job_class=RunsUntilCancelled, timeout_s=WAIT_S, **book)
    assert cancelled_at, "the job never ran"
    assert time.monotonic() - cancelled_at[0] < 60
    message = str(err.value)
    [job_id] = err.value.report.jobs
    assert f"job {job_id} ended CANCELLED" in message
    assert f"{job_id}_0_log.err" in message
    assert _sacct(job_id, "State")[0][0].startswith("CANCELLED")


def test_a_job_asking_for_a_gpu_gets_the_clusters_gpu_and_a_later_grid_collects_it(
        cluster, tmp_path):
    book = _book(tmp_path / "book")
    grid = _grid("gpu", gpus_per_job=1)
    submitted = G.run_grid(grid, executor="slurm", wait=False, progress=False, **book)
    [job_id] = submitted.jobs
    assert len(submitted.pending) == 1 and submitted.executed == []
    # a second grid process waits for the job in flight instead of submitting it again
    collected = G.run_grid(grid, executor="slurm", progress=False, timeout_s=WAIT_S, **book)
    # (attached, unless the job had already finished: then its file was simply imported)
    assert collected.jobs == [] and collected.attached in ([job_id], [])
    assert collected.executed == grid.cells()  # its page, from the stored run
    run = ResultsStore(book["store_path"]).get_run(E.cell_key(grid.cells()[0]))
    job = run["extra"]["executor"]
    assert job["job_id"] == job_id and job["cuda_visible_devices"] == "0"
    assert job["slurm_job_gpus"] == "0"
    [[tres]] = _sacct(job_id, "AllocTRES")
    assert "gres/gpu=1" in tres  # scheduled onto the node's GPU resource
    # the CI node's GPU is a placeholder: torch finds no CUDA, so the features ran on the CPU
    assert run["device"].startswith("cpu")


def test_a_job_that_hits_its_time_limit_is_requeued_and_resumes_from_cached_features(
        cluster, timed_out_grid):
    """About 3.5 minutes after its submission at the start of this module: 1 min to the
    signal, Slurm's 2-min hold of the requeued job, then a short second attempt."""
    state = timed_out_grid
    report = G.run_grid(state["grid"], executor="slurm", progress=False, timeout_s=WAIT_S,
                        **state["book"])
    assert report.jobs == [] and report.executed == state["grid"].cells(), report
    assert time.monotonic() - state["started"] < WAIT_S
    job_id = state["job"]
    attempts = [row[0] for row in _sacct(job_id, "State", duplicates=True)]
    assert attempts[0] in ("REQUEUED", "PREEMPTED", "TIMEOUT") and attempts[-1] == "COMPLETED", \
        attempts
    run = ResultsStore(state["book"]["store_path"]).get_run(E.cell_key(state["grid"].cells()[0]))
    assert run["extra"]["executor"]["attempt"] == 1  # written by the requeued attempt

    marker = Path(state["book"]["store_path"]).parent / "jobs" / "attempt0-features.json"
    assert marker.is_file(), "the first attempt was signalled before its features were cached"
    attempt0 = json.loads(marker.read_text())
    # both splits' features were cached before the stall (whatever the cache's file layout)
    assert {Path(p).parent.name.split("-")[0] for p in attempt0} == {"train", "test"}, attempt0
    now = {str(p): [p.stat().st_ino, p.stat().st_mtime_ns]
           for p in sorted(state["features"].rglob("*")) if p.is_file()}
    assert now == attempt0  # not one feature file was written again
