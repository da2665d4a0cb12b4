"""timm backbones: pooled features from ``num_classes=0`` with timm's own eval transform.

Ad-hoc names (no code change needed):

- ``timm:<name>``          pretrained weights from the hub, e.g. ``timm:convnext_tiny.fb_in22k``
- ``timm:<arch>@<file>``   a local weights file holding timm key names (.pth/.bin/.safetensors)
- ``timm:<arch>@random``   seeded random initialisation (a baseline; runs offline)

The transform always comes from the model's own data config (``resolve_model_data_config``
+ ``create_transform``), so a model never meets another model's resolution or normalisation.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from biobench.backbones.info import ModelInfo
from biobench.backbones.registry import (  # noqa: F401  (WeightsMismatch: re-exported)
    UnknownModel,
    WeightsMismatch,
    hub_download,
    register_alias,
    register_scheme,
    seeded,
)

if TYPE_CHECKING:  # timm and torch are imported when a model is built or a timm name resolved
    from torch import nn

    from biobench.backbones.base import Backbone

RANDOM = "random"  # the weights slot of ``<arch>@random``


def build_timm_backbone(info: ModelInfo, arch: str, *, weights: str | Path | None = None,
                        seed: int = 0, data_config: dict | None = None) -> Backbone:
    """Build timm ``arch`` as a pooled feature extractor.

    ``weights``: None = the pretrained tag in ``arch`` from the hub; ``"random"`` = seeded
    random init; a path = a local state dict with timm key names. ``data_config`` overrides
    the preprocessing (the offline models pin theirs from the spec).
    """
    import timm
    import timm.data

    from biobench.backbones.base import Backbone

    if weights is None:
        with hub_download(info.name, f"the Hugging Face hub (timm '{arch}')",
                          f"'timm:{arch}@/path/to/weights.safetensors'"):
            model = timm.create_model(arch, pretrained=True, num_classes=0)
    else:
        with seeded(seed):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        if weights != RANDOM:
            load_timm_weights(model, weights, model_name=info.name)
    data_config = data_config or timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**data_config, is_training=False)
    feature_dim = getattr(model, "head_hidden_size", None) or model.num_features
    return Backbone(model, transform, info, feature_dim)


def load_timm_weights(model: nn.Module, path: str | Path, *, model_name: str) -> None:
    """Load a state dict file into a timm model, strictly except for its classifier."""
    import timm.models

    path = Path(path).expanduser()
    arch = model.pretrained_cfg.get("architecture", type(model).__name__)
    if not path.is_file():
        raise FileNotFoundError(f"model '{model_name}': weights file {path} not found")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # truncated file, pickle with code objects, not a checkpoint
        raise WeightsMismatch(
            f"model '{model_name}': cannot read weights file {path} "
            f"({type(exc).__name__}: {exc}). If it is a cached conversion, delete it and retry."
        ) from exc
    if getattr(model, "num_classes", None) == 0:
        # A feature extractor has no classifier: drop the file's head, keep everything else strict.
        heads = model.pretrained_cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsMismatch(
            f"model '{model_name}': {path} does not fit timm '{arch}': "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]}). "
            f"The file must hold a state dict saved from timm.create_model('{arch}')."
        )


def split_weights(spec: str) -> tuple[str, str | None]:
    """``"arch@weights"`` -> ``("arch", "weights")``; ``"arch"`` -> ``("arch", None)``."""
    arch, sep, weights = spec.partition("@")
    if sep and not weights:
        raise UnknownModel(f"'{spec}': nothing after '@'; give a weights file or 'random'")
    return arch, (weights or None)


@register_scheme("timm")
def resolve_timm_name(name: str, spec: str):
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, weights = split_weights(spec)
    base, tag = split_model_name_tag(arch)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5)
        raise UnknownModel(
            f"Unknown model '{name}': timm has no architecture '{base}'."
            + (f" Close: {', '.join(close)}." if close else "")
            + " List them with timm.list_models('*pattern*')."
        )
    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:
        tags = timm.list_pretrained(f"{base}.*")
        raise UnknownModel(
            f"Unknown model '{name}': timm '{base}' has no pretrained tag '{tag}'. "
            f"Tags: {', '.join(tags) or 'none'}."
        ) from None
    if weights is None and not (cfg and cfg.has_weights):
        raise UnknownModel(
            f"Model '{name}': timm '{arch}' has no published weights; use "
            f"timm:{base}@<weights file> or timm:{base}@random."
        )
    resolution = cfg.input_size[-1] if cfg else 224
    if weights is None:
        source = f"timm hub weights {cfg.hf_hub_id or arch}"
    elif weights == RANDOM:
        source = "random initialisation (seed 0)"
    else:
        source = f"local file {weights}; preprocessing from timm's config for '{arch}'"
    info = ModelInfo(
        name=name, display=f"{arch} (timm{', random init' if weights == RANDOM else ''})",
        family=base, loader="random" if weights == RANDOM else "timm",
        pretrained=weights != RANDOM, resolution=resolution, description=source,
    )
    return info, lambda model_info: build_timm_backbone(model_info, arch, weights=weights)


# Well-known hub models for machines with network access; model_info still works offline.
register_alias(
    "dinov2_vits14", "timm:vit_small_patch14_dinov2.lvd142m",
    display="DINOv2 ViT-S/14 (LVD-142M)", family="DINOv2", params=22_056_192,
    imagenet_top1=0.811,
    imagenet_source="linear probe, facebookresearch/dinov2 README (Oquab et al. 2023)",
)
