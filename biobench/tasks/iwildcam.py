"""iWildCam 2020 (WILDS v2.0): camera-trap images of 182 mostly mammal species; the test set
comes from camera locations never seen in training.

Download: the WILDS dataset bundle on CodaLab, the same URL the ``wilds`` package uses for
``iwildcam_v2.0``, fetched directly (resumable, no ``wilds`` dependency). It unpacks to:

    <data>/iwildcam/metadata.csv    split, filename, y, location_remapped, datetime, ...
    <data>/iwildcam/categories.csv  y, category_id, name
    <data>/iwildcam/train/<filename>   every image, whatever its split

Train = rows with split "train"; test = split "test" (out-of-distribution locations).
Example ids are the image file names (the reference used running integers).
"""

from __future__ import annotations

import csv
from pathlib import Path

from biobench.download import NO_PUBLISHED_CHECKSUM, RemoteFile
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import Example, ImageRef, TaskData, TaskDataMissing, register_task

TRAIN_SPLIT, TEST_SPLIT = "train", "test"


@register_task
class IWildCam(DownloadedTask):
    name = "iwildcam"
    display = "iWildCam (WILDS)"
    kingdom = "Animalia (mostly mammals)"
    modality = "camera-trap photos"
    citation = ("Beery, S., Cole, E., & Gjoka, A. (2020). The iWildCam 2020 Competition Dataset. "
                "arXiv:2004.10340. As packaged by Koh, P. W., Sagawa, S., Marklund, H., et al. "
                "(2021). WILDS: A Benchmark of in-the-Wild Distribution Shifts. ICML 2021.")
    metric_name = "macro_f1"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "benchmark"
    required_paths = ("metadata.csv", "train")
    remote_files = (
        RemoteFile("https://worksheets.codalab.org/rest/bundles/"
                   "0x6313da2b204647e79a14b468131fcd64/contents/blob/",
                   filename="iwildcam_v2.0.tar.gz",
                   note=f"WILDS iwildcam_v2.0 bundle, about 12 GB; {NO_PUBLISHED_CHECKSUM}"),
    )

    def _class_names(self, path: Path, n_classes: int) -> list[str]:
        names = [f"class {y}" for y in range(n_classes)]
        categories = path / "categories.csv"
        if categories.is_file():
            with open(categories, newline="") as f:
                for row in csv.DictReader(f):
                    y = int(row["y"])
                    if y < n_classes and row.get("name"):
                        names[y] = row["name"]
        return names

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        with open(path / "metadata.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        missing_cols = {"split", "filename", "y"} - set(rows[0] if rows else {})
        if missing_cols:
            raise TaskDataMissing(self.missing_message(
                path, f"metadata.csv lacks the columns {sorted(missing_cols)}; the file is not "
                      "the WILDS iwildcam_v2.0 metadata"))
        splits: dict[str, list[Example]] = {TRAIN_SPLIT: [], TEST_SPLIT: []}
        for row in rows:
            if row["split"] in splits:
                image = path / "train" / row["filename"]
                splits[row["split"]].append(Example(row["filename"], (ImageRef(image),), int(row["y"])))
        n_classes = max(int(row["y"]) for row in rows) + 1
        return TaskData(splits[TRAIN_SPLIT], splits[TEST_SPLIT], self._class_names(path, n_classes))
