"""The model registry: one place to name, describe and build backbones.

Two kinds of names:

- registered names (``efficientnet_lite0``, ``random_tiny``, ``bioclip``, ...): a constructor
  registered with ``@register_model(name, info)``, in the style of timm's registry;
- ad-hoc names ``<scheme>:<spec>`` (``timm:convnext_tiny.fb_in22k``,
  ``open_clip:ViT-B-32/laion2b_s34b_b79k``, ``timm:resnet50@/path/weights.safetensors``), so
  a researcher can evaluate any timm or open_clip model without a code change. Each scheme is
  resolved by a function registered with ``@register_scheme``.

Where registrations come from (found on first use, see ``discover``):

- every public module of the ``biobench.backbones`` package other than ``base``, ``info`` and
  ``registry`` (so a new model module in the package needs no import line anywhere);
- every module named by an entry point in the group ``biobench.backbones`` of any installed
  distribution (a model in your own package; loading the entry point imports the module, whose
  ``@register_model`` lines register).

Nothing here imports torch, timm or open_clip: ``model_info``, ``list_models`` and a wrong
name's error are instant. A constructor imports what it needs when a model is built.
``model_info`` never builds a network nor touches the network.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from typing import TYPE_CHECKING, Callable, Iterator

from biobench.backbones.info import ModelInfo

if TYPE_CHECKING:  # torch is imported only when a model is built
    import torch
    from torch import nn

    from biobench.backbones.base import Backbone

ENTRY_POINT_GROUP = "biobench.backbones"
# Modules of this package that hold machinery, not models: discovery skips them.
NOT_MODEL_MODULES = frozenset({"base", "info", "registry"})

# A constructor gets the model's ModelInfo and returns the built Backbone.
Constructor = Callable[[ModelInfo], "Backbone"]


class UnknownModel(LookupError):
    """No registered model or ad-hoc scheme matches the name; the message lists valid names."""


class WeightsUnavailable(RuntimeError):
    """A model's weights cannot be obtained here (no network to the hub, missing file)."""


class WeightsMismatch(ValueError):
    """A weights file does not fit the architecture it was loaded into."""


@dataclass(frozen=True)
class _Entry:
    constructor: Constructor
    info: ModelInfo | Callable[[], ModelInfo]

    def resolve_info(self) -> ModelInfo:
        return self.info() if callable(self.info) else self.info


_MODELS: dict[str, _Entry] = {}
# scheme -> function(name, spec) returning (ModelInfo, Constructor)
_SCHEMES: dict[str, Callable[[str, str], tuple[ModelInfo, Constructor]]] = {}


def register_model(name: str, info: ModelInfo | Callable[[], ModelInfo]):
    """Decorator: register ``constructor(info) -> Backbone`` under ``name``."""

    def decorator(constructor: Constructor) -> Constructor:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        if ":" in name:
            raise ValueError(f"model name '{name}' must not contain ':' (reserved for schemes)")
        _MODELS[name] = _Entry(constructor, info)
        return constructor

    return decorator


def register_alias(name: str, target: str, **info_fields) -> None:
    """Register ``name`` as a fixed ad-hoc name (e.g. ``bioclip`` ->
    ``open_clip:hf-hub:imageomics/bioclip``) with curated ModelInfo fields."""

    def info() -> ModelInfo:
        base, _ = _resolve_scheme(target)
        return replace(base, name=name, **info_fields)

    def construct(model_info: ModelInfo) -> Backbone:
        _, constructor = _resolve_scheme(target)
        return constructor(model_info)

    register_model(name, info)(construct)


def register_scheme(scheme: str):
    """Decorator: resolve names ``<scheme>:<spec>`` with ``fn(name, spec) -> (info, ctor)``."""

    def decorator(fn):
        _SCHEMES[scheme] = fn
        return fn

    return decorator


# ---- discovery -----------------------------------------------------------------------------
_discovered = False


def discover() -> None:
    """Import the package's model modules and the entry-point plug-ins, once per process.

    A plug-in that fails to import is reported with ``warnings.warn`` (naming the entry point
    and its distribution) and skipped, so one broken package does not hide every model.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True  # set first: a plug-in importing biobench.backbones must not recurse
    import biobench.backbones as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in NOT_MODEL_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    load_entry_points(ENTRY_POINT_GROUP, "model")


def load_entry_points(group: str, kind: str) -> list[str]:
    """Import every module named by an entry point of ``group``; returns their values. Shared
    with the task registry (``biobench.tasks``)."""
    loaded = []
    for entry_point in metadata.entry_points(group=group):
        dist = entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"
        try:
            entry_point.load()
        except Exception as exc:  # a broken plug-in must not take the other names down with it
            warnings.warn(
                f"biobench: the {kind} plug-in '{entry_point.name} = {entry_point.value}' "
                f"(entry point group '{group}', distribution '{dist}') failed to import and is "
                f"skipped: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        loaded.append(entry_point.value)
    return loaded


def list_models(loader: str | None = None) -> list[str]:
    """Registered names, sorted; ``loader`` filters on ``ModelInfo.loader`` (e.g. "offline")."""
    discover()
    names = sorted(_MODELS)
    if loader is not None:
        names = [n for n in names if _MODELS[n].resolve_info().loader == loader]
    return names


def model_info(name: str) -> ModelInfo:
    """Metadata for a registered or ad-hoc name, without building the model."""
    return _resolve(name)[0]


def create_backbone(name: str, device: str | torch.device = "cpu") -> Backbone:
    """Build the frozen feature extractor ``name`` on ``device``."""
    from biobench.backbones.base import Backbone

    info, constructor = _resolve(name)
    backbone = constructor(info)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"constructor for model '{name}' returned {type(backbone).__name__}, "
                        "expected a Backbone")
    return backbone.to(device)


def _resolve(name: str) -> tuple[ModelInfo, Constructor]:
    discover()
    if name in _MODELS:
        entry = _MODELS[name]
        return entry.resolve_info(), entry.constructor
    if ":" in name:
        return _resolve_scheme(name)
    raise UnknownModel(_unknown_message(name))


def _resolve_scheme(name: str) -> tuple[ModelInfo, Constructor]:
    scheme, spec = name.split(":", 1)
    if scheme not in _SCHEMES:
        raise UnknownModel(_unknown_message(name))
    return _SCHEMES[scheme](name, spec)


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    schemes = ", ".join(f"{s}:..." for s in sorted(_SCHEMES))
    return (
        f"Unknown model '{name}'.{hint} Registered models: {', '.join(sorted(_MODELS))}. "
        f"Ad-hoc names: {schemes} (e.g. timm:convnext_tiny.fb_in22k, "
        "timm:<arch>@<weights file>, open_clip:ViT-B-32/laion2b_s34b_b79k, "
        "open_clip:hf-hub:<org>/<repo>, open_clip:<arch>@<weights file>, <scheme>:<arch>@random)."
    )


# ---- helpers shared by the loaders --------------------------------------------------------

def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for a random initialisation without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _is_network_failure(exc: BaseException) -> bool:
    """True if ``exc`` (or anything in its cause chain) is a failed download."""
    try:
        from huggingface_hub import errors as hub_errors
        hub_types: tuple[type, ...] = (hub_errors.LocalEntryNotFoundError,
                                       hub_errors.OfflineModeIsEnabled,
                                       hub_errors.HfHubHTTPError)
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm and open_clip
        hub_types = ()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, hub_types + (ConnectionError, TimeoutError)):
            return True
        text = str(exc)
        if "Failed to download" in text or "offline mode is enabled" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def hub_download(name: str, source: str, local_form: str) -> Iterator[None]:
    """Turn a failed hub download inside the block into ``WeightsUnavailable`` naming the
    model, what it needs, and the local-file form that works offline."""
    try:
        yield
    except Exception as exc:
        if not _is_network_failure(exc):
            raise
        raise WeightsUnavailable(
            f"model '{name}' needs its weights from {source}, which cannot be reached here "
            f"(no network, or HF_HUB_OFFLINE=1 and not in the local hub cache). Run it once on "
            f"a machine with network access (the hub cache then serves it offline), or "
            f"download the weights file and load it as {local_form}. "
            f"(Underlying error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from exc
