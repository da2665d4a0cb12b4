"""Backbone registry: ``create_backbone(name)`` -> a frozen ``Backbone`` (images -> (B, D)).

    >>> from biobench.backbones import create_backbone, list_models, model_info
    >>> list_models(loader="offline")
    ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'mobilenet_v2']
    >>> model_info("mobilenet_v2").imagenet_top1
    0.71878

Names are registered ones (``list_models()``) or ad-hoc ``timm:...`` / ``open_clip:...``
names; see ``biobench.backbones.registry``. Adding a model is a few lines in one module:
``@register_model(name, ModelInfo(...))`` over ``constructor(info) -> Backbone``, or
``register_alias(name, "timm:...", **info_fields)``. A module in this package is found on its
own; a module in your own package is found through an entry point in the group
``biobench.backbones`` (README, "Add a model").

Importing this package imports no torch: ``Backbone`` (a torch module) is loaded on first use.
"""

import warnings

# huggingface_hub (imported by timm and open_clip) imports tqdm.auto, which warns on stderr in
# notebooks without ipywidgets; a strict book build turns that stray stderr into a failure.
warnings.filterwarnings("ignore", message="IProgress not found")

from biobench.backbones.info import ModelInfo  # noqa: E402
from biobench.backbones.registry import (  # noqa: E402
    UnknownModel,
    WeightsMismatch,
    WeightsUnavailable,
    create_backbone,
    discover,
    list_models,
    model_info,
    register_alias,
    register_model,
    register_scheme,
)

__all__ = [
    "Backbone", "ModelInfo", "UnknownModel", "WeightsMismatch", "WeightsUnavailable",
    "create_backbone", "discover", "list_models", "model_info", "register_alias",
    "register_model", "register_scheme",
]


def __getattr__(name: str):
    # ``Backbone`` subclasses torch's nn.Module: import torch only when someone asks for it.
    if name == "Backbone":
        from biobench.backbones.base import Backbone

        return Backbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
