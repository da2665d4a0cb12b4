"""Results store: idempotence, atomic runs, and the CLI's view of it."""

import sqlite3

import numpy as np
import pytest

from biobench.store import ModelRecord, ResultsStore, RunKey, RunRecord


def record(key, score=0.5):
    return RunRecord(key=key, metric="macro_f1", score=score, ci_low=0.4, ci_high=0.6,
                     n_test=3, versions={"torch": "x"}, extra={"per_class": {"a": 1.0}})


def test_save_and_read_back(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    key = RunKey("m", "t", "logreg")
    run_id = store.save_run(record(key), [("a", 1, 1), ("b", 0, 1), ("c", [1, 0], [1, 1])])
    assert store.has_run(key) and store.run_id(key) == run_id
    row = store.get_run(key)
    assert row["score"] == 0.5 and row["extra"] == {"per_class": {"a": 1.0}}
    preds = store.predictions(run_id)
    assert list(preds["example_id"]) == ["a", "b", "c"]  # saved order
    assert preds["y_true"].tolist() == [1, 0, [1, 0]]
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_same_key_twice_is_refused_unless_replaced(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    key = RunKey("m", "t", "logreg")
    store.save_run(record(key), [("a", 1, 1)])
    with pytest.raises(sqlite3.IntegrityError):
        store.save_run(record(key, 0.9), [("a", 1, 1)])
    assert store.get_run(key)["score"] == 0.5
    new_id = store.save_run(record(key, 0.9), [("a", 1, 0)], replace=True)
    assert len(store.runs()) == 1 and store.get_run(key)["score"] == 0.9
    assert store.predictions(new_id)["y_pred"].tolist() == [0]
    with sqlite3.connect(tmp_path / "r.sqlite") as con:  # old predictions cascaded away
        assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1


def test_failure_mid_write_leaves_no_run(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    key = RunKey("m", "t", "logreg")

    def predictions():
        yield ("a", 1, 1)
        raise KeyboardInterrupt  # the run is killed while predictions are written

    with pytest.raises(KeyboardInterrupt):
        store.save_run(record(key), predictions())
    assert not store.has_run(key)
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0


def test_numpy_values_and_models_table(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    key = RunKey("m", "t", "knn", seed=np.int64(2).item())
    store.save_run(record(key), [("a", np.int64(1), np.array([0, 1]))])
    assert store.predictions(store.run_id(key))["y_pred"].tolist() == [[0, 1]]
    store.save_models([ModelRecord("own", "m", family="CNN", imagenet_top1=0.75)])
    store.save_models([ModelRecord("own", "m", family="CNN", imagenet_top1=0.76)])
    models = store.models("own")
    assert len(models) == 1 and models.iloc[0]["imagenet_top1"] == 0.76


def test_runs_filtering(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.save_run(record(RunKey("m1", "t1", "logreg")))
    store.save_run(record(RunKey("m2", "t1", "logreg")))
    store.save_run(record(RunKey("m1", "t2", "logreg", source="published")))
    assert len(store.runs("own")) == 2
    assert store.runs(task="t1", model="m2")["model"].tolist() == ["m2"]
    assert store.delete_runs("published") == 1
