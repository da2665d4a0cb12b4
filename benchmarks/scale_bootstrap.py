"""How long a bootstrap interval takes at scale: the per-replicate loop versus cell counts.

    python benchmarks/scale_bootstrap.py            # n_test = 100k, 1,000 classes, 1,000 replicates
    python benchmarks/scale_bootstrap.py --quick    # n_test = 20k, 200 classes, 200 replicates

The test set: 1,000 classes of 100 test examples each, predicted right 70% of the time and
otherwise as a random class, scored with macro-F1 (``biobench.metrics.macro_f1``) in two ways:
resampled within true classes, as every run's interval is, and resampled plainly, where the set
of classes changes from replicate to replicate.

- **loop**: the metric called once per replicate (``method="loop"``, the code before the count
  forms). It takes seconds per hundred replicates, so it is timed on the first ``LOOP_REPLICATES``
  replicates and scaled linearly to the full count (each replicate costs the same); the table
  says so.
- **counts**: each example reduced once to its (true, predicted) cell, a ``np.bincount`` per
  chunk of replicates, and macro-F1 computed from the counts, vectorised (``method="counts"``).
  Median of 3 runs, wall and CPU time; peak memory (``tracemalloc``, which sees numpy's arrays)
  from one more run.

Both give the same replicates: the first ``LOOP_REPLICATES`` of the counts path are compared
with the loop's for exact equality. Target: the counts path under 1 s for 1,000 replicates at
n_test = 100k. The figures are wall times on whatever CPU runs this, shared or not: read them
with the machine's load (printed) in mind. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

import numpy as np

from biobench.metrics import bootstrap_strata, macro_f1
from biobench.stats import bootstrap_replicates

LOOP_REPLICATES = 50


def make_case(n_test: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced classes, 70% right, mistakes spread over all classes."""
    rng = np.random.default_rng(seed)
    y_true = rng.permutation(np.repeat(np.arange(n_classes), n_test // n_classes))
    y_pred = np.where(rng.random(len(y_true)) < 0.7, y_true,
                      rng.integers(0, n_classes, len(y_true)))
    return y_true, y_pred


def _timed(fn) -> tuple[float, float, object]:
    """(wall s, CPU s of this process, result). On a shared CPU the wall time grows with the
    other processes' load; the CPU time much less."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(y_true, y_pred, strata, n_bootstrap: int, loop_replicates: int,
            repeats: int) -> dict:
    def run(method: str, replicates: int) -> np.ndarray:
        return bootstrap_replicates(macro_f1, y_true, [y_pred], n_bootstrap=replicates, seed=0,
                                    strata=strata, method=method)[0]

    loop_wall, loop_cpu, looped = _timed(lambda: run("loop", loop_replicates))
    runs = [_timed(lambda: run("counts", n_bootstrap)) for _ in range(repeats)]
    counted = runs[0][2]
    tracemalloc.start()
    try:
        run("counts", n_bootstrap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    scale = n_bootstrap / loop_replicates  # every replicate costs the loop the same
    return {
        "loop_s": loop_wall * scale, "loop_cpu_s": loop_cpu * scale,
        "counts_s": statistics.median(wall for wall, _, _ in runs),
        "counts_cpu_s": statistics.median(cpu for _, cpu, _ in runs),
        "counts_all_s": [wall for wall, _, _ in runs],
        "peak_mib": peak / 2 ** 20,
        "identical": bool(np.array_equal(counted[:loop_replicates], looped)),
    }


def section(quick: bool = False) -> None:
    """Print the table: loop vs counts, speed-up, peak memory, identical replicates."""
    n_test, n_classes, n_bootstrap = (20_000, 200, 200) if quick else (100_000, 1000, 1000)
    loop_replicates = 20 if quick else LOOP_REPLICATES
    repeats = 1 if quick else 3
    y_true, y_pred = make_case(n_test, n_classes)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"## Bootstrap at n_test = {n_test:,}, {n_classes:,} classes, {n_bootstrap:,} "
          f"replicates (macro-F1)\n")
    print(f"CPU: {os.cpu_count()} cores, load average {load:.1f} at the start. Loop timed on "
          f"{loop_replicates} replicates and scaled x{n_bootstrap / loop_replicates:g}; counts: "
          f"median of {repeats}.\n")
    print("| resampling | loop: wall s (CPU s), scaled | counts: wall s (CPU s) | speed-up "
          "(wall) | counts peak memory (MiB) | replicates identical |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, strata in (("within true classes (runs)", bootstrap_strata("macro_f1", y_true)),
                          ("plain", None)):
        m = measure(y_true, y_pred, strata, n_bootstrap, loop_replicates, repeats)
        runs = ", ".join(f"{t:.2f}" for t in m["counts_all_s"])
        print(f"| {label} | {m['loop_s']:.1f} ({m['loop_cpu_s']:.1f}) | {m['counts_s']:.2f} "
              f"({m['counts_cpu_s']:.2f}); runs {runs} | {m['loop_s'] / m['counts_s']:.0f}x | "
              f"{m['peak_mib']:.0f} | {'yes' if m['identical'] else 'NO'} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLoad average at the end: {load:.1f} (on a shared CPU, figures vary with it).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller case, one run each")
    section(quick=parser.parse_args().quick)
