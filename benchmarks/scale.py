"""How the probes scale towards the real benchmark's sizes, on synthetic 768-d features.

    python benchmarks/scale.py                          # every section at the quick sizes
    python benchmarks/scale.py --only probes --sizes 2000x10,8000x10,32000x10,32000x100,32000x1000
    python benchmarks/scale.py --only probes --probes logreg@today,torch_logreg --sizes 32000x1000
    python benchmarks/scale.py --only gap --gap-size 8000x10
    python benchmarks/scale.py --only reference

Sections (``--only`` picks some, repeatable; each stands alone):

- ``probes``: for each probe and size, fit time, peak memory above baseline and test
  macro-F1, side by side; then growth exponents (log-log fit of time against n and against
  classes) and extrapolations to the real tasks' sizes. ``logreg@today`` is ``logreg`` with
  the settings the book used before this benchmark (scikit-learn's tol 1e-4, max_iter 2000).
  Memory: each measurement runs in a fresh subprocess that builds the data and imports every
  library first, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), fits, and
  reads the peak (``VmHWM``): the figure is the fit's peak resident memory above what the
  process held before it (torch's allocations are plain ``malloc``, so RSS sees them).
- ``gap``: for each tuned probe, the objective of its fit at every C of the grid along the
  warm-started path on fold 0, against a tightly converged float64 fit (``torch_logreg``'s
  solver at tol 1e-4: coefficients provably within 1e-4 of the optimum's, objective within
  1e-8), on well- and ill-conditioned features. Times include each path's setup.
- ``reference``: the BioBench reference's search (saga, 30 candidates x 5 folds + refit =
  151 fits) priced from a measured time per saga epoch and epochs per fit.

Other people share this machine's CPUs: times vary with their load, so the load average is
printed with the figures. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIM = 768
# the real tasks (training examples, classes): spec/biobench-tasks.md. Plankton's class count
# is not stated there; SYKE-plankton_IFCB_2022 has 50 folders (an assumption, labelled).
REAL_TASKS = {
    "Plankton (63k x ~50)": (63_074, 50),
    "Pl@ntNet (244k x 1,081)": (243_916, 1_081),
    "FungiCLEF (296k x 1,604)": (295_938, 1_604),
    "iNat21 (500k x 10,000)": (500_000, 10_000),
    "ImageNet-1K (1.28M x 1,000)": (1_281_167, 1_000),
}
GPU_SPEEDUP = 50  # ASSUMPTION, not measured: a datacentre GPU vs this 2-core CPU, matrix work only
FEASIBLE_CPU_S = 3600  # "feasible on this CPU": under an hour per run
TODAY = {"tol": 1e-4, "max_iter": 2000}  # logreg's settings before this benchmark


# ---- synthetic features ---------------------------------------------------------------------
def synthetic_features(n: int, n_classes: int, *, conditioning: str = "well", seed: int = 0,
                       dim: int = DIM, separation: float | None = None):
    """Gaussian classes in ``dim`` dimensions: class means N(0, separation^2), noise with a
    spectrum spanning 1 decade ("well") or 3 ("ill"), randomly rotated (correlated features,
    as a backbone's are). float32, like cached features. Returns X, y.

    The default separation, 0.07 (classes / 10)^(1/4), keeps the task learnable as classes
    multiply and examples per class shrink: at 0.07 throughout, 1,000 classes of 32 examples
    score at chance; with it, logistic regression scores about 0.6 at 8,000 x 10 and 0.2 at
    32,000 x 1,000, like the brief's figures for real-sized problems."""
    rng = np.random.default_rng(seed)
    if separation is None:
        separation = 0.07 * (n_classes / 10) ** (1 / 4)
    means = rng.normal(0.0, separation, (n_classes, dim)).astype(np.float32)
    decades = {"well": 1.0, "ill": 3.0}[conditioning]
    spectrum = np.logspace(decades / 2, -decades / 2, dim).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    y = np.arange(n) % n_classes  # balanced, then shuffled
    rng.shuffle(y)
    X = means[y]
    for start in range(0, n, 65536):  # noise in blocks: no float64 n x dim temporary
        block = rng.standard_normal((min(65536, n - start), dim), dtype=np.float32)
        X[start:start + len(block)] += (block * spectrum) @ rotation.T
    return X, y


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


# ---- probes section ---------------------------------------------------------------------------
def build_probe(spec: str, linear_head_steps: int):
    """``name`` or ``name:param=value:param=value`` (values as Python literals);
    ``logreg@today`` is logreg with the settings the book used before this benchmark."""
    import ast

    from biobench.probes import make_probe

    name, *assignments = spec.split(":")
    params = {key: ast.literal_eval(value)
              for key, value in (item.split("=", 1) for item in assignments)}
    if name == "logreg@today":
        return make_probe("logreg", **{**TODAY, **params})
    if name == "linear_head":
        params.setdefault("max_steps", linear_head_steps)
    if name in ("torch_logreg", "linear_head", "simpleshot", "knn"):
        params.setdefault("device", "cpu")
    return make_probe(name, **params)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_one(args: dict) -> dict:
    """Run in a fresh process: data, imports, then one fit measured for time and peak RSS."""
    import gc
    import logging

    # the probes' progress (torch_logreg: one line per C) goes to stderr, the result to stdout
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="    %(message)s")

    import torch  # noqa: F401  (imported before the baseline: every probe pays it alike)

    from biobench.metrics import macro_f1

    n, k = args["n"], args["classes"]
    X, y = synthetic_features(n + args["n_test"], k, conditioning=args["conditioning"],
                              seed=args["seed"])
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    probe = build_probe(args["probe"], args["linear_head_steps"])
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
    baseline = _rss_kib("VmRSS")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe.fit(Xtr, ytr)
    fit_s = time.perf_counter() - started
    peak = _rss_kib("VmHWM")
    started = time.perf_counter()
    pred = probe.predict(Xte)
    predict_s = time.perf_counter() - started
    out = {"fit_s": fit_s, "predict_s": predict_s, "peak_mib": (peak - baseline) / 1024,
           "macro_f1": macro_f1(yte, pred)}
    for attr in ("C_", "n_iter_", "converged_"):
        if hasattr(probe, attr):
            out[attr] = np.asarray(getattr(probe, attr)).tolist()
    if hasattr(probe, "path_n_iter_"):
        out["path_iterations"] = int(np.maximum(probe.path_n_iter_, 0).sum())
    return out


def run_measurement(args: dict, timeout_s: float) -> dict:
    command = [sys.executable, __file__, "--measure-one", json.dumps(args)]
    # stderr (progress, errors) passes through, so a long measurement shows where it is
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout_s:.0f} s"}
    if done.returncode != 0 or not done.stdout.strip():
        return {"error": f"failed (exit {done.returncode}; its error is above)"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_exponent(xs, ts) -> float | None:
    """Slope of log(time) against log(x): time ~ x^slope."""
    xs, ts = np.asarray(xs, float), np.asarray(ts, float)
    if len(np.unique(xs)) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def section_probes(opts) -> None:
    sizes = parse_sizes(opts.sizes)
    print(f"\n== probes: fit time, peak memory above baseline, test macro-F1 "
          f"(synthetic {opts.conditioning}-conditioned {DIM}-d, {opts.n_test} test rows; "
          f"linear_head at {opts.linear_head_steps} steps) ==")
    print(f"load average at start: {load_average()} (2 cores, shared)")
    results: dict[tuple[str, int, int], dict] = {}
    header = f"{'probe':<14}{'n x classes':>14}{'fit s':>10}{'peak MiB':>10}{'macro-F1':>10}  notes"
    print(header)
    for n, k in sizes:
        for probe in opts.probes.split(","):
            r = run_measurement({"probe": probe, "n": n, "classes": k, "n_test": opts.n_test,
                                 "conditioning": opts.conditioning, "seed": opts.seed,
                                 "linear_head_steps": opts.linear_head_steps},
                                opts.timeout)
            results[(probe, n, k)] = r
            if "error" in r:
                print(f"{probe:<14}{f'{n}x{k}':>14}  {r['error']}", flush=True)
                continue
            notes = " ".join(f"{a}={r[a]}" for a in ("C_", "converged_", "path_iterations")
                             if a in r)
            print(f"{probe:<14}{f'{n}x{k}':>14}{r['fit_s']:>10.1f}{r['peak_mib']:>10.0f}"
                  f"{r['macro_f1']:>10.3f}  {notes}", flush=True)
    print(f"load average at end: {load_average()}")
    extrapolate(results, opts)


def extrapolate(results: dict, opts) -> None:
    """Growth exponents in n (fixed classes) and classes (fixed n), and time at real sizes."""
    print("\n-- growth exponents (time ~ n^a at fixed classes, ~ classes^b at fixed n) and "
          "extrapolation to the real tasks --")
    print(f"GPU column: CPU time / {GPU_SPEEDUP}, an ASSUMED speed-up for matrix work, not a "
          f"measurement. 'CPU ok' = under {FEASIBLE_CPU_S // 60} min on this 2-core CPU.")
    ok = {key: r for key, r in results.items() if "error" not in r}
    for probe in opts.probes.split(","):
        points = [(n, k, r["fit_s"]) for (p, n, k), r in ok.items() if p == probe]
        if len(points) < 2:
            continue
        # a: from the largest class count that has several n; b: from the largest n
        by_k: dict[int, list] = {}
        by_n: dict[int, list] = {}
        for n, k, t in points:
            by_k.setdefault(k, []).append((n, t))
            by_n.setdefault(n, []).append((k, t))
        a_rows = max((v for v in by_k.values() if len(v) > 1), key=len, default=[])
        b_rows = by_n[max(by_n)]
        a = growth_exponent(*zip(*a_rows)) if a_rows else None
        b = growth_exponent(*zip(*b_rows)) if len(b_rows) > 1 else None
        if probe == "linear_head":
            # a fixed number of steps on batches of 2,048: time does not grow with n
            a = 0.0
        n0, k0, t0 = max(points, key=lambda p: (p[0] * p[1], p[0]))
        a_txt = f"{a:.2f}" if a is not None else "n/a"
        b_txt = f"{b:.2f}" if b is not None else "n/a"
        print(f"{probe}: a = {a_txt}, b = {b_txt} (anchor {n0}x{k0}: {t0:.1f} s)")
        if a is None or b is None:
            continue
        for task, (n, k) in REAL_TASKS.items():
            t = t0 * (n / n0) ** a * (k / k0) ** b
            if probe == "linear_head":
                t *= 10_000 / opts.linear_head_steps  # the protocol's 10,000 steps
            verdict = "CPU ok" if t < FEASIBLE_CPU_S else (
                "GPU" if t / GPU_SPEEDUP < FEASIBLE_CPU_S else "GPU, > 1 h even there")
            print(f"    {task:<30} CPU {fmt_seconds(t):>10}   GPU~{fmt_seconds(t / GPU_SPEEDUP):>9}"
                  f"   {verdict}")


def fmt_seconds(t: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if t >= size:
            return f"{t / size:.1f} {unit}"
    return f"{t:.1f} s"


# ---- gap section ------------------------------------------------------------------------------
def section_gap(opts) -> None:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.utils.class_weight import compute_class_weight

    from biobench.probes import DEFAULT_C_GRID
    from biobench.torch_probes import logistic_objective, logistic_path, native_bfloat16

    # the probe's own choice on this machine (matmul="auto"): a bfloat16 first stage where
    # the CPU multiplies bfloat16 in hardware
    matmul = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    (n, k), = parse_sizes(opts.gap_size)
    grid = sorted(DEFAULT_C_GRID)
    sklearn_tols = [float(t) for t in opts.sklearn_tols.split(",")]
    print(f"\n== gap: objective of each fit along the warm-started C path on fold 0, relative "
          f"to a tightly converged float64 fit ({n} x {k}, {DIM}-d) ==")
    print("(f - f*) / f* in %, f = sum of class-weighted losses + ||W||^2 / (2C); "
          f"load average {load_average()}")
    for conditioning in ("well", "ill"):
        X, y = synthetic_features(n, k, conditioning=conditioning, seed=opts.seed)
        # as both probes do: standardise on all training rows, balanced weights over all rows,
        # fold 0 of the shuffled stratified 5-fold split
        Xs = (X - X.mean(0)) / X.std(0)
        classes, y_index = np.unique(y, return_inverse=True)
        weights = compute_class_weight("balanced", classes=classes, y=y)[y_index]
        fit_rows = next(iter(StratifiedKFold(5, shuffle=True, random_state=0).split(Xs, y)))[0]
        Xf, yf, wf = Xs[fit_rows], y_index[fit_rows], weights[fit_rows]
        Xf64 = Xf.astype(np.float64)
        started = time.perf_counter()
        tight = [logistic_objective(Xf64, yf, wf, coef, intercept, C) for C, (coef, intercept, *_)
                 in zip(grid, logistic_path(Xf64, yf, wf, grid, tol=1e-4, max_iter=20000,
                                            dtype="float64"))]
        print(f"\n[{conditioning}-conditioned] tight reference: {time.perf_counter() - started:.0f} s")
        print(f"{'fit':<24}{'time s':>8}  " + " ".join(f"{c:>7.3g}" for c in grid))
        print(f"{'f* (C)':<24}{'':>8}  " + " ".join(f"{f:>7.3g}" for f in tight))
        rows = []
        for tol in sklearn_tols:
            model = LogisticRegression(warm_start=True, tol=tol, max_iter=opts.sklearn_max_iter,
                                       class_weight=dict(zip(range(k), compute_class_weight(
                                           "balanced", classes=classes, y=y))))
            gaps, iters = [], []
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for C in grid:  # LogisticRegressionCV's path: ascending C, warm started
                    model.set_params(C=C).fit(Xf64, yf)
                    iters.append(int(np.max(model.n_iter_)))
                    f = logistic_objective(Xf64, yf, wf, model.coef_, model.intercept_, C)
                    gaps.append(f)
            rows.append((f"logreg tol={tol:g}", time.perf_counter() - started, gaps, iters))
        for tol in [float(t) for t in opts.torch_tols.split(",")]:
            started = time.perf_counter()
            fits = logistic_path(Xf, yf, wf, grid, tol=tol, matmul=matmul)  # as the probe
            seconds = time.perf_counter() - started
            rows.append((f"torch_logreg tol={tol:g} {matmul}", seconds,
                         [logistic_objective(Xf64, yf, wf, coef, intercept, C)
                          for C, (coef, intercept, *_) in zip(grid, fits)],
                         [fit[2] for fit in fits]))
        for name, seconds, objectives, iters in rows:
            rel = [100 * (f - t) / t for f, t in zip(objectives, tight)]
            print(f"{name:<24}{seconds:>8.1f}  " + " ".join(f"{g:>7.2g}" for g in rel)
                  + f"   worst {max(rel):.2g}%")
            print(f"{'  iterations':<24}{'':>8}  " + " ".join(f"{i:>7d}" for i in iters))


# ---- reference search section -----------------------------------------------------------------
def section_reference(opts) -> None:
    from sklearn.linear_model import LogisticRegression

    (n, k), = parse_sizes(opts.reference_size)
    X, y = synthetic_features(n, k, seed=opts.seed)
    Xs = (X - X.mean(0)) / X.std(0)
    print(f"\n== reference search: saga, 30 C ~ log-uniform(1e-3, 10) x 5 folds + refit = "
          f"151 fits, at most 1,000 epochs each ({n} x {k}) ==")
    rng = np.random.default_rng(opts.seed)
    Cs = np.exp(rng.uniform(np.log(1e-3), np.log(10), opts.reference_fits))
    epochs, seconds = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for C in Cs:
            started = time.perf_counter()
            model = LogisticRegression(C=C, solver="saga", max_iter=opts.reference_max_epochs,
                                       class_weight="balanced", random_state=0).fit(Xs, y)
            seconds.append(time.perf_counter() - started)
            epochs.append(int(np.max(model.n_iter_)))
    per_epoch = sum(seconds) / sum(epochs)
    capped = sum(e >= opts.reference_max_epochs for e in epochs)
    print(f"sampled C: {', '.join(f'{c:.3g}' for c in Cs)}")
    print(f"epochs per fit: {epochs} ({capped} stopped at the measurement's cap "
          f"{opts.reference_max_epochs}; the reference allows 1,000)")
    print(f"time per saga epoch at {n} x {k}: {per_epoch * 1e3:.1f} ms "
          f"(load average {load_average()})")
    mean_epochs = min(1000.0, float(np.mean(epochs)) if not capped else 1000.0)
    total_epochs = 151 * mean_epochs
    unit = per_epoch / (n * k)  # saga's epoch is O(n x D x classes)
    print(f"search: 151 fits x {mean_epochs:.0f} epochs = {total_epochs:,.0f} epochs")
    for task, (tn, tk) in {f"this size ({n} x {k})": (n, k), **REAL_TASKS}.items():
        t = total_epochs * unit * tn * tk
        print(f"    {task:<30} CPU {fmt_seconds(t):>10}   (saga is sequential over examples: "
              f"no GPU speed-up assumed)")


SECTIONS = {"probes": section_probes, "gap": section_gap, "reference": section_reference}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS),
                        help="run only this section (repeatable; default: all)")
    parser.add_argument("--sizes", default="2000x10,8000x10,8000x100",
                        help="probes: comma-separated NxCLASSES (default: a quick subset)")
    parser.add_argument("--probes", default="logreg@today,torch_logreg,linear_head,simpleshot,knn")
    parser.add_argument("--conditioning", choices=("well", "ill"), default="well")
    parser.add_argument("--n-test", type=int, default=4000)
    parser.add_argument("--linear-head-steps", type=int, default=500,
                        help="steps for linear_head here; extrapolations scale to 10,000")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--gap-size", default="8000x10")
    parser.add_argument("--sklearn-tols", default="1e-4,1e-6,1e-8")
    parser.add_argument("--sklearn-max-iter", type=int, default=10000)
    parser.add_argument("--torch-tols", default="0.01")
    parser.add_argument("--reference-size", default="8000x10")
    parser.add_argument("--reference-fits", type=int, default=3)
    parser.add_argument("--reference-max-epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.measure_one:
        print(json.dumps(measure_one(json.loads(opts.measure_one))))
        return
    for name in opts.only or list(SECTIONS):
        SECTIONS[name](opts)


if __name__ == "__main__":
    main()
