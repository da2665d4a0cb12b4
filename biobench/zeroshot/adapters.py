"""Contrastive (CLIP-style) models behind one interface, ``ContrastiveModel``.

- ``image_backbone()``: a biobench ``Backbone`` whose features are the model's image embeddings
  (not normalised), with the same name, transform and features as ``create_backbone(name)``,
  so ``extract_features`` and its on-disk cache serve probes and zero-shot alike;
- ``encode_texts(texts)``: (n, dim) float32 text embeddings (not normalised);
- ``similarity_scale``: what the model multiplies cosine similarities by before the softmax.
  μ-Bench (spec §5): BiomedCLIP and QuiltNet use ``logit_scale.exp()``; HF CLIP, PLIP and
  ALIGN their ``logits_per_image`` (CLIP/PLIP ``logit_scale.exp()``, ALIGN ``1/temperature``);
  every other open_clip model (OpenCLIP, CoCa) the raw cosine, 1.0. A positive scale never
  changes the argmax, only the stored confidences.

Names: ``open_clip:...`` (the backbone scheme: ``/tag``, ``hf-hub:``, ``@file``, ``@random``)
and ``hf:<repo or folder>`` (``biobench.backbones.hf_models``: CLIPModel, AlignModel).

Text embeddings are cached on disk per model (``cached_text_embeddings``): under
``$BIOBENCH_HOME/text_embeddings/<model>/<identity>/``, keyed by the sha256 of each text, where
the identity hashes the model name, its weights' identity (a local file's size and mtime) and
the tokenizer settings; a rerun encodes nothing.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from biobench import config
from biobench.atomic import atomic_file
from biobench.names import safe_name

if TYPE_CHECKING:
    from biobench.backbones.base import Backbone

TEXT_BATCH = 256
# open_clip hub repos whose μ-Bench scores are logit-scaled (spec §5); others use raw cosine
LOGIT_SCALED_OPENCLIP_REPOS = ("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                               "wisdomik/QuiltNet-B-32")


class ContrastiveModel(abc.ABC):
    """An image-text model scored by the similarity of image and caption embeddings."""

    name: str
    similarity_scale: float
    # what, besides the name, decides the text embeddings (weights file, tokenizer settings)
    text_identity: str

    @abc.abstractmethod
    def image_backbone(self) -> Backbone:
        """The image tower as a Backbone (features = image embeddings, not normalised)."""

    @abc.abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 text embeddings (not normalised)."""


INTERP = "interp:"


def is_contrastive_name(name: str) -> bool:
    """Names whose text tower this module can reach (registered aliases such as ``bioclip``
    are not: use the ``open_clip:`` name they stand for); an interpolation of two such."""
    if name.startswith(INTERP):
        from biobench.backbones.interpolate import parse_interpolation_name

        _, base, finetuned = parse_interpolation_name(name)
        return is_contrastive_name(base) and is_contrastive_name(finetuned)
    return name.startswith(("open_clip:", "hf:"))


def create_contrastive_model(name: str, device: str = "cpu") -> ContrastiveModel:
    """The contrastive model ``name`` (``open_clip:...``, ``hf:...`` or an ``interp:`` mix of
    two of them) on ``device``."""
    if name.startswith("open_clip:"):
        return OpenClipContrastive(name, device)
    if name.startswith("hf:"):
        return HFContrastive(name, device)
    if name.startswith(INTERP) and is_contrastive_name(name):
        return InterpolatedContrastive(name, device)
    raise ValueError(
        f"model '{name}' cannot be scored zero-shot: it has no text tower here. Use an "
        f"open_clip:<arch>/<tag>, open_clip:hf-hub:<org>/<repo>, open_clip:<arch>@<file> or "
        f"hf:<repo or folder> name (CLIP, PLIP, ALIGN), 'blip-itm:<repo or folder>' for BLIP "
        f"image-text matching, 'chat:<served model>' for a chat endpoint, or 'random' for the "
        f"random baseline")


def _file_token(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _encode_in_batches(encode, texts: Sequence[str]) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), TEXT_BATCH):
            out.append(encode(list(texts[start:start + TEXT_BATCH])).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


# ---- open_clip ----------------------------------------------------------------------------------
class OpenClipContrastive(ContrastiveModel):
    """An ``open_clip:`` name, built once with both towers, weights chosen exactly as the
    ``open_clip`` backbone scheme chooses them (``biobench.backbones.openclip_models``)."""

    def __init__(self, name: str, device: str = "cpu"):
        import open_clip

        from biobench.backbones import model_info
        from biobench.backbones.openclip_models import HF_HUB

        self.name = name
        self.device = device
        info = model_info(name)  # validates the name, as the backbone scheme does
        spec = name.removeprefix("open_clip:")
        self.model, self.transform, self._info, weights_token = _build_openclip(info, spec)
        self.model = self.model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(
            spec if spec.startswith(HF_HUB) else spec.split("@")[0].split("/")[0])
        repo = spec.removeprefix(HF_HUB) if spec.startswith(HF_HUB) else None
        self.similarity_scale = float(self.model.logit_scale.exp().item()) \
            if repo in LOGIT_SCALED_OPENCLIP_REPOS else 1.0
        self.text_identity = json.dumps({
            "weights": weights_token, "open_clip": open_clip.__version__,
            "context_length": getattr(self.tokenizer, "context_length", None),
            "tokenizer": type(self.tokenizer).__name__}, sort_keys=True)

    def image_backbone(self) -> Backbone:
        from biobench.backbones._openclip_encoder import OpenClipImageEncoder
        from biobench.backbones.base import Backbone

        encoder = OpenClipImageEncoder(self.model)
        dim = getattr(self.model.visual, "output_dim", None)
        if dim is None:
            from biobench.backbones.openclip_models import _probe_dim
            dim = _probe_dim(encoder, self.transform)
        return Backbone(encoder, self.transform, self._info, int(dim)).to(self.device)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        def encode(batch):
            return self.model.encode_text(self.tokenizer(batch).to(self.device), normalize=False)

        return _encode_in_batches(encode, texts)


def _build_openclip(info, spec: str):
    """(model, transform, info, weights token) for an ``open_clip:`` spec: the same weights,
    preprocessing and ModelInfo as the scheme's constructor builds."""
    import open_clip

    from biobench.backbones.openclip_models import (HF_HUB, _square_side, preprocess_for_file)
    from biobench.backbones.registry import WeightsMismatch, hub_download, seeded
    from biobench.backbones.timm_models import RANDOM, split_weights

    kwargs: dict = {}
    if spec.startswith(HF_HUB):
        local_form = "'open_clip:<arch>@/path/to/open_clip_model.safetensors'"
        with hub_download(info.name, f"the Hugging Face hub (open_clip '{spec}')", local_form):
            model, _, transform = open_clip.create_model_and_transforms(spec)
        token = spec
    else:
        arch_tag, weights = split_weights(spec)
        arch, _, tag = arch_tag.partition("/")
        if weights == RANDOM:
            with seeded(0):
                model, _, transform = open_clip.create_model_and_transforms(
                    arch, pretrained=None, pretrained_text=False)
            token = f"{arch}@random(seed 0)"
        elif weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model '{info.name}': weights file {path} not found")
            preprocess, source = preprocess_for_file(arch, path)
            info = replace(info, description=f"local file {path}; {source}: {preprocess}")
            try:
                model, _, transform = open_clip.create_model_and_transforms(
                    arch, pretrained=str(path), image_mean=preprocess.get("mean"),
                    image_std=preprocess.get("std"),
                    image_interpolation=preprocess.get("interpolation"),
                    image_resize_mode=preprocess.get("resize_mode"))
            except RuntimeError as exc:
                raise WeightsMismatch(f"model '{info.name}': {path} does not fit open_clip "
                                      f"'{arch}': {str(exc).splitlines()[0][:500]}") from exc
            token = _file_token(path)
        else:
            if open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu"):
                kwargs["force_quick_gelu"] = True  # as the backbone scheme does
            with hub_download(info.name, f"the Hugging Face hub (open_clip '{arch_tag}')",
                              f"'open_clip:{arch}@/path/to/weights'"):
                model, _, transform = open_clip.create_model_and_transforms(
                    arch, pretrained=tag, **kwargs)
            token = arch_tag
    resolution = _square_side(model.visual.preprocess_cfg.get("size", info.resolution))
    if info.resolution != resolution:
        info = replace(info, resolution=resolution)
    return model, transform, info, token


# ---- transformers -------------------------------------------------------------------------------
class HFContrastive(ContrastiveModel):
    """An ``hf:`` name (CLIPModel: CLIP, PLIP; AlignModel: ALIGN)."""

    def __init__(self, name: str, device: str = "cpu"):
        import transformers

        from biobench.backbones import model_info
        from biobench.backbones.hf_models import _local_folder, load_hf_model

        self.name = name
        self.device = device
        spec = name.removeprefix("hf:")
        self._info = model_info(name)
        self._spec = spec
        self._loaded = load_hf_model(name, spec)
        self.model, _, self.tokenizer, self.model_type = self._loaded
        self.model = self.model.to(device)
        self.similarity_scale = _model_scale(self)  # that of its own logits_per_image
        folder = _local_folder(spec)
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder else []
        self.text_identity = json.dumps({
            "spec": spec, "files": [_file_token(p) for p in files],
            "transformers": transformers.__version__}, sort_keys=True)
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings",
                                      77))

    def image_backbone(self) -> Backbone:
        from biobench.backbones.hf_models import build_hf_backbone

        return build_hf_backbone(self._info, self._spec, self._loaded).to(self.device)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        from biobench.backbones.hf_models import embeddings

        def encode(batch):
            tokens = self.tokenizer(batch, padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()
                      if k in ("input_ids", "attention_mask")}
            return embeddings(self.model.get_text_features(**tokens))

        return _encode_in_batches(encode, texts)


# ---- weight interpolation (WiSE-FT) of two contrastive models -----------------------------------
class InterpolatedContrastive(ContrastiveModel):
    """``interp:ALPHA:BASE|FINETUNED`` of two contrastive models of one architecture: every
    tensor of both towers and the logit scale mixed (WiSE-FT mixes the whole model, and
    μ-Bench's PLIPRobust and QuiltCLIPRobust are scored zero-shot), by the rules of
    ``biobench.backbones.interpolate`` (keys and shapes checked, ends exact). BASE's tokenizer,
    preprocessing and similarity rule; its scale is read from the mixed weights."""

    def __init__(self, name: str, device: str = "cpu"):
        from biobench.backbones import model_info
        from biobench.backbones.interpolate import (StateDictSource, mix_in_place,
                                                    parse_interpolation_name)

        alpha, base_name, finetuned_name = parse_interpolation_name(name)
        self.name = name
        self._info = model_info(name)  # the mix's own name keys its cached image features
        base = create_contrastive_model(base_name, device)
        finetuned = create_contrastive_model(finetuned_name, "cpu")
        if type(base) is not type(finetuned):
            from biobench.backbones.registry import WeightsMismatch

            raise WeightsMismatch(f"cannot interpolate '{base_name}' and '{finetuned_name}': "
                                  f"one is {type(base).__name__}, the other "
                                  f"{type(finetuned).__name__}")
        mix_in_place(base.model.state_dict(), StateDictSource(finetuned.model.state_dict()),
                     alpha, base_name=base_name, finetuned_name=finetuned_name)
        self.text_identity = json.dumps({"interpolation": name, "base": base.text_identity,
                                         "finetuned": finetuned.text_identity}, sort_keys=True)
        del finetuned  # one parent's tensors alive after the mix
        self._base = base
        self.model = base.model
        self.similarity_scale = 1.0 if base.similarity_scale == 1.0 else _model_scale(base)

    def image_backbone(self) -> Backbone:
        backbone = self._base.image_backbone()
        backbone.info = replace(self._info, resolution=backbone.info.resolution)
        return backbone

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._base.encode_texts(texts)


def _model_scale(model: ContrastiveModel) -> float:
    """The logit scale of a model's current weights (ALIGN: 1 / temperature)."""
    if getattr(model, "model_type", None) == "align":
        return float(1.0 / model.model.temperature.item())
    return float(model.model.logit_scale.exp().item())


# ---- the text-embedding cache ---------------------------------------------------------------------
def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_cache_dir(model: ContrastiveModel) -> Path:
    identity = hashlib.sha256(f"{model.name}|{model.text_identity}".encode()).hexdigest()[:16]
    return config.home_dir() / "text_embeddings" / safe_name(model.name) / identity


def cached_text_embeddings(model: ContrastiveModel, texts: Sequence[str], *,
                           cache: bool = True) -> tuple[np.ndarray, int]:
    """Embeddings of ``texts`` (one row each, float32) and how many came from the cache.

    Missing texts are encoded in one call and written as one new shard (``shard-<hash>.npz``,
    atomically), so concurrent runs never corrupt each other, and a rerun encodes nothing.
    """
    texts = list(texts)
    keys = [text_key(t) for t in texts]
    stored: dict[str, np.ndarray] = {}
    folder = text_cache_dir(model)
    if cache and folder.is_dir():
        for shard in sorted(folder.glob("shard-*.npz")):
            with np.load(shard) as data:
                for key, row in zip(data["keys"], data["embeddings"]):
                    stored[str(key)] = row
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in stored}.items())
    if missing:
        encoded = np.asarray(model.encode_texts([t for _, t in missing]), dtype=np.float32)
        if encoded.shape[0] != len(missing):
            raise RuntimeError(f"model '{model.name}' returned {encoded.shape[0]} text "
                               f"embeddings for {len(missing)} texts")
        for (key, _), row in zip(missing, encoded):
            stored[key] = row
        if cache:
            shard_keys = np.array([k for k, _ in missing])
            name = hashlib.sha256("".join(shard_keys).encode()).hexdigest()[:16]
            with atomic_file(folder / f"shard-{name}.npz", suffix=".npz") as tmp:
                np.savez(tmp, keys=shard_keys, embeddings=encoded)
    hits = len(set(keys)) - len(missing)
    if not texts:
        return np.zeros((0, 0), np.float32), 0
    return np.stack([stored[k] for k in keys]).astype(np.float32), hits
