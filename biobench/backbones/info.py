"""``ModelInfo``: what the registry knows about a model without building it.

Kept apart from ``biobench.backbones.base`` (which defines the torch ``Backbone``) so that the
registry, ``biobench list models`` and name checks never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    name: str  # registry key, e.g. "efficientnet_lite0"
    display: str  # human title, e.g. "EfficientNet-Lite0 (ImageNet-1K)"
    family: str  # e.g. "EfficientNet-Lite", "MobileNetV2", "CLIP"
    loader: str  # "offline", "timm", "open_clip" or "random"
    pretrained: bool
    resolution: int  # input pixels (square)
    params: int | None = None  # parameter count of the feature extractor
    imagenet_top1: float | None = None  # published ImageNet-1K top-1 as a fraction
    imagenet_source: str | None = None  # where that figure is published
    description: str = ""
