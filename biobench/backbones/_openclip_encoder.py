"""The open_clip image tower as a feature extractor (imported only when a model is built)."""

from __future__ import annotations

import open_clip
import torch
from torch import nn


class OpenClipImageEncoder(nn.Module):
    """``images -> model.encode_image(images)``, keeping only the image tower when the model
    class's ``encode_image`` is exactly ``visual(images)`` (CLIP, CustomTextCLIP)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        plain = (open_clip.CLIP.encode_image, open_clip.CustomTextCLIP.encode_image)
        self.visual_only = type(clip_model).encode_image in plain
        # The text tower is dropped: it is most of the memory of a CLIP model on a laptop.
        self.model = clip_model.visual if self.visual_only else clip_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.visual_only:
            return self.model(images)
        return self.model.encode_image(images, normalize=False)
