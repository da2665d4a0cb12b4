"""open_clip backbones: image-tower embeddings (``encode_image``, not L2-normalised) with the
model's own preprocessing.

Ad-hoc names:

- ``open_clip:<arch>/<tag>``        e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k`` (hub download)
- ``open_clip:hf-hub:<org>/<repo>`` e.g. ``open_clip:hf-hub:imageomics/bioclip`` (hub download)
- ``open_clip:<arch>@<file>``       a local ``.pt``/``.bin``/``.safetensors`` checkpoint
- ``open_clip:<arch>@random``       seeded random initialisation (runs offline)

Preprocessing of local files is set explicitly. open_clip otherwise gives a file the
library defaults (OpenAI mean/std), which silently mis-normalises e.g. SigLIP weights
(open_clip issue #1068). The source, in order: an ``open_clip_config.json`` next to the file
(the layout of hub repos); else the preprocessing shared by every published tag of the
architecture; else open_clip's defaults, with a warning. The choice is written into
``ModelInfo.description`` and the transform's repr, which is part of the feature-cache key.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from biobench.backbones.info import ModelInfo
from biobench.backbones.registry import (
    UnknownModel,
    WeightsMismatch,
    hub_download,
    register_alias,
    register_scheme,
    seeded,
)
from biobench.backbones.timm_models import RANDOM, split_weights

if TYPE_CHECKING:  # open_clip and torch are imported when a model is built or a name resolved
    from torch import nn

    from biobench.backbones.base import Backbone

HF_HUB = "hf-hub:"
# The preprocessing fields a checkpoint's training fixed.
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def __getattr__(name: str):
    # The encoder subclasses torch's nn.Module, so it lives in a module imported on demand.
    if name == "OpenClipImageEncoder":
        from biobench.backbones._openclip_encoder import OpenClipImageEncoder

        return OpenClipImageEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_openclip_backbone(info: ModelInfo, model_name: str, *, tag: str | None = None,
                            weights_file: str | Path | None = None, seed: int = 0,
                            preprocess: dict | None = None) -> Backbone:
    """Build ``model_name`` (an arch, or ``hf-hub:org/repo`` which carries its own weights).

    Weights: the published ``tag`` or a local ``weights_file`` (both from the arch), else a
    seeded random init. ``preprocess`` forces mean/std/interpolation/resize_mode.
    """
    import open_clip

    from biobench.backbones._openclip_encoder import OpenClipImageEncoder
    from biobench.backbones.base import Backbone

    preprocess = preprocess or {}
    kwargs = dict(
        image_mean=preprocess.get("mean"), image_std=preprocess.get("std"),
        image_interpolation=preprocess.get("interpolation"),
        image_resize_mode=preprocess.get("resize_mode"),
    )
    if tag and open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu"):
        # OpenAI-trained tags need QuickGELU; open_clip 3.x only warns when the arch lacks it.
        kwargs["force_quick_gelu"] = True
    if weights_file is not None:
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=str(weights_file), **kwargs)
        except RuntimeError as exc:
            raise WeightsMismatch(
                f"model '{info.name}': {weights_file} does not fit open_clip '{model_name}': "
                f"{str(exc).splitlines()[0][:500]}"
            ) from exc
    elif tag or model_name.startswith(HF_HUB):
        arch = "<arch>" if model_name.startswith(HF_HUB) else model_name
        local_form = (f"'open_clip:{arch}@/path/to/open_clip_model.safetensors' (with the "
                      "repo's open_clip_config.json next to the file to keep its preprocessing)")
        source = f"the Hugging Face hub (open_clip '{model_name}{'/' + tag if tag else ''}')"
        with hub_download(info.name, source, local_form):
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=tag, **kwargs)
    else:
        with seeded(seed):
            model, _, transform = open_clip.create_model_and_transforms(
                model_name, pretrained=None, pretrained_text=False, **kwargs)
    encoder = OpenClipImageEncoder(model)
    feature_dim = getattr(model.visual, "output_dim", None) or _probe_dim(encoder, transform)
    resolution = _square_side(model.visual.preprocess_cfg.get("size", info.resolution))
    info = info if info.resolution == resolution else replace(info, resolution=resolution)
    return Backbone(encoder, transform, info, int(feature_dim))


def preprocess_for_file(arch: str, weights_file: str | Path) -> tuple[dict, str]:
    """The preprocessing to force for a local checkpoint, and where it came from."""
    import open_clip

    sidecar = Path(weights_file).expanduser().with_name("open_clip_config.json")
    if sidecar.is_file():
        cfg = json.loads(sidecar.read_text()).get("preprocess_cfg", {})
        chosen = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
        if chosen:
            return chosen, f"preprocessing from {sidecar}"
    tags = open_clip.list_pretrained_tags_by_model(arch)
    variants = {
        tuple((k, _freeze(cfg.get(k))) for k in _PREPROCESS_KEYS)
        for cfg in (open_clip.get_pretrained_cfg(arch, t) for t in tags)
    }
    if len(variants) == 1:
        chosen = {k: v for k, v in next(iter(variants)) if v is not None}
        return chosen, f"preprocessing shared by all {len(tags)} published tags of {arch}"
    defaults = open_clip.transform.PreprocessCfg()
    chosen = {k: _freeze(getattr(defaults, k)) for k in _PREPROCESS_KEYS}
    why = "its published tags disagree" if tags else "it has no published tags"
    warnings.warn(
        f"open_clip '{arch}' loaded from {weights_file}: {why}, so open_clip's default "
        f"preprocessing {chosen} is used. If the checkpoint was trained otherwise, put an "
        f"open_clip_config.json with a 'preprocess_cfg' next to the file.",
        stacklevel=3,
    )
    return chosen, f"open_clip default preprocessing ({why})"


@register_scheme("open_clip")
def resolve_openclip_name(name: str, spec: str):
    import open_clip

    if spec.startswith(HF_HUB):
        repo = spec.removeprefix(HF_HUB)
        info = ModelInfo(name=name, display=f"{repo} (open_clip)", family=repo.split("/")[-1],
                         loader="open_clip", pretrained=True,
                         resolution=_cached_hub_resolution(repo),
                         description=f"open_clip weights from hf-hub:{repo}")
        return info, lambda model_info: build_openclip_backbone(model_info, spec)

    arch_tag, weights = split_weights(spec)
    arch, _, tag = arch_tag.partition("/")
    config = open_clip.get_model_config(arch)
    if config is None:
        raise UnknownModel(
            f"Unknown model '{name}': open_clip has no architecture '{arch}'. "
            f"Architectures: {', '.join(open_clip.list_models())}."
        )
    if tag and weights:
        raise UnknownModel(f"Model '{name}': give either a tag (/{tag}) or weights (@{weights})")
    if not tag and not weights:
        raise UnknownModel(
            f"Model '{name}' needs weights: open_clip:{arch}/<tag> (tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}), "
            f"open_clip:{arch}@<file> or open_clip:{arch}@random."
        )
    if tag and not open_clip.get_pretrained_cfg(arch, tag):
        raise UnknownModel(
            f"Unknown model '{name}': open_clip '{arch}' has no tag '{tag}'. Tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}."
        )
    info = ModelInfo(
        name=name, display=f"{arch_tag} (open_clip{', random init' if weights == RANDOM else ''})",
        family=arch, loader="random" if weights == RANDOM else "open_clip",
        pretrained=weights != RANDOM,
        resolution=_square_side(config["vision_cfg"].get("image_size", 224)),
        description=(f"open_clip tag {tag}" if tag else
                     "random initialisation (seed 0)" if weights == RANDOM else
                     f"local file {weights}"),
    )

    def construct(model_info: ModelInfo) -> Backbone:
        if weights == RANDOM:
            return build_openclip_backbone(model_info, arch)
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model '{name}': weights file {path} not found")
            preprocess, source = preprocess_for_file(arch, path)
            model_info = replace(model_info,
                                 description=f"local file {path}; {source}: {preprocess}")
            return build_openclip_backbone(model_info, arch, weights_file=path,
                                           preprocess=preprocess)
        return build_openclip_backbone(model_info, arch, tag=tag)

    return info, construct


def _cached_hub_resolution(repo: str) -> int:
    """Image size from a hub repo's config if it is already in the local cache, else 0
    (unknown until the first download; the built backbone carries the real value)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        path = try_to_load_from_cache(repo, "open_clip_config.json")
        if isinstance(path, str):
            config = json.loads(Path(path).read_text())
            return _square_side(config["model_cfg"]["vision_cfg"]["image_size"])
    except (ImportError, OSError, KeyError, ValueError):
        pass
    return 0


def _probe_dim(encoder: nn.Module, transform) -> int:
    import torch
    from PIL import Image

    with torch.inference_mode():
        return encoder.eval()(transform(Image.new("RGB", (64, 64))).unsqueeze(0)).shape[-1]


def _square_side(size) -> int:
    """open_clip sizes are an int or (height, width); ModelInfo records one side."""
    return int(size[-1]) if isinstance(size, (list, tuple)) else int(size)


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


# Well-known hub models for machines with network access; model_info still works offline.
register_alias(
    "bioclip", "open_clip:hf-hub:imageomics/bioclip",
    display="BioCLIP ViT-B/16 (TreeOfLife-10M)", family="BioCLIP", resolution=224,
    params=86_192_640,
)
register_alias(
    "clip_vitb16_openai", "open_clip:ViT-B-16-quickgelu/openai",
    display="CLIP ViT-B/16 (OpenAI)", family="CLIP", params=86_192_640, imagenet_top1=0.6834,
    imagenet_source="zero-shot, open_clip docs/openclip_classification_results.csv",
)
