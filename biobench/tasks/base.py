"""The task contract: what every BioBench task provides.

A task turns a data folder into train and test ``Example`` lists, names its classes, and owns
its metric. It declares the protocols (probe names) it supports in ``protocols``; the pipeline
refuses any other before reading data. Tasks whose protocol is more than "fit a probe on train,
predict test" (leave-one-out re-identification, 164 binary sub-tasks, open-set rejection,
multi-label traits) override ``fit_predict``, which receives the probe and the run's seed as
arguments and returns a ``Prediction`` value (predictions plus any extras to store). Nothing
is passed back by mutating ``TaskData``.
"""

from __future__ import annotations

import abc
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from biobench import config


class TaskDataMissing(FileNotFoundError):
    """The task's data folder is absent or incomplete; the message says how to get it."""


@dataclass(frozen=True)
class ImageRef:
    """One image on disk, optionally a crop ``box = (left, top, right, bottom)`` in pixels."""

    path: Path
    box: tuple[int, int, int, int] | None = None

    def cache_token(self) -> str:
        return f"{self.path}|{self.box}"

    def content_token(self) -> str:
        """``cache_token`` plus the file's size and modification time: a cheap stand-in for
        its contents (a replaced or truncated image changes it) that costs one ``stat``."""
        try:
            st = os.stat(self.path)
        except OSError:  # a missing file fails later, by name, when it is read
            return f"{self.cache_token()}|missing"
        return f"{self.cache_token()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass(frozen=True)
class Example:
    """One scored unit: an image, or a clip/observation made of several images.

    ``id`` is stable across runs and unique within its split. ``label`` is an int class index,
    ``-1`` for an unknown class (open set), or a tuple of 0/1 for multi-label tasks. ``group``
    carries a task-specific grouping (NeWT sub-task, Beluga individual, ...).
    """

    id: str
    images: tuple[ImageRef, ...]
    label: Any
    group: str | None = None


@dataclass(frozen=True)
class Prediction:
    """What a task's protocol returns: ``y_pred`` indexed by test example on axis 0, and
    figures the protocol measured on the way (re-ID top-k, an open-set threshold, per-sub-task
    accuracy), stored with the run as its extras."""

    y_pred: np.ndarray
    extra: Mapping[str, Any] = field(default_factory=dict)


class UnsupportedProtocol(ValueError):
    """The task cannot be scored with the requested protocol; the message lists those it can."""


@dataclass
class TaskData:
    train: list[Example]
    test: list[Example]
    class_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """Subclass, fill in the class attributes, implement ``load``; register with ``@register_task``."""

    name: ClassVar[str]  # registry key, e.g. "plankton_flowcam"
    display: ClassVar[str]  # human title, e.g. "FlowCam phytoplankton"
    kingdom: ClassVar[str]
    modality: ClassVar[str]
    citation: ClassVar[str]
    metric_name: ClassVar[str] = "macro_f1"
    # how features of the images of one Example are combined: "mean" or "max"
    pooling: ClassVar[str] = "mean"
    # precision of the forward pass on a GPU: "auto" (bf16/fp16 autocast) or "fp32" when a
    # task's scores need it (see ``biobench.features.resolve_precision``)
    feature_precision: ClassVar[str] = "auto"
    default_probe: ClassVar[str] = "logreg"
    # the protocols (probe names in ``biobench.probes.PROBES``) this task can be scored with;
    # ``torch_logreg`` is ``logreg``'s model and search, solved in torch for large tasks
    protocols: ClassVar[tuple[str, ...]] = ("logreg", "torch_logreg", "simpleshot", "knn",
                                            "linear_svm")
    # the probe the BioBench reference scores this task with, when it is one of ours and
    # differs from the default: "linear_head" for the seven tasks it fits a LayerNorm + linear
    # head on (spec/biobench-tasks.md), added to ``protocols`` so that scores comparable with
    # the published leaderboard are one ``--probe`` away
    reference_probe: ClassVar[str | None] = None
    # "offline" (ships with the registry), "benchmark" (the paper's nine + ecdysis),
    # "prior_work" (ImageNet-1K, NeWT, iNat21), "own" (a user's folder or task file,
    # ``biobench.tasks.folder``) or "synthetic" (tests only)
    group: ClassVar[str] = "benchmark"
    # True when the task has no training split and predicts every example from the others
    # (cross-fitting, leave-one-out): ``n_train`` subsampling does not apply.
    cross_fitted: ClassVar[bool] = False
    # one line for users: what command fetches the data
    download_hint: ClassVar[str] = ""
    # True when each example has one label whose class name is a real name a text encoder can
    # read, so the task can also be scored zero-shot (protocol "zero_shot", one question per
    # test example, options = the class names). None: decided by ``ZERO_SHOT_CLASS_TASKS``.
    # Setting it adds "zero_shot" to ``protocols`` (``__init_subclass__``).
    zero_shot_classes: ClassVar[bool | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("zero_shot_classes") is None:
            cls.zero_shot_classes = getattr(cls, "name", None) in ZERO_SHOT_CLASS_TASKS or \
                bool(getattr(super(cls, cls), "zero_shot_classes", False))
        if cls.zero_shot_classes and ZERO_SHOT not in cls.protocols:
            cls.protocols = (*cls.protocols, ZERO_SHOT)
        reference = cls.__dict__.get("reference_probe")
        if reference is not None and reference not in cls.protocols:
            cls.protocols = (*cls.protocols, reference)

    # ---- data -------------------------------------------------------------------------
    def data_path(self, root: Path | None = None) -> Path:
        """The folder holding this task's data (``$BIOBENCH_DATA/<name>`` by default)."""
        return Path(root) if root is not None else config.data_dir() / self.name

    def is_present(self, root: Path | None = None) -> bool:
        """Cheap check that the data looks complete (no image decoding)."""
        try:
            self.check_present(root)
        except TaskDataMissing:
            return False
        return True

    def check_present(self, root: Path | None = None) -> None:
        """Raise ``TaskDataMissing`` naming what is missing and how to get it."""
        path = self.data_path(root)
        if not path.is_dir():
            raise TaskDataMissing(self.missing_message(path))

    def missing_message(self, path: Path, what: str | None = None) -> str:
        head = f"Task '{self.name}': data not found at {path}"
        if what:
            head = f"Task '{self.name}': {what} (in {path})"
        hint = self.download_hint or f"biobench download {self.name} --dir {path}"
        return f"{head}. Get it with: {hint}"

    @abc.abstractmethod
    def load(self, root: Path | None = None) -> TaskData:
        """Read the data folder into train/test examples. Raises ``TaskDataMissing``."""

    # ---- download ---------------------------------------------------------------------
    # ``biobench.download.RemoteFile`` entries fetched by the default ``download``.
    remote_files: ClassVar[tuple] = ()

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        """Fetch, verify and unpack this task's data into ``data_path(root)``.

        ``mirror`` replaces the host part of every URL (tests use a server on 127.0.0.1).
        Tasks with an unusual source (a gated hub, a Python package, video trimming)
        override this method.
        """
        from biobench import download

        return download.download_task(self, self.data_path(root), mirror=mirror, progress=progress)

    # ---- protocol ---------------------------------------------------------------------
    def check_protocol(self, protocol: str) -> None:
        """Raise ``UnsupportedProtocol`` unless ``protocol`` is one this task declares."""
        if protocol not in self.protocols:
            raise UnsupportedProtocol(
                f"task '{self.name}' cannot be scored with protocol '{protocol}'; it supports "
                f"{', '.join(self.protocols)} (default {self.default_probe})")

    def fit_predict(self, probe, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                    data: TaskData, *, seed: int) -> Prediction:
        """Fit a fresh copy of ``probe`` (a scikit-learn estimator, never modified) on the
        training features and predict the test examples. ``seed`` seeds any random step the
        protocol itself takes (fold assignment, ...); the probe carries its own
        ``random_state``."""
        from sklearn.base import clone

        fitted = clone(probe).fit(train_x, train_y)
        return Prediction(fitted.predict(test_x), fitted_scalars(fitted))

    # ---- metric -----------------------------------------------------------------------
    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The task's metric. Arrays are indexed by test example on axis 0, so a bootstrap
        that resamples axis 0 resamples whole examples."""
        from biobench import metrics

        return metrics.get_metric(self.metric_name)(y_true, y_pred)

    def metric_extras(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
        """Further figures computed from the predictions, stored with the run (e.g. a
        challenge's official variant of the metric). Default: none."""
        return {}

    def bootstrap_strata(self, y_true: np.ndarray) -> np.ndarray | None:
        """The strata a bootstrap resamples within (one value per test example), or None for
        plain resampling. See ``biobench.stats`` for why class-balanced metrics stratify."""
        from biobench import metrics

        return metrics.bootstrap_strata(self.metric_name, y_true)

    def labels_array(self, examples: Sequence[Example]) -> np.ndarray:
        return np.asarray([ex.label for ex in examples])

    # ---- zero-shot ------------------------------------------------------------------------
    def zero_shot_questions(self, data: TaskData):
        """The questions the ``zero_shot`` protocol asks about ``data.test`` (a
        ``biobench.zeroshot.base.QuestionSet``). Default, for single-label tasks with real
        class names: one question per test example in slot 0, "which class?", the options the
        class names in label order (so the answer index is the label) and, per option, the
        captions of the task modality's template set (``biobench.zeroshot.templates``)."""
        from biobench.zeroshot.base import MultipleChoice, QuestionSet
        from biobench.zeroshot.templates import captions_for, templates_for

        if not self.zero_shot_classes:
            raise UnsupportedProtocol(
                f"task '{self.name}' has no zero-shot questions: its labels are not single "
                f"classes with real names (protocols: {', '.join(self.protocols)})")
        names = tuple(data.class_names)
        templates = templates_for(self.modality)
        captions = tuple(captions_for(name, templates) for name in names)
        question = f"Which of these is shown in this {self.modality} image?"
        questions = []
        for i, ex in enumerate(data.test):
            label = ex.label
            if np.ndim(label) != 0 or not 0 <= int(label) < len(names):
                raise ValueError(
                    f"task '{self.name}': test example {ex.id} has label {label!r}, not one of "
                    f"its {len(names)} classes; a zero-shot question needs a single known class")
            questions.append(MultipleChoice(example_index=i, slot=0, kind="classification",
                                            question=question, options=names,
                                            answer_idx=int(label), captions=captions,
                                            id=ex.id))
        return QuestionSet(tuple(questions), len(data.test), 1, ("classification",))


# ---- zero-shot ----------------------------------------------------------------------------
ZERO_SHOT = "zero_shot"  # the protocol name (not a probe: biobench.zeroshot answers questions)
# Built-in tasks scored zero-shot from their class names: single-label, and the class names are
# names (species, behaviours, taxa, colours). Not NeWT (164 binary yes/no sub-tasks), FishNet
# (multi-label traits), Beluga (re-identification of individuals) nor FungiCLEF (open set:
# "unknown" is no name) nor Herbarium19 (its classes are category numbers). Another task opts
# in with ``zero_shot_classes = True``.
ZERO_SHOT_CLASS_TASKS = frozenset({
    "ecdysis", "imagenet1k", "inat21", "iwildcam", "kabr", "mammalnet",
    "neon_tree_crowns", "plankton", "plankton_flowcam", "plantnet", "synthetic",
})


# ---- registry ---------------------------------------------------------------------------
_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task name '{cls.name}' registered twice")
    _TASKS[cls.name] = cls
    return cls


def registered_tasks() -> dict[str, type[Task]]:
    return dict(_TASKS)


# ---- shared helpers ---------------------------------------------------------------------
def fitted_scalars(estimator) -> dict[str, Any]:
    """The scalar learned attributes of a fitted scikit-learn estimator (``C_``, ...), named
    ``probe_<attribute>``, for the run's extras; arrays are left out."""
    return {f"probe_{name}": value.item() if isinstance(value, np.generic) else value
            for name, value in sorted(vars(estimator).items())
            if name.endswith("_") and not name.startswith("_")
            and isinstance(value, (int, float, str, bool, np.generic))}



def subsample_train(examples: Sequence[Example], n_train: int, seed: int) -> list[Example]:
    """Class-balanced, seeded subsample of ``n_train`` training examples (``-1``: keep all).

    Examples are dealt round-robin over classes (sorted by label), each class drawing from
    its own seeded permutation, so every class gets ``n_train // n_classes`` or one more
    (or all it has, when it has fewer) and the total is ``min(n_train, len(examples))``.
    The kept examples stay in input order.
    """
    if n_train < 0 or n_train >= len(examples):
        return list(examples)
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        key = ex.label if np.ndim(ex.label) == 0 else tuple(ex.label)
        by_class[key].append(i)
    pools = {c: list(rng.permutation(idx)) for c, idx in sorted(by_class.items(), key=str)}
    chosen: list[int] = []
    remaining = n_train
    # round-robin over classes keeps the sample as balanced as the data allows
    while remaining > 0:
        progressed = False
        for c in pools:
            if remaining == 0:
                break
            if pools[c]:
                chosen.append(int(pools[c].pop()))
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return [examples[i] for i in sorted(chosen)]
