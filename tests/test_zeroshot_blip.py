"""BLIP image-text matching (``blip-itm:``) as a zero-shot answerer: a tiny random
BlipForImageTextRetrieval saved offline, answers checked against the model's own forward one
pair at a time, a stored run, and the name checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from biobench.store import ResultsStore
from biobench.tasks import get_task
from biobench.zeroshot.base import MultipleChoice, QuestionSet

# BERT word pieces (BLIP's text tokenizer is BERT's): the special tokens, the synthetic task's
# template words ("a close-up photo of a red.") and a few more for hand-made questions
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "green",
         "blue", ".", "-", "good", "close", "up", "microscope", "image", "cell", "tissue",
         "stained", "none", "the", "above", "nucleus"]


def save_tiny_blip(folder) -> tuple[torch.nn.Module, object]:
    """A 1-layer BlipForImageTextRetrieval (hidden 16, 32-pixel images, 8-pixel patches) with
    its BlipProcessor, saved as a hub snapshot would be; returns the in-memory originals."""
    import transformers

    transformers.logging.set_verbosity_error()
    folder.mkdir(parents=True, exist_ok=True)
    text = dict(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                encoder_hidden_size=16, pad_token_id=0, bos_token_id=2, sep_token_id=3)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8)
    config = transformers.BlipConfig(text_config=text, vision_config=vision, projection_dim=8)
    torch.manual_seed(0)
    model = transformers.BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():  # larger ITM weights: option scores far apart, no near-ties
        model.itm_head.weight.mul_(20.0)
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    images = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    processor = transformers.BlipProcessor(image_processor=images, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_blip")
    model, processor = save_tiny_blip(folder)
    return f"blip-itm:{folder}", model, processor


def brute_match_probability(model, processor, image: Image.Image, caption: str) -> float:
    """P(match) from the model's own forward with the ITM head, one pair at a time."""
    inputs = processor(images=image, text=caption, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                    attention_mask=inputs["attention_mask"], use_itm_head=True)
    return float(torch.softmax(out.itm_score, dim=-1)[0, 1])


def brute_answers(model, processor, questions: QuestionSet, image_of):
    """(chosen, chosen P(match), gold P(match)) by a plain loop: each option's captions'
    P(match) averaged, the first maximum chosen."""
    chosen, confidence, gold = [], [], []
    for q in questions.questions:
        image = image_of(q.example_index)
        scores = [np.mean([brute_match_probability(model, processor, image, c) for c in caps])
                  for caps in q.captions]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # ties: lowest index
        chosen.append(best)
        confidence.append(scores[best])
        gold.append(scores[q.answer_idx])
    return chosen, confidence, gold


def random_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # sizes other than 32 x 32, so the processor's resize is part of what is compared
    return [Image.fromarray(rng.integers(0, 255, (40, 36 + 4 * i, 3), np.uint8))
            for i in range(n)]


def random_questions(n_examples: int, seed: int = 1) -> QuestionSet:
    """Two slots per example (as μ-Bench's two phrasings), 2-4 options, some options with two
    captions, a 'none of the above' caption shared by both slots (one pair, scored once)."""
    rng = np.random.default_rng(seed)
    words = ["red", "green", "blue", "cell", "tissue", "nucleus", "stained", "microscope"]
    items = []
    for example in range(n_examples):
        for slot in range(2):
            k = int(rng.integers(2, 5))
            picks = rng.choice(words, size=k, replace=False)
            captions = [tuple(f"a {w} image ." for w in [p, *rng.choice(words, size=int(
                rng.integers(0, 2)), replace=False)]) for p in picks[:-1]]
            captions.append(("none of the above .",))
            items.append(MultipleChoice(example, slot, "test", "?", tuple(picks), int(
                rng.integers(0, k)), tuple(captions), id=f"q{example}-{slot}"))
    return QuestionSet(tuple(items), n_examples, 2, ("phrasing_0", "phrasing_1"))


# ---- the scorer ------------------------------------------------------------------------------
def test_answers_equal_the_models_own_forward_pair_by_pair(tiny_blip):
    from biobench.zeroshot.blip import answer_pairs, load_blip_itm

    name, model, processor = tiny_blip
    images = random_images(5)
    questions = random_questions(len(images))
    expected_chosen, expected_conf, expected_gold = brute_answers(
        model, processor, questions, images.__getitem__)
    distinct = {(q.example_index, c) for q in questions.questions for caps in q.captions
                for c in caps}
    loaded = load_blip_itm(name)
    # batch sizes that split an image's captions over batches, and one that holds them all
    for batch_size in (1, 7, 1000):
        reads: list[int] = []

        def image_of(i: int) -> Image.Image:
            reads.append(i)
            return images[i]

        answers = answer_pairs(loaded, questions, image_of, batch_size=batch_size,
                               progress=False)
        assert answers.chosen.tolist() == expected_chosen
        assert answers.extra["mean_confidence"] == pytest.approx(np.mean(expected_conf),
                                                                 abs=1e-6)
        assert answers.extra["mean_gold_match_probability"] == pytest.approx(
            np.mean(expected_gold), abs=1e-6)
        assert answers.extra["n_pairs"] == len(distinct)
        assert sorted(reads) == list(range(len(images)))  # each image read once in all
    # not a constant answer: the check above would be weak if every question chose option 0
    assert len(set(expected_chosen)) > 1


def test_equal_captions_tie_and_the_lowest_index_wins(tiny_blip):
    from biobench.zeroshot.blip import answer_pairs

    name, model, processor = tiny_blip
    image = random_images(1)[0]
    same = ("a red cell .",)
    questions = QuestionSet((
        MultipleChoice(0, 0, "test", "?", ("x", "y"), 1, (same, same)),
        MultipleChoice(0, 1, "test", "?", ("y", "x", "z"), 0, (("a blue cell .",), same, same)),
    ), 1, 2, ("a", "b"))
    answers = answer_pairs(name, questions, lambda i: image, progress=False)
    assert answers.chosen[0] == 0
    blue, red = (brute_match_probability(model, processor, image, c)
                 for c in ("a blue cell .", same[0]))
    assert answers.chosen[1] == (0 if blue >= red else 1)  # options 1 and 2 tie: never 2
    assert answers.extra["n_pairs"] == 2


def test_no_questions_answer_nothing(tiny_blip):
    from biobench.zeroshot.blip import answer_pairs

    answers = answer_pairs(tiny_blip[0], QuestionSet((), 0, 1, ("s",)), lambda i: None,
                           progress=False)
    assert answers.chosen.shape == (0,) and answers.extra["n_pairs"] == 0


def test_loaded_model_record(tiny_blip):
    from biobench.zeroshot.blip import load_blip_itm

    name, model, _ = tiny_blip
    info = load_blip_itm(name).info
    assert info.name == name and info.family == "BLIP" and info.resolution == 32
    assert info.params == sum(p.numel() for p in model.parameters())


# ---- loading errors --------------------------------------------------------------------------
def test_a_non_blip_checkpoint_is_refused(tmp_path):
    from biobench.backbones.registry import WeightsMismatch
    from biobench.zeroshot.blip import load_blip_itm

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsMismatch, match="'bert' model, not BLIP"):
        load_blip_itm(f"blip-itm:{tmp_path}")


def test_a_blip_without_itm_weights_is_refused_not_randomly_completed(tmp_path):
    """A BlipModel checkpoint loads into BlipForImageTextRetrieval only with fresh random
    heads: refused, naming what is missing."""
    import transformers

    from biobench.backbones.registry import WeightsMismatch
    from biobench.zeroshot.blip import load_blip_itm

    _, processor = save_tiny_blip(tmp_path / "itm")
    config = transformers.BlipConfig.from_pretrained(tmp_path / "itm")
    transformers.BlipModel(config).save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    with pytest.raises(WeightsMismatch, match="not an image-text-matching checkpoint"):
        load_blip_itm(f"blip-itm:{tmp_path / 'plain'}")


def test_a_folder_without_config_is_named(tmp_path):
    from biobench.zeroshot.blip import load_blip_itm

    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_blip_itm(f"blip-itm:{tmp_path}")


def test_an_uncached_hub_repo_offline_says_how_to_get_it(monkeypatch):
    from biobench.backbones.registry import WeightsUnavailable
    from biobench.zeroshot.blip import load_blip_itm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="blip-itm:/path/to/folder"):
        load_blip_itm("blip-itm:nobody-here/blip-itm-not-cached")


# ---- names and runs --------------------------------------------------------------------------
def test_name_checks(tmp_path):
    from biobench.zeroshot.run import (UnsuitableModel, check_model_name, model_kind,
                                       zero_shot_model_info)

    assert model_kind("blip-itm:Salesforce/blip-itm-base-coco") == "pair"
    check_model_name("blip-itm:Salesforce/blip-itm-base-coco", "zero_shot")  # loaded later
    check_model_name(f"blip-itm:{tmp_path}", "zero_shot")
    with pytest.raises(UnsuitableModel, match="expected 'blip-itm:<hub repo or local folder>'"):
        check_model_name("blip-itm:", "zero_shot")
    with pytest.raises(UnsuitableModel, match="not found"):
        check_model_name(f"blip-itm:{tmp_path / 'absent'}", "zero_shot")
    with pytest.raises(UnsuitableModel, match="image-text matching model .* can only answer "
                                              "zero-shot questions"):
        check_model_name("blip-itm:Salesforce/blip-itm-base-coco", "logreg")
    info = zero_shot_model_info("blip-itm:Salesforce/blip-itm-base-coco")
    assert info.family == "BLIP" and info.loader == "transformers"


def test_probe_protocols_refuse_the_name_before_reading_data(tmp_path, tiny_blip):
    from biobench.evaluate import run_evaluation

    with pytest.raises(ValueError, match="image-text matching model"):
        run_evaluation(tiny_blip[0], "synthetic", protocol="logreg",
                       store=tmp_path / "s.sqlite")


def test_zero_shot_run_stores_the_brute_force_answers(tmp_path, tiny_blip):
    from biobench.evaluate import run_evaluation
    from biobench.images import load_image

    name, model, processor = tiny_blip
    store = ResultsStore(tmp_path / "store.sqlite")
    task = get_task("synthetic")
    result = run_evaluation(name, task, protocol="zero_shot", store=store, n_bootstrap=20,
                            batch_size=10)
    data = task.load()
    questions = task.zero_shot_questions(data)
    expected, confidence, _ = brute_answers(model, processor, questions,
                                            lambda i: load_image(data.test[i].images[0]))
    assert result.y_pred.tolist() == expected  # one label per example (a macro-F1 task)
    assert result.y_true.tolist() == task.labels_array(data.test).tolist()
    assert list(store.predictions(result.run_id)["y_pred"]) == expected
    run = store.get_run(result.key)
    assert run["extra"]["zero_shot_model_kind"] == "pair"
    assert run["extra"]["zero_shot_n_pairs"] == sum(
        len(caps) for q in questions.questions for caps in q.captions)
    assert run["extra"]["zero_shot_mean_confidence"] == pytest.approx(np.mean(confidence),
                                                                      abs=1e-6)
    record = store.models().set_index("model").loc[name]
    assert record["family"] == "BLIP" and record["resolution"] == 32
    again = run_evaluation(name, task, protocol="zero_shot", store=store, n_bootstrap=20)
    assert again.reused and again.y_pred.tolist() == expected
