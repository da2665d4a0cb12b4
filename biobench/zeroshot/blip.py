"""BLIP image-text matching (ITM) as a zero-shot answerer: ``blip-itm:<hub repo or folder>``.

μ-Bench (spec §5, §7) scores BLIP ``Salesforce/blip-itm-base-coco`` by its image-text-matching
head rather than by embedding similarity: the text encoder reads the caption while
cross-attending to the image's patch tokens, so image and text cannot be embedded apart and
cached (unlike ``biobench.zeroshot.contrastive``). For each question about example e:

- every option caption c is paired with e's image; the pair's score is P(match), the softmax
  over the ITM head's two logits (index 1 = "match"), as ``BlipForImageTextRetrieval`` with
  ``use_itm_head=True`` gives it;
- an option with several captions (a BioBench class's template set) scores the plain mean of
  its captions' P(match) (μ-Bench options have one caption each, so this only matters for
  BioBench class-name tasks);
- the answer is the argmax over options (ties: the lowest index). ``Answers.extra`` holds the
  mean P(match) of the chosen option (``mean_confidence``; not a softmax over options) and of
  the gold option, and the number of distinct image-caption pairs scored.

Work: each distinct (example, caption) pair is scored once; pairs are ordered by example and
scored ``batch_size`` at a time, and the vision tower encodes each image once per batch (the
ITM forward re-encodes the image for every caption, the dominant cost). The ITM branch of
``BlipForImageTextRetrieval.forward`` is reproduced on those shared image tokens; the tests
check it against the model's own forward, one pair at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from biobench.backbones.info import ModelInfo
from biobench.zeroshot.base import Answers, QuestionSet
from biobench.zeroshot.base import BLIP_ITM_PREFIX, UnsuitableModel

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_BATCH_SIZE = 32  # image-caption pairs per forward
MATCH = 1  # index of "match" among the ITM head's two logits (0 = no match)
LOCAL_FORM = ("'blip-itm:/path/to/folder' (a folder written by save_pretrained with the "
              "BlipForImageTextRetrieval model and its BlipProcessor)")


def blip_source(name: str) -> str:
    """The hub repo or local folder of a ``blip-itm:`` name."""
    if not name.startswith(BLIP_ITM_PREFIX) or not name[len(BLIP_ITM_PREFIX):].strip():
        raise UnsuitableModel(f"model '{name}': expected 'blip-itm:<hub repo or local folder>' "
                              f"(e.g. 'blip-itm:Salesforce/blip-itm-base-coco')")
    return name[len(BLIP_ITM_PREFIX):]


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "~", "/")) or Path(source).expanduser().is_absolute()


def check_blip_name(name: str) -> None:
    """Fail fast (before data or torch) on an empty name or a local folder that is not there;
    a hub repo is only checked when it is loaded."""
    source = blip_source(name)
    folder = Path(source).expanduser()
    if _looks_like_path(source) and not folder.is_dir():
        raise UnsuitableModel(f"model '{name}': folder {folder} not found; give a folder "
                              f"written by save_pretrained (model and processor) or a hub "
                              f"repo such as Salesforce/blip-itm-base-coco")


def blip_model_info(name: str, *, resolution: int = 0, params: int | None = None) -> ModelInfo:
    """The models-table record of a ``blip-itm:`` model (resolution and parameter count are
    known once it is loaded)."""
    source = blip_source(name)
    return ModelInfo(name=name, display=f"{source} (BLIP ITM)", family="BLIP",
                     loader="transformers", pretrained=True, resolution=resolution,
                     params=params,
                     description="BLIP image-text matching head (BlipForImageTextRetrieval): "
                                 "each option scored by P(match) of the image and its caption")


@dataclass(frozen=True)
class BlipItm:
    """A loaded ``blip-itm:`` model: ``BlipForImageTextRetrieval`` in eval mode on ``device``
    and its ``BlipProcessor``."""

    name: str
    model: Any
    processor: Any
    device: str
    info: ModelInfo

    @property
    def max_text_tokens(self) -> int:
        """Captions are truncated to what both the tokenizer and the position table allow."""
        positions = int(self.model.config.text_config.max_position_embeddings)
        return min(positions, int(getattr(self.processor.tokenizer, "model_max_length",
                                          positions)))


def load_blip_itm(name: str, device: str = "cpu") -> BlipItm:
    """Load ``blip-itm:<hub repo or local folder>`` onto ``device``. A checkpoint that is not
    BLIP, or a BLIP without trained ITM weights (a captioning or VQA checkpoint, whose missing
    head ``from_pretrained`` would silently initialise at random), is refused."""
    import transformers

    from biobench.backbones.registry import WeightsMismatch, hub_download

    check_blip_name(name)
    source = blip_source(name)
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model '{name}': {folder} has no config.json; save the "
                                    f"model there with save_pretrained(folder)")
        source = str(folder)
    transformers.logging.set_verbosity_error()  # silence per-weight load chatter
    with hub_download(name, f"the Hugging Face hub (transformers '{source}')", LOCAL_FORM):
        config = transformers.AutoConfig.from_pretrained(source)
        if config.model_type != "blip":
            raise WeightsMismatch(
                f"model '{name}': {source} is a {config.model_type!r} model, not BLIP; "
                f"blip-itm: takes an image-text-matching checkpoint such as "
                f"Salesforce/blip-itm-base-coco (contrastive models use hf:<repo>)")
        model, loading = transformers.BlipForImageTextRetrieval.from_pretrained(
            source, output_loading_info=True)
        processor = transformers.BlipProcessor.from_pretrained(source)
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        raise WeightsMismatch(
            f"model '{name}': {source} lacks {len(missing)} trained weights of "
            f"BlipForImageTextRetrieval (e.g. {', '.join(missing[:3])}): it is not an "
            f"image-text-matching checkpoint; use one such as Salesforce/blip-itm-base-coco")
    resolution = int(model.config.vision_config.image_size)  # the vision tower's input side
    params = sum(p.numel() for p in model.parameters())
    info = blip_model_info(name, resolution=resolution, params=params)
    return BlipItm(name, model.to(device).eval(), processor, device, info)


def _distinct_pairs(questions: QuestionSet) -> tuple[list[tuple[int, str]], list[list[list[int]]]]:
    """The distinct (example, caption) pairs, ordered by example, and per question and option
    the indexes of its captions' pairs."""
    index: dict[tuple[int, str], int] = {}
    for q in questions.questions:
        for captions in q.captions:
            for caption in captions:
                index.setdefault((q.example_index, caption), len(index))
    by_example = sorted(index, key=lambda pair: (pair[0], index[pair]))
    position = {pair: i for i, pair in enumerate(by_example)}
    option_pairs = [[[position[(q.example_index, c)] for c in captions] for captions in q.captions]
                    for q in questions.questions]
    return by_example, option_pairs


def match_probabilities(blip: BlipItm, pairs: list[tuple[int, str]],
                        image_of: Callable[[int], "Image.Image"], *,
                        batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True
                        ) -> np.ndarray:
    """P(match) of every (example, caption) pair (float64), ``pairs`` ordered by example so an
    image's captions share batches; each image is read and encoded once per batch (the last
    image of a batch is carried into the next)."""
    import torch

    from biobench.progress import progress_bar

    if batch_size < 1:
        raise ValueError(f"model '{blip.name}': batch_size must be at least 1, got {batch_size}")
    model, processor = blip.model, blip.processor
    probs = np.empty(len(pairs), dtype=np.float64)
    carried: tuple[int, Any] | None = None  # (example, its image tokens) from the last batch
    bar = progress_bar(total=len(pairs), desc=f"{blip.info.display} pairs", unit="pair",
                       enabled=progress)
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            examples = list(dict.fromkeys(example for example, _ in batch))
            fresh = [e for e in examples if carried is None or e != carried[0]]
            tokens_of: dict[int, Any] = {}
            if carried is not None and carried[0] in examples:
                tokens_of[carried[0]] = carried[1]
            if fresh:
                pixels = processor(images=[image_of(e) for e in fresh],
                                   return_tensors="pt")["pixel_values"]
                pixels = pixels.to(blip.device, dtype=next(model.parameters()).dtype)
                image_tokens = model.vision_model(pixel_values=pixels).last_hidden_state
                tokens_of.update(zip(fresh, image_tokens))
            image_embeds = torch.stack([tokens_of[example] for example, _ in batch])
            text = processor(text=[caption for _, caption in batch], padding=True,
                             truncation=True, max_length=blip.max_text_tokens,
                             return_tensors="pt")
            # the ITM branch of BlipForImageTextRetrieval.forward, on shared image tokens
            hidden = model.text_encoder(
                input_ids=text["input_ids"].to(blip.device),
                attention_mask=text["attention_mask"].to(blip.device),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long,
                                                  device=image_embeds.device),
            ).last_hidden_state
            logits = model.itm_head(hidden[:, 0, :]).float()
            probs[start:start + len(batch)] = torch.softmax(logits, dim=-1)[:, MATCH].cpu().numpy()
            last = batch[-1][0]
            carried = (last, tokens_of[last])
            bar.update(len(batch))
    bar.close()
    return probs


def answer_pairs(model: str | BlipItm, questions: QuestionSet,
                 image_of: Callable[[int], "Image.Image"], *, device: str = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> Answers:
    """Answer every question with BLIP's ITM head (see the module docstring). ``model`` is a
    ``blip-itm:`` name (loaded onto ``device``) or an already loaded ``BlipItm`` (which stays
    on its own device); ``image_of(example_index)`` gives the example's PIL image."""
    from biobench.progress import stage

    blip = model if isinstance(model, BlipItm) else load_blip_itm(model, device=device)
    items = questions.questions
    if not items:
        return Answers(np.zeros(0, np.int64), {"n_questions": 0, "n_pairs": 0})
    pairs, option_pairs = _distinct_pairs(questions)
    stage(f"{blip.name}: {len(pairs)} image-caption pairs for {len(items)} questions about "
          f"{len({e for e, _ in pairs})} images")
    probs = match_probabilities(blip, pairs, image_of, batch_size=batch_size, progress=progress)
    chosen = np.empty(len(items), dtype=np.int64)
    confidence = np.empty(len(items))
    gold = np.empty(len(items))
    for i, (q, options) in enumerate(zip(items, option_pairs)):
        scores = np.array([probs[rows].mean() for rows in options])
        chosen[i] = int(np.argmax(scores))  # the first maximum: ties go to the lowest index
        confidence[i] = scores[chosen[i]]
        gold[i] = scores[q.answer_idx]
    return Answers(chosen, {
        "n_questions": len(items), "n_pairs": len(pairs),
        "mean_confidence": float(confidence.mean()),
        "mean_gold_match_probability": float(gold.mean()),
    })
