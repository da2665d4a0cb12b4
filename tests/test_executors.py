"""The local and Slurm executors without a cluster: options, the job's result files and their
idempotent import, a job run in-process (one evaluation function for every executor), the
local executor's worker limit, reporting of failed and cancelled jobs, ``--status``, and a
store that N processes write at once. The tests against a real Slurm cluster are in
tests/test_slurm.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from biobench import cli
from biobench import executors as E
from biobench import grid as G
from biobench.store import ResultsStore, RunKey, RunRecord

ROOT = Path(__file__).resolve().parents[1]


def _cells(models=("random_tiny",), tasks=("synthetic",), **kw):
    data = {"models": list(models), "tasks": list(tasks), "protocol": "simpleshot",
            "n_bootstrap": 50, **kw}
    return G.parse_grid(data, "test.toml").cells()


# ---- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("table, message", [
    ({"partiton": "gpu"}, "unknown [slurm] option(s) ['partiton']"),
    ({"cpus_per_job": 0}, "cpus_per_job must be above 0"),
    ({"mem_gb": "16G"}, "mem_gb must be a non-negative number"),
    ({"gpus_per_job": True}, "gpus_per_job must be a non-negative number"),
    ({"setup": "module load cuda"}, "setup must be a list of shell lines"),
    ({"sbatch": ["--constraint=a100"]}, "sbatch must be a table"),
    ({"device": "tpu"}, "device must be auto, cpu or cuda"),
])
def test_bad_slurm_table_names_the_file_and_the_option(table, message):
    with pytest.raises(G.GridError) as err:
        G.parse_grid({"models": ["m"], "tasks": ["t"], "slurm": table}, "configs/x.toml",
                     check_names=False)
    assert message in str(err.value) and "configs/x.toml" in str(err.value)


def test_options_come_from_defaults_grid_profile_and_command_line(tmp_path):
    grid = G.parse_grid({"models": ["m"], "tasks": ["t"],
                         "slurm": {"partition": "grid-part", "time_min": 30,
                                   "setup": ["module load cuda"], "sbatch": {"constraint": "a100"}},
                         "local": {"workers": 3}}, "g.toml", check_names=False)
    hash(grid)  # the tables keep a grid hashable
    options = E.resolve_options("slurm", grid)
    assert (options["partition"], options["time_min"], options["cpus_per_job"]) == \
        ("grid-part", 30, E.SLURM_KEYS["cpus_per_job"])
    assert options["setup"] == ["module load cuda"] and options["sbatch"] == {"constraint": "a100"}

    profile = tmp_path / "site.toml"
    profile.write_text('[slurm]\npartition = "site-part"\naccount = "lab"\n')
    options = E.resolve_options("slurm", grid, profile)
    assert (options["partition"], options["account"], options["time_min"]) == \
        ("site-part", "lab", 30)  # the profile wins over the grid, the rest is kept
    assert E.resolve_options("local", grid, profile, workers=5)["workers"] == 5
    assert E.resolve_options("local", grid, profile)["workers"] == 3

    profile.write_text('[cluster]\npartition = "x"\n')
    with pytest.raises(E.ExecutorError, match="only \\[slurm\\] and \\[local\\] tables"):
        E.resolve_options("slurm", grid, profile)
    with pytest.raises(E.ExecutorError, match="not found"):
        E.resolve_options("slurm", grid, tmp_path / "absent.toml")


def test_the_example_grid_and_its_slurm_table_load():
    grid = G.load_grid(ROOT / "configs" / "slurm-example.toml")
    options = E.resolve_options("slurm", grid)
    assert len(grid.cells()) == 4 and options["time_min"] > 0 and options["cpus_per_job"] >= 1


@pytest.mark.parametrize("raw, word", [
    ("PENDING", "pending"), ("REQUEUED", "pending"), ("RUNNING", "running"),
    ("COMPLETING", "running"), ("COMPLETED", "completed"), ("CANCELLED by 0", "cancelled"),
    ("TIMEOUT", "failed"), ("OUT_OF_MEMORY", "failed"), ("NODE_FAIL", "failed"),
    ("FAILED", "failed"), ("", "unknown"), ("SOMETHING_NEW", "unknown")])
def test_slurm_states_map_to_five_words(raw, word):
    assert E.slurm_state_word(raw) == word


# ---- result files: export, import, idempotence -----------------------------------------------
def _record(model="m1", score=0.5, n_preds=30, **extra) -> tuple[RunRecord, list]:
    key = RunKey(model, "synthetic", "simpleshot", probe_params='{"random_state":0}')
    record = RunRecord(key, "macro_f1", score, 0.4, 0.6, 0.95, 50, None, n_preds, 0,
                       {"python": "3.11"}, "abc", "v1", "cpu", 1.25,
                       {"class_names": ["a", "b", "c"], "per_class": [0.1, 0.2], **extra})
    preds = [(f"ex{i}", i % 3, [(i + 1) % 3, 0.25]) for i in range(n_preds)]
    return record, preds


def _run_row(store: ResultsStore, key: RunKey) -> dict:
    run = store.get_run(key)
    return {k: v for k, v in run.items() if k not in ("run_id", "created_at")}


def test_export_then_import_reproduces_the_run_exactly_and_twice_changes_nothing(tmp_path):
    source = ResultsStore(tmp_path / "job.sqlite")
    record, preds = _record()
    source.save_run(record, preds)
    path = E.export_run(source, record.key, tmp_path / "cells" / "c.json", token="t1",
                        job={"job_id": "7_0", "log": "/logs/7_0_0_log.err"})
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temporary file left

    store = ResultsStore(tmp_path / "shared.sqlite")
    assert E.import_result(store, path) == "imported"
    imported = _run_row(store, record.key)
    provenance = imported["extra"].pop("executor")
    expected = _run_row(source, record.key)
    assert imported == expected  # every field, the extras and the None n_train_used included
    assert imported["n_train_used"] is None and imported["ci_low"] == 0.4
    assert provenance["job_id"] == "7_0" and provenance["result_file"] == str(path)
    run_id = store.run_id(record.key)
    got = store.predictions(run_id)
    assert list(zip(got["example_id"], got["y_true"], got["y_pred"])) == \
        [(i, t, p) for i, t, p in preds]

    with sqlite3.connect(tmp_path / "shared.sqlite") as con:
        before = con.execute("SELECT * FROM runs").fetchall(), \
            con.execute("SELECT * FROM predictions").fetchall()
    assert E.import_result(store, path) == "unchanged"
    with sqlite3.connect(tmp_path / "shared.sqlite") as con:
        after = con.execute("SELECT * FROM runs").fetchall(), \
            con.execute("SELECT * FROM predictions").fetchall()
    assert after == before  # row for row, run id and created_at included


def test_an_older_file_never_replaces_a_newer_stored_run(tmp_path):
    source = ResultsStore(tmp_path / "job.sqlite")
    record, preds = _record(score=0.5)
    source.save_run(record, preds)
    path = E.export_run(source, record.key, tmp_path / "c.json", token="t1")
    data = json.loads(path.read_text())
    data["finished_at"] = "2000-01-01T00:00:00.000000Z"  # made long before the stored run
    path.write_text(json.dumps(data))
    store = ResultsStore(tmp_path / "shared.sqlite")
    newer, _ = _record(score=0.9)
    store.save_run(newer, preds)
    assert E.import_result(store, path) == "superseded"
    assert store.get_run(record.key)["score"] == 0.9

    data["finished_at"] = "2999-01-01T00:00:00.000000Z"  # made after it: replaces it
    path.write_text(json.dumps(data))
    assert E.import_result(store, path) == "imported"
    assert store.get_run(record.key)["score"] == 0.5 and len(store.runs("own")) == 1


def test_a_result_file_of_another_format_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="--force"):
        E.read_result(path)


# ---- a job, run in this process -------------------------------------------------------------
def _broken_task(root: Path) -> str:
    """An own task whose one test image is corrupt: a cell that fails for a real reason."""
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for label, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (16, 16), colour).save(folder / f"{label}{i}.png")
    (root / "test" / "red" / "corrupt.png").write_bytes(b"not a png at all")
    return f"folder:{root}"


def test_a_job_runs_the_one_evaluation_function_and_keeps_going_after_a_failed_cell(
        tmp_path, monkeypatch):
    from biobench.evaluate import run_evaluation

    shared = tmp_path / "shared.sqlite"
    monkeypatch.setenv("BIOBENCH_STORE", str(shared))
    broken = _broken_task(tmp_path / "broken")
    cells = _cells(tasks=[broken, "synthetic"])
    folder = E.JobsFolder(tmp_path / "jobs")
    stems = [E.cell_stem(c) for c in cells]
    job = E.GridJob("random_tiny", list(zip(cells, stems)), str(folder.root), "token-1",
                    device="cpu")
    with pytest.raises(E.CellsFailed, match="1 of 2 cell"):
        job()
    assert not shared.exists()  # a job never opens the shared store

    failure = json.loads(folder.failure_path(stems[0]).read_text())
    assert failure["error"].startswith("UnreadableImage") and "corrupt.png" in failure["error"]
    assert failure["token"] == "token-1" and not folder.result_path(stems[0]).exists()
    result = folder.result_path(stems[1])
    assert E.read_result(result)["token"] == "token-1"

    # the same job again (a requeued attempt): the finished cell is not computed twice
    written = result.stat().st_mtime_ns
    with pytest.raises(E.CellsFailed):
        job()
    assert result.stat().st_mtime_ns == written

    store = ResultsStore(shared)
    assert E.import_result(store, result) == "imported"
    inline = run_evaluation("random_tiny", "synthetic", protocol="simpleshot", n_bootstrap=50,
                            store=tmp_path / "inline.sqlite")
    run = store.get_run(inline.key)
    assert (run["score"], run["ci_low"], run["ci_high"]) == \
        (inline.score, inline.ci_low, inline.ci_high)
    preds = store.predictions(int(run["run_id"]))
    assert list(preds["example_id"]) == inline.example_ids
    assert np.array_equal(np.asarray(list(preds["y_pred"])), inline.y_pred)


# ---- following jobs: failures, cancellation, the local worker limit -------------------------
class FakeJob:
    """Stands in for a submitit job: RUNNING until ``finish`` is called."""

    def __init__(self, n, folder):
        self.job_id = str(1000 + n)
        self.returncode = None
        self.paths = type("P", (), {"stdout": folder / f"{n}.out", "stderr": folder / f"{n}.err"})

    def get_info(self, mode="force"):
        return {"jobState": "RUNNING" if self.returncode is None else "FINISHED"}

    @property
    def _process(self):
        return self

    def cancel(self):
        self.returncode = -2


def test_local_backend_runs_at_most_n_jobs_at_once_with_their_own_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    launched: list[tuple[FakeJob, list[int]]] = []

    def launcher(job, gpus):
        fake = FakeJob(len(launched), tmp_path)
        launched.append((fake, gpus))
        return fake

    options = E.resolve_options("local", None, gpus_per_job=2)
    backend = E.LocalBackend(options, E.JobsFolder(tmp_path / "jobs"), launcher=launcher)
    assert backend.workers == 2  # 4 GPUs, 2 per job
    jobs = [E.GridJob(f"m{i}", [], str(tmp_path), f"tok{i}") for i in range(5)]
    handles = backend.submit(jobs, "g")
    backend.refresh(handles)
    assert len(launched) == 2 and [h.state for h in handles] == ["running"] * 2 + ["pending"] * 3
    assert sorted(g for _, gpus in launched for g in gpus) == [0, 1, 2, 3]
    launched[0][0].returncode = 0  # the first worker ends: its GPUs go to the next job
    backend.refresh(handles)
    assert handles[0].state == "completed" and len(launched) == 3
    assert launched[2][1] == launched[0][1]
    launched[1][0].returncode = 1  # a failed worker process
    backend.refresh(handles)
    assert handles[1].state == "failed" and "exit code 1" in handles[1].raw_state
    while any(h.state not in E.FINAL for h in handles):
        for fake, _ in launched:
            fake.returncode = 0 if fake.returncode is None else fake.returncode
        backend.refresh(handles)
    assert len(launched) == 5 and backend.max_running_seen == 2
    # every launch was recorded for --status, with its log file
    assert len(list((tmp_path / "jobs" / "submissions").glob("*.json"))) == 5


def test_local_workers_default_to_cpus_per_job(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpus = len(os.sched_getaffinity(0))
    backend = E.LocalBackend(E.resolve_options("local", None), E.JobsFolder(tmp_path))
    assert backend.gpus_per_job() == 0 and backend.workers == cpus
    with pytest.raises(E.ExecutorError, match="shows 0 GPU"):
        E.LocalBackend(E.resolve_options("local", None, gpus_per_job=1), E.JobsFolder(tmp_path))


class ScriptedBackend(E.Backend):
    """Jobs whose states follow a script, one entry per refresh."""

    name = "slurm"

    def __init__(self, folder, script):
        super().__init__(E.resolve_options("slurm", None, poll_s=0.01), folder)
        self.script = list(script)

    def refresh(self, handles):
        raw = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        for h in handles:
            h.raw_state, h.state = raw, E.slurm_state_word(raw)


def test_a_cancelled_job_is_reported_with_its_log_and_the_other_cells_are_kept(tmp_path):
    folder = E.JobsFolder(tmp_path / "jobs")
    cells = _cells(models=("random_tiny", "timm:test_vit@random"), tasks=("synthetic",))
    stems = [f"synthetic/c{i}" for i in range(2)]
    handles = [E.JobHandle("slurm", f"tok{i}", c.model, (s,), ((c.model, c.task, c.seed),),
                           job_id=f"9_{i}", log_err=str(tmp_path / f"9_{i}.err"))
               for i, (c, s) in enumerate(zip(cells, stems))]
    Path(handles[0].log_err).write_text("starting\nslurmstepd: *** JOB 9 CANCELLED ***\n")
    # the second job finished its cell and wrote its result before the first was cancelled
    source = ResultsStore(tmp_path / "job.sqlite")
    record, preds = _record(model="timm:test_vit@random")
    source.save_run(record, preds)
    E.export_run(source, record.key, folder.result_path(stems[1]), token="tok1")
    store = ResultsStore(tmp_path / "shared.sqlite")
    report = E.ComputeReport()
    backend = ScriptedBackend(folder, ["PENDING", "RUNNING", "CANCELLED by 0"])
    started = time.monotonic()
    E.follow_jobs(handles, backend, store, dict(zip(stems, cells)), report, progress=False)
    assert time.monotonic() - started < 5
    assert report.computed == [cells[1]] and store.has_run(record.key)
    [(cell, message)] = report.failed
    assert cell == cells[0]
    assert "job 9_0 ended CANCELLED by 0" in message and handles[0].log_err in message
    assert "JOB 9 CANCELLED" in message  # the end of the job's log


# ---- --status --------------------------------------------------------------------------------
def test_status_shows_done_failed_and_pending_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('models = ["random_tiny", "timm:test_vit@random"]\n'
                         'tasks = ["synthetic"]\nprotocol = "simpleshot"\nn_bootstrap = 50\n'
                         f'[local]\njobs_dir = "{tmp_path / "jobs"}"\n')
    grid = G.load_grid(grid_file)
    store_path = tmp_path / "s.sqlite"
    folder = E.JobsFolder(tmp_path / "jobs")
    done, failed = grid.cells()
    # a finished local job (its PID long gone) that computed the first cell ...
    job = E.GridJob(done.model, [(done, E.cell_stem(done))], str(folder.root), "tok", device="cpu")
    job()
    handle = E.JobHandle("local", "tok", done.model, (E.cell_stem(done),),
                         ((done.model, done.task, 0),), job_id="999999999",
                         log_err=str(tmp_path / "x.err"))
    E.save_submission(folder, handle)
    # ... and one whose only cell failed
    bad = E.JobHandle("local", "tok2", failed.model, (E.cell_stem(failed),),
                      ((failed.model, failed.task, 0),), job_id="999999998",
                      log_err=str(tmp_path / "y.err"))
    E.save_submission(folder, bad)
    rows = {r.cell.model: r for r in E.grid_status(grid, store_path, "local")}
    assert rows[done.model].state == "done" and "not imported yet" in rows[done.model].detail
    assert rows[failed.model].state == "failed" and "y.err" in rows[failed.model].detail

    E.import_result(ResultsStore(store_path), folder.result_path(E.cell_stem(done)))
    code = cli.main(["grid", str(grid_file), "--status", "--executor", "local",
                     "--store", str(store_path)])
    out = capsys.readouterr().out
    assert code == 0 and "1 done, 0 running, 0 pending, 1 failed" in out
    assert "in the store" in out


def test_grid_options_that_need_another_executor_are_refused(tmp_path, capsys):
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('models = ["random_tiny"]\ntasks = ["synthetic"]\n')
    assert cli.main(["grid", str(grid_file), "--workers", "2"]) == 2
    assert "--workers applies to --executor local only" in capsys.readouterr().err
    assert cli.main(["grid", str(grid_file), "--no-wait", "--executor", "local"]) == 2
    assert "--no-wait applies to --executor slurm only" in capsys.readouterr().err


# ---- the store, written by N processes at once ----------------------------------------------
N_WORKERS = 8
N_PREDICTIONS = 2000


def _save_when_all_are_ready(store_path: str, model: str, barrier) -> None:
    record, preds = _record(model=model, n_preds=N_PREDICTIONS)
    barrier.wait()  # every worker finishes its run at the same moment
    ResultsStore(store_path).save_run(record, preds, replace=True)


def _save_until_killed(store_path: str, halfway, hold) -> None:
    record, preds = _record(model="killed", n_preds=N_PREDICTIONS)

    def rows():
        for i, row in enumerate(preds):
            if i == N_PREDICTIONS // 2:
                halfway.set()  # the run row and half its predictions are written, uncommitted
                hold.wait()
            yield row

    ResultsStore(store_path).save_run(record, rows(), replace=True)


def test_eight_workers_finishing_at_once_leave_eight_complete_runs_and_no_partial_row(tmp_path):
    store_path = str(tmp_path / "shared.sqlite")
    ResultsStore(store_path)
    ctx = multiprocessing.get_context("spawn")  # the test process may hold torch's threads

    # a worker killed in the middle of writing its run leaves nothing behind
    halfway, hold = ctx.Event(), ctx.Event()
    victim = ctx.Process(target=_save_until_killed, args=(store_path, halfway, hold))
    victim.start()
    assert halfway.wait(60), "the victim never started writing"
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)

    barrier = ctx.Barrier(N_WORKERS)
    workers = [ctx.Process(target=_save_when_all_are_ready,
                           args=(store_path, f"model{i}", barrier)) for i in range(N_WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0] * N_WORKERS

    with sqlite3.connect(store_path) as con:
        runs = con.execute("SELECT run_id, model FROM runs ORDER BY model").fetchall()
        counts = dict(con.execute("SELECT run_id, COUNT(*) FROM predictions GROUP BY run_id"))
        orphans = con.execute("SELECT COUNT(*) FROM predictions WHERE run_id NOT IN "
                              "(SELECT run_id FROM runs)").fetchone()[0]
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    assert [m for _, m in runs] == sorted(f"model{i}" for i in range(N_WORKERS))
    assert all(counts.get(run_id) == N_PREDICTIONS for run_id, _ in runs), counts
    assert orphans == 0 and integrity == "ok"


# ---- the local executor for real: worker processes through submitit -------------------------
@pytest.mark.slow
def test_local_executor_stores_the_same_scores_as_inline_evaluation(tmp_path):
    """Two models in two worker processes (about 1 min on 2 busy cores, with two pages)."""
    from biobench.evaluate import run_evaluation

    (tmp_path / "_toc.yml").write_text((ROOT / "_toc.yml").read_text())
    (tmp_path / "_config.yml").write_text("title: test\n")
    grid = G.parse_grid({"models": ["random_tiny", "timm:test_vit@random"],
                         "tasks": ["synthetic"], "protocol": "simpleshot", "n_bootstrap": 50,
                         "local": {"poll_s": 0.5}}, "local.toml")
    store_path = tmp_path / "store.sqlite"
    report = G.run_grid(grid, root=tmp_path, template=ROOT / "notebooks" / "evaluate.md",
                        store_path=store_path, executor="local", workers=2, progress=False)
    assert len(report.computed) == 2 and len(report.executed) == 2 and not report.failed
    store = ResultsStore(store_path)
    for cell in grid.cells():
        inline = run_evaluation(cell.model, cell.task, protocol="simpleshot", n_bootstrap=50,
                                store=tmp_path / "inline.sqlite")
        run = store.get_run(inline.key)
        assert (run["score"], run["ci_low"], run["ci_high"]) == \
            (inline.score, inline.ci_low, inline.ci_high)
        assert run["extra"]["executor"]["executor"] == "local"
        assert (tmp_path / "book" / "runs" / "synthetic" / f"{cell.page_name}.ipynb").is_file()

    again = G.run_grid(grid, root=tmp_path, template=ROOT / "notebooks" / "evaluate.md",
                       store_path=store_path, executor="local", workers=2, progress=False)
    assert again.jobs == [] and again.computed == [] and len(again.skipped) == 2
