"""How long the ``biobench`` command takes to answer a wrong name or ``--help``.

    python benchmarks/cli_latency.py                 # median of 5 runs of each command
    python benchmarks/cli_latency.py --repeats 9 --importtime

Each command runs in a fresh process (``python -m biobench.cli``, the same code as the
``biobench`` script), so the figure is what a user waits for: interpreter start, imports,
argument parsing and the error message. The target is under 1 s. ``--importtime`` then runs
``python -X importtime`` on the slowest command and lists the imports that cost the most
(cumulative), to show what to make lazy. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "unknown model": ["run", "--model", "nope", "--task", "x"],
    "unknown task": ["run", "--model", "mobilenet_v2", "--task", "nope"],
    "top-level help": ["--help"],
}
HEAVY = ("torch", "timm", "open_clip", "papermill", "matplotlib", "sklearn", "pandas")


def environment() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def time_command(args: list[str], repeats: int) -> tuple[float, list[float], int]:
    """Median and all wall times (s) of ``python -m biobench.cli ARGS``; its exit status."""
    times, status = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "biobench.cli", *args], cwd=ROOT,
                              env=environment(), capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        status = done.returncode
    return statistics.median(times), times, status


def slowest_imports(args: list[str], top: int = 12) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the costliest top-level imports of one command."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "biobench.cli", *args],
                          cwd=ROOT, env=environment(), capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 3:  # the top two levels of the import tree
            rows.append((int(match.group(1)) / 1e6, match.group(3)))
    return sorted(rows, reverse=True)[:top]


def heavy_modules(args: list[str]) -> list[str]:
    """Which of the heavy libraries the command imported."""
    probe = ("import sys, runpy\n"
             f"sys.argv = ['biobench', *{args!r}]\n"
             "try:\n    runpy.run_module('biobench.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             f"print('HEAVY:', *(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environment(),
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("HEAVY:")]
    return lines[-1].split()[1:] if lines else ["(could not tell)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--importtime", action="store_true",
                        help="list the costliest imports of the slowest command")
    args = parser.parse_args()

    print(f"{'command':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'exit':>5}  heavy imports")
    slowest = (0.0, [])
    for label, argv in COMMANDS.items():
        median, times, status = time_command(argv, args.repeats)
        heavy = ", ".join(heavy_modules(argv)) or "none"
        print(f"{label:<16} {median:>9.2f} {min(times):>7.2f} {max(times):>7.2f} {status:>5}  {heavy}")
        print(f"{'':<16} biobench {' '.join(argv)}")
        slowest = max(slowest, (median, argv))
    if args.importtime:
        print(f"\ncostliest imports of `biobench {' '.join(slowest[1])}` (cumulative s):")
        for seconds, module in slowest_imports(slowest[1]):
            print(f"  {seconds:6.3f}  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
