"""The backbone contract: ``features = backbone(images)`` with shape (B, D).

A ``Backbone`` owns its model's own eval transform (PIL image -> tensor), is always in eval
mode, and computes features without gradients. Each registered model carries ``ModelInfo``
metadata (``biobench.backbones.info``, torch-free) that can be read without building the network.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn

from biobench.backbones.info import ModelInfo  # noqa: F401  (re-exported: part of the contract)


class Backbone(nn.Module):
    """Wraps a feature extractor ``net`` (images -> (B, D)) with its transform and metadata."""

    def __init__(self, net: nn.Module, transform: Callable, info: ModelInfo, feature_dim: int):
        super().__init__()
        self.net = net.eval()
        self.transform = transform
        self.info = info
        self.feature_dim = feature_dim
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen feature extractor: BatchNorm and dropout must never leave eval mode,
        # or features would depend on batch composition.
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.net(images)
        if feats.ndim != 2:
            raise RuntimeError(
                f"model '{self.info.name}' returned features of shape {tuple(feats.shape)}; "
                "expected (batch, dim)"
            )
        return feats.float()

    @property
    def preprocessing_id(self) -> str:
        """Short hash of the transform's description: part of the feature-cache key."""
        return hashlib.sha256(repr(self.transform).encode()).hexdigest()[:12]
