"""SQLite results store: the one source of truth for scores.

Tables
------
``runs``         one row per finished evaluation (own or imported "published" results)
``predictions``  one row per test example of an own run: ``y_true`` and ``y_pred`` as JSON
``models``       metadata per (source, model): family, parameters, resolution, ImageNet top-1

A run is identified by its ``RunKey``: model, task, protocol, the probe's full
hyper-parameters (canonical JSON of ``get_params()``), seed and training-set size. Each row also
records the version of the scoring code that produced it (``code_version``) and, in ``extra``, the
fingerprint of the data it was computed on; ``biobench.evaluate`` reuses a stored run only while
both still match, and otherwise recomputes and replaces it.

A run and its predictions are written in one transaction, so a run killed half-way leaves no
row at all, and ``has_run`` only ever sees complete runs. The database uses WAL journalling so
that the book's analysis notebooks can read while a grid run writes.

A store written by an older schema (``PRAGMA user_version`` below ``SCHEMA_VERSION``) is moved
aside to ``<name>.v<old>.bak`` with a warning, and a new one is started: its own runs lack the
identity fields and would be recomputed anyway, and published runs are re-imported by the pages.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        INTEGER PRIMARY KEY,
    source        TEXT    NOT NULL,           -- 'own' or 'published'
    model         TEXT    NOT NULL,
    task          TEXT    NOT NULL,
    protocol      TEXT    NOT NULL,           -- probe name, e.g. 'logreg', 'simpleshot', 'knn'
    probe_params  TEXT    NOT NULL DEFAULT '{}', -- canonical JSON of the probe's get_params()
    seed          INTEGER NOT NULL,
    n_train       INTEGER NOT NULL,           -- requested; -1 means all training examples
    n_train_used  INTEGER,
    n_test        INTEGER,
    metric        TEXT    NOT NULL,
    score         REAL    NOT NULL,           -- point estimate on the full test set
    ci_low        REAL,
    ci_high       REAL,
    ci_level      REAL,
    n_bootstrap   INTEGER,
    n_skipped     INTEGER NOT NULL DEFAULT 0, -- unreadable images skipped (only if asked)
    versions      TEXT,                       -- JSON: python, torch, biobench, ...
    git_commit    TEXT,
    code_version  TEXT,                       -- hash of the scoring code (see evaluate.py)
    device        TEXT,
    wall_time_s   REAL,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    extra         TEXT,                       -- JSON: per-class F1, probe hyper-parameters, ...
    UNIQUE (source, model, task, protocol, probe_params, seed, n_train)
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id     INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    example_id TEXT    NOT NULL,
    y_true     TEXT    NOT NULL,
    y_pred     TEXT    NOT NULL,
    PRIMARY KEY (run_id, example_id)
);
CREATE TABLE IF NOT EXISTS models (
    source          TEXT NOT NULL,
    model           TEXT NOT NULL,
    display         TEXT,
    family          TEXT,
    params          INTEGER,
    resolution      INTEGER,
    imagenet_top1   REAL,                     -- fraction in [0, 1]
    imagenet_source TEXT,                     -- where that figure comes from
    extra           TEXT,
    PRIMARY KEY (source, model)
);
"""


KEY_FIELDS = ("source", "model", "task", "protocol", "probe_params", "seed", "n_train")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal settings give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)


@dataclass(frozen=True)
class RunKey:
    """What makes a run unique; a finished run with the same key is not repeated.

    ``probe_params`` is the canonical JSON (``canonical_json``) of the probe's hyper-parameters,
    so two runs of one probe with different settings are different runs.
    """

    model: str
    task: str
    protocol: str
    seed: int = 0
    n_train: int = -1
    probe_params: str = "{}"
    source: str = "own"

    def where(self) -> tuple[str, tuple]:
        """SQL condition and parameters selecting this key's row."""
        return (" AND ".join(f"{f}=?" for f in KEY_FIELDS),
                tuple(getattr(self, f) for f in KEY_FIELDS))


@dataclass
class RunRecord:
    key: RunKey
    metric: str
    score: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    n_bootstrap: int | None = None
    n_train_used: int | None = None
    n_test: int | None = None
    n_skipped: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    code_version: str | None = None
    device: str | None = None
    wall_time_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelRecord:
    source: str
    model: str
    display: str | None = None
    family: str | None = None
    params: int | None = None
    resolution: int | None = None
    imagenet_top1: float | None = None
    imagenet_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _jsonable(value: Any) -> Any:
    """numpy arrays and scalars (and tuples inside them) as plain JSON values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_json(value: Any) -> str:
    if isinstance(value, (np.ndarray, np.generic)):
        value = _jsonable(value)
    return json.dumps(value, default=_jsonable)


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._move_aside_if_old()
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _move_aside_if_old(self) -> None:
        if not self.path.is_file():
            return
        con = sqlite3.connect(self.path, timeout=60)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            has_runs = con.execute("SELECT 1 FROM sqlite_master WHERE name='runs'").fetchone()
        finally:
            con.close()
        if version >= SCHEMA_VERSION or not has_runs:
            return
        backup = self.path.with_name(f"{self.path.name}.v{version}.bak")
        for suffix in ("", "-wal", "-shm"):  # WAL files belong to the database they sit beside
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.replace(Path(f"{backup}{suffix}"))
        warnings.warn(f"The results store {self.path} was written by an older biobench (schema "
                      f"{version}, now {SCHEMA_VERSION}); it was moved to {backup} and a new store "
                      "started. Own runs are recomputed on demand; published ones re-imported.",
                      stacklevel=3)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA foreign_keys=ON")
        try:
            with con:  # commits on success, rolls back on any exception
                yield con
        finally:
            con.close()

    # ---- runs -------------------------------------------------------------------------
    def has_run(self, key: RunKey) -> bool:
        return self.run_id(key) is not None

    def run_id(self, key: RunKey) -> int | None:
        where, params = key.where()
        with self._connect() as con:
            row = con.execute(f"SELECT run_id FROM runs WHERE {where}", params).fetchone()
        return None if row is None else int(row[0])

    def save_run(
        self,
        record: RunRecord,
        predictions: Iterable[tuple[str, Any, Any]] = (),
        replace: bool = False,
    ) -> int:
        """Write a run and its ``(example_id, y_true, y_pred)`` rows in one transaction.

        With ``replace`` an existing run with the same key is deleted in that same
        transaction; without it, saving a key twice raises ``sqlite3.IntegrityError``.
        """
        with self._connect() as con:
            if replace:
                self._delete_key(con, record.key)
            return self._insert(con, record, predictions)

    def save_runs(self, records: Sequence[RunRecord], replace_source: str | None = None) -> int:
        """Write many runs without predictions in one transaction (e.g. an imported leaderboard).

        With ``replace_source`` every run of that source is deleted first, in the same
        transaction, so a re-import is all-or-nothing.
        """
        with self._connect() as con:
            if replace_source is not None:
                con.execute("DELETE FROM runs WHERE source=?", (replace_source,))
            for record in records:
                self._insert(con, record, ())
        return len(records)

    @staticmethod
    def _delete_key(con: sqlite3.Connection, k: RunKey) -> None:
        where, params = k.where()
        con.execute(f"DELETE FROM runs WHERE {where}", params)

    @staticmethod
    def _insert(con: sqlite3.Connection, record: RunRecord,
                predictions: Iterable[tuple[str, Any, Any]]) -> int:
        k = record.key
        row = {
            **{f: getattr(k, f) for f in KEY_FIELDS},
            **{f: getattr(record, f) for f in (
                "metric", "score", "ci_low", "ci_high", "ci_level", "n_bootstrap",
                "n_train_used", "n_test", "n_skipped", "git_commit", "code_version", "device",
                "wall_time_s")},
            "versions": json.dumps(record.versions, sort_keys=True),
            "extra": _to_json(record.extra),
        }
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cur = con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))
        run_id = int(cur.lastrowid)
        con.executemany(
            "INSERT INTO predictions (run_id, example_id, y_true, y_pred) VALUES (?, ?, ?, ?)",
            ((run_id, str(i), _to_json(t), _to_json(p)) for i, t, p in predictions),
        )
        return run_id

    def delete_runs(self, source: str) -> int:
        with self._connect() as con:
            return con.execute("DELETE FROM runs WHERE source=?", (source,)).rowcount

    def runs(self, source: str | None = None, **where: Any) -> pd.DataFrame:
        """Runs as a DataFrame, optionally filtered, e.g. ``runs('own', task='plankton')``."""
        clauses, params = [], []
        if source is not None:
            clauses.append("source = ?")
            params.append(source)
        for col, value in where.items():
            clauses.append(f"{col} = ?")
            params.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        with self._connect() as con:
            df = pd.read_sql_query(sql + " ORDER BY task, model, protocol, seed", con, params=params)
        for col in ("versions", "extra"):
            df[col] = df[col].map(lambda s: json.loads(s) if s else {})
        return df

    def get_run(self, key: RunKey) -> dict | None:
        df = self.runs(**{f: getattr(key, f) for f in KEY_FIELDS})
        return None if df.empty else df.iloc[0].to_dict()

    def predictions(self, run_id: int) -> pd.DataFrame:
        """Per-example rows of a run in the order they were saved; ``y_true``/``y_pred`` decoded."""
        with self._connect() as con:
            df = pd.read_sql_query(
                "SELECT example_id, y_true, y_pred FROM predictions WHERE run_id=? ORDER BY rowid",
                con, params=(run_id,),
            )
        df["y_true"] = df["y_true"].map(json.loads)
        df["y_pred"] = df["y_pred"].map(json.loads)
        return df

    # ---- models -----------------------------------------------------------------------
    def save_models(self, records: Sequence[ModelRecord], replace_source: str | None = None) -> None:
        """Insert or update model metadata; ``replace_source`` first drops that source's rows."""
        with self._connect() as con:
            if replace_source is not None:
                con.execute("DELETE FROM models WHERE source=?", (replace_source,))
            con.executemany(
                "INSERT OR REPLACE INTO models (source, model, display, family, params, resolution,"
                " imagenet_top1, imagenet_source, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.source, r.model, r.display, r.family, r.params, r.resolution,
                     r.imagenet_top1, r.imagenet_source, _to_json(r.extra))
                    for r in records
                ],
            )

    def models(self, source: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM models" + (" WHERE source = ?" if source else "") + " ORDER BY model"
        with self._connect() as con:
            df = pd.read_sql_query(sql, con, params=(source,) if source else ())
        df["extra"] = df["extra"].map(lambda s: json.loads(s) if s else {})
        return df
