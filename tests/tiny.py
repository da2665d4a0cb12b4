"""A tiny, deterministic backbone built in-process, for tests of the pipeline around models."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import transforms

from biobench.backbones.base import Backbone, ModelInfo


class CountingNet(nn.Module):
    """Average-pool to 4x4 then a fixed random projection; counts images it has seen."""

    def __init__(self, dim: int = 16, fail_after_calls: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3 * 4 * 4, dim)
        self.calls = 0
        self.images_seen = 0
        self.fail_after_calls = fail_after_calls

    def forward(self, x):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.images_seen += len(x)
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def tiny_backbone(name: str = "tiny_test", fail_after_calls: int | None = None) -> Backbone:
    info = ModelInfo(name=name, display="tiny test model", family="test", loader="random",
                     pretrained=False, resolution=16)
    transform = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])
    return Backbone(CountingNet(fail_after_calls=fail_after_calls), transform, info, feature_dim=16)
