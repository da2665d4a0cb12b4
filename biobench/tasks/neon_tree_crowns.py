"""NEON tree crowns, alive vs dead: crops of 37 labelled crowns from one NEON airborne RGB tile.

The tile ``SOAP_061.png`` and its boxes ``testfile_multi.csv`` (columns
``image_path,xmin,ymin,xmax,ymax,label``; labels Alive/Dead) ship inside the ``deepforest``
2.1.0 wheel (MIT), fetched from the package registry with ``pip download --no-deps``. Each box
is one example: the crop is read on the fly (``ImageRef.box``). 9 alive and 28 dead crowns,
all scored by 5-fold cross-fitting (``CrossFittedTask``). A small, imbalanced airborne task:
the intervals are wide, as they should be.
"""

from __future__ import annotations

import csv
from pathlib import Path

from biobench.tasks._offline import RegistryWheelTask, install_files
from biobench.tasks.base import Example, ImageRef, TaskData, register_task

PACKAGE, VERSION = "deepforest", "2.1.0"
CLASSES = ["Alive", "Dead"]


@register_task
class NeonTreeCrowns(RegistryWheelTask):
    name = "neon_tree_crowns"
    display = "NEON tree crowns, alive vs dead (offline)"
    kingdom = "Plantae"
    modality = "airborne RGB (NEON AOP)"
    citation = ("Weinstein, B. G. et al. (2020). DeepForest: A Python package for RGB deep learning "
                "tree crown delineation. Methods in Ecology and Evolution 11(12), 1743-1751; "
                "sample data from the deepforest 2.1.0 wheel (MIT).")
    download_hint = "biobench download neon_tree_crowns   (uses pip download; no other network)"

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        from biobench import assets

        paths = assets.fetch_assets([assets.DEEPFOREST_SOAP_IMAGE, assets.DEEPFOREST_SOAP_BOXES],
                                    progress=progress)
        files = {p.name: p for p in paths}
        return install_files(files, self.data_path(root),
                             {"source": f"{PACKAGE}=={VERSION} (PyPI wheel)", "files": list(files)})

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        examples = []
        with open(path / "testfile_multi.csv", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                if row["label"] not in CLASSES:
                    raise ValueError(f"{path / 'testfile_multi.csv'} row {i + 2}: unknown label "
                                     f"'{row['label']}' (expected one of {CLASSES})")
                box = tuple(int(float(row[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
                examples.append(Example(f"{row['image_path']}#{i:03d}",
                                        (ImageRef(path / row["image_path"], box),),
                                        CLASSES.index(row["label"])))
        return TaskData([], examples, CLASSES)
