"""Weight interpolation (WiSE-FT) as a model name: ``interp:ALPHA:BASE|FINETUNED``.

The model whose weights are ``θ(α) = (1 − α)·θ_BASE + α·θ_FINETUNED`` (Wortsman et al. 2022,
"Robust fine-tuning of zero-shot models"), usable wherever a model name is: ``biobench run
--model``, grid files, ``papermill -p model``. Examples (quote them in a shell: ``|`` is a pipe)::

    interp:0.5:mobilenet_v2|mobilenet_v2@/data/plankton_specialist.safetensors
    interp:0.3:timm:resnet50@/m/r50.safetensors|timm:resnet50@/m/r50_histology.safetensors
    interp:0.5:open_clip:ViT-B-32/openai|open_clip:hf-hub:wisdomik/QuiltNet-B-32

**The name.** ``ALPHA`` is a number in [0, 1] written in its shortest form (``0``, ``0.1``,
``0.25``, ``1``; not ``0.10`` or ``1.0``): runs and cached features are keyed by the name, so
one model must have one name (``interpolation_name`` writes it). ``BASE`` and ``FINETUNED``
are model names of one architecture, split at the only ``|`` (a path holding ``|`` is refused:
link it elsewhere). Either may be

- ``timm:ARCH@FILE`` or ``open_clip:ARCH@FILE`` (a local checkpoint: streamed, see below);
- an offline ImageNet model (``efficientnet_lite0``..``2``, ``mobilenet_v2``), or
  ``OFFLINE@FILE``: that model's architecture and preprocessing with the weights in ``FILE``
  (timm key names), which is what ``biobench.finetune`` writes;
- any other model name (hub weights, a registered alias, ``...@random``); such a parent is
  built whole to read its weights.

Interpolated names cannot be nested.

**What the mixed model is.** BASE is built by its own constructor, so the mix has BASE's
architecture (activations included), preprocessing and resolution; WiSE-FT mixes a model with
its own fine-tune, which shares them. Name FINETUNED so that it does too: for an offline base,
``mobilenet_v2@FILE``, not ``timm:mobilenetv2_100@FILE`` (timm's default preprocessing).
FINETUNED's tensors are then mixed into it, key by key:

- The two state dicts must have the same keys with the same shapes (a timm file's classifier,
  which a feature extractor drops, is ignored); otherwise ``WeightsMismatch`` names the first
  key that differs, before any tensor is touched.
- Floating tensors are interpolated: weights, biases, and **BatchNorm running statistics**,
  like weights. Why not recompute them on data: the mix would then depend on which images it
  saw (a task's test images would leak into its own backbone, and one model would be a
  different model on every task), and it would need a data pass for every α. Interpolated
  statistics keep the model a function of its two parents and α alone, exact at both ends. The
  price: the mixed network's true activation statistics are not the mixed statistics (Jordan
  et al. 2022, "REPAIR", measure the variance collapse this causes), which can cost a BatchNorm
  network accuracy at intermediate α. Transformers (LayerNorm) have no running statistics.
- Integer tensors: BatchNorm's ``num_batches_tracked`` is taken from FINETUNED (for α > 0): it
  counts the batches the statistics have seen, it only matters when training continues with
  cumulative averaging, and FINETUNED's count includes BASE's training. Any other integer or
  boolean tensor (index buffers, masks) must be equal in both parents, or the mix is refused.
- α = 0 and α = 1 give BASE's and FINETUNED's tensors verbatim (no arithmetic), so the ends
  reproduce the parents exactly; α = 0.5 is the exact mean wherever float arithmetic allows.

**Memory.** BASE is built as usual (its loader holds its state dict while it loads, then frees
it); the built network is the result. FINETUNED's checkpoint file is then read one tensor at a
time: ``safetensors.safe_open`` for ``.safetensors``, ``torch.load(mmap=True)`` for torch files
(pages are read from disk as each tensor is mixed), and mixed in place. The peak is the result
plus one state dict, never three (``benchmarks/interpolation_memory.py`` measures it). A
FINETUNED that is not a local file (hub weights) is built whole, so the peak is then the result
plus that model while its own loader runs.

**Metadata.** ``model_info`` returns an ``InterpolatedModelInfo`` (a ``ModelInfo``) holding
both parents and α, ``loader="interpolated"``, and no ImageNet top-1 (a mix has none
published); its ``provenance`` is what a run's model record should store.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from biobench.backbones.info import ModelInfo
from biobench.backbones.registry import (
    UnknownModel,
    WeightsMismatch,
    create_backbone,
    model_info,
    register_scheme,
)

if TYPE_CHECKING:  # torch is imported when a model is built, never to name one
    import torch
    from torch import nn

    from biobench.backbones.base import Backbone

SCHEME = "interp"
SEPARATOR = "|"
LOADER = "interpolated"
# BatchNorm's batch counter: the one integer tensor that may differ between the parents.
BATCH_COUNTER = "num_batches_tracked"
BATCHNORM_STATISTICS = "interpolated like weights"


# ---- names -------------------------------------------------------------------------------

def format_alpha(alpha: float) -> str:
    """The one spelling of ``alpha`` in a model name: the shortest text that reads back as the
    same float (``0``, ``0.1``, ``1``)."""
    alpha = float(alpha) + 0.0  # -0.0 -> 0.0
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    text = repr(alpha)
    return text[:-2] if text.endswith(".0") else text


def interpolation_name(alpha: float, base: str, finetuned: str) -> str:
    """``interp:ALPHA:BASE|FINETUNED`` with ALPHA in its one spelling."""
    name = f"{SCHEME}:{format_alpha(alpha)}:{base}{SEPARATOR}{finetuned}"
    parse_interpolation_name(name)  # the same checks a user's name gets
    return name


def parse_interpolation_name(name: str) -> tuple[float, str, str]:
    """``interp:ALPHA:BASE|FINETUNED`` -> (alpha, base, finetuned); ``UnknownModel`` naming
    what is wrong otherwise."""
    form = f"{SCHEME}:ALPHA:BASE{SEPARATOR}FINETUNED"
    scheme, _, rest = name.partition(":")
    alpha_text, sep, parents = rest.partition(":")
    if scheme != SCHEME or not sep:
        raise UnknownModel(f"Model '{name}': an interpolated model is named {form}, e.g. "
                           f"interp:0.5:mobilenet_v2|mobilenet_v2@/path/finetuned.safetensors")
    try:
        alpha = float(alpha_text)
        canonical = format_alpha(alpha)
    except ValueError:
        raise UnknownModel(f"Model '{name}': ALPHA '{alpha_text}' must be a number in [0, 1] "
                           f"({form})") from None
    if alpha_text != canonical:
        raise UnknownModel(f"Model '{name}': write ALPHA as '{canonical}', not '{alpha_text}' "
                           "(one model, one name: runs and cached features are keyed by it)")
    if parents.count(SEPARATOR) != 1:
        raise UnknownModel(
            f"Model '{name}': give exactly two parents separated by one '{SEPARATOR}' ({form}); "
            f"found {parents.count(SEPARATOR)}. A weights path containing '{SEPARATOR}' is not "
            "supported: link the file to a path without it.")
    base, finetuned = parents.split(SEPARATOR)
    for role, parent in (("BASE", base), ("FINETUNED", finetuned)):
        if not parent:
            raise UnknownModel(f"Model '{name}': {role} is empty ({form})")
        if parent.startswith(f"{SCHEME}:"):
            raise UnknownModel(f"Model '{name}': {role} '{parent}' is itself interpolated; "
                               "nesting is not supported (mix the weights into a file first)")
    return alpha, base, finetuned


# ---- metadata ----------------------------------------------------------------------------

@dataclass(frozen=True)
class InterpolatedModelInfo(ModelInfo):
    """``ModelInfo`` of a mix, with its parents and α."""

    base: str = ""
    finetuned: str = ""
    alpha: float = 0.0

    @property
    def provenance(self) -> dict:
        """What a run's model record should keep about this model (JSON-ready)."""
        return {"interpolation": {
            "method": "WiSE-FT: (1 - alpha) * base + alpha * finetuned",
            "base": self.base, "finetuned": self.finetuned, "alpha": self.alpha,
            "batchnorm_statistics": BATCHNORM_STATISTICS,
            "num_batches_tracked": "finetuned's (alpha > 0)",
        }}


# ---- parents -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Parent:
    """One side of a mix: how to describe it, build it, and find its weights file."""

    name: str
    info: ModelInfo
    build: Callable[[], "Backbone"]
    weights_file: Callable[[], Path] | None  # None: build it whole to read its weights
    key_layout: str  # "timm" or "open_clip" (the file's key names), "built" (no file)


def _offline_specs() -> dict:
    from biobench.backbones.offline import OFFLINE_WEIGHTS

    return OFFLINE_WEIGHTS


def resolve_parent(name: str) -> Parent:
    """The parent called ``name`` (see the module doc for the forms)."""
    from biobench.backbones.timm_models import RANDOM, split_weights

    offline = _offline_specs()
    arch, _, weights = name.partition("@")
    if arch in offline and weights:  # OFFLINE@FILE: the offline model's form, other weights
        return _offline_with_file(name, arch, weights)
    info = model_info(name)
    if name in offline:
        from biobench.backbones.offline import converted_weights

        return Parent(name, info, lambda: create_backbone(name),
                      lambda: converted_weights(name), "timm")
    scheme, _, spec = name.partition(":")
    if scheme in ("timm", "open_clip") and not spec.startswith("hf-hub:"):
        _, file = split_weights(spec)
        if file is not None and file != RANDOM:
            return Parent(name, info, lambda: create_backbone(name),
                          lambda: _existing_file(name, file), scheme)
    return Parent(name, info, lambda: create_backbone(name), None, "built")


def _offline_with_file(name: str, offline_name: str, file: str) -> Parent:
    from biobench.backbones.timm_models import build_timm_backbone

    spec = _offline_specs()[offline_name]
    offline_info = model_info(offline_name)
    info = replace(offline_info, name=name, display=f"{offline_info.display} with {file}",
                   imagenet_top1=None, imagenet_source=None,
                   description=f"timm {spec.timm_arch}, {offline_name}'s preprocessing, "
                               f"weights from {file}")

    def build() -> Backbone:
        return build_timm_backbone(info, spec.timm_arch, weights=_existing_file(name, file),
                                   data_config=spec.data_config)

    return Parent(name, info, build, lambda: _existing_file(name, file), "timm")


def _existing_file(name: str, file: str) -> Path:
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model '{name}': weights file {path} not found")
    return path


# ---- reading a parent's tensors one at a time ------------------------------------------

class WeightSource(abc.ABC):
    """FINETUNED's tensors under the names of the built BASE network's state dict."""

    @abc.abstractmethod
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, read without loading the tensors where the format allows."""

    @abc.abstractmethod
    def tensor(self, key: str) -> torch.Tensor:
        """One tensor, read when asked."""

    def close(self) -> None:
        """Release the file (a no-op for tensors in memory)."""


class StateDictSource(WeightSource):
    """Tensors already in memory (a parent built whole)."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state

    def shapes(self):
        return {k: tuple(v.shape) for k, v in self.state.items()}

    def tensor(self, key):
        return self.state[key]


class FileSource(WeightSource):
    """A checkpoint file read lazily: ``safe_open`` for safetensors (one tensor read per
    request), else ``torch.load(mmap=True)`` (pages are read when a tensor is used). ``rename``
    maps a file key to the network's key, or None for keys the network does not have."""

    def __init__(self, path: Path, rename: Callable[[str], str | None]):
        self.path = path
        self._handle = None
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            self._handle = safe_open(str(path), framework="pt")
            file_keys = {k: (lambda k=k: self._handle.get_tensor(k)) for k in self._handle.keys()}
            self._shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in file_keys}
        else:
            state = _torch_load_lazily(path)
            file_keys = {k: (lambda k=k: state[k]) for k in state}
            self._shapes = {k: tuple(v.shape) for k, v in state.items()}
        self._readers: dict[str, Callable[[], torch.Tensor]] = {}
        self._file_key: dict[str, str] = {}
        for key, reader in file_keys.items():
            net_key = rename(key)
            if net_key is not None:
                self._readers[net_key] = reader
                self._file_key[net_key] = key

    def shapes(self):
        return {k: self._shapes[self._file_key[k]] for k in self._readers}

    def tensor(self, key):
        return self._readers[key]()

    def close(self):
        self._handle = None
        self._readers.clear()


def _torch_load_lazily(path: Path) -> dict:
    """A torch checkpoint's state dict, memory-mapped when the file format allows it (zip
    files written by torch.save since 1.6); unwrapped from ``{'state_dict': ...}`` and
    stripped of DataParallel's ``module.`` prefix, as timm and open_clip do."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        # legacy (pre-zip) format: no memory map possible; read whole (one extra copy)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict):
        raise WeightsMismatch(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _renamer(parent: Parent, net: nn.Module) -> Callable[[str], str | None]:
    """How ``parent``'s file keys map onto ``net`` (the built BASE's feature extractor)."""
    if parent.key_layout == "open_clip":
        if getattr(net, "visual_only", False):  # OpenClipImageEncoder keeps only .visual
            return lambda k: "model." + k.removeprefix("visual.") if k.startswith("visual.") else None
        return lambda k: "model." + k
    # timm: the feature extractor (num_classes=0) has no classifier; the file's is not mixed
    heads = getattr(net, "pretrained_cfg", {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    if getattr(net, "num_classes", None) != 0:
        heads = ()
    return lambda k: None if any(k.startswith(h + ".") for h in heads) else k


def weight_source(parent: Parent, net: nn.Module) -> tuple[WeightSource, Backbone | None]:
    """``parent``'s tensors in ``net``'s key space, lazily from its file when it has one; also
    returns the parent's backbone when it had to be built (None otherwise)."""
    if parent.weights_file is not None:
        return FileSource(parent.weights_file(), _renamer(parent, net)), None
    backbone = parent.build()
    return StateDictSource(backbone.net.state_dict()), backbone


# ---- the mix -----------------------------------------------------------------------------

def check_same_architecture(base: Mapping[str, tuple], finetuned: Mapping[str, tuple], *,
                            base_name: str, finetuned_name: str) -> None:
    """Refuse two state dicts (key -> shape) that are not one architecture, naming the first
    key that differs: in BASE's order, one missing from FINETUNED or of another shape; then,
    in FINETUNED's order, one BASE does not have."""
    for key, shape in base.items():
        if key not in finetuned:
            raise WeightsMismatch(
                f"cannot interpolate '{base_name}' and '{finetuned_name}': not one architecture. "
                f"First differing key: '{key}' {shape} is in BASE but not in FINETUNED.")
        if tuple(finetuned[key]) != tuple(shape):
            raise WeightsMismatch(
                f"cannot interpolate '{base_name}' and '{finetuned_name}': not one architecture. "
                f"First differing key: '{key}' has shape {tuple(shape)} in BASE and "
                f"{tuple(finetuned[key])} in FINETUNED.")
    for key, shape in finetuned.items():
        if key not in base:
            raise WeightsMismatch(
                f"cannot interpolate '{base_name}' and '{finetuned_name}': not one architecture. "
                f"First differing key: '{key}' {tuple(shape)} is in FINETUNED but not in BASE.")


def mix_in_place(target: Mapping[str, torch.Tensor], source: WeightSource, alpha: float, *,
                 base_name: str = "BASE", finetuned_name: str = "FINETUNED") -> None:
    """``target`` (BASE's live tensors) becomes ``(1 - alpha) * target + alpha * source``,
    tensor by tensor, following the rules of the module doc. Checks the architecture first."""
    import torch

    check_same_architecture({k: tuple(v.shape) for k, v in target.items()}, source.shapes(),
                            base_name=base_name, finetuned_name=finetuned_name)
    with torch.no_grad():
        for key, tensor in target.items():
            if tensor.is_floating_point() and alpha == 0.0:
                continue  # BASE's own tensor, verbatim
            other = source.tensor(key)
            if not tensor.is_floating_point():
                if key.rsplit(".", 1)[-1] == BATCH_COUNTER:
                    if alpha > 0:  # a batch count: FINETUNED's includes BASE's (see above)
                        tensor.copy_(other)
                elif not torch.equal(tensor, other.to(tensor.dtype)):
                    raise WeightsMismatch(
                        f"cannot interpolate '{base_name}' and '{finetuned_name}': the "
                        f"non-float tensor '{key}' ({tensor.dtype}) differs between them; only "
                        f"'{BATCH_COUNTER}' may differ.")
            elif alpha == 1.0:
                tensor.copy_(other)  # verbatim: the end reproduces FINETUNED exactly
            else:
                if tensor.dtype == torch.float32:
                    tensor.mul_(1.0 - alpha).add_(other.to(torch.float32), alpha=alpha)
                else:  # half precision: mix in float32, round once
                    tensor.copy_(tensor.float().mul_(1.0 - alpha)
                                 .add_(other.float(), alpha=alpha))
            del other  # one FINETUNED tensor alive at a time


def build_interpolated(info: InterpolatedModelInfo) -> Backbone:
    """BASE built by its own constructor, FINETUNED mixed into it (see the module doc)."""
    base, finetuned = resolve_parent(info.base), resolve_parent(info.finetuned)
    backbone = base.build()
    source, finetuned_backbone = weight_source(finetuned, backbone.net)
    try:
        mix_in_place(backbone.net.state_dict(), source, info.alpha,
                     base_name=info.base, finetuned_name=info.finetuned)
    finally:
        source.close()
        del finetuned_backbone
    # the built BASE knows its real resolution (hub models only learn it when built)
    backbone.info = replace(info, resolution=backbone.info.resolution or info.resolution)
    return backbone


@register_scheme(SCHEME)
def resolve_interpolation_name(name: str, spec: str):
    alpha, base_name, finetuned_name = parse_interpolation_name(name)
    base, finetuned = resolve_parent(base_name), resolve_parent(finetuned_name)
    b, f = base.info, finetuned.info
    if b.resolution and f.resolution and b.resolution != f.resolution:
        raise UnknownModel(
            f"Model '{name}': BASE '{base_name}' takes {b.resolution} px and FINETUNED "
            f"'{finetuned_name}' {f.resolution} px; a mix runs at one resolution. Interpolate "
            "a model with its own fine-tune.")
    alpha_text = format_alpha(alpha)
    info = InterpolatedModelInfo(
        name=name, display=f"WiSE-FT α={alpha_text}: {b.display} → {f.display}",
        family=b.family, loader=LOADER, pretrained=b.pretrained or f.pretrained,
        resolution=b.resolution, params=b.params,
        description=(f"(1 - {alpha_text}) x {base_name} + {alpha_text} x {finetuned_name}; "
                     f"{base_name}'s architecture and preprocessing; BatchNorm running "
                     f"statistics {BATCHNORM_STATISTICS}"),
        base=base_name, finetuned=finetuned_name, alpha=alpha,
    )
    return info, build_interpolated


def iter_alphas(n_steps: int = 10) -> Iterator[float]:
    """0, 1/n, ..., 1, each rounded so that its name is short (0.1, not 0.1000000001)."""
    for i in range(n_steps + 1):
        yield round(i / n_steps, 10)
