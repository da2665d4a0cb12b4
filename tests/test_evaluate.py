"""One evaluation end to end on the synthetic task: store row, idempotence, resume."""

import numpy as np
import pytest

from biobench.evaluate import run_evaluation
from biobench.metrics import macro_f1
from biobench.store import ResultsStore
from biobench.tasks import get_task
from tests.tiny import tiny_backbone


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    return {"store": ResultsStore(tmp_path / "r.sqlite"), "data_root": tmp_path / "synthetic"}


def test_run_stores_a_complete_row(env):
    result = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=200, **env)
    row = env["store"].get_run(result.key)
    data = get_task("synthetic").load(env["data_root"])
    assert row["n_test"] == len(data.test) and row["n_train_used"] == len(data.train)
    assert row["score"] == pytest.approx(macro_f1(result.y_true, result.y_pred))
    assert row["ci_low"] <= row["score"] <= row["ci_high"]
    assert row["versions"]["torch"] and row["device"].startswith("cpu")
    preds = env["store"].predictions(result.run_id)
    assert sorted(preds["example_id"]) == sorted(ex.id for ex in data.test)
    # the synthetic colours are trivially separable
    assert result.score > 0.9


def test_finished_run_is_not_repeated_unless_forced(env):
    first = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=50, **env)
    bb = tiny_backbone()
    again = run_evaluation(bb, "synthetic", n_bootstrap=50, **env)
    assert again.reused and bb.net.images_seen == 0 and again.run_id == first.run_id
    np.testing.assert_array_equal(again.y_pred, first.y_pred)
    forced = run_evaluation(bb, "synthetic", n_bootstrap=50, force=True, **env)
    assert not forced.reused and len(env["store"].runs()) == 1
    assert forced.score == first.score  # deterministic


def test_killed_run_leaves_no_row_and_resumes_from_feature_cache(env, monkeypatch):
    import biobench.evaluate as evaluate_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while bootstrapping")

    monkeypatch.setattr(evaluate_module, "bootstrap_ci", killed)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=50, **env)
    assert env["store"].runs().empty
    monkeypatch.undo()
    monkeypatch.setenv("BIOBENCH_FEATURES", str(env["data_root"].parent / "features"))
    bb = tiny_backbone()
    result = run_evaluation(bb, "synthetic", n_bootstrap=50, **env)
    assert bb.net.images_seen == 0  # every feature came from the cache
    assert not result.reused and len(env["store"].runs()) == 1


def test_n_train_subsample_is_balanced_and_seeded(env):
    a = run_evaluation(tiny_backbone(), "synthetic", n_train=6, seed=1, n_bootstrap=20, **env)
    b = run_evaluation(tiny_backbone(), "synthetic", n_train=6, seed=2, n_bootstrap=20, **env)
    assert a.n_train_used == 6 and b.n_train_used == 6
    assert len(env["store"].runs()) == 2  # n_train and seed are part of the run key


def test_stored_run_is_recomputed_when_the_task_data_changed(env):
    first = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=20, **env)
    # one test image disappears: the stored run no longer describes this task
    victim = sorted((env["data_root"] / "test" / "red").glob("*.png"))[0]
    victim.unlink()
    bb = tiny_backbone()
    second = run_evaluation(bb, "synthetic", n_bootstrap=20, **env)
    assert not second.reused and second.n_test == first.n_test - 1
    assert len(env["store"].runs()) == 1  # replaced, not duplicated
    third = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=20, **env)
    assert third.reused and third.run_id == second.run_id


def test_stored_run_is_returned_when_the_data_is_gone(env):
    from biobench.tasks import TaskDataMissing
    from biobench.tasks.synthetic import Synthetic

    class DataGone(Synthetic):  # same name, but its data folder has been deleted
        def load(self, root=None):
            raise TaskDataMissing("data deleted")

    run = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=20, **env)
    again = run_evaluation(tiny_backbone(), DataGone(), n_bootstrap=20, **env)
    assert again.reused and again.run_id == run.run_id
    with pytest.raises(TaskDataMissing):  # nothing stored for this seed: the error stands
        run_evaluation(tiny_backbone(), DataGone(), seed=1, n_bootstrap=20, **env)
