"""Shared machinery of the downloaded tasks: the "is it all there" check and the
class-per-folder (ImageFolder) layout used by Herbarium19, Plankton, Pl@ntNet, iNat21 and
ImageNet-1K.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Sequence

from biobench import download
from biobench.tasks.base import Example, ImageRef, Task, TaskData, TaskDataMissing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


def natural_key(name: str) -> tuple:
    """Sort '2' before '10': class folders named by number keep their numeric order."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


class DownloadedTask(Task):
    """A task whose data ``biobench download`` fetches. Present means: the listed files exist
    and the download finished (its completion marker is there)."""

    # paths (relative to the task folder) that must exist; named in the error when missing
    required_paths: ClassVar[tuple[str, ...]] = ()

    def check_present(self, root: Path | None = None) -> None:
        path = self.data_path(root)
        if not path.is_dir():
            raise TaskDataMissing(self.missing_message(path))
        for rel in self.required_paths:
            if not (path / rel).exists():
                raise TaskDataMissing(self.missing_message(path, f"missing {rel}"))
        if not download.is_complete(path):
            raise TaskDataMissing(self.missing_message(
                path, f"the download did not finish (no {download.MARKER_NAME} marker); "
                      "running the download again resumes it"))


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path; hidden files skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


class ImageFolderTask(DownloadedTask):
    """``<train_dir>/<class>/<image>`` and ``<test_dir>/<class>/<image>``.

    Class ids are built once, from the sorted union of the class names of both splits, so a
    class has the same id in train and test even when one split lacks some folders. A class
    seen only in test keeps its own id: the probe never predicts it, so its examples count as
    errors (and the class as F1 = 0) rather than being dropped or mislabelled.
    Example ids are paths relative to the task folder (image names repeat across classes).
    """

    train_dir: ClassVar[str] = "train"
    test_dir: ClassVar[str] = "val"

    @property
    def required_paths(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.train_dir, self.test_dir)

    def label_of(self, image: Path, split_dir: Path) -> str:
        """The class name of ``image``: its first folder under the split folder."""
        return image.relative_to(split_dir).parts[0]

    def class_names_for(self, root: Path, labels: Sequence[str]) -> list[str]:
        """Human-readable names for the sorted class keys (default: the keys themselves)."""
        return list(labels)

    def _scan(self, root: Path, split: str) -> list[tuple[Path, str]]:
        split_dir = root / split
        files = image_files(split_dir)
        if not files:
            raise TaskDataMissing(self.missing_message(root, f"no images found in {split_dir}"))
        return [(f, self.label_of(f, split_dir)) for f in files]

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        train_files = self._scan(path, self.train_dir)
        test_files = self._scan(path, self.test_dir)
        keys = sorted({k for _, k in train_files} | {k for _, k in test_files}, key=natural_key)
        class_id = {k: i for i, k in enumerate(keys)}

        def examples(files: list[tuple[Path, str]]) -> list[Example]:
            return [Example(f.relative_to(path).as_posix(), (ImageRef(f),), class_id[k])
                    for f, k in files]

        train_keys = {k for _, k in train_files}
        return TaskData(
            examples(train_files), examples(test_files), self.class_names_for(path, keys),
            extra={"class_keys": keys,
                   "test_only_classes": sorted({k for _, k in test_files} - train_keys, key=natural_key)},
        )
