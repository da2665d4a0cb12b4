"""Hugging Face ``transformers`` image-text models: image embeddings as backbone features.

Ad-hoc names ``hf:<repo id or local folder>``, e.g. ``hf:openai/clip-vit-base-patch32``,
``hf:vinid/plip``, ``hf:kakaobrain/align-base`` or ``hf:/path/to/saved_model`` (a folder written
by ``save_pretrained`` holding the model, its image processor and its tokenizer). The model
type is read from the folder's ``config.json``:

- ``clip`` (OpenAI CLIP, PLIP): ``CLIPModel``; features ``get_image_features`` (projected);
- ``align``: ``AlignModel``; features ``get_image_features`` (the pooled image tower).

Features are the embeddings the model compares with text, not L2-normalised, so the same
features serve probes and zero-shot scoring (``biobench.zeroshot.adapters``). The transform
is the model's own image processor (``AutoImageProcessor``); its settings are the transform's
repr, part of the feature-cache key.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biobench.backbones.info import ModelInfo
from biobench.backbones.registry import UnknownModel, hub_download, register_scheme

if TYPE_CHECKING:
    from torch import nn

    from biobench.backbones.base import Backbone

SCHEME = "hf"
# config.json model_type -> transformers model class with get_image_features/get_text_features
MODEL_CLASSES = {"clip": "CLIPModel", "align": "AlignModel"}


def _local_folder(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def _local_config(spec: str) -> dict[str, Any] | None:
    """The model's config.json when ``spec`` is a local folder or already in the hub cache."""
    folder = _local_folder(spec)
    if folder is not None:
        file = folder / "config.json"
        if not file.is_file():
            raise UnknownModel(f"model 'hf:{spec}': {folder} has no config.json; save the model "
                               f"there with save_pretrained(folder)")
        return json.loads(file.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except (ImportError, OSError, ValueError):
        pass
    return None


def _image_size(config: dict[str, Any] | None) -> int:
    size = ((config or {}).get("vision_config") or {}).get("image_size", 0)
    return int(size[-1] if isinstance(size, (list, tuple)) else size)


@register_scheme(SCHEME)
def resolve_hf_name(name: str, spec: str):
    if not spec:
        raise UnknownModel(f"model '{name}': give a hub repo or a local folder, e.g. "
                           f"hf:openai/clip-vit-base-patch32 or hf:/path/to/saved_model")
    config = _local_config(spec)
    if config is not None and config.get("model_type") not in MODEL_CLASSES:
        raise UnknownModel(
            f"model '{name}': transformers model type {config.get('model_type')!r} is not "
            f"supported; supported: {', '.join(sorted(MODEL_CLASSES))} (CLIP, PLIP, ALIGN)")
    local = _local_folder(spec) is not None
    info = ModelInfo(name=name, display=f"{Path(spec).name if local else spec} (transformers)",
                     family=(config or {}).get("model_type", "transformers").upper(),
                     loader="transformers", pretrained=True, resolution=_image_size(config),
                     description=f"transformers model from {'local folder' if local else 'hub'} "
                                 f"{spec}")
    return info, lambda model_info: build_hf_backbone(model_info, spec)


def load_hf_model(name: str, spec: str):
    """(model in eval mode, image processor, tokenizer, model type) of ``spec``."""
    import transformers

    folder = _local_folder(spec)
    source = str(folder) if folder else spec
    local_form = ("'hf:/path/to/folder' (a folder written by save_pretrained with the model, "
                  "its image processor and its tokenizer)")
    with hub_download(name, f"the Hugging Face hub (transformers '{spec}')", local_form):
        config = transformers.AutoConfig.from_pretrained(source)
        model_type = config.model_type
        if model_type not in MODEL_CLASSES:
            raise UnknownModel(
                f"model '{name}': transformers model type {model_type!r} is not supported; "
                f"supported: {', '.join(sorted(MODEL_CLASSES))} (CLIP, PLIP, ALIGN)")
        model = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(source)
        processor = transformers.AutoImageProcessor.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    return model.eval(), processor, tokenizer, model_type


def embeddings(output) -> "Any":
    """A ``get_*_features`` result as a (batch, dim) tensor: transformers 5 returns a model
    output whose ``pooler_output`` holds the embeddings, earlier versions the tensor itself."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFImageTransform:
    """PIL image -> the model's pixel tensor (C, H, W), through its own image processor.
    A module-level class, so DataLoader workers can pickle it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:  # part of the feature-cache key: every preprocessing setting
        settings = json.loads(self.processor.to_json_string())
        settings.pop("processor_class", None)
        return f"HFImageTransform({json.dumps(settings, sort_keys=True)})"


def build_hf_backbone(info: ModelInfo, spec: str, loaded=None) -> Backbone:
    """The image tower of ``spec`` as a Backbone; ``loaded`` is ``load_hf_model``'s result
    when the caller (a zero-shot adapter) also needs the text tower."""
    from biobench.backbones.base import Backbone

    model, processor, _, _ = loaded or load_hf_model(info.name, spec)
    encoder = _image_encoder_class()(model)
    transform = HFImageTransform(processor)
    dim = _feature_dim(encoder, transform)
    resolution = _image_size(model.config.to_dict()) or info.resolution
    info = info if info.resolution == resolution else replace(info, resolution=resolution)
    return Backbone(encoder, transform, info, dim)


@functools.lru_cache(maxsize=None)
def _image_encoder_class() -> type:
    """The encoder module class, made on first use: this module is imported (by model
    discovery) without torch."""
    from torch import nn

    class HFImageEncoder(nn.Module):
        """``pixel_values -> model.get_image_features(pixel_values)``."""

        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return embeddings(self.model.get_image_features(pixel_values=pixel_values))

    return HFImageEncoder


def _feature_dim(encoder: nn.Module, transform) -> int:
    import torch
    from PIL import Image

    with torch.inference_mode():
        return int(encoder.eval()(transform(Image.new("RGB", (64, 64))).unsqueeze(0)).shape[-1])
