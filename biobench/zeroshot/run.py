"""The ``zero_shot`` protocol: a task's questions answered by a model, as a run's matrices.

Model kinds, by name:

- ``chat:<served model>``: a generative model behind a chat endpoint
  (``biobench.zeroshot.generative``), asked the task's ``generative_questions`` when it has
  them (μ-Bench asks a chat model once per image), else its ``zero_shot_questions``;
- ``hf-vlm:<repo or folder>``: a generative model run locally with ``transformers``
  (``biobench.zeroshot.generative.answer_local``), asked the same way;
- ``random``: μ-Bench's random baseline (``biobench.zeroshot.baseline``);
- ``blip-itm:<repo or folder>``: a BLIP image-text-matching model (``biobench.zeroshot.blip``),
  kind "pair": every (image, option caption) pair scored together by its ITM head, so nothing
  is cached; asked the task's ``zero_shot_questions``, as contrastive models are;
- anything else: a contrastive model (``biobench.zeroshot.adapters``): image embeddings from
  the feature pipeline (and its cache), caption embeddings from the text cache.

``answer_task`` returns what ``run_evaluation`` stores: ``y_true``/``y_pred`` the question
matrices (n_examples, n_slots), -1 where no question (or no readable answer). A task with a
single slot whose metric is not ``question_accuracy`` (a BioBench task scored zero-shot from
its class names) stores one label per example, 1-D, like its probe runs, so its own metric
(macro-F1, accuracy) scores it and the runs compare directly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from biobench.backbones.info import ModelInfo
from biobench.zeroshot.base import (  # noqa: F401  (the names and error are re-exported)
    BLIP_ITM_PREFIX, CHAT_PREFIX, LOCAL_VLM_PREFIX, RANDOM_BASELINE, ZERO_SHOT, Answers,
    QuestionSet, UnsuitableModel)

ModelKind = Literal["generative", "random", "contrastive", "pair"]
# how a probe refusal names each kind without image features
_NO_FEATURES = {"generative": "generative model", "random": "baseline",
                "pair": "image-text matching model (it scores image-caption pairs)"}


def model_kind(name: str) -> ModelKind:
    if name.startswith((CHAT_PREFIX, LOCAL_VLM_PREFIX)):
        return "generative"
    if name.startswith(BLIP_ITM_PREFIX):
        return "pair"
    if name == RANDOM_BASELINE:
        return "random"
    return "contrastive"


def check_model_name(name: str, protocol: str) -> None:
    """Fail fast on a model name the protocol cannot use (before any data is read)."""
    from biobench.backbones import model_info

    kind = model_kind(name)
    if protocol != ZERO_SHOT:
        if kind != "contrastive":
            raise UnsuitableModel(
                f"model '{name}' is a {_NO_FEATURES[kind]}"
                f" with no image features: it can only answer zero-shot questions (protocol "
                f"'{ZERO_SHOT}'), not be scored with the probe '{protocol}'")
        model_info(name)
        return
    if kind == "generative":
        if not name.split(":", 1)[1]:
            raise UnsuitableModel(f"model '{name}': expected 'chat:<served model name>' (e.g. "
                                  f"'chat:gpt-4o') or 'hf-vlm:<hub repo or local folder>'")
        return
    if kind == "random":
        return
    if kind == "pair":
        from biobench.zeroshot.blip import check_blip_name

        check_blip_name(name)
        return
    from biobench.zeroshot.adapters import is_contrastive_name

    model_info(name)  # an unknown name fails with the registry's list
    if not is_contrastive_name(name):
        raise UnsuitableModel(
            f"model '{name}' has no text tower here, so it cannot answer zero-shot questions: "
            f"use an open_clip:... or hf:... name (e.g. open_clip:ViT-B-32/openai, "
            f"hf:openai/clip-vit-base-patch32), 'blip-itm:<hub repo or folder>' (BLIP image-text "
            f"matching), 'chat:<served model>' or 'random'")


def zero_shot_model_info(name: str) -> ModelInfo:
    """The models-table record of a generative model, of the random baseline or of a
    ``blip-itm:`` model (whose loaded record, from ``blip.load_blip_itm``, adds its
    resolution and parameter count)."""
    if model_kind(name) == "pair":
        from biobench.zeroshot.blip import blip_model_info

        return blip_model_info(name)
    if model_kind(name) == "random":
        return ModelInfo(name=name, display="random baseline", family="baseline",
                         loader="baseline", pretrained=False, resolution=0,
                         description="μ-Bench's random baseline: options shuffled with seed "
                                     "42, the first chosen")
    scheme, served = name.split(":", 1)
    if scheme + ":" == LOCAL_VLM_PREFIX:
        return ModelInfo(name=name, display=f"{served} (local)", family=served,
                         loader="transformers", pretrained=True, resolution=0,
                         description="generative vision-language model run with transformers")
    return ModelInfo(name=name, display=f"{served} (chat)", family=served, loader="chat",
                     pretrained=True, resolution=0,
                     description="generative model behind an OpenAI-compatible chat endpoint")


@dataclass(frozen=True)
class ZeroShotOutcome:
    """What a zero-shot run stores: kept examples, the answer matrices, what was skipped."""

    example_ids: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    info: ModelInfo
    n_skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def keep_examples(questions: QuestionSet, kept: list[int]) -> QuestionSet:
    """The questions about the ``kept`` examples (positions in the test list), renumbered."""
    from dataclasses import replace

    new_index = {old: new for new, old in enumerate(kept)}
    return QuestionSet(tuple(replace(q, example_index=new_index[q.example_index])
                             for q in questions.questions if q.example_index in new_index),
                       len(kept), questions.n_slots, questions.slot_names)


def _png_of(example) -> bytes:
    """The example's first image as PNG bytes (a clip's first frame)."""
    from biobench.images import load_image

    buffer = io.BytesIO()
    load_image(example.images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def answer_task(model, task, data, *, device: str = "cpu", batch_size: int | None = None,
                cache: bool = True, skip_unreadable: bool = False,
                options: dict[str, Any] | None = None) -> ZeroShotOutcome:
    """Answer ``task``'s questions about ``data.test`` with ``model`` (a name, or a
    ``ContrastiveModel``). ``options`` go to the generative answerer (endpoint, ...); the
    contrastive, pair and random kinds take none."""
    from biobench.zeroshot.adapters import ContrastiveModel

    options = dict(options or {})
    name = model.name if isinstance(model, ContrastiveModel) else model
    kind = "contrastive" if isinstance(model, ContrastiveModel) else model_kind(name)
    if kind != "generative" and options:
        raise ValueError(f"model '{name}' ({kind}) takes no zero-shot options; got "
                         f"{', '.join(sorted(options))}")
    test = data.test
    if kind == "generative":
        from biobench.zeroshot.generative import answer_generative, answer_local

        ask = getattr(task, "generative_questions", None)
        questions = ask(data) if ask is not None else task.zero_shot_questions(data)
        if name.startswith(LOCAL_VLM_PREFIX):
            answers = answer_local(name, questions, lambda i: _png_of(test[i]), device=device,
                                   **options)
        else:
            answers = answer_generative(name, questions, lambda i: _png_of(test[i]), **options)
        return _outcome(task, questions, answers, [ex.id for ex in test],
                        zero_shot_model_info(name), kind)
    questions = task.zero_shot_questions(data)
    if kind == "pair":
        from biobench.images import load_image
        from biobench.zeroshot.blip import DEFAULT_BATCH_SIZE, answer_pairs, load_blip_itm

        blip = load_blip_itm(name, device=device)
        answers = answer_pairs(blip, questions, lambda i: load_image(test[i].images[0]),
                               batch_size=batch_size or DEFAULT_BATCH_SIZE)
        return _outcome(task, questions, answers, [ex.id for ex in test], blip.info, kind)
    if kind == "random":
        from biobench.zeroshot.baseline import answer_random

        return _outcome(task, questions, answer_random(questions), [ex.id for ex in test],
                        zero_shot_model_info(name), kind)
    return _answer_contrastive_task(model, task, questions, test, device=device,
                                    batch_size=batch_size, cache=cache,
                                    skip_unreadable=skip_unreadable)


def _answer_contrastive_task(model, task, questions, test, *, device, batch_size, cache,
                             skip_unreadable) -> ZeroShotOutcome:
    from biobench.features import extract_features
    from biobench.progress import stage
    from biobench.zeroshot.adapters import (ContrastiveModel, cached_text_embeddings,
                                            create_contrastive_model)
    from biobench.zeroshot.contrastive import answer_contrastive

    if not isinstance(model, ContrastiveModel):
        stage(f"building contrastive model {model}")
        model = create_contrastive_model(model, device=device)
    backbone = model.image_backbone()
    stage(f"image embeddings of {len(test)} test examples ({task.name})")
    features = extract_features(backbone, test, task_name=task.name, split="test",
                                pooling=task.pooling, batch_size=batch_size, device=device,
                                cache=cache, skip_unreadable=skip_unreadable,
                                precision=task.feature_precision)
    position = {ex.id: i for i, ex in enumerate(test)}
    kept = [position[i] for i in features.ids]
    questions = keep_examples(questions, kept)
    hits = []

    def embed(texts: list[str]) -> np.ndarray:
        rows, n_hits = cached_text_embeddings(model, texts, cache=cache)
        hits.append(n_hits)
        return rows

    stage(f"answering {len(questions.questions)} questions with {model.name}")
    answers = answer_contrastive(questions, np.asarray(features.x), embed,
                                 model.similarity_scale)
    extra = {"text_cache_hits": int(sum(hits)), "feature_precision": features.precision,
             "feature_batch_size": features.batch_size}
    return _outcome(task, questions, answers, list(features.ids), backbone.info, "contrastive",
                    n_skipped=features.n_skipped, skipped_files=features.skipped_files,
                    extra=extra)


def _outcome(task, questions: QuestionSet, answers: Answers, example_ids: list[str],
             info: ModelInfo, kind: ModelKind, *, n_skipped: int = 0, skipped_files: list[str] | None = None,
             extra: dict[str, Any] | None = None) -> ZeroShotOutcome:
    y_true = questions.y_true()
    y_pred = questions.fill(np.asarray(answers.chosen))
    if questions.n_slots == 1 and task.metric_name != "question_accuracy":
        y_true, y_pred = y_true[:, 0], y_pred[:, 0]  # one label per example, as probe runs
    answer_extra = {k: v for k, v in answers.extra.items() if _is_scalar(v)}
    return ZeroShotOutcome(example_ids, y_true, y_pred, info, n_skipped, list(skipped_files or []),
                           {"zero_shot_model_kind": kind,
                            "zero_shot_slots": list(questions.slot_names),
                            "zero_shot_questions": len(questions.questions),
                            **{f"zero_shot_{k}": v for k, v in answer_extra.items()},
                            **(extra or {})})


def _is_scalar(value: Any) -> bool:
    """Answers' figures kept in the run's extras (per-question arrays are left out)."""
    return value is None or isinstance(value, (bool, int, float, str, np.generic))
