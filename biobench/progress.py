"""Progress that a person sees in a terminal and in a piped log alike.

``stage(message)`` prints one time-stamped line to stderr at once (flushed), so a run whose
output goes to a log file shows where it is. ``progress_bar`` is a tqdm bar on stderr; when
stderr is not a terminal (a log file, a notebook's captured stream) it still reports, but as
plain lines no more often than every ``LOG_INTERVAL_S`` seconds instead of redrawing a bar.
"""

from __future__ import annotations

import sys
import time

LOG_INTERVAL_S = 10.0


def _is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def stage(message: str) -> None:
    """One progress line on stderr, e.g. ``[biobench 12:03:04] extracting features``."""
    print(f"[biobench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, iterable=None):
    """A tqdm bar that also reaches a piped log (plain lines, throttled)."""
    from tqdm import tqdm  # plain tqdm: tqdm.auto warns on stderr in notebooks without ipywidgets

    terminal = _is_terminal()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
                file=sys.stderr, dynamic_ncols=terminal, ascii=not terminal,
                mininterval=0.1 if terminal else LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S * 6)
