"""What the Slurm path costs per cell, against the inline path, on the same grid.

    python benchmarks/slurm_overhead.py [--grid configs/slurm-example.toml]
                                        [--out benchmarks/slurm_overhead.json]

Needs a Slurm cluster (on this machine: scripts/slurm-cluster.sh start; SLURM_CONF is taken
from the script when unset). Runs the grid twice, each time from an empty store and an empty
feature cache (so both paths extract their own features), with the same assets and data:

1. inline: each cell's page executed by papermill, computing its run (``--executor inline``);
2. slurm:  one job per model (``--executor slurm``), each cell's run imported when its file
           appears, then each page executed, reading its run back from the store.

Per cell it records the inline page time, the Slurm path's time from submission to the run in
the store (resolution: the 1 s poll) and its page time, and the run's own compute time
(``wall_time_s`` of ``run_evaluation``, in the page or in the job). From these:

- inline overhead per cell: page time minus compute (kernel start, imports, model, page);
- Slurm overhead per cell: each job's time from submission to its last run in the store minus
  its cells' compute (sbatch, queue wait, Python start, imports, model, import into the store),
  shared by its cells, plus the cell's page time;
- the Slurm path's extra cost per cell: the difference of the two; and both paths' wall times
  (the Slurm jobs run side by side).

Prints a table and writes the figures to ``--out`` (read by the book's "Running at scale"
page); ``--summarise-only`` recomputes the derived figures of an existing file. Timings are
never pass/fail; differing scores between the two paths are (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cluster_env() -> None:
    """SLURM_CONF of the project's test cluster when none is set."""
    if os.environ.get("SLURM_CONF"):
        return
    out = subprocess.run([str(ROOT / "scripts" / "slurm-cluster.sh"), "env"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("export SLURM_CONF="):
            os.environ["SLURM_CONF"] = line.split("=", 1)[1]


def sacct_times(job_ids: list[str]) -> dict[str, dict[str, float]]:
    """Queue wait (submit to start) and elapsed seconds of each job, from Slurm's accounting."""
    out = subprocess.run(["timeout", "10", "sacct", "-X", "-n", "-P", "-o",
                          "JobID,Submit,Start,End"] + [a for j in job_ids for a in ("-j", j)],
                         capture_output=True, text=True).stdout
    parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S").timestamp()  # noqa: E731
    times = {}
    for line in out.splitlines():
        job, submit, start, end = line.split("|")
        if job in job_ids and "Unknown" not in (start, end):
            times[job] = {"queue_wait_s": parse(start) - parse(submit),
                          "elapsed_s": parse(end) - parse(start)}
    return times


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarise(figures: dict) -> dict:
    """The derived figures (see the module docstring) from the measured ones."""
    inline, slurm = figures["inline"]["cells"], figures["slurm"]["cells"]
    by_job: dict[str, list[dict]] = {}
    for cell in slurm:
        by_job.setdefault(cell["job"], []).append(cell)
    # a job's time that is not its cells' compute, shared by its cells
    for cells in by_job.values():
        not_compute = (max(c["submit_to_result_s"] for c in cells)
                       - sum(c["compute_s"] for c in cells))
        for c in cells:
            c["job_overhead_share_s"] = not_compute / len(cells)
    inline_overhead = mean(c["page_s"] - c["compute_s"] for c in inline)
    slurm_overhead = mean(c["job_overhead_share_s"] + c["page_s"] for c in slurm)
    jobs = figures["slurm"]["jobs"]
    return {**figures,
            "inline_overhead_per_cell_s": inline_overhead,
            "slurm_overhead_per_cell_s": slurm_overhead,
            "extra_per_cell_s": slurm_overhead - inline_overhead,
            "mean_job_startup_s": mean(c["submit_to_result_s"] - c["compute_s"]
                                       for cells in by_job.values() for c in cells[:1]),
            "mean_submit_to_result_s": mean(c["submit_to_result_s"] for c in slurm),
            "mean_slurm_page_s": mean(c["page_s"] for c in slurm),
            "mean_inline_page_s": mean(c["page_s"] for c in inline),
            "mean_queue_wait_s": mean(j["queue_wait_s"] for j in jobs.values())}


def print_summary(f: dict) -> None:
    print(f"\n{'cell':<44} {'inline page':>11} {'(compute)':>10} {'slurm submit->run':>18} "
          f"{'(compute)':>10} {'page':>6}")
    for a, b in zip(f["inline"]["cells"], f["slurm"]["cells"]):
        print(f"{a['task'] + ' / ' + a['model']:<44} {a['page_s']:>9.1f} s "
              f"{a['compute_s']:>8.1f} s {b['submit_to_result_s']:>16.1f} s "
              f"{b['compute_s']:>8.1f} s {b['page_s']:>4.1f} s")
    print(f"\noverhead per cell, compute excluded: inline {f['inline_overhead_per_cell_s']:.1f} s, "
          f"slurm {f['slurm_overhead_per_cell_s']:.1f} s ({f['extra_per_cell_s']:+.1f} s; a "
          f"job's start {f['mean_job_startup_s']:.1f} s, queue wait "
          f"{f['mean_queue_wait_s'] or 0:.1f} s)")
    print(f"wall time, {f['n_cells']} cells: inline {f['inline']['total_s']:.1f} s, slurm "
          f"{f['slurm']['total_s']:.1f} s ({f['n_jobs']} jobs side by side)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=str(ROOT / "configs" / "slurm-example.toml"))
    # beside this script: a results/ folder would be git-ignored, and the book reads this file
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "slurm_overhead.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--summarise-only", action="store_true",
                        help="recompute the derived figures of --out, measure nothing")
    args = parser.parse_args()
    if args.summarise_only:
        figures = summarise(json.loads(Path(args.out).read_text()))
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
        print_summary(figures)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    cluster_env()
    if shutil.which("sbatch") is None:
        sys.exit("no Slurm client commands on PATH: scripts/slurm-cluster.sh install && "
                 "scripts/slurm-cluster.sh start")

    import jupytext

    from biobench import executors as E
    from biobench import grid as G
    from biobench.store import ResultsStore

    grid = G.load_grid(args.grid)
    cells = grid.cells()
    tmp = Path(tempfile.mkdtemp(prefix="slurm-overhead-"))
    template = ROOT / "notebooks" / "evaluate.md"
    template_nb = jupytext.read(template)
    template_nb.metadata[G.TEMPLATE_KEY] = G.template_digest(template)
    G.fetch_missing_offline_data(grid, progress=False)
    load_start = os.getloadavg()
    print(f"grid {args.grid}: {len(cells)} cells; working in {tmp}", flush=True)

    # 1. inline: what `biobench grid --executor inline` does for each cell
    os.environ["BIOBENCH_FEATURES"] = str(tmp / "features-inline")
    inline_store = tmp / "inline" / "store.sqlite"
    inline_cells, started = [], time.perf_counter()
    for cell in cells:
        t0 = time.perf_counter()
        G.execute_cell(cell, template_nb, cell.notebook_path(tmp / "inline" / "runs"),
                       inline_store, ROOT)
        inline_cells.append({"model": cell.model, "task": cell.task,
                             "page_s": time.perf_counter() - t0})
        print(f"  inline {cell.task} / {cell.model}: {inline_cells[-1]['page_s']:.1f} s",
              flush=True)
    inline_total = time.perf_counter() - started

    # 2. slurm: jobs compute and export, the grid imports, then pages read the store
    os.environ["BIOBENCH_FEATURES"] = str(tmp / "features-slurm")
    slurm_store_path = tmp / "slurm" / "store.sqlite"
    slurm_store = ResultsStore(slurm_store_path)
    keys = {E.cell_stem(cell): E.cell_key(cell) for cell in cells}
    imported_at: dict[str, float] = {}  # stem -> when its run was first seen in the store

    def record_imports(handles):  # called at every poll of the wait loop
        now = time.perf_counter()
        for stem, key in keys.items():
            if stem not in imported_at and slurm_store.has_run(key):
                imported_at[stem] = now

    started = time.perf_counter()
    report = E.compute_cells(grid, cells, slurm_store, slurm_store_path, "slurm",
                             progress=False, poll_s=1.0, on_poll=record_imports)
    record_imports([])
    computed_at = time.perf_counter()
    if report.failed:
        for _, message in report.failed:
            print(message, file=sys.stderr)
        return 1
    slurm_cells = []
    for cell in cells:
        t0 = time.perf_counter()
        G.execute_cell(cell, template_nb, cell.notebook_path(tmp / "slurm" / "runs"),
                       slurm_store_path, ROOT)
        stem = E.cell_stem(cell)
        slurm_cells.append({"model": cell.model, "task": cell.task,
                            "submit_to_result_s": imported_at.get(stem, computed_at) - started,
                            "page_s": time.perf_counter() - t0})
    slurm_total = time.perf_counter() - started

    # the two paths must agree on every number
    inline_runs = ResultsStore(inline_store)
    mismatches = []
    for cell, a, b in zip(cells, inline_cells, slurm_cells):
        key = E.cell_key(cell)
        x, y = inline_runs.get_run(key), slurm_store.get_run(key)
        a["compute_s"], b["compute_s"] = x["wall_time_s"], y["wall_time_s"]
        b["job"] = y["extra"]["executor"].get("array_job") or y["extra"]["executor"]["job_id"]
        if (x["score"], x["ci_low"], x["ci_high"]) != (y["score"], y["ci_low"], y["ci_high"]):
            mismatches.append(f"{cell.task} / {cell.model}: inline {x['score']} vs slurm "
                              f"{y['score']}")
    figures = summarise({
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(), "cpus": os.cpu_count(),
        "load_average_at_start": round(load_start[0], 1),
        "grid": str(Path(args.grid).resolve().relative_to(ROOT)), "n_cells": len(cells),
        "n_jobs": len(report.jobs),
        "inline": {"total_s": inline_total, "cells": inline_cells},
        "slurm": {"total_s": slurm_total, "compute_and_import_s": computed_at - started,
                  "cells": slurm_cells, "jobs": sacct_times(report.jobs)},
        "scores_identical": not mismatches,
    })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print_summary(figures)
    print(f"figures written to {out}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    if mismatches:
        print("scores differ between the paths:\n  " + "\n  ".join(mismatches), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
