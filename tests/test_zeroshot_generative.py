"""Generative zero-shot scoring against a fake chat server, μ-Bench's prompt and scoring rules,
and the random baseline."""

from __future__ import annotations

import base64
import io
import math
import random
import time

import numpy as np
import pytest
from PIL import Image

from biobench.zeroshot.base import MISSING, MultipleChoice, QuestionSet
from biobench.zeroshot.baseline import answer_random
from biobench.zeroshot.chat import (ChatFailed, ChatRequestError, ChatReply, ReplyCache,
                                    retry_after_seconds)
from biobench.zeroshot.generative import (answer_generative, chosen_index, is_correct,
                                          option_probabilities, resolve_endpoint, ubench_prompt)
from tests.chat_server import Canned, chat_server  # noqa: F401  (fixture)

OPTIONS = ("cat", "dog", "none of the above")  # gold: B) dog in most tests


def question(text: str, options=OPTIONS, answer_idx: int = 1, example_index: int = 0,
             slot: int = 0, id: str = "") -> MultipleChoice:
    return MultipleChoice(example_index=example_index, slot=slot, kind="domain", question=text,
                          options=tuple(options), answer_idx=answer_idx,
                          captions=tuple((o,) for o in options), id=id)


def question_set(*questions: MultipleChoice) -> QuestionSet:
    n_slots = max(q.slot for q in questions) + 1
    return QuestionSet(questions=tuple(questions),
                       n_examples=max(q.example_index for q in questions) + 1,
                       n_slots=n_slots, slot_names=tuple(f"s{i}" for i in range(n_slots)))


def png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (index * 40 % 256, 10, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def ask(chat_server, tmp_path):
    """answer_generative against the fake server with tiny timeouts and back-offs."""
    def run(questions: QuestionSet, **overrides):
        options = dict(endpoint=chat_server.url, cache_path=tmp_path / "replies.sqlite",
                       backoff_s=0.01, timeout_s=2.0, max_retries=3, progress=False,
                       concurrency=4)
        options.update(overrides)
        return answer_generative(options.pop("model", "chat:test-vlm"), questions, png, **options)
    return run


# --- prompt and scoring rules -------------------------------------------------------------

def test_prompt_is_exactly_the_ubench_prompt():
    q = question("What is shown?", options=("a cat", "a dog", "none of the above"))
    assert ubench_prompt(q) == ("Answer with a single letter, no extra details.\n"
                                "Question:What is shown?\n"
                                "A) a cat\nB) a dog\nC) none of the above\n")


def test_prompt_letters_up_to_eight_options_and_refuses_more():
    eight = question("q", options=[f"o{i}" for i in range(8)], answer_idx=0)
    assert ubench_prompt(eight).splitlines()[-1] == "H) o7"
    nine = question("q", options=[f"o{i}" for i in range(9)], answer_idx=0, id="acevedo/17/classification")
    with pytest.raises(ValueError, match="acevedo/17/classification.*9 options.*A–H"):
        ubench_prompt(nine)


GOLD_B = question("q")  # options cat / dog / none of the above, gold B) dog


@pytest.mark.parametrize("reply, correct, chosen", [
    ("The answer is B) dog.", True, 1),           # rule 1 only (first character "T")
    ("B", True, 1),                               # rule 2 only
    ("B) dog", True, 1),                          # both rules
    ("C", False, 2),                              # neither: a wrong letter
    ("A) cat", False, 0),                         # neither: the wrong option string
    ("I think A) cat", False, 0),                 # one wrong option string, first char no letter
    ("b", False, MISSING),                        # lowercase is not the letter B
    (" B", False, MISSING),                       # first character is a space: rule 2 fails
    (" B) dog", True, 1),                         # ... but rule 1 still holds
    ("", False, MISSING),                         # empty reply
    ("B) Dog", True, 1),                          # rule 2 (first char B); rule 1 is case-sensitive
    ("Answer: b) dog", False, 0),                 # rule 1 is case-sensitive; first char "A" picks A
    ("A) cat or C) none of the above", False, 0),  # first char A wins over two option strings
    ("maybe A) cat or C) none of the above", False, MISSING),  # two wrong option strings
    ("A) cat, no: B) dog", True, 1),              # contains the gold string: correct, chose gold
    ("D", False, MISSING),                        # a letter beyond the options
])
def test_scoring_rules(reply, correct, chosen):
    assert is_correct(reply, GOLD_B) is correct
    assert chosen_index(reply, GOLD_B) == chosen


def test_stored_prediction_matches_correctness_for_random_replies():
    """chosen == gold exactly when is_correct, over replies built from the pieces that matter."""
    pieces = ["A", "B", "C", "D", "b", " ", "A) cat", "B) dog", "C) none of the above",
              "B) Dog", "x", ")", "\n"]
    rng = random.Random(0)
    for gold in range(3):
        q = question("q", answer_idx=gold)
        for _ in range(3000):
            reply = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
            assert (chosen_index(reply, q) == gold) == is_correct(reply, q), reply


def test_option_probabilities_from_first_token_logprobs():
    top = (("B", math.log(0.6)), (" A", math.log(0.2)), ("A", math.log(0.1)),
           ("The", math.log(0.05)), ("D", math.log(0.05)))  # D is beyond 3 options
    np.testing.assert_allclose(option_probabilities(top, 3), [0.3 / 0.9, 0.6 / 0.9, 0.0])
    assert np.isnan(option_probabilities((("The", -0.1),), 3)).all()


def test_endpoint_defaults_follow_the_environment(monkeypatch):
    monkeypatch.delenv("BIOBENCH_CHAT_ENDPOINT", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert resolve_endpoint() == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-base/v1")
    assert resolve_endpoint() == "http://openai-base/v1"
    monkeypatch.setenv("BIOBENCH_CHAT_ENDPOINT", "http://biobench/v1")
    assert resolve_endpoint() == "http://biobench/v1"
    assert resolve_endpoint("http://given/v1") == "http://given/v1"


def test_retry_after_reads_seconds_and_dates():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    in_past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_seconds(in_past) == 0.0


# --- the chat endpoint ----------------------------------------------------------------------

def test_request_body_and_answers_by_rule(chat_server, ask, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    chat_server.script = {"rule1": [Canned("The answer is B) dog")],
                          "rule2": [Canned("B, because it barks")],
                          "both": [Canned("B) dog")],
                          "neither": [Canned("C) none of the above")]}
    qs = question_set(question("rule1?", example_index=0, slot=0),
                      question("rule2?", example_index=0, slot=1),
                      question("both?", example_index=1, slot=0),
                      question("neither?", example_index=1, slot=1))
    answers = ask(qs)
    assert answers.chosen.tolist() == [1, 1, 1, 2]
    assert answers.extra["n_unparseable"] == 0 and answers.extra["n_failed"] == 0

    body = chat_server.requests_for("rule2")[0]
    assert body["model"] == "test-vlm"
    assert body["temperature"] == 1.0 and body["max_tokens"] == 2048
    assert body["logprobs"] is True and body["top_logprobs"] == 10
    text, image = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user"
    assert text == {"type": "text", "text": ubench_prompt(qs.questions[1])}
    assert image["image_url"]["detail"] == "high"
    prefix = "data:image/png;base64,"
    assert image["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image["image_url"]["url"][len(prefix):]) == png(0)
    assert all(h["Authorization"] == "Bearer sk-test" for h in chat_server.headers)


def test_logprobs_can_be_switched_off(chat_server, ask):
    answers = ask(question_set(question("q")), logprobs=False)
    assert "logprobs" not in chat_server.requests[0] and "top_logprobs" not in chat_server.requests[0]
    assert "option_probs" not in answers.extra


def test_token_totals_cost_and_confidence(chat_server, ask):
    chat_server.script = {"alpha": [Canned("B", prompt_tokens=1000, completion_tokens=3,
                                         top_logprobs=(("B", math.log(0.75)), ("A", math.log(0.25))))],
                          "beta": [Canned("A", prompt_tokens=500, completion_tokens=7)]}
    answers = ask(question_set(question("alpha"), question("beta", slot=1)), model="chat:gpt-4o")
    assert answers.extra["prompt_tokens"] == 1500 and answers.extra["completion_tokens"] == 10
    # gpt-4o: $2.50 per million prompt tokens, $10 per million completion tokens
    assert answers.extra["estimated_cost_usd"] == pytest.approx((1500 * 2.5 + 10 * 10) / 1e6)
    np.testing.assert_allclose(answers.extra["option_probs"][0, :3], [0.25, 0.75, 0.0])
    assert np.isnan(answers.extra["option_probs"][1]).all()  # no logprobs in that reply
    assert ask(question_set(question("alpha"))).extra["estimated_cost_usd"] is None  # unlisted model


def test_empty_or_null_content_is_unparseable(chat_server, ask):
    chat_server.script = {"empty": [Canned("")], "null": [Canned(None)]}
    answers = ask(question_set(question("empty"), question("null", slot=1)))
    assert answers.chosen.tolist() == [MISSING, MISSING]
    assert answers.extra["n_unparseable"] == 2 and answers.extra["n_failed"] == 0


def test_timeout_then_retry_succeeds(chat_server, ask):
    chat_server.script = {"slow": [Canned("B", delay_s=0.6), Canned("B")]}
    answers = ask(question_set(question("slow")), timeout_s=0.2)
    assert answers.chosen.tolist() == [1]
    assert len(chat_server.requests_for("slow")) == 2


def test_429_waits_for_retry_after_then_succeeds(chat_server, ask):
    chat_server.script = {"busy": [Canned(status=429, headers={"Retry-After": "1"}), Canned("B")]}
    started = time.perf_counter()
    answers = ask(question_set(question("busy")))
    assert time.perf_counter() - started >= 1.0  # the back-off alone would be ~0.01 s
    assert answers.chosen.tolist() == [1]
    assert len(chat_server.requests_for("busy")) == 2


@pytest.mark.parametrize("first", [Canned(status=500), Canned(status=503),
                                   Canned(raw_body=b'{"choices": [ {"mess'),
                                   Canned(omit_choices=True)],
                         ids=["500", "503", "malformed-json", "no-choices"])
def test_transient_failure_then_success(chat_server, ask, first):
    chat_server.script = {"flaky": [first, Canned("The answer is B) dog")]}
    answers = ask(question_set(question("flaky")))
    assert answers.chosen.tolist() == [1]
    assert len(chat_server.requests_for("flaky")) == 2


def test_bad_request_fails_at_once_naming_model_and_endpoint(chat_server, ask):
    chat_server.script = {"bad": [Canned(status=400)]}
    with pytest.raises(ChatRequestError, match=r"'test-vlm' at http://127\.0\.0\.1:\d+/v1/chat/"
                                               r"completions refused.*HTTP 400.*logprobs=False"):
        ask(question_set(question("bad")))
    assert len(chat_server.requests_for("bad")) == 1  # no retry


def test_wrong_route_is_a_clear_404(chat_server, ask):
    with pytest.raises(ChatRequestError, match="HTTP 404.*ends in /v1"):
        ask(question_set(question("q")), endpoint=chat_server.url.removesuffix("/v1"))


def test_exhausted_retries_raise_or_count_as_failed(chat_server, ask):
    chat_server.script = {"broken": [Canned(raw_body=b"<html>bad gateway</html>")]}
    qs = question_set(question("broken"), question("fine", slot=1))
    with pytest.raises(ChatFailed, match=r"1 of 2 questions got no reply.*4 attempts.*unreadable"):
        ask(qs, max_retries=3)
    assert len(chat_server.requests_for("broken")) == 4
    answers = ask(qs, max_retries=0, allow_failures=True)
    assert answers.chosen.tolist() == [MISSING, 0]  # default server reply "A"
    assert answers.extra["n_failed"] == 1 and answers.extra["n_unparseable"] == 0


def test_unreachable_server_fails_after_retries(ask):
    with pytest.raises(ChatFailed, match="connection failed"):
        ask(question_set(question("q")), endpoint="http://127.0.0.1:9/v1", max_retries=1)


def test_cache_makes_a_rerun_free_and_resumes_a_partial_run(chat_server, ask, tmp_path):
    chat_server.script = {"late": [Canned(status=500), Canned("C")]}
    qs = question_set(*(question(f"q{i}", example_index=i) for i in range(5)),
                      question("late", example_index=5))
    # first run: "late" fails (no retries), the other five replies are cached
    first = ask(qs, max_retries=0, allow_failures=True)
    assert first.extra["n_failed"] == 1 and first.extra["cache_misses"] == 6
    sent = len(chat_server.requests)
    second = ask(qs)  # resumes: asks only for the question that failed
    assert len(chat_server.requests) == sent + 1
    assert second.extra["cache_hits"] == 5 and second.extra["cache_misses"] == 1
    third = ask(qs)
    assert len(chat_server.requests) == sent + 1  # nothing sent
    assert third.extra["cache_hits"] == 6 and third.extra["cache_misses"] == 0
    np.testing.assert_array_equal(third.chosen, second.chosen)
    assert third.chosen.tolist() == [0, 0, 0, 0, 0, 2]
    assert third.extra["prompt_tokens"] == second.extra["prompt_tokens"] == 600
    # a different decoding setting or a different image is a different request
    ask(qs, temperature=0.0)
    assert len(chat_server.requests) == sent + 1 + 6
    with ReplyCache(tmp_path / "replies.sqlite") as cache:
        assert len(cache) == 12


def test_cache_is_keyed_on_image_content(chat_server, tmp_path):
    qs = question_set(question("q"))
    options = dict(endpoint=chat_server.url, cache_path=tmp_path / "c.sqlite", progress=False)
    answer_generative("chat:m", qs, png, **options)
    answer_generative("chat:m", qs, lambda i: png(i + 1), **options)
    answer_generative("chat:m", qs, png, **options)
    assert len(chat_server.requests) == 2


def test_requests_run_concurrently_and_each_image_is_read_once(chat_server, tmp_path):
    chat_server.default = Canned("A", delay_s=0.05)
    reads: list[int] = []

    def counting_png(index: int) -> bytes:
        reads.append(index)
        return png(index)

    # questions of one image are interleaved with another's: still one read per image
    qs = question_set(*(question(f"q{i}", example_index=i % 4, slot=i // 4) for i in range(12)))
    answers = answer_generative("chat:m", qs, counting_png, endpoint=chat_server.url,
                                concurrency=4, progress=False, cache_path=tmp_path / "c.sqlite")
    assert answers.chosen.tolist() == [0] * 12
    assert sorted(reads) == [0, 1, 2, 3]
    assert chat_server.max_in_flight > 1


def test_one_request_at_a_time_when_concurrency_is_one(chat_server, ask):
    chat_server.default = Canned("A", delay_s=0.02)
    ask(question_set(*(question(f"q{i}", example_index=i) for i in range(5))), concurrency=1)
    assert chat_server.max_in_flight == 1 and len(chat_server.requests) == 5


def test_bad_inputs_are_named(ask):
    with pytest.raises(ValueError, match="'gpt-4o'.*chat:<served model name>"):
        answer_generative("gpt-4o", question_set(question("q")), png)
    with pytest.raises(ValueError, match=r"image_png\(0\).*did not return PNG bytes.*encode it as PNG"):
        answer_generative("chat:m", question_set(question("q")), lambda i: b"\xff\xd8\xff\xe0JFIF",
                          endpoint="http://127.0.0.1:9/v1", progress=False)


def test_chat_reply_round_trips_through_json():
    reply = ChatReply("B", 3, 1, (("B", -0.1), (" A", -2.5)), "stop")
    assert ChatReply.from_json(reply.to_json()) == reply


# --- random baseline ------------------------------------------------------------------------

def test_random_baseline_matches_an_independent_recomputation():
    rng = random.Random(7)
    qs = question_set(*(question(f"q{i}", options=[f"opt{i}-{j}" for j in range(rng.randint(2, 8))],
                                 answer_idx=0, example_index=i) for i in range(300)))
    # shuffle the option strings themselves with a fresh seeded stream and look the first up
    stream = random.Random(42)
    expected = []
    for q in qs.questions:
        shuffled = list(q.options)
        stream.shuffle(shuffled)
        expected.append(q.options.index(shuffled[0]))
    answers = answer_random(qs)
    assert answers.chosen.tolist() == expected
    assert answers.extra == {"seed": 42}
    assert answer_random(qs, seed=1).chosen.tolist() != expected


def test_random_baseline_accuracy_is_near_chance():
    n = 6000
    qs = question_set(*(question(f"q{i}", options=[f"o{j}" for j in range(2 + i % 3)],
                                 answer_idx=i % (2 + i % 3), example_index=i) for i in range(n)))
    correct = answer_random(qs).chosen == np.array([q.answer_idx for q in qs.questions])
    chance = np.mean([1 / len(q.options) for q in qs.questions])  # (1/2 + 1/3 + 1/4) / 3
    sd = math.sqrt(sum((1 / len(q.options)) * (1 - 1 / len(q.options)) for q in qs.questions)) / n
    assert abs(correct.mean() - chance) < 4 * sd


# --- local transformers VLM -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    """A random LLaVA (1-layer CLIP vision tower, 1-layer Llama) with a character-level
    tokenizer and a plain chat template, saved to a folder: built offline in about a second.
    Its output layer only speaks the letters A–H, so replies pick options (or letters beyond
    them) and the test sees real choices, not only unparseable replies."""
    import string

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}
    for char in string.printable:
        vocab.setdefault(char, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.decoder = decoders.Fuse()  # join characters back without spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2),
        image_token_index=vocab["<image>"])
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llava")
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        letters = [vocab[c] for c in "ABCDEFGH"]
        head = model.lm_head.weight
        head[letters] *= 50  # sharp but input-dependent letter preferences
        head[[i for i in range(len(vocab)) if i not in letters]] = 0
    model.save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32}),
                   tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=template).save_pretrained(folder)
    return str(folder)


def test_local_vlm_matches_a_direct_unbatched_reference(tiny_llava):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from biobench.zeroshot.generative import LETTERS, answer_local

    qs = question_set(*(question(f"Which one? {i}", options=[f"kind {j}" for j in range(4 + i % 5)],
                                 answer_idx=i % 4, example_index=i % 3, slot=i // 3) for i in range(7)))
    answers = answer_local(f"hf-vlm:{tiny_llava}", qs, png, max_new_tokens=4, batch_size=3,
                           progress=False)

    processor = AutoProcessor.from_pretrained(tiny_llava)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    for job, q in enumerate(qs.questions):
        text = "<image>" + ubench_prompt(q)  # the template puts the image first, then the text
        inputs = processor(images=[Image.open(io.BytesIO(png(q.example_index)))], text=[text],
                           return_tensors="pt")
        with torch.inference_mode():
            sequence = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            last_logits = model(**inputs).logits[0, -1]
        reply = processor.tokenizer.decode(sequence[0, inputs["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
        assert answers.chosen[job] == chosen_index(reply, q), (job, reply)
        letter_ids = [processor.tokenizer.convert_tokens_to_ids(c) for c in LETTERS[:len(q.options)]]
        expected = torch.softmax(last_logits[letter_ids], 0).numpy()
        np.testing.assert_allclose(answers.extra["option_probs"][job, :len(q.options)], expected,
                                   rtol=1e-4, atol=1e-6)
    assert answers.extra["n_unparseable"] == int((answers.chosen == MISSING).sum())


def test_local_vlm_names_a_bad_model(tmp_path):
    from biobench.zeroshot.generative import answer_local

    with pytest.raises(ValueError, match="hf-vlm:"):
        answer_local("llava", question_set(question("q")), png)
    with pytest.raises(ValueError, match=f"'hf-vlm:{tmp_path}' could not be loaded"):
        answer_local(f"hf-vlm:{tmp_path}", question_set(question("q")), png)
