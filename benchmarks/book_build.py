"""Wall time of a cold book build and of a warm rebuild; checks that the numbers do not move.

    python benchmarks/book_build.py [--grid configs/offline.toml] [--no-recompute] [--keep]

Builds a copy of the book in a temporary folder, with its own empty BIOBENCH_HOME (so empty
asset, data and feature caches), an empty results store and an empty Jupyter cache:

1. cold:      fetch the offline assets, run the grid, build the HTML;
2. warm:      the same commands again (every run is in the store, every page is cached);
3. recompute: delete the store only and run the grid with --force (features come from the
              warm cache), then compare every score and interval with the cold build's.

Prints the figures next to the targets (cold <= 15 min, warm <= 2 min on a 2-core CPU). The
timings are never pass/fail; differing numbers are (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COLD_TARGET_S, WARM_TARGET_S = 15 * 60, 2 * 60
# not part of the book's sources: environments, outputs, caches
NOT_COPIED = shutil.ignore_patterns(".venv", ".git", "_build", "results", "runs", "__pycache__",
                                    ".pytest_cache", "*.egg-info", ".ipynb_checkpoints")
NUMBERS = ["source", "model", "task", "protocol", "seed", "n_train", "metric", "score", "ci_low",
           "ci_high", "n_test", "n_train_used"]


def run_step(name: str, command: list[str], cwd: Path, env: dict, log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n===== {name}: {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{name} failed (exit {result.returncode}); see {log}")
    print(f"  {name:<28} {seconds:7.1f} s", flush=True)
    return seconds


def build(book: Path, env: dict, grid: str, log: Path, *, force: bool = False) -> float:
    python = sys.executable
    jupyter_book = str(Path(python).with_name("jupyter-book"))
    steps = [
        ("assets", [python, "-m", "biobench.cli", "assets"]),
        ("grid", [python, "-m", "biobench", "grid", grid] + (["--force"] if force else [])),
        ("html", [jupyter_book, "build", ".", "-W", "-n", "--keep-going"]),
    ]
    return sum(run_step(name, cmd, book, env, log) for name, cmd in steps)


def stored_numbers(store: Path) -> pd.DataFrame:
    from biobench.store import ResultsStore

    runs = ResultsStore(store).runs()
    return runs[NUMBERS].sort_values(NUMBERS[:6]).reset_index(drop=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="configs/offline.toml")
    parser.add_argument("--no-recompute", action="store_true",
                        help="skip step 3 (re-running every cell from the feature cache)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="biobench-book-build-"))
    book = tmp / "book"
    shutil.copytree(ROOT, book, ignore=NOT_COPIED)
    store = tmp / "results.sqlite"
    env = {**os.environ, "BIOBENCH_HOME": str(tmp / "home"), "BIOBENCH_STORE": str(store),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for inherited in ("BIOBENCH_DATA", "BIOBENCH_ASSETS", "BIOBENCH_FEATURES"):
        env.pop(inherited, None)  # everything under the empty BIOBENCH_HOME
    log = tmp / "build.log"
    print(f"book copy: {book}\nlog: {log}\nCPU threads: {os.cpu_count()}")

    print("cold build (empty caches, empty store):")
    cold = build(book, env, args.grid, log)
    cold_numbers = stored_numbers(store)
    print("warm rebuild (nothing changed):")
    warm = build(book, env, args.grid, log)
    same_warm = cold_numbers.equals(stored_numbers(store))

    same_recomputed = None
    if not args.no_recompute:
        print("recompute every run from the feature cache (store deleted):")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        build(book, env, args.grid, log, force=True)
        same_recomputed = cold_numbers.equals(stored_numbers(store))

    print(f"\nfirst build:  {cold / 60:6.1f} min   (target <= {COLD_TARGET_S / 60:.0f} min)")
    print(f"warm rebuild: {warm / 60:6.1f} min   (target <= {WARM_TARGET_S / 60:.0f} min)")
    print(f"runs in the store: {len(cold_numbers)}")
    print(f"identical numbers after the warm rebuild: {same_warm}")
    if same_recomputed is not None:
        print(f"identical numbers after recomputing every run: {same_recomputed}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if same_warm and same_recomputed in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
