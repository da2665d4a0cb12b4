"""Answer multiple-choice questions with a contrastive model: image vs option captions.

For a question about example e with options o_1..o_K:

- each option's embedding is the mean of its captions' L2-normalised text embeddings,
  normalised again (one caption for μ-Bench; a template set for BioBench class names);
- option k scores ``scale * cos(image_e, option_k)``, ``scale`` the model's similarity scale;
- the answer is the argmax (ties: the lowest index); its confidence the softmax probability
  of the chosen option. The run stores the mean confidence and the mean softmax probability
  of the gold option (μ-Bench's calibration figure).

Vectorised: every distinct caption is encoded once (through the text-embedding cache), every
distinct caption set is one option embedding, and scores are computed a block of images at a
time as ``images @ options.T`` (float64), from which each question gathers its options.
Memory is bounded by ``BLOCK_ELEMENTS`` whatever the number of questions or options.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from biobench.zeroshot.base import Answers, QuestionSet

BLOCK_ELEMENTS = 1 << 22  # similarities held at once (32 MiB of float64)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("an embedding is zero or not finite: it has no direction to compare")
    return x / norms


def option_embeddings(caption_sets: Sequence[tuple[str, ...]],
                      text_embeddings: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """One normalised embedding per caption set: the re-normalised mean of its captions'
    normalised embeddings. ``text_embeddings`` embeds a list of distinct captions."""
    captions = sorted({c for captions in caption_sets for c in captions})
    if not captions:
        raise ValueError("no captions to embed")
    row = {c: i for i, c in enumerate(captions)}
    embedded = normalize_rows(text_embeddings(captions))
    means = np.stack([embedded[[row[c] for c in captions]].mean(axis=0)
                      for captions in caption_sets])
    return normalize_rows(means)


def score_questions(questions: QuestionSet, image_features: np.ndarray,
                    option_emb: np.ndarray, option_of: np.ndarray | list, scale: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chosen, confidence, gold probability) per question.

    ``image_features`` has one row per example (``QuestionSet.n_examples``), not normalised;
    ``option_of[q]`` is the array of rows of ``option_emb`` (normalised) that are question
    q's options, in option order.
    """
    items = questions.questions
    n_q = len(items)
    chosen = np.empty(n_q, dtype=np.int64)
    confidence = np.empty(n_q)
    gold_prob = np.empty(n_q)
    if n_q == 0:
        return chosen, confidence, gold_prob
    images = normalize_rows(image_features)
    if len(images) != questions.n_examples:
        raise ValueError(f"{len(images)} image embeddings for {questions.n_examples} examples")
    example = np.array([q.example_index for q in items])
    answer = np.array([q.answer_idx for q in items])
    # questions grouped by their number of options, each group sorted by example
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, opts in enumerate(option_of):
        by_size[len(opts)].append(i)
    groups = []
    for size, members in by_size.items():
        members = np.array(members)[np.argsort(example[members], kind="stable")]
        index = np.stack([np.asarray(option_of[i]) for i in members])  # (n, size)
        groups.append((members, index, example[members]))
    block = max(1, BLOCK_ELEMENTS // max(1, len(option_emb)))
    for start in range(0, len(images), block):
        stop = min(start + block, len(images))
        sims = scale * (images[start:stop] @ option_emb.T)  # (block, n_options)
        for members, index, ex in groups:
            lo, hi = np.searchsorted(ex, [start, stop])
            if lo == hi:
                continue
            scores = sims[ex[lo:hi, None] - start, index[lo:hi]]  # (n, size)
            picked = np.argmax(scores, axis=1)  # the first maximum: ties go to the lowest index
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            rows = np.arange(hi - lo)
            q = members[lo:hi]
            chosen[q] = picked
            confidence[q] = probs[rows, picked]
            gold_prob[q] = probs[rows, answer[q]]
    return chosen, confidence, gold_prob


def answer_contrastive(questions: QuestionSet, image_features: np.ndarray,
                       text_embeddings: Callable[[list[str]], np.ndarray],
                       scale: float) -> Answers:
    """Answer every question from the examples' image embeddings (one row per example) and
    a text embedder of distinct captions (e.g. ``adapters.cached_text_embeddings``)."""
    if not scale > 0:
        raise ValueError(f"similarity scale must be positive, got {scale}")
    items = questions.questions
    if not items:
        return Answers(np.zeros(0, np.int64), {"n_questions": 0})
    # an option is its caption set; equal caption sets (a class in every question) share a row
    caption_sets = sorted({captions for q in items for captions in q.captions})
    option_row = {captions: i for i, captions in enumerate(caption_sets)}
    option_emb = option_embeddings(caption_sets, text_embeddings)
    option_of = [np.array([option_row[c] for c in q.captions]) for q in items]
    chosen, confidence, gold = score_questions(questions, image_features, option_emb,
                                               option_of, scale)
    return Answers(chosen, {
        "similarity_scale": float(scale), "n_questions": len(items),
        "n_option_caption_sets": len(caption_sets),
        "mean_confidence": float(confidence.mean()),
        "mean_gold_probability": float(gold.mean()),
    })
