"""μ-Bench's random baseline: "Shuffle the options with seed 42 and pick the first" (spec §5)."""

from __future__ import annotations

import random

import numpy as np

from biobench.zeroshot.base import Answers, QuestionSet


def answer_random(questions: QuestionSet, seed: int = 42) -> Answers:
    """For each question, shuffle its option indices and choose the first.

    Reading of the spec: one ``random.Random(seed)`` stream serves all questions, taken in the
    order of ``questions.questions``; each question shuffles the list ``[0, ..., n_options - 1]``
    with it. The answers therefore depend on the question order, and a task whose questions come
    in a fixed order gets the same answers on every run. Expected accuracy: mean of 1/n_options.
    """
    rng = random.Random(seed)
    chosen = np.empty(len(questions.questions), dtype=np.int64)
    for position, question in enumerate(questions.questions):
        order = list(range(len(question.options)))
        rng.shuffle(order)
        chosen[position] = order[0]
    return Answers(chosen=chosen, extra={"seed": seed})
