"""Shared machinery of the tasks whose data ``biobench download`` fetches: the "did the download
finish" check, and the class-per-folder (ImageFolder) layout of Herbarium19, Plankton,
Pl@ntNet, iNat21 and ImageNet-1K (``biobench.tasks.folder.ImageFolderTask`` plus that check).

For an image task of your own, use ``biobench.tasks.folder`` instead: no marker file is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from biobench import download
from biobench.tasks.base import Task, TaskDataMissing
from biobench.tasks.folder import (  # noqa: F401  (re-exported for the task modules)
    IMAGE_SUFFIXES,
    ImageFolderTask,
    image_files,
    natural_key,
)


class DownloadedTask(Task):
    """A task whose data ``biobench download`` fetches. Present means: the task's own layout
    check passes, the listed files exist, and the download finished (its completion marker,
    a JSON file written last by ``biobench download``, is there)."""

    # paths (relative to the task folder) that must exist; named in the error when missing
    required_paths: ClassVar[tuple[str, ...]] = ()

    def check_present(self, root: Path | None = None) -> None:
        super().check_present(root)  # the folder itself (and, for ImageFolder, its splits)
        path = self.data_path(root)
        for rel in self.required_paths:
            if not (path / rel).exists():
                raise TaskDataMissing(self.missing_message(path, f"missing {rel}"))
        if not download.is_complete(path):
            marker = path / download.MARKER_NAME
            state = ("is not one it wrote (not its JSON)" if marker.exists()
                     else "is not there")
            raise TaskDataMissing(self.missing_message(
                path, f"the download did not finish: {download.MARKER_NAME}, the file "
                      f"`biobench download` writes when a download finishes, {state}. Running "
                      f"the download again resumes it. Your own data needs no such file: use "
                      f"--task folder:{path} (README 'Add a task')"))


class DownloadedImageFolderTask(DownloadedTask, ImageFolderTask):
    """A downloaded dataset laid out as ``<train_dir>/<class>/<image>`` and
    ``<test_dir>/<class>/<image>``: ``ImageFolderTask`` plus the download check."""

    group: ClassVar[str] = "benchmark"
    test_dir: ClassVar[str | tuple[str, ...]] = "val"
