"""The zero-shot contract: tasks produce ``MultipleChoice`` questions, models answer them.

A question is about one test example (``example_index`` into ``TaskData.test``): the bootstrap
resamples examples (images), never questions, because the questions about one image are not
independent (μ-Bench asks 5 coarse questions and 1 fine-grained one of every image, and
contrastive scoring asks each in two phrasings).

Every question belongs to a ``slot`` (a column of the stored answer matrix): a task with
``n_slots`` slots stores ``y_true``/``y_pred`` of shape (n_examples, n_slots), ``-1`` where an
example has no question in that slot (a null μ-Bench question). Accuracy pools the non-missing
cells (``biobench.metrics`` ``question_accuracy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

MISSING = -1  # a slot without a question (y_true) or without an answer (y_pred: unparseable)

ZERO_SHOT = "zero_shot"  # the protocol's name
# model names that are not image backbones (``biobench.zeroshot.run`` dispatches on them)
CHAT_PREFIX = "chat:"
LOCAL_VLM_PREFIX = "hf-vlm:"
BLIP_ITM_PREFIX = "blip-itm:"
RANDOM_BASELINE = "random"


class UnsuitableModel(ValueError):
    """The model cannot be scored with the requested protocol (a chat model with a probe, an
    image-only backbone zero-shot); the message says which names can."""


@dataclass(frozen=True)
class MultipleChoice:
    """One multiple-choice question about test example ``example_index``.

    ``options`` are the answers as text (what a generative model reads); ``captions`` holds,
    per option, the sentences a contrastive model compares with the image (their normalised
    embeddings are averaged: one sentence for μ-Bench, a template set for BioBench class
    names). ``kind`` is the question type ("domain", ..., "classification").
    """

    example_index: int
    slot: int
    kind: str
    question: str
    options: tuple[str, ...]
    answer_idx: int
    captions: tuple[tuple[str, ...], ...]
    id: str = ""

    def __post_init__(self):
        if not 0 <= self.answer_idx < len(self.options):
            raise ValueError(f"question {self.id or self.question!r}: answer index "
                             f"{self.answer_idx} outside its {len(self.options)} options")
        if len(self.captions) != len(self.options):
            raise ValueError(f"question {self.id or self.question!r}: {len(self.captions)} "
                             f"caption sets for {len(self.options)} options")


@dataclass(frozen=True)
class QuestionSet:
    """All questions of a task's test split, with the answer-matrix shape they fill."""

    questions: tuple[MultipleChoice, ...]
    n_examples: int
    n_slots: int
    slot_names: tuple[str, ...]

    def y_true(self) -> np.ndarray:
        y = np.full((self.n_examples, self.n_slots), MISSING, dtype=np.int64)
        for q in self.questions:
            y[q.example_index, q.slot] = q.answer_idx
        return y

    def fill(self, answers: Sequence[int]) -> np.ndarray:
        """The (n_examples, n_slots) matrix of ``answers`` (one per question, in order)."""
        if len(answers) != len(self.questions):
            raise ValueError(f"{len(answers)} answers for {len(self.questions)} questions")
        y = np.full((self.n_examples, self.n_slots), MISSING, dtype=np.int64)
        for q, a in zip(self.questions, answers):
            y[q.example_index, q.slot] = a
        return y


@dataclass(frozen=True)
class Answers:
    """What a zero-shot model returns: one chosen option index per question (``MISSING`` when a
    reply could not be read), plus figures measured on the way (tokens, cost, cache hits)."""

    chosen: np.ndarray
    extra: Mapping[str, Any] = field(default_factory=dict)
