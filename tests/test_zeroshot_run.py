"""The zero_shot protocol through ``run_evaluation``: stored answers, reuse, name checks."""

from __future__ import annotations

import numpy as np
import pytest

from biobench.evaluate import code_version, run_evaluation
from biobench.store import ResultsStore
from biobench.tasks import get_task
from tests.test_zeroshot_contrastive import save_tiny_hf, tiny_openclip_name  # noqa: F401


def brute_force_predictions(model, task, data) -> np.ndarray:
    """Each test image's class by a plain loop over the model's own embeddings."""
    from biobench.images import load_image

    backbone = model.image_backbone()
    questions = task.zero_shot_questions(data)
    preds = []
    for q, ex in zip(questions.questions, data.test):
        image = backbone(backbone.transform(load_image(ex.images[0])).unsqueeze(0)).numpy()[0]
        image = image / np.linalg.norm(image)
        scores = []
        for captions in q.captions:
            emb = model.encode_texts(list(captions)).astype(np.float64)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            mean = emb.mean(axis=0)
            scores.append(image @ (mean / np.linalg.norm(mean)))
        preds.append(int(np.argmax(scores)))
    return np.array(preds)


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_zero_shot_run_stores_the_models_own_answers_and_is_reused(
        tmp_path, kind, tiny_openclip_name):  # noqa: F811
    from biobench.zeroshot.adapters import create_contrastive_model

    if kind == "open_clip":
        name = tiny_openclip_name
    else:
        save_tiny_hf(tmp_path / "clip", "clip")
        name = f"hf:{tmp_path / 'clip'}"
    store = ResultsStore(tmp_path / "store.sqlite")
    task = get_task("synthetic")
    result = run_evaluation(name, task, protocol="zero_shot", store=store, n_bootstrap=50)
    assert not result.reused and result.key.protocol == "zero_shot"
    data = task.load()
    expected = brute_force_predictions(create_contrastive_model(name), task, data)
    assert result.y_pred.tolist() == expected.tolist()
    assert result.y_true.tolist() == task.labels_array(data.test).tolist()
    run = store.get_run(result.key)
    assert run["code_version"] == code_version(task, "zero_shot")
    assert 0 < run["extra"]["zero_shot_mean_confidence"] <= 1
    preds = store.predictions(result.run_id)
    assert list(preds["y_pred"]) == expected.tolist()
    again = run_evaluation(name, task, protocol="zero_shot", store=store, n_bootstrap=50)
    assert again.reused and again.run_id == result.run_id
    assert again.y_pred.tolist() == expected.tolist() and again.score == result.score


def test_multi_slot_answers_round_trip_through_the_store(tmp_path):
    """μ-Bench-like (n_examples, n_slots) matrices with missing cells, stored and read back."""
    from biobench.store import RunKey, RunRecord

    store = ResultsStore(tmp_path / "store.sqlite")
    y_true = np.array([[0, 1], [2, -1], [-1, -1]])
    y_pred = np.array([[0, -1], [1, -1], [-1, -1]])
    key = RunKey("random", "t", "zero_shot", 0, -1, "{}")
    record = RunRecord(key=key, metric="question_accuracy", score=1 / 3, ci_low=0, ci_high=1,
                       ci_level=0.95, n_bootstrap=10, n_train_used=0, n_test=3, n_skipped=0,
                       versions={}, git_commit=None, code_version="x", device="cpu",
                       wall_time_s=0.0, extra={})
    run_id = store.save_run(record, zip(["a", "b", "c"], y_true, y_pred))
    preds = store.predictions(run_id)
    assert np.array_equal(np.asarray(list(preds["y_true"])), y_true)
    assert np.array_equal(np.asarray(list(preds["y_pred"])), y_pred)


def test_random_baseline_run(tmp_path):
    from biobench.zeroshot.baseline import answer_random

    store = ResultsStore(tmp_path / "store.sqlite")
    task = get_task("synthetic")
    result = run_evaluation("random", task, protocol="zero_shot", store=store, n_bootstrap=20)
    questions = task.zero_shot_questions(task.load())
    assert result.y_pred.tolist() == answer_random(questions).chosen.tolist()
    assert store.models().set_index("model").loc["random", "family"] == "baseline"


@pytest.mark.parametrize("name", ["chat:gpt-4o", "random"])
def test_chat_and_random_are_refused_for_probes(tmp_path, name):
    with pytest.raises(ValueError, match="can only answer zero-shot questions"):
        run_evaluation(name, "synthetic", protocol="logreg", store=tmp_path / "s.sqlite")


def test_zero_shot_refused_where_the_task_has_no_class_names_and_for_n_train(tmp_path):
    from biobench.tasks import UnsupportedProtocol

    with pytest.raises(UnsupportedProtocol, match="zero_shot"):
        run_evaluation("random", "newt", protocol="zero_shot", store=tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="n_train"):
        run_evaluation("random", "synthetic", protocol="zero_shot", n_train=4,
                       store=tmp_path / "s.sqlite")


def test_a_model_without_text_tower_is_refused_for_zero_shot(tmp_path):
    with pytest.raises(ValueError, match="no text tower"):
        run_evaluation("mobilenet_v2", "synthetic", protocol="zero_shot",
                       store=tmp_path / "s.sqlite")
