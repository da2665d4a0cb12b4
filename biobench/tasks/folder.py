"""Your own classification task: a folder of class folders, with no code and no marker file.

From the command line (or as papermill's ``task`` parameter)::

    biobench run --model random_tiny --task folder:/data/beetles        # train/ and test/
    biobench run --model random_tiny --task folder:/data/beetles/labels.csv
    biobench run --model random_tiny --task beetles.toml                # a nicer name and title

Layouts, images ``.jpg .jpeg .png .tif .tiff .bmp .gif .webp`` (hidden files are skipped):

- ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (``val/`` when there is no
  ``test/``); images may sit in sub-folders of a class folder;
- a CSV file with the columns ``path,label,split`` (``split`` is ``train``, or ``test`` or
  ``val`` for the test set; a relative ``path`` is relative to the CSV's folder; other columns
  are ignored).

Class ids come from the sorted union of the class names of both splits, so a class keeps its id
across splits. A class folder without images and a class found only in the test set (the probe
can never predict it, so its images count as errors) are reported with ``warnings.warn``.

A TOML task file names the task (the name used in the results store and on pages)::

    name = "beetles"                 # required: letters, digits, "_", "-", "."
    title = "Ground beetles"         # optional page title (default: the name)
    data = "images"                  # the folder, relative to this file ... or
    # csv = "images/labels.csv"      # ... a CSV file (give exactly one of data / csv)
    metric = "macro_f1"              # optional: "macro_f1" (default) or "accuracy"
    default_probe = "logreg"         # optional: logreg (default), simpleshot, knn, linear_svm
    citation = "Where the images come from."    # optional; also kingdom, modality

A task *class* of your own (custom labels, class names, splits) subclasses ``ImageFolderTask``
below, is decorated with ``@register_task``, and is found through an entry point in the group
``biobench.tasks`` of your package (README, "Add a task").
"""

from __future__ import annotations

import csv
import re
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from biobench.tasks.base import Example, ImageRef, Task, TaskData, TaskDataMissing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
FOLDER_PREFIX = "folder:"
TASK_FILE_SUFFIX = ".toml"
# Metrics that score one class label per image (the others need task-specific label shapes).
SINGLE_LABEL_METRICS = ("macro_f1", "accuracy")
CSV_COLUMNS = ("path", "label", "split")
CSV_SPLITS = {"train": "train", "test": "test", "val": "test"}
TASK_FILE_KEYS = {"name", "title", "data", "csv", "metric", "default_probe", "citation",
                  "kingdom", "modality"}
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAMES_SHOWN = 10  # a warning names this many classes, then counts the rest
_TASKS_DIR = str(Path(__file__).resolve().parent)

LAYOUT_HELP = ("expected PATH/train/<class>/<image> and PATH/test/<class>/<image> (or "
               "PATH/val/...), or a CSV file with columns path,label,split; see "
               "`biobench run --help` and README 'Add a task'")


class OwnTaskError(ValueError):
    """A task file, CSV or folder of one's own that cannot be used as given; the message names
    the file and what to fix."""


def natural_key(name: str) -> tuple:
    """Sort '2' before '10': class folders named by number keep their numeric order."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path; hidden files skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def warn_data(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside the task modules (e.g. the
    line that loaded the task), not to a line in here."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_TASKS_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def warn_test_only_classes(task_name: str, classes: Sequence[str]) -> None:
    if classes:
        warn_data(
            f"Task '{task_name}': {len(classes)} class(es) occur only in the test set: "
            f"{_some(classes)}. The probe can never predict them, so their test images count as "
            "errors; add training images for them or remove them from the test set.")


def build_task_data(task: Task, train: list[tuple[str, Path, str]],
                    test: list[tuple[str, Path, str]],
                    class_names: Callable[[list[str]], list[str]] = list) -> TaskData:
    """``TaskData`` from (example id, image path, class key) triples of both splits: class ids
    from the naturally sorted union of the keys, ``class_names(keys)`` as the classes' names,
    and a warning naming the classes found only in the test set."""
    keys = sorted({k for *_, k in train} | {k for *_, k in test}, key=natural_key)
    class_id = {k: i for i, k in enumerate(keys)}
    test_only = sorted({k for *_, k in test} - {k for *_, k in train}, key=natural_key)
    warn_test_only_classes(task.name, test_only)

    def examples(rows):
        return [Example(example_id, (ImageRef(path),), class_id[key])
                for example_id, path, key in rows]

    return TaskData(examples(train), examples(test), class_names(keys),
                    extra={"class_keys": keys, "test_only_classes": test_only})


class ImageFolderTask(Task):
    """``<train_dir>/<class>/<image>`` and ``<test_dir>/<class>/<image>``: the base class of an
    image-classification task of one's own, and of the downloaded ImageFolder tasks.

    Subclass it, set the class attributes (``name``, ``display``, ``kingdom``, ``modality``,
    ``citation``; optionally ``train_dir``, ``test_dir``, ``metric_name``, ``default_probe``),
    override ``data_path`` to say where the data is (default ``$BIOBENCH_DATA/<name>``), and
    ``label_of`` / ``class_names_for`` to read labels or class names differently.

    Class ids are built once, from the sorted union of the class names of both splits, so a
    class has the same id in train and test even when one split lacks some folders. A class
    seen only in test keeps its own id: the probe never predicts it, so its examples count as
    errors (and the class as F1 = 0) rather than being dropped or mislabelled; a warning names
    it. Example ids are paths relative to the task folder (image names repeat across classes).
    """

    group: ClassVar[str] = "own"
    kingdom: ClassVar[str] = "not stated"
    modality: ClassVar[str] = "images"
    citation: ClassVar[str] = "not stated"
    train_dir: ClassVar[str] = "train"
    # the test split's folder; with several, the first one present is used
    test_dir: ClassVar[str | tuple[str, ...]] = ("test", "val")

    def _test_dirs(self) -> tuple[str, ...]:
        return (self.test_dir,) if isinstance(self.test_dir, str) else tuple(self.test_dir)

    def split_dirs(self, path: Path) -> tuple[Path, Path | None]:
        """The train folder and the first test folder present (None when none is)."""
        test = next((path / d for d in self._test_dirs() if (path / d).is_dir()), None)
        return path / self.train_dir, test

    def missing_message(self, path: Path, what: str | None = None) -> str:
        if self.remote_files or self.download_hint:  # a dataset someone can download
            return super().missing_message(path, what)
        head = f"Task '{self.name}': " + (f"{what} (in {path})" if what else
                                         f"data folder {path} not found")
        tests = " or ".join(f"{d}/" for d in self._test_dirs())
        return (f"{head}. Expected {path}/{self.train_dir}/<class>/<image> and "
                f"{tests}<class>/<image> beside it; see README 'Add a task'")

    def check_present(self, root: Path | None = None) -> None:
        path = self.data_path(root)
        if not path.is_dir():
            raise TaskDataMissing(self.missing_message(path))
        train, test = self.split_dirs(path)
        if not train.is_dir():
            raise TaskDataMissing(self.missing_message(path, f"missing {self.train_dir}/"))
        if test is None:
            tests = " or ".join(f"{d}/" for d in self._test_dirs())
            raise TaskDataMissing(self.missing_message(path, f"missing {tests}"))

    def label_of(self, image: Path, split_dir: Path) -> str | None:
        """The class name of ``image``: its first folder under the split folder; None for an
        image directly in the split folder (it has no class and is skipped with a warning)."""
        parts = image.relative_to(split_dir).parts
        return parts[0] if len(parts) > 1 else None

    def class_names_for(self, root: Path, labels: Sequence[str]) -> list[str]:
        """Human-readable names for the sorted class keys (default: the keys themselves)."""
        return list(labels)

    def _scan(self, root: Path, split_dir: Path) -> list[tuple[str, Path, str]]:
        files = image_files(split_dir)
        if not files:
            raise TaskDataMissing(self.missing_message(root, f"no images found in {split_dir}"))
        rows, unlabelled = [], []
        for f in files:
            key = self.label_of(f, split_dir)
            if key is None:
                unlabelled.append(f.name)
            else:
                rows.append((f.relative_to(root).as_posix(), f, key))
        if unlabelled:
            warn_data(
                f"Task '{self.name}': {len(unlabelled)} image(s) directly in {split_dir} are "
                f"not in a class folder and are skipped: {_some(unlabelled)}")
        with_images = {key for *_, key in rows}
        empty = sorted((d.name for d in split_dir.iterdir()
                        if d.is_dir() and not d.name.startswith(".") and d.name not in with_images),
                       key=natural_key)
        if empty:
            warn_data(
                f"Task '{self.name}': {len(empty)} class folder(s) in {split_dir} hold no images "
                f"and are ignored: {_some(empty)}")
        return rows

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        train_dir, test_dir = self.split_dirs(path)
        train, test = self._scan(path, train_dir), self._scan(path, test_dir)
        return build_task_data(self, train, test, lambda keys: self.class_names_for(path, keys))


class FolderTask(ImageFolderTask):
    """A task made on the fly from ``folder:PATH`` (a folder or a CSV file) or a TOML task file.

    Its ``name`` is ``folder:<absolute path>`` (or the TOML file's ``name``): stable across
    working folders, and ``get_task(task.name)`` for a folder task gives it back.
    """

    def __init__(self, location: str | Path, *, name: str | None = None,
                 display: str | None = None, metric: str = "macro_f1",
                 default_probe: str = "logreg", citation: str | None = None,
                 kingdom: str | None = None, modality: str | None = None,
                 source: str | None = None):
        location = Path(location).expanduser().resolve()
        self.source = source or f"{FOLDER_PREFIX}{location}"  # what to name in errors
        self.csv_file = location if location.suffix.lower() == ".csv" else None
        self.folder = location.parent if self.csv_file else location
        self.name = name or f"{FOLDER_PREFIX}{location}"
        self.display = display or f"{self.folder.name} (own task)"
        if metric not in SINGLE_LABEL_METRICS:
            raise OwnTaskError(f"{self.source}: metric '{metric}' is not one for a single label "
                               f"per image; use one of {', '.join(SINGLE_LABEL_METRICS)}")
        if default_probe not in self.protocols:
            raise OwnTaskError(f"{self.source}: default_probe '{default_probe}' is not a probe; "
                               f"use one of {', '.join(self.protocols)}")
        self.metric_name = metric
        self.default_probe = default_probe
        self.citation = citation or f"Own data in {location}"
        if kingdom:
            self.kingdom = kingdom
        if modality:
            self.modality = modality

    def data_path(self, root: Path | None = None) -> Path:
        """The task's folder (the CSV's folder for a CSV task); ``root`` replaces it."""
        return Path(root) if root is not None else self.folder

    def _csv_path(self, root: Path | None) -> Path:
        return self.data_path(root) / self.csv_file.name

    def check_present(self, root: Path | None = None) -> None:
        if self.csv_file is None:
            path = self.data_path(root)
            if path.is_file():
                raise TaskDataMissing(f"Task '{self.name}': {path} is a file, not a folder; "
                                      f"{LAYOUT_HELP}")
            return super().check_present(root)
        csv_path = self._csv_path(root)
        if not csv_path.is_file():
            raise TaskDataMissing(f"Task '{self.name}': CSV file {csv_path} not found; "
                                  f"{LAYOUT_HELP}")

    def missing_message(self, path: Path, what: str | None = None) -> str:
        message = super().missing_message(path, what)
        csvs = sorted(p.name for p in path.glob("*.csv")) if path.is_dir() else []
        if csvs:  # a folder with a labels file but no train/: the user meant the CSV
            message += f". To use its CSV file instead: folder:{path / csvs[0]}"
        return message

    def load(self, root: Path | None = None) -> TaskData:
        if self.csv_file is None:
            return super().load(root)
        self.check_present(root)
        return self._load_csv(self._csv_path(root))

    def _load_csv(self, csv_path: Path) -> TaskData:
        base = csv_path.parent
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:  # BOM from spreadsheets
            reader = csv.DictReader(handle)
            missing_cols = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing_cols:
                raise OwnTaskError(f"{csv_path}: missing column(s) {', '.join(missing_cols)}; "
                                   f"the header must name {','.join(CSV_COLUMNS)} (found "
                                   f"{','.join(reader.fieldnames or []) or 'no header'})")
            rows = list(reader)
        splits: dict[str, list[tuple[str, Path, str]]] = {"train": [], "test": []}
        seen: set[str] = set()
        absent: list[str] = []
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            rel, label = (row["path"] or "").strip(), (row["label"] or "").strip()
            split = CSV_SPLITS.get((row["split"] or "").strip().lower())
            if not rel or not label or split is None:
                raise OwnTaskError(
                    f"{csv_path}, line {line}: every row needs a path, a label and a split of "
                    f"{'/'.join(CSV_SPLITS)}; got {dict(row)}")
            if rel in seen:
                raise OwnTaskError(f"{csv_path}, line {line}: '{rel}' is listed twice")
            seen.add(rel)
            image = Path(rel).expanduser()
            image = image if image.is_absolute() else base / image
            if not image.is_file():
                absent.append(rel)
            splits[split].append((rel, image, label))
        if absent:
            raise TaskDataMissing(f"Task '{self.name}': {len(absent)} image(s) listed in "
                                  f"{csv_path} do not exist (relative paths are read from "
                                  f"{base}): {_some(absent)}")
        for split, examples in splits.items():
            if not examples:
                raise TaskDataMissing(f"Task '{self.name}': {csv_path} has no '{split}' rows"
                                      + (" (or 'val')" if split == "test" else ""))
        return build_task_data(self, splits["train"], splits["test"])

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        """Own data has nothing to download: return its folder when present, else say why."""
        self.check_present(root)
        return self.data_path(root)


def load_task_file(path: str | Path) -> FolderTask:
    """The task described by a TOML task file (see the module docstring)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise OwnTaskError(f"task file {path} not found (a task name ending in "
                           f"'{TASK_FILE_SUFFIX}' is read as a TOML task file)")
    try:
        spec: dict[str, Any] = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise OwnTaskError(f"{path}: not valid TOML: {err}") from err
    unknown = sorted(set(spec) - TASK_FILE_KEYS)
    if unknown:
        raise OwnTaskError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                           f"{', '.join(sorted(TASK_FILE_KEYS))}")
    not_text = sorted(k for k, v in spec.items() if not isinstance(v, str))
    if not_text:
        raise OwnTaskError(f"{path}: {', '.join(not_text)} must be text (in quotes)")
    name = spec.get("name")
    if not name or not _TASK_NAME.match(name):
        raise OwnTaskError(f"{path}: 'name' must be given and use only letters, digits, '_', "
                           f"'-' and '.' (it names the task in the store); got {name!r}")
    if ("data" in spec) == ("csv" in spec):
        raise OwnTaskError(f"{path}: give exactly one of 'data' (a folder with train/ and "
                           "test/) or 'csv' (a file with columns path,label,split)")
    from biobench.tasks import registered_tasks

    if name in registered_tasks():
        raise OwnTaskError(f"{path}: name '{name}' is already a registered task; choose another")
    location = Path(spec.get("data") or spec["csv"]).expanduser()
    location = location if location.is_absolute() else path.parent / location
    if "csv" in spec and location.suffix.lower() != ".csv":
        raise OwnTaskError(f"{path}: 'csv' must name a .csv file; got {spec['csv']!r}")
    return FolderTask(location, name=name, display=spec.get("title"),
                      metric=spec.get("metric", "macro_f1"),
                      default_probe=spec.get("default_probe", "logreg"),
                      citation=spec.get("citation"), kingdom=spec.get("kingdom"),
                      modality=spec.get("modality"), source=str(path))


def own_task(name: str) -> FolderTask | None:
    """The task named ``folder:PATH`` or ``FILE.toml``; None for any other name."""
    if name.startswith(FOLDER_PREFIX):
        location = name[len(FOLDER_PREFIX):]
        if not location:
            raise OwnTaskError(f"'{name}': give a folder or CSV file after 'folder:'")
        return FolderTask(location)
    if name.lower().endswith(TASK_FILE_SUFFIX):
        return load_task_file(name)
    return None
