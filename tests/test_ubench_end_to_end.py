"""μ-Bench through the command line, on fixture shards in the hub's schema: the download refuses
shards that are not the pinned ones, and zero-shot runs (a random-initialised open_clip
ViT-B-32, a transformers CLIP built offline, a chat model behind a local server) store answers
that a hand recomputation reproduces question by question."""

from __future__ import annotations

import numpy as np
import pytest

from biobench.cli import main
from biobench.download import MARKER_NAME, write_marker
from biobench.images import load_image
from biobench.pages import open_store
from biobench.tasks import get_task
from tests import ubench_fixture as fx
from tests.chat_server import chat_server  # noqa: F401  (fixture)
from tests.test_ubench_data import HUB_PREFIX, local_hub, online  # noqa: F401  (fixture)
from tests.test_zeroshot_contrastive import save_tiny_hf

FINE_TASK = "ubench_acevedo_et_al_2020"


@pytest.fixture()
def ubench_data(tmp_path, monkeypatch):
    """The fixture shards as a finished download in ``$BIOBENCH_DATA/ubench``."""
    data = tmp_path / "data"
    monkeypatch.setenv("BIOBENCH_DATA", str(data))
    fx.write_fixture(data / "ubench")
    write_marker(data / "ubench", "ubench", [])
    return data / "ubench"


def stored_answers(store_path, task: str, model: str):
    store = open_store(store_path)
    runs = store.runs("own", task=task, model=model, protocol="zero_shot")
    assert len(runs) == 1
    preds = store.predictions(int(runs.iloc[0]["run_id"]))
    return runs.iloc[0], preds


def hand_contrastive_scores(model_name: str, task_name: str, root) -> dict:
    """Every question scored from the model's own embeddings, one image and one question at a
    time: cos(image, mean of the option's normalised captions) per option, by (example, slot)."""
    import torch

    from biobench.zeroshot.adapters import create_contrastive_model

    model = create_contrastive_model(model_name)
    backbone = model.image_backbone()
    task = get_task(task_name)
    data = task.load(root)
    questions = task.zero_shot_questions(data)
    scores_of = {}
    for q in questions.questions:
        image = backbone.transform(load_image(data.test[q.example_index].images[0]))
        with torch.no_grad():
            emb = backbone(image[None]).numpy()[0]
        emb = emb / np.linalg.norm(emb)
        scores = []
        for captions in q.captions:
            text = model.encode_texts(list(captions))
            text = text / np.linalg.norm(text, axis=1, keepdims=True)
            mean = text.mean(0)
            scores.append(float(emb @ (mean / np.linalg.norm(mean))))
        scores_of[q.example_index, q.slot] = np.array(scores)
    return scores_of


def test_cli_download_refuses_fixture_shards_under_the_real_pins(online, tmp_path, capsys):  # noqa: F811
    served = tmp_path / "served"
    fx.write_fixture(served / HUB_PREFIX.strip("/"))
    dest = tmp_path / "ubench"
    with local_hub(served) as server:
        status = main(["download", "ubench", "--mirror", server.url, "--data-root", str(dest)])
    err = capsys.readouterr().err
    assert status == 2
    assert "ubench-test-00000-of-00007.arrow" in err and "3d346134" in err
    assert not (dest / MARKER_NAME).exists()  # nothing left looking complete


@pytest.mark.parametrize("kind", ["open_clip", "transformers"])
def test_cli_zero_shot_run_matches_a_hand_recomputation(kind, ubench_data, tmp_path):
    if kind == "open_clip":
        model = "open_clip:ViT-B-32@random"
    else:
        save_tiny_hf(tmp_path / "clip", "clip")
        model = f"hf:{tmp_path / 'clip'}"
    store = tmp_path / "store.sqlite"
    assert main(["run", "--model", model, "--task", FINE_TASK, "--protocol", "zero_shot",
                 "--n-bootstrap", "50", "--store", str(store)]) == 0
    run, preds = stored_answers(store, FINE_TASK, model)
    scores = hand_contrastive_scores(model, FINE_TASK, ubench_data)
    chosen = np.array([np.asarray(p) for p in preds["y_pred"]])
    y_true = np.array([np.asarray(t) for t in preds["y_true"]])
    assert y_true.tolist() == [[0, 0], [1, 1], [2, 2]]  # the fixture's gold answers
    assert set(scores) == {(i, s) for i in range(3) for s in range(2)}
    for (i, slot), option_scores in scores.items():
        # the stored answer is the best option; the tiny models' word-level tokenizer maps
        # unknown words to one token, so some captions tie exactly (float noise ~1e-7 apart)
        assert option_scores[chosen[i, slot]] >= option_scores.max() - 1e-5, (i, slot)
    correct = (chosen == y_true).sum() / y_true.size
    assert run["score"] == pytest.approx(correct)
    assert run["ci_low"] <= run["score"] <= run["ci_high"]


def test_chat_run_scores_canned_replies_by_the_spec_rules(ubench_data, tmp_path, chat_server,  # noqa: F811
                                                          monkeypatch):
    """Three images, one question each: a reply by rule 2 (first letter), one by rule 1 (the
    exact "<letter>) <answer>" string after other text), one wrong: accuracy 2/3."""
    from tests.chat_server import Canned

    task = get_task(FINE_TASK)
    questions = task.generative_questions(task.load(ubench_data)).questions
    assert len({q.question for q in questions}) == 1  # one marker: replies in question order
    replies = []
    for q, how in zip(questions, ["letter", "string", "wrong"]):
        gold = "ABCDEFGH"[q.answer_idx]
        wrong = "ABCDEFGH"[(q.answer_idx + 1) % len(q.options)]
        replies.append(Canned({"letter": gold, "wrong": wrong,
                               "string": f"I think {gold}) {q.options[q.answer_idx]}"}[how]))
    chat_server.script[questions[0].question] = replies
    monkeypatch.setenv("BIOBENCH_CHAT_ENDPOINT", chat_server.url)
    store = tmp_path / "store.sqlite"
    assert main(["run", "--model", "chat:canned", "--task", FINE_TASK, "--protocol",
                 "zero_shot", "--probe-param", "concurrency=1", "--n-bootstrap", "50",
                 "--store", str(store)]) == 0
    run, preds = stored_answers(store, FINE_TASK, "chat:canned")
    assert [int(np.asarray(p).ravel()[0]) for p in preds["y_pred"]] == [
        questions[0].answer_idx, questions[1].answer_idx, (questions[2].answer_idx + 1) % 4]
    assert run["score"] == pytest.approx(2 / 3)
    assert run["ci_low"] <= run["score"] <= run["ci_high"]
    assert len(chat_server.requests) == 3
