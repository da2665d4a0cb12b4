"""FlowCam phytoplankton: 105 real FlowCam images of 6 classes (EcoTaxa, VLIZ), offline.

The images ship inside the ``planktonclas`` 0.2.4 wheel (Apache-2.0, W. Decrop, VLIZ/LifeWatch),
fetched from the package registry with ``pip download --no-deps``. On disk:

    <data>/plankton_flowcam/demo-images/<Class>/ecotaxa_<Class>_<uuid>.jpg
    <data>/plankton_flowcam/dataset_files/classes.txt   (class order = label index)

The package's own test split holds 8 images, too few for an interval to mean anything, so the
task is cross-fitted: all 105 images are scored, each by a probe fitted on the other four
stratified folds (see ``CrossFittedTask``).
"""

from __future__ import annotations

from pathlib import Path

from biobench.tasks._offline import RegistryWheelTask, install_files
from biobench.tasks.base import Example, ImageRef, TaskData, TaskDataMissing, register_task

PACKAGE, VERSION = "planktonclas", "0.2.4"


@register_task
class PlanktonFlowCam(RegistryWheelTask):
    name = "plankton_flowcam"
    display = "FlowCam phytoplankton (offline)"
    kingdom = "Chromista / Protozoa"
    modality = "flow-imaging microscopy (FlowCam)"
    citation = ("Decrop, W. et al. planktonclas 0.2.4: phytoplankton classification demo images "
                "from EcoTaxa (VLIZ / LifeWatch Belgium), Apache-2.0. https://pypi.org/project/planktonclas/")
    download_hint = "biobench download plankton_flowcam   (uses pip download; no other network)"

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        from biobench import assets

        images, splits = assets.fetch_assets([assets.PLANKTON_IMAGES, assets.PLANKTON_SPLITS],
                                             progress=progress)
        files = {f"{folder.name}/{p.relative_to(folder)}": p
                 for folder in (images, splits) for p in sorted(folder.rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
        return install_files(files, self.data_path(root),
                             {"source": f"{PACKAGE}=={VERSION} (PyPI wheel)", "files": len(files)})

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        classes = (path / "dataset_files" / "classes.txt").read_text().split()
        examples = []
        for label, cls in enumerate(classes):
            folder = path / "demo-images" / cls
            files = sorted(folder.glob("*.jpg"))
            if not files:
                raise TaskDataMissing(self.missing_message(path, f"no images for class '{cls}' in {folder}"))
            examples += [Example(f"{cls}/{f.name}", (ImageRef(f),), label) for f in files]
        return TaskData([], examples, classes)
