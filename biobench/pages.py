"""What the book's pages read: the results store and the runs an analysis page is about.

Pages never compute a score the store holds; they open the store through ``open_store`` (the
one store path, ``biobench.config.store_path``, resolved from wherever the page executes) and
take the runs of one setting with ``load_own_runs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from biobench import config
from biobench.store import ResultsStore


def open_store(path: Path | str | None = None, *, must_exist: bool = False) -> ResultsStore:
    """The results store at ``path`` (default: ``config.store_path()``). With ``must_exist``
    a missing store is an error that says how to make one, instead of a new empty store."""
    path = Path(path) if path is not None else config.store_path()
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"No results store at {path}: run `make book` (or `biobench grid "
                                "configs/offline.toml`) first.")
    return ResultsStore(path)


@dataclass(frozen=True)
class OwnRuns:
    """What the analysis pages of our runs read: one protocol, seed and training-set size."""

    store: ResultsStore
    runs: pd.DataFrame  # store.runs("own", protocol=..., seed=..., n_train=...)
    models: pd.DataFrame  # store.models("own")
    tasks: list[str]  # in the store's order


def load_own_runs(protocol: str, seed: int = 0, n_train: int = -1,
                  store_path: Path | None = None,
                  probe_params: Mapping[str, Any] | None = None) -> OwnRuns:
    """The book's own runs of one setting (the probe's default hyper-parameters unless
    ``probe_params`` says otherwise); a clear error when there is nothing to analyse."""
    from biobench.evaluate import probe_params_json

    store = open_store(store_path, must_exist=True)
    runs = store.runs("own", protocol=protocol, seed=seed, n_train=n_train,
                      probe_params=probe_params_json(protocol, seed, probe_params))
    if runs.empty:
        raise LookupError(f"The store {store.path} holds no own runs with protocol={protocol!r}, "
                          f"seed={seed}, n_train={n_train}: run the grid first.")
    return OwnRuns(store, runs, store.models("own"), list(dict.fromkeys(runs["task"])))
