"""The forgetting experiment: a small, honest fine-tune and a WiSE-FT sweep, all offline.

μ-Bench reports that fine-tuning a generalist on a narrow microscopy domain erodes what it knew,
and that interpolating weights between the fine-tuned and the base model recovers it
(``/work/shared/spec/ubench.md`` §9). This module reproduces the shape of that experiment at a
size a CPU runs in minutes:

1. **The specialist** (``finetune``): an offline ImageNet backbone (``mobilenet_v2`` by default)
   fine-tuned end to end on half of the FlowCam plankton images (``plankton_flowcam``: 105
   images, 6 classes; a stratified, seeded split), with a new head: LP-FT, the head is fitted
   on frozen features first; a cosine-similarity head (``make_head``). BatchNorm layers stay in
   eval mode by default, so the specialist keeps the base's running statistics (re-estimating
   them on batches of 16 did worse when the recipe was chosen; see the page), and the question
   of how to interpolate them does not arise (``biobench.backbones.interpolate`` decides it for
   models where it does). The ImageNet classifier is kept untouched in the checkpoint, so the
   specialist is still a full ImageNet classifier. The checkpoint (safetensors, timm key names)
   and a provenance JSON (base model, data, split, epochs, seed, learning rate, losses,
   held-out score, package versions) are written atomically into
   ``$BIOBENCH_HOME/finetuned/<base>-<task>-<hash of settings and data>/``; the same settings on
   the same data find and reuse it.
2. **The sweep** (``forgetting_sweep``): for each α the model ``interp:α:BASE|SPECIALIST`` is
   scored on
   - the *target*: the held-out plankton images, never seen in fine-tuning, as a task of their
     own (``HeldOutTask``: cross-fitted like ``plankton_flowcam``);
   - a *general* biology task it was not fine-tuned on: ``neon_tree_crowns``;
   - *ImageNet agreement*, a direct measure of forgetting: how often the base's ImageNet head,
     on the mixed backbone's features, predicts what the base model predicts, on views of
     natural photos that ship with scikit-image, scikit-learn and matplotlib.
   Both tasks go through ``biobench.evaluate.run_evaluation`` (frozen features, a probe, a
   bootstrap interval, stored runs) into a store of their own (``experiment_store_path``), so
   these models never enter the book's leaderboard. Agreement predictions are cached in the
   specialist's folder (``AgreementCache``); its interval is a bootstrap over photos.
3. **The choice of α** (``best_alpha``): the α maximising the mean of the target score and the
   general score (the mean of the neon and agreement scores), with the bootstrap distribution
   of that argmax over paired resamples of all three test sets.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from biobench import config
from biobench.atomic import atomic_directory
from biobench.progress import stage
from biobench.tasks._offline import CrossFittedTask
from biobench.tasks.base import Task, TaskData, TaskDataMissing

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from biobench.backbones.base import Backbone

# Bump when the training recipe changes: old checkpoints then no longer match any settings.
RECIPE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"
PROVENANCE_FILE = "provenance.json"  # written last: its presence marks a complete checkpoint


@dataclass(frozen=True)
class FineTuneSettings:
    """Everything that decides the specialist; its hash names the checkpoint folder."""

    base: str = "mobilenet_v2"  # an offline ImageNet model (biobench.backbones.offline)
    task: str = "plankton_flowcam"  # a task of single-image examples with class labels
    heldout_fraction: float = 0.5  # of each class, never used in fine-tuning
    head_epochs: int = 100  # full-batch steps fitting the new head on frozen features
    epochs: int = 10  # then end to end
    batch_size: int = 16
    lr: float = 1e-4  # AdamW, cosine decay to 0 over the epochs
    weight_decay: float = 0.05
    batchnorm: str = "frozen"  # "frozen": eval mode, the base's statistics; "train": adapted
    head: str = "cosine"  # "cosine": scaled cosine-similarity classifier; "linear"
    cosine_scale: float = 16.0  # the cosine head's logit scale (inverse temperature)
    train_resolution: int = 160  # training crops (px); features are taken at the base's own
    crop_scale: tuple[float, float] = (0.35, 1.0)  # RandomResizedCrop area range
    seed: int = 0  # split, head initialisation, augmentation, batch order

    def key(self) -> str:
        text = json.dumps({"recipe": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Split:
    finetune_ids: tuple[str, ...]
    heldout_ids: tuple[str, ...]

    def tag(self) -> str:
        """Short hash of the held-out ids: names the held-out task."""
        return hashlib.sha256("\n".join(sorted(self.heldout_ids)).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Specialist:
    """A fine-tuned checkpoint on disk and what made it."""

    settings: FineTuneSettings
    directory: Path
    provenance: dict
    reused: bool  # True when an existing checkpoint was found

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS_FILE

    @property
    def model_name(self) -> str:
        """The specialist as an interpolation parent: the base's architecture and
        preprocessing with the fine-tuned weights (``OFFLINE@FILE``)."""
        return f"{self.settings.base}@{self.weights}"

    @property
    def split(self) -> Split:
        s = self.provenance["split"]
        return Split(tuple(s["finetune_ids"]), tuple(s["heldout_ids"]))

    def interpolated(self, alpha: float) -> str:
        """``interp:α:BASE|SPECIALIST``."""
        from biobench.backbones.interpolate import interpolation_name

        return interpolation_name(alpha, self.settings.base, self.model_name)


# ---- data ---------------------------------------------------------------------------------

def all_examples(data: TaskData) -> list:
    return list(data.train) + list(data.test)


def heldout_split(data: TaskData, fraction: float, seed: int) -> Split:
    """A stratified, seeded split of the task's examples (ids sorted first, so the split does
    not depend on the order the task lists them in)."""
    from sklearn.model_selection import train_test_split

    examples = sorted(all_examples(data), key=lambda ex: ex.id)
    ids = [ex.id for ex in examples]
    labels = [ex.label for ex in examples]
    finetune_ids, heldout_ids = train_test_split(ids, test_size=fraction, stratify=labels,
                                                 random_state=seed)
    return Split(tuple(sorted(finetune_ids)), tuple(sorted(heldout_ids)))


def data_fingerprint(data: TaskData) -> str:
    """Ids, labels and each image file's size and modification time: a checkpoint is reused
    only for the data it was trained on."""
    h = hashlib.sha256()
    for ex in sorted(all_examples(data), key=lambda ex: ex.id):
        h.update(f"{ex.id}|{ex.label}|{'|'.join(r.content_token() for r in ex.images)}\n".encode())
    return h.hexdigest()[:16]


class HeldOutTask(CrossFittedTask):
    """Only the held-out examples of ``parent`` (those fine-tuning never saw), scored like an
    offline task: every example predicted by a probe fitted on the other folds."""

    group = "own"

    def __init__(self, parent: Task, split: Split):
        self.parent = parent
        self.heldout_ids = frozenset(split.heldout_ids)
        self.name = f"{parent.name}_heldout_{split.tag()}"
        self.display = f"{parent.display}: the {len(self.heldout_ids)} held-out images"
        self.kingdom, self.modality = parent.kingdom, parent.modality
        self.citation, self.metric_name = parent.citation, parent.metric_name
        self.download_hint = parent.download_hint

    def data_path(self, root: Path | None = None) -> Path:
        return self.parent.data_path(root)

    def check_present(self, root: Path | None = None) -> None:
        self.parent.check_present(root)

    def load(self, root: Path | None = None) -> TaskData:
        data = self.parent.load(root)
        kept = [ex for ex in all_examples(data) if ex.id in self.heldout_ids]
        if len(kept) != len(self.heldout_ids):
            missing = sorted(self.heldout_ids - {ex.id for ex in kept})
            raise TaskDataMissing(self.missing_message(
                self.data_path(root), f"{len(missing)} held-out images are gone (e.g. "
                f"{missing[0]}); the split belongs to other data: fine-tune again"))
        return TaskData([], kept, data.class_names)


# ---- the specialist ---------------------------------------------------------------------

def specialist_directory(settings: FineTuneSettings, fingerprint: str) -> Path:
    key = hashlib.sha256(f"{settings.key()}|{fingerprint}".encode()).hexdigest()[:12]
    return config.home_dir() / "finetuned" / f"{settings.base}-{settings.task}-{key}"


def finetune(settings: FineTuneSettings = FineTuneSettings(), *, data_root: Path | None = None,
             force: bool = False, log: Callable[[str], None] = stage) -> Specialist:
    """The specialist for ``settings``: read back when its checkpoint exists, else trained
    (a few minutes on a CPU) and saved atomically."""
    from biobench.backbones.offline import OFFLINE_WEIGHTS
    from biobench.tasks import get_task

    if settings.base not in OFFLINE_WEIGHTS:
        raise ValueError(f"fine-tuning needs an offline ImageNet model as its base; "
                         f"'{settings.base}' is not one of {', '.join(OFFLINE_WEIGHTS)}")
    task = get_task(settings.task)
    data = task.load(data_root)
    fingerprint = data_fingerprint(data)
    directory = specialist_directory(settings, fingerprint)
    provenance_path = directory / PROVENANCE_FILE
    if provenance_path.is_file() and not force:
        log(f"fine-tuned {settings.base} on {settings.task}: reusing {directory}")
        return Specialist(settings, directory, json.loads(provenance_path.read_text()), True)
    split = heldout_split(data, settings.heldout_fraction, settings.seed)
    provenance = _train_and_save(settings, task, data, split, fingerprint, directory, log)
    return Specialist(settings, directory, provenance, False)


def _train_and_save(settings: FineTuneSettings, task: Task, data: TaskData, split: Split,
                    fingerprint: str, directory: Path, log: Callable[[str], None]) -> dict:
    import torch
    from safetensors.torch import save_file

    from biobench.backbones.offline import OFFLINE_WEIGHTS, converted_weights
    from biobench.evaluate import package_versions
    from biobench.metrics import macro_f1

    started = time.perf_counter()
    spec = OFFLINE_WEIGHTS[settings.base]
    by_id = {ex.id: ex for ex in all_examples(data)}
    train = [by_id[i] for i in split.finetune_ids]
    heldout = [by_id[i] for i in split.heldout_ids]
    model, head, losses = train_specialist(settings, train, len(data.class_names), log=log,
                                           label=task.name)
    # the held-out score of the specialist's own head: reported, never used to choose anything
    _, evaluate_transform = _transforms(spec.data_config, settings)
    heldout_images, heldout_y = _decoded(heldout)
    with torch.no_grad():
        x = torch.stack([evaluate_transform(im) for im in heldout_images])
        pred = head(model.forward_head(model.forward_features(x), pre_logits=True)).argmax(1)
    heldout_score = float(macro_f1(heldout_y.numpy(), pred.numpy()))
    log(f"fine-tuned {settings.base} on {task.name}: held-out macro-F1 of its own head "
        f"{heldout_score:.4f} ({len(heldout)} images)")
    provenance = {
        "base_model": settings.base,
        "base_weights": str(converted_weights(settings.base)),
        "architecture": f"timm {spec.timm_arch}",
        "task": task.name, "data_path": str(task.data_path(None)),
        "data_fingerprint": fingerprint, "class_names": list(data.class_names),
        "split": {"heldout_fraction": settings.heldout_fraction, "seed": settings.seed,
                  "finetune_ids": list(split.finetune_ids),
                  "heldout_ids": list(split.heldout_ids)},
        "settings": asdict(settings), "recipe_version": RECIPE_VERSION, "recipe": RECIPE,
        "head_fit_loss_per_step": losses["head"],
        "training_loss_per_epoch": losses["finetune"],
        "heldout_macro_f1_own_head": heldout_score,
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "cpu_time_s": round(time.process_time(), 1),
        "files": {"weights": WEIGHTS_FILE, "head": HEAD_FILE},
    }
    with atomic_directory(directory) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp / WEIGHTS_FILE), metadata={"base_model": settings.base})
        save_file({k: v.contiguous() for k, v in head.state_dict().items()},
                  str(tmp / HEAD_FILE))
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    log(f"fine-tuned {settings.base} on {task.name} in {provenance['wall_time_s']} s -> "
        f"{directory}")
    return provenance


RECIPE = ("LP-FT (Kumar et al. 2022): a new linear head is first fitted on the frozen base's "
          "pooled features (full batch, AdamW), then the whole network and the head are "
          "fine-tuned with AdamW and cosine learning-rate decay, on RandomResizedCrop + "
          "horizontal and vertical flips at the training resolution; BatchNorm in eval mode; "
          "the ImageNet classifier frozen (kept as the base's)")


def _decoded(examples) -> tuple[list, "torch.Tensor"]:
    import torch

    from biobench.images import load_image

    for ex in examples:
        if len(ex.images) != 1 or not isinstance(ex.label, (int, np.integer)):
            raise ValueError(f"fine-tuning needs one image and one class label per example; "
                             f"example '{ex.id}' has {len(ex.images)} images and label "
                             f"{ex.label!r}")
    return ([load_image(ex.images[0]) for ex in examples],
            torch.tensor([int(ex.label) for ex in examples]))


def make_head(settings: FineTuneSettings, n_features: int, n_classes: int):
    """The new classifier head. ``cosine``: ``scale * cos(feature, class weight)``, a
    classifier on L2-normalised features, so that fine-tuning shapes the features the way a
    nearest-centroid probe on normalised features (SimpleShot) or a cosine kNN reads them;
    ``linear``: an ordinary linear layer."""
    import torch
    from torch import nn

    class CosineHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n_classes, n_features) * 0.01)

        def forward(self, x):
            normalize = nn.functional.normalize
            return settings.cosine_scale * normalize(x, dim=1) @ normalize(self.weight, dim=1).T

    if settings.head == "linear":
        return nn.Linear(n_features, n_classes)
    if settings.head == "cosine":
        return CosineHead()
    raise ValueError(f"unknown head '{settings.head}' (use 'cosine' or 'linear')")


def train_specialist(settings: FineTuneSettings, train: Sequence, n_classes: int, *,
                     log: Callable[[str], None] = stage, label: str = ""):
    """(fine-tuned timm model with the base's ImageNet classifier, the new head, losses per
    epoch), trained on ``train`` examples by the recipe ``RECIPE``, seeded."""
    import timm
    import torch
    from torch import nn

    from biobench.backbones.offline import OFFLINE_WEIGHTS, converted_weights
    from biobench.backbones.registry import seeded
    from biobench.backbones.timm_models import load_timm_weights

    spec = OFFLINE_WEIGHTS[settings.base]
    images, y = _decoded(train)
    augment, evaluate_transform = _transforms(spec.data_config, settings)
    # before seeding: a first conversion builds a template network, which draws random numbers
    weights = converted_weights(settings.base)
    with seeded(settings.seed):  # head init, augmentation and batch order; caller's RNG kept
        model = timm.create_model(spec.timm_arch, pretrained=False)
        load_timm_weights(model, weights, model_name=settings.base)
        model.eval()  # the base as it is, for the linear probe
        for p in model.get_classifier().parameters():  # the specialist keeps the base's
            p.requires_grad_(False)
        head = make_head(settings, model.num_features, n_classes)

        def pooled(x):
            return model.forward_head(model.forward_features(x), pre_logits=True)

        # 1. linear probe: the head on frozen features of the un-augmented images, so that
        # fine-tuning starts from a fitted head and does not distort the features to fit a
        # random one
        with torch.no_grad():
            frozen = pooled(torch.stack([evaluate_transform(im) for im in images]))
        head_optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
        head_losses = []
        for _ in range(settings.head_epochs):
            loss = nn.functional.cross_entropy(head(frozen), y)
            head_optimiser.zero_grad()
            loss.backward()
            head_optimiser.step()
            head_losses.append(loss.item())
        # 2. everything, end to end; BatchNorm either keeps the base's statistics (eval mode)
        # or re-estimates them on the target's batches (train mode: running averages move
        # towards the target domain's statistics)
        if settings.batchnorm not in ("frozen", "train"):
            raise ValueError(f"unknown batchnorm setting '{settings.batchnorm}' (use 'frozen' "
                             "or 'train')")
        model.train(settings.batchnorm == "train")
        for module in model.modules():  # dropout stays off either way
            if isinstance(module, nn.Dropout):
                module.eval()
        trained = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        optimiser = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=settings.weight_decay)
        steps_per_epoch = -(-len(images) // settings.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, T_max=settings.epochs * steps_per_epoch)
        order_rng = np.random.default_rng(settings.seed)
        losses = []
        for epoch in range(settings.epochs):
            total = 0.0
            for batch in np.array_split(order_rng.permutation(len(images)), steps_per_epoch):
                x = torch.stack([augment(images[i]) for i in batch])
                loss = nn.functional.cross_entropy(head(pooled(x)), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(batch)
            losses.append(total / len(images))
            log(f"fine-tuning {settings.base} on {label}: epoch {epoch + 1}/{settings.epochs}, "
                f"training loss {losses[-1]:.4f}")
    model.eval()
    return model, head, {"head": head_losses, "finetune": losses}


def _transforms(data_config: dict, settings: FineTuneSettings):
    """(training augmentation, evaluation transform), both normalised like the base model.
    Training crops may be smaller than the evaluation resolution: a CPU trains faster, and
    the features are still used at the base's resolution."""
    import timm.data
    from torchvision import transforms

    augment = transforms.Compose([
        transforms.RandomResizedCrop(settings.train_resolution, scale=tuple(settings.crop_scale)),
        transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(data_config["mean"], data_config["std"]),
    ])
    return augment, timm.data.create_transform(**data_config, is_training=False)


# ---- ImageNet agreement on natural photos ----------------------------------------------

# Colour and grey photos that ship inside installed packages (no download).
NATURAL_PHOTOS = (
    ("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "coffee"),
    ("skimage", "rocket"), ("skimage", "hubble_deep_field"), ("skimage", "camera"),
    ("skimage", "coins"), ("skimage", "moon"), ("skimage", "clock"), ("skimage", "brick"),
    ("skimage", "grass"), ("skimage", "gravel"), ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"), ("matplotlib", "grace_hopper.jpg"),
)
VIEW_FRACTION = 0.7  # each view is a square crop of this share of the photo's short side


def natural_photo(source: str, name: str) -> Image.Image:
    from PIL import Image

    if source == "skimage":
        import skimage.data

        array = getattr(skimage.data, name)()
    elif source == "sklearn":
        from sklearn.datasets import load_sample_image

        array = load_sample_image(name)
    elif source == "matplotlib":
        from matplotlib import cbook

        with cbook.get_sample_data(name) as fh:
            return Image.open(fh).convert("RGB")
    else:
        raise ValueError(f"unknown photo source '{source}'")
    return Image.fromarray(array).convert("RGB")


def photo_views(photo: Image.Image) -> list[Image.Image]:
    """Five views: the four corners and the centre, squares of ``VIEW_FRACTION`` of the short
    side. Views of one photo are not independent: the bootstrap resamples photos, never
    views."""
    w, h = photo.size
    side = int(VIEW_FRACTION * min(w, h))
    corners = [(0, 0), (w - side, 0), (0, h - side), (w - side, h - side),
               ((w - side) // 2, (h - side) // 2)]
    return [photo.crop((x, y, x + side, y + side)) for x, y in corners]


VIEWS_PER_PHOTO = 5


@dataclass(frozen=True)
class NaturalViews:
    photos: tuple[str, ...]  # "source:name", one per row
    views_per_photo: int = VIEWS_PER_PHOTO

    def tensors(self, transform) -> torch.Tensor:
        """(n_photos * views_per_photo, 3, H, W), photo-major."""
        import torch

        return torch.stack([transform(view) for source, name in
                            (p.split(":", 1) for p in self.photos)
                            for view in photo_views(natural_photo(source, name))])

    def key(self) -> str:
        """What the cached predictions depend on besides the model."""
        text = json.dumps([AGREEMENT_VERSION, self.photos, self.views_per_photo, VIEW_FRACTION])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Bump when the views or the way agreement predictions are made change: cached ones are dropped.
AGREEMENT_VERSION = 1
AGREEMENT_CACHE = "imagenet_agreement.json"


def natural_views() -> NaturalViews:
    return NaturalViews(tuple(f"{s}:{n}" for s, n in NATURAL_PHOTOS))


class AgreementCache:
    """Top-1 ImageNet predictions on the natural views, per model name, kept in the
    specialist's folder: retraining the specialist replaces the folder and so drops them, and a
    rebuild of the page needs no model for runs the store already holds."""

    def __init__(self, specialist: Specialist, views: NaturalViews):
        self.path = specialist.directory / AGREEMENT_CACHE
        self.key = views.key()
        entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.entries = entries if entries.get("key") == self.key else {"key": self.key}

    def get(self, model: str) -> np.ndarray | None:
        value = self.entries.get(model)
        return None if value is None else np.asarray(value, dtype=np.int64)

    def put(self, model: str, predictions: np.ndarray) -> None:
        from biobench.atomic import write_text_if_changed

        self.entries[model] = [int(p) for p in predictions]
        write_text_if_changed(self.path, json.dumps(self.entries, indent=0))


def imagenet_head(offline_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the ImageNet classifier of an offline model, from its weights file."""
    import torch

    from biobench.backbones.offline import converted_weights

    state = torch.load(converted_weights(offline_name), map_location="cpu", weights_only=True)
    return state["classifier.weight"], state["classifier.bias"]


def imagenet_top1(backbone: Backbone, head: tuple[torch.Tensor, torch.Tensor],
                  images: torch.Tensor, batch_size: int = 50) -> np.ndarray:
    """Top-1 ImageNet class of each image: the head on the backbone's pooled features."""
    weight, bias = head
    out = [(backbone(images[i:i + batch_size]) @ weight.T + bias).argmax(1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate([o.numpy() for o in out])


def agreement(reference: np.ndarray, predicted: np.ndarray) -> float:
    """Share of views whose top-1 class equals the reference's."""
    return float(np.mean(np.asarray(reference) == np.asarray(predicted)))


def agreement_interval(reference: np.ndarray, predicted: np.ndarray, *,
                       n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """Agreement with a percentile bootstrap interval over *photos*: both arrays are
    (n_photos, views_per_photo), and ``biobench.stats`` resamples axis 0, so every replicate
    keeps or drops all views of a photo together (its views are not independent)."""
    from biobench.stats import bootstrap_ci

    reference, predicted = np.asarray(reference), np.asarray(predicted)
    if reference.ndim != 2 or reference.shape != predicted.shape:
        raise ValueError(f"expected two (photos, views) arrays of one shape; got "
                         f"{reference.shape} and {predicted.shape}")
    return bootstrap_ci(agreement, reference, predicted, n_bootstrap=n_bootstrap, seed=seed,
                        level=level)


# ---- the sweep ----------------------------------------------------------------------------

def experiment_store_path() -> Path:
    """The experiment's own results store, beside the book's (so its interpolated models and
    held-out task stay off the leaderboard)."""
    return config.store_path().with_name("forgetting.sqlite")


@dataclass
class Measure:
    """One measure over α: its scores with intervals, and what a paired bootstrap needs."""

    name: str
    label: str
    y_true: np.ndarray
    predictions: list[np.ndarray]  # one per α, aligned with y_true
    score_fn: Callable[[np.ndarray, np.ndarray], float]
    strata: np.ndarray | None
    scores: list[float]
    ci_low: list[float]
    ci_high: list[float]
    runs: list[int | None] = field(default_factory=list)  # store run ids (None: not stored)

    def replicates(self, n_bootstrap: int, seed: int) -> np.ndarray:
        """(n_alpha, n_bootstrap), every α scored on the same resamples (paired)."""
        from biobench.stats import bootstrap_replicates

        return bootstrap_replicates(self.score_fn, self.y_true, self.predictions,
                                    n_bootstrap=n_bootstrap, seed=seed, strata=self.strata)


@dataclass
class ForgettingSweep:
    specialist: Specialist
    alphas: list[float]
    models: list[str]
    protocol: str
    target: Measure
    general_task: Measure
    imagenet: Measure
    n_bootstrap: int
    seed: int
    reused_runs: int
    wall_time_s: float

    def table(self):
        import pandas as pd

        rows = []
        for i, alpha in enumerate(self.alphas):
            row = {"alpha": alpha}
            for m in (self.target, self.general_task, self.imagenet):
                row.update({m.name: m.scores[i], f"{m.name}_low": m.ci_low[i],
                            f"{m.name}_high": m.ci_high[i]})
            rows.append(row)
        table = pd.DataFrame(rows)
        table["general"] = (table[self.general_task.name] + table[self.imagenet.name]) / 2
        table["objective"] = (table[self.target.name] + table["general"]) / 2
        return table


def forgetting_sweep(specialist: Specialist, alphas: Sequence[float], *,
                     general_task: str = "neon_tree_crowns", protocol: str = "simpleshot",
                     store=None, n_bootstrap: int = 1000, seed: int = 0,
                     target_data_root: Path | None = None,
                     general_data_root: Path | None = None,
                     log: Callable[[str], None] = stage) -> ForgettingSweep:
    """Score ``interp:α:BASE|SPECIALIST`` for each α on the held-out target images, on
    ``general_task`` and by ImageNet agreement (see the module doc)."""
    from biobench.backbones import create_backbone, model_info
    from biobench.evaluate import model_record, run_evaluation
    from biobench.store import ResultsStore
    from biobench.tasks import get_task

    started = time.perf_counter()
    alphas = [float(a) for a in alphas]
    store = store if isinstance(store, ResultsStore) else ResultsStore(
        store if store is not None else experiment_store_path())
    parent = get_task(specialist.settings.task)
    target_task = HeldOutTask(parent, specialist.split)
    general = get_task(general_task)
    head = imagenet_head(specialist.settings.base)
    views = natural_views()
    cache = AgreementCache(specialist, views)
    view_images = None

    def top1(model: str) -> np.ndarray:
        """The model's predictions on the views, from the cache or computed (and cached)."""
        nonlocal view_images
        predictions = cache.get(model)
        if predictions is None:
            backbone = create_backbone(model)
            if view_images is None:  # every model here shares the base's preprocessing
                view_images = views.tensors(backbone.transform)
            predictions = imagenet_top1(backbone, head, view_images)
            cache.put(model, predictions)
        return predictions

    # the base's own predictions: agreement at alpha = 0 checks that the mix's end is the base
    reference = top1(specialist.settings.base)
    models, target_runs, general_runs, agreement_preds, reused = [], [], [], [], 0
    for alpha in alphas:
        name = specialist.interpolated(alpha)
        log(f"forgetting sweep: alpha = {alpha}")
        for task, runs, root in ((target_task, target_runs, target_data_root),
                                 (general, general_runs, general_data_root)):
            # by name: a run the store holds is read back without building the model
            result = run_evaluation(name, task, protocol=protocol, seed=seed, store=store,
                                    n_bootstrap=n_bootstrap, data_root=root)
            reused += result.reused
            runs.append(result)
        info = model_info(name)
        record = model_record(info)  # the parents and α with the model's metadata
        record.extra.update(getattr(info, "provenance", {}))
        store.save_models([record])
        agreement_preds.append(top1(name))
        models.append(name)

    def task_measure(name, label, task, runs) -> Measure:
        ids = sorted(runs[0].example_ids)
        y_true = _aligned(runs[0].example_ids, runs[0].y_true, ids)
        preds = []
        for run in runs:
            if not np.array_equal(_aligned(run.example_ids, run.y_true, ids), y_true):
                raise RuntimeError(f"runs of {task.name} disagree on the test labels")
            preds.append(_aligned(run.example_ids, run.y_pred, ids))
        return Measure(name, label, y_true, preds, task.score, task.bootstrap_strata(y_true),
                       [r.score for r in runs], [r.ci_low for r in runs],
                       [r.ci_high for r in runs], [r.run_id for r in runs])

    per_photo = views.views_per_photo
    ref_rows = reference.reshape(-1, per_photo)  # photo x view: the bootstrap draws photos
    agree_rows = [p.reshape(-1, per_photo) for p in agreement_preds]
    intervals = [agreement_interval(ref_rows, p, n_bootstrap=n_bootstrap, seed=seed)
                 for p in agree_rows]
    imagenet = Measure("imagenet_agreement", "ImageNet agreement with the base", ref_rows,
                       agree_rows, agreement, None, [iv.estimate for iv in intervals],
                       [iv.low for iv in intervals], [iv.high for iv in intervals],
                       [None] * len(alphas))
    return ForgettingSweep(
        specialist, alphas, models, protocol,
        task_measure("target", f"{parent.display}: held-out images", target_task, target_runs),
        task_measure("general_task", general.display, general, general_runs),
        imagenet, n_bootstrap, seed, reused, time.perf_counter() - started)


def _aligned(ids: Sequence[str], values: np.ndarray, order: Sequence[str]) -> np.ndarray:
    position = {i: k for k, i in enumerate(ids)}
    if set(position) != set(order):
        raise RuntimeError("runs of one task hold different test examples")
    return np.asarray(values)[[position[i] for i in order]]


@dataclass(frozen=True)
class BestAlpha:
    alpha: float  # the argmax on the full test sets
    objective: float
    share: dict[float, float]  # α -> share of bootstrap replicates whose argmax it is
    low: float  # 2.5% and 97.5% quantiles of the replicates' argmax
    high: float


def objective_scores(target: np.ndarray, general_task: np.ndarray,
                     imagenet: np.ndarray) -> np.ndarray:
    """mean(target, general) with general = mean(general task, ImageNet agreement)."""
    return (target + (general_task + imagenet) / 2) / 2


def first_argmax(values: np.ndarray) -> np.ndarray:
    """Argmax over axis 0; ties go to the first (smallest α: the least departure from the
    base model)."""
    return np.argmax(values, axis=0)


def best_alpha(sweep: ForgettingSweep, level: float = 0.95) -> BestAlpha:
    """The α maximising the objective, and its bootstrap distribution: each replicate
    resamples the three test sets independently (each within its own strata) and scores every
    α on the same resample, so the argmax moves only as the data would."""
    alphas = np.asarray(sweep.alphas)
    full = objective_scores(np.asarray(sweep.target.scores), np.asarray(sweep.general_task.scores),
                            np.asarray(sweep.imagenet.scores))
    best = int(first_argmax(full))
    # a different seed per test set: their resamples are independent of each other
    reps = objective_scores(sweep.target.replicates(sweep.n_bootstrap, sweep.seed),
                            sweep.general_task.replicates(sweep.n_bootstrap, sweep.seed + 1),
                            sweep.imagenet.replicates(sweep.n_bootstrap, sweep.seed + 2))
    chosen = alphas[first_argmax(reps)]
    share = {float(a): float(np.mean(chosen == a)) for a in alphas}
    tail = (1 - level) / 2
    low, high = np.quantile(chosen, [tail, 1 - tail], method="inverted_cdf")
    return BestAlpha(float(alphas[best]), float(full[best]), share, float(low), float(high))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m biobench.finetune``: fine-tune (or reuse) the default specialist and print
    where it is."""
    specialist = finetune()
    print(json.dumps({"directory": str(specialist.directory), "reused": specialist.reused,
                      "model": specialist.model_name,
                      "losses": specialist.provenance["training_loss_per_epoch"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
