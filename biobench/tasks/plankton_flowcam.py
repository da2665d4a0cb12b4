"""FlowCam phytoplankton: 105 real FlowCam images of 6 classes (EcoTaxa, VLIZ), offline.

The images ship inside the ``planktonclas`` 0.2.4 wheel (Apache-2.0, W. Decrop, VLIZ/LifeWatch),
fetched from the package registry with ``pip download --no-deps``. On disk:

    <data>/plankton_flowcam/demo-images/<Class>/ecotaxa_<Class>_<uuid>.jpg
    <data>/plankton_flowcam/dataset_files/classes.txt   (class order = label index)

The package's own test split holds 8 images; we pool all 105 and split every class in half
(seeded), so the test set (52 images) supports a bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path

from biobench.tasks._offline import COMPLETE_MARKER, install_files, stratified_half_split
from biobench.tasks.base import Example, ImageRef, Task, TaskData, TaskDataMissing, register_task

PACKAGE, VERSION = "planktonclas", "0.2.4"


@register_task
class PlanktonFlowCam(Task):
    name = "plankton_flowcam"
    display = "FlowCam phytoplankton (offline)"
    kingdom = "Chromista / Protozoa"
    modality = "flow-imaging microscopy (FlowCam)"
    citation = ("Decrop, W. et al. planktonclas 0.2.4: phytoplankton classification demo images "
                "from EcoTaxa (VLIZ / LifeWatch Belgium), Apache-2.0. https://pypi.org/project/planktonclas/")
    metric_name = "macro_f1"
    default_probe = "logreg"
    group = "offline"
    download_hint = "biobench download plankton_flowcam   (uses pip download; no other network)"

    def check_present(self, root: Path | None = None) -> None:
        path = self.data_path(root)
        if not (path / COMPLETE_MARKER).exists():
            raise TaskDataMissing(self.missing_message(path))

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        from biobench import assets

        resources = assets.fetch_asset(assets.PLANKTONCLAS_RESOURCES, progress=progress)
        files = {str(p.relative_to(resources)): p for p in sorted(resources.rglob("*"))
                 if p.is_file() and p.parts[len(resources.parts)] in ("demo-images", "dataset_files")}
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
        train, test = stratified_half_split(examples, seed=0)
        return TaskData(train, test, classes)
