"""Generative zero-shot scoring: a chat VLM answers lettered multiple-choice questions (μ-Bench §5).

The prompt (``ubench_prompt``) is μ-Bench's::

    Answer with a single letter, no extra details.
    Question:<question>
    A) <option 0>
    B) <option 1>
    ...

A reply is correct iff it contains "<gold letter>) <gold option>" (case-sensitive) or its first
character is the gold letter (``is_correct``). ``chosen_index`` turns a reply into the stored
prediction so that ``chosen == answer_idx`` exactly when ``is_correct`` holds.

``answer_generative("chat:<served model>", questions, image_png)`` asks an OpenAI-compatible
endpoint (``biobench.zeroshot.chat``) one question per request, with a persistent reply cache.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from biobench.progress import stage
from biobench.zeroshot.base import (CHAT_PREFIX, LOCAL_VLM_PREFIX, MISSING, Answers,
                                    MultipleChoice, QuestionSet)
from biobench.zeroshot.chat import (PNG_SIGNATURE, ChatClient, ChatFailed, ChatReply,
                                    ChatSettings, ReplyCache, complete_all, default_cache_path,
                                    iter_requests)

PREFIX = CHAT_PREFIX
LETTERS = "ABCDEFGH"  # μ-Bench letters at most 8 options
INSTRUCTION = "Answer with a single letter, no extra details."
DEFAULT_ENDPOINT = "https://api.openai.com/v1"

# USD per million (prompt, completion) tokens, from OpenAI's price list (standard tier, 2025).
# Only an estimate: it ignores discounts for cached prompt tokens and the batch API. A served
# model not listed here (a local server, a newer model) gets no cost estimate (None).
PRICES_PER_MILLION_TOKENS: Mapping[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),  # the snapshot μ-Bench's authors could have used
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
}


def ubench_prompt(question: MultipleChoice) -> str:
    """μ-Bench's prompt for ``question``.

    The spec reads "…\\nQuestion:<question>\\n, followed by the options one per line": the
    question line ends with a newline, and we treat every option line the same way, so the
    prompt ends with a newline after the last option (each line is newline-terminated).
    """
    if len(question.options) > len(LETTERS):
        raise ValueError(f"question {question.id or question.question!r} has "
                         f"{len(question.options)} options; the generative prompt letters at most "
                         f"{len(LETTERS)} (A–H)")
    lines = [f"{LETTERS[i]}) {option}\n" for i, option in enumerate(question.options)]
    return f"{INSTRUCTION}\nQuestion:{question.question}\n" + "".join(lines)


def _option_string(question: MultipleChoice, index: int) -> str:
    return f"{LETTERS[index]}) {question.options[index]}"


def is_correct(reply: str, question: MultipleChoice) -> bool:
    """μ-Bench's rule, applied literally: the reply contains "<gold letter>) <gold option>"
    (case-sensitive) or its very first character is the gold letter.

    So "b" is not "B" and " B" (a leading space) does not match by the first-character rule;
    both count only if the reply also contains the gold option string.
    """
    gold = question.answer_idx
    return _option_string(question, gold) in reply or reply[:1] == LETTERS[gold]


def chosen_index(reply: str, question: MultipleChoice) -> int:
    """The option index the reply picks, ``MISSING`` when it picks none.

    1. A reply that ``is_correct`` chose the gold option (the spec scores it correct even when
       it also names another option, e.g. "B) x, no, A) y" with gold A).
    2. Else a first character that is an option letter (uppercase, within the options).
    3. Else the one option whose "<letter>) <option>" string the reply contains; none or
       several -> ``MISSING``.
    So ``chosen_index(r, q) == q.answer_idx`` exactly when ``is_correct(r, q)``.
    """
    if is_correct(reply, question):
        return question.answer_idx
    letters = LETTERS[:len(question.options)]
    if reply[:1] and reply[0] in letters:
        return letters.index(reply[0])
    named = [i for i in range(len(question.options)) if _option_string(question, i) in reply]
    return named[0] if len(named) == 1 else MISSING


def option_probabilities(first_token_logprobs: Sequence[tuple[str, float]],
                         n_options: int) -> np.ndarray:
    """Confidence per option from the first generated token's top log-probabilities: the
    probabilities of the tokens that are an option letter (surrounding whitespace ignored, so
    "A" and " A" add up), renormalised over the letters. All NaN when no letter is among them."""
    mass = np.zeros(n_options)
    for token, logprob in first_token_logprobs:
        letter = token.strip()
        if len(letter) == 1 and letter in LETTERS[:n_options]:
            mass[LETTERS.index(letter)] += math.exp(logprob)
    total = mass.sum()
    return mass / total if total > 0 else np.full(n_options, np.nan)


def served_model(model_name: str) -> str:
    """``chat:<served model>`` -> the served model name."""
    if not model_name.startswith(PREFIX) or not model_name[len(PREFIX):]:
        raise ValueError(f"generative model {model_name!r}: expected 'chat:<served model name>', "
                         f"e.g. 'chat:gpt-4o' or 'chat:Qwen/Qwen2-VL-7B-Instruct' for a vLLM server")
    return model_name[len(PREFIX):]


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else $BIOBENCH_CHAT_ENDPOINT, else $OPENAI_BASE_URL, else OpenAI's API."""
    return (endpoint or os.environ.get("BIOBENCH_CHAT_ENDPOINT")
            or os.environ.get("OPENAI_BASE_URL") or DEFAULT_ENDPOINT)


def estimated_cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What the tokens cost at ``PRICES_PER_MILLION_TOKENS``; None for an unlisted model."""
    prices = PRICES_PER_MILLION_TOKENS.get(model)
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def answer_generative(model_name: str, questions: QuestionSet, image_png: Callable[[int], bytes],
                      *, endpoint: str | None = None, api_key: str | None = None,
                      cache_path: Path | None = None, concurrency: int = 8, max_tokens: int = 2048,
                      temperature: float = 1.0, timeout_s: float = 60, max_retries: int = 5,
                      logprobs: bool = True, top_logprobs: int = 10, backoff_s: float = 1.0,
                      allow_failures: bool = False, progress: bool = True) -> Answers:
    """Ask ``model_name`` (``chat:<served model>``) every question, one request per question
    with the image ``image_png(example_index)`` (PNG bytes), and read the letter it picks.

    The endpoint comes from ``endpoint``, $BIOBENCH_CHAT_ENDPOINT, $OPENAI_BASE_URL, then
    OpenAI's API; the key from ``api_key`` or $OPENAI_API_KEY (none for a local server).
    Replies are cached in ``cache_path`` (default ``$BIOBENCH_HOME/chat/replies.sqlite``), so a
    rerun sends no request and a killed run resumes. Questions are sent grouped by image, so
    each image is read once. Set ``logprobs=False`` for servers that reject log-probabilities.

    A question whose request failed after every retry makes the call raise ``ChatFailed``
    (the replies received stay cached: run it again to ask only for the rest), unless
    ``allow_failures``: then it is answered ``MISSING`` and counted in ``n_failed``.

    ``Answers.extra``: ``prompt_tokens``/``completion_tokens`` summed over all replies (cached
    ones included: what the answers cost to produce), ``estimated_cost_usd`` (None for a model
    without a listed price), ``cache_hits``/``cache_misses``, ``n_unparseable`` (replies that
    pick no option), ``n_failed``, and ``option_probs`` (n_questions × 8, the first-token letter
    probabilities; NaN where absent) when ``logprobs``.
    """
    model = served_model(model_name)
    endpoint = resolve_endpoint(endpoint)
    api_key = api_key if api_key is not None else (os.environ.get("OPENAI_API_KEY") or None)
    items = questions.questions
    prompts = [ubench_prompt(q) for q in items]  # bad questions fail before any request
    settings = ChatSettings(temperature=temperature, max_tokens=max_tokens, logprobs=logprobs,
                            top_logprobs=top_logprobs)
    client = ChatClient(model, endpoint, api_key=api_key, settings=settings, timeout_s=timeout_s,
                        max_retries=max_retries, backoff_s=backoff_s)

    def checked_png(index: int) -> bytes:
        png = image_png(index)
        if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_SIGNATURE):
            raise ValueError(f"image_png({index}) (test example {index}) did not return PNG bytes "
                             f"(got {type(png).__name__} starting {bytes(png[:8])!r}); the chat "
                             f"request sends the image as a PNG data URL: encode it as PNG first")
        return bytes(png)

    order = sorted(range(len(items)), key=lambda i: (items[i].example_index, i))
    stage(f"asking {model} at {endpoint}: {len(items)} questions about {questions.n_examples} images")
    with ReplyCache(cache_path or default_cache_path()) as cache:
        run = complete_all(client, iter_requests(
            ((i, prompts[i], items[i].example_index) for i in order), checked_png),
            cache, concurrency=concurrency, total=len(items), progress=progress)

    failures = {job: reply for job, reply in run.replies.items() if isinstance(reply, ChatFailed)}
    if failures and not allow_failures:
        first = failures[min(failures)]
        raise ChatFailed(f"{len(failures)} of {len(items)} questions got no reply ({first}); the "
                         f"{len(items) - len(failures)} replies received are cached, so running "
                         f"again asks only for the rest")

    chosen = np.full(len(items), MISSING, dtype=np.int64)
    probs = np.full((len(items), len(LETTERS)), np.nan)
    prompt_tokens = completion_tokens = unparseable = 0
    for job, question in enumerate(items):
        reply = run.replies[job]
        if not isinstance(reply, ChatReply):
            continue
        prompt_tokens += reply.prompt_tokens
        completion_tokens += reply.completion_tokens
        chosen[job] = chosen_index(reply.text, question)
        unparseable += int(chosen[job] == MISSING)
        probs[job, :len(question.options)] = option_probabilities(reply.first_token_logprobs,
                                                                  len(question.options))
    if failures:
        stage(f"{len(failures)} questions to {model} got no reply and count as unanswered")
    extra = {"model": model, "endpoint": endpoint,
             "decoding": {"temperature": temperature, "max_tokens": max_tokens,
                          "logprobs": logprobs, "top_logprobs": top_logprobs if logprobs else None,
                          "image_detail": settings.image_detail},
             "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "estimated_cost_usd": estimated_cost_usd(model, prompt_tokens, completion_tokens),
             "cache_hits": run.cache_hits, "cache_misses": run.cache_misses,
             "n_unparseable": unparseable, "n_failed": len(failures)}
    if logprobs:
        extra["option_probs"] = probs
    return Answers(chosen=chosen, extra=extra)


# --- local transformers VLMs ----------------------------------------------------------------

LOCAL_PREFIX = LOCAL_VLM_PREFIX


def _letter_token_ids(tokenizer, n_options: int) -> list[list[int]]:
    """Per option letter, the vocabulary ids that spell it as one token ("A", "▁A", " A")."""
    ids: list[list[int]] = []
    for letter in LETTERS[:n_options]:
        found = {tokenizer.convert_tokens_to_ids(form) for form in (letter, "▁" + letter, "Ġ" + letter)}
        found.discard(tokenizer.unk_token_id)
        found.discard(None)
        ids.append(sorted(found))
    return ids


def answer_local(model_name: str, questions: QuestionSet, image_png: Callable[[int], bytes], *,
                 device: str = "cpu", max_new_tokens: int = 100, batch_size: int = 8,
                 progress: bool = True) -> Answers:
    """Ask a local transformers VLM (``hf-vlm:<hub repo or local folder>``, any model that
    ``AutoModelForImageTextToText`` and ``AutoProcessor`` load) every question, greedily.

    The prompt is ``ubench_prompt`` after the image, wrapped by the processor's chat template
    when it has one (else "<image token>" + prompt). Decoding is greedy with at most
    ``max_new_tokens`` new tokens (μ-Bench: CogVLM greedy, PaliGemma 100 tokens). Batches are
    left-padded. ``Answers.extra["option_probs"]`` is the softmax of the first generated
    token's logits over the option letters (μ-Bench's confidence for local models).
    Models whose chat format lives in remote code (CogVLM, Qwen-VL-Chat) are not supported here;
    serve them behind an OpenAI-compatible server and use ``answer_generative``.
    """
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from biobench.progress import progress_bar

    if not model_name.startswith(LOCAL_PREFIX) or not model_name[len(LOCAL_PREFIX):]:
        raise ValueError(f"local generative model {model_name!r}: expected "
                         f"'hf-vlm:<hub repo or local folder>'")
    source = model_name[len(LOCAL_PREFIX):]
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source).to(device).eval()
    except (OSError, ValueError) as error:
        raise ValueError(f"local generative model {model_name!r} could not be loaded ({error}); "
                         f"give a local folder or a hub repo of an image-text-to-text model") from error
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # generation continues at the right end of every row
    items = questions.questions
    prompts = [ubench_prompt(q) for q in items]

    def model_text(prompt: str) -> str:
        if getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return processor.apply_chat_template(messages, add_generation_prompt=True)
        return getattr(processor, "image_token", "<image>") + prompt

    chosen = np.full(len(items), MISSING, dtype=np.int64)
    probs = np.full((len(items), len(LETTERS)), np.nan)
    unparseable = 0
    order = sorted(range(len(items)), key=lambda i: (items[i].example_index, i))
    bar = progress_bar(total=len(items), desc=f"{source} answers", unit="q", enabled=progress)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            images = [Image.open(io.BytesIO(image_png(items[i].example_index))).convert("RGB")
                      for i in batch]
            inputs = processor(images=images, text=[model_text(prompts[i]) for i in batch],
                               return_tensors="pt", padding=True).to(device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=tokenizer.pad_token_id)
            new_tokens = out.sequences[:, inputs["input_ids"].shape[1]:]
            replies = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            first_logits = out.scores[0].float().cpu()
            for row, job in enumerate(batch):
                question = items[job]
                chosen[job] = chosen_index(replies[row], question)
                unparseable += int(chosen[job] == MISSING)
                letter_ids = _letter_token_ids(tokenizer, len(question.options))
                if all(letter_ids):
                    # a letter spelt by several tokens counts by its likeliest spelling
                    logits = torch.stack([first_logits[row, ids].max() for ids in letter_ids])
                    probs[job, :len(question.options)] = torch.softmax(logits, 0).numpy()
            bar.update(len(batch))
    bar.close()
    return Answers(chosen=chosen, extra={"model": source, "decoding": {
        "greedy": True, "max_new_tokens": max_new_tokens}, "n_unparseable": unparseable,
        "n_failed": 0, "option_probs": probs})
