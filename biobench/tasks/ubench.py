"""μ-Bench (Micro-Bench) tasks: 22 fine-grained and 5 coarse microscopy question sets.

- ``ubench_<hub key>`` (22): the dataset's classification question about each of its images.
  Zero-shot by default; also cross-fitted probes (logreg, simpleshot, knn: μ-Bench has no
  train split, so every image is predicted by a probe fitted on the other folds). The label of
  an image is its gold answer's index among the dataset's classes (``data.class_order``: the
  options in first-seen order), which equals the hub's ``answer_idx`` while options come in one
  fixed order. Eulenberg darkfield and epifluorescence are tasks, but
  ``in_official_total = False``: the official fine-grained total leaves them out (spec §4).
- ``ubench_coarse_<type>`` (5: domain, subdomain, modality, submodality, stain): that question
  about every image of the 22 datasets; zero-shot only. nirschl_unpub_fluorescence has no
  stain question: its images keep a MISSING stain slot (label -1).

opencell and sirinukunwattana_et_al_2016 (segmentation-only sources) are in no task.

Data: all 27 tasks share one folder, ``$BIOBENCH_DATA/ubench`` (``biobench.ubench.data``).
Examples are images; ``load`` writes each image it needs once as a PNG under
``images/<dataset>/<image_id>.png`` (the hub bytes are PNG already, so this is a copy, no
re-encoding), so the feature pipeline, its cache and the data fingerprint work on files as for
every other task. This module imports no pyarrow/PIL at import time.

Questions (``zero_shot_questions``): two slots, one per caption phrasing (contrastive models
score both; accuracy pools them): ``<type>_0`` from captions ``<type>`` (coarse) or
``classification_0``, ``<type>_1`` from captions ``<type>_1``. ``generative_questions`` has one
slot, the question as the hub asks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from biobench import config
from biobench.tasks._offline import CrossFittedTask
from biobench.tasks.base import (Example, ImageRef, Task, TaskData, TaskDataMissing,
                                 register_task)
from biobench.ubench.meta import (COARSE_KINDS, FINE_KIND, UBENCH_DATASETS, UbenchDataset)

DATA_FOLDER_NAME = "ubench"
CITATION = ("Lozano, A., Nirschl, J., Burgess, J., Gupte, S. R., Zhang, Y., Unell, A., & "
            "Yeung-Levy, S. (2024). Micro-Bench: A Microscopy Benchmark for Vision-Language "
            "Understanding. NeurIPS 2024 Datasets and Benchmarks. arXiv:2407.01791. Data: "
            "huggingface.co/datasets/jnirschl/uBench (CC-BY-SA-4.0).")
ROWS_KEY = "ubench_rows"  # TaskData.extra: example id -> UbenchRow


class UbenchTask(Task):
    """Shared machinery of the μ-Bench tasks: one data folder, rows read from the shards,
    images written once as PNG, questions from the hub's question/caption columns."""

    group = "ubench"
    cross_fitted = True  # no train split
    metric_name = "question_accuracy"
    default_probe = "zero_shot"
    kingdom = "various (microscopy)"
    citation = CITATION
    download_hint = "biobench download ubench   (7 Arrow shards, 3.6 GB, from the Hugging Face hub)"
    kind: ClassVar[str]  # the question type this task asks
    datasets: ClassVar[tuple[str, ...]]  # the hub dataset keys it covers

    def data_path(self, root: Path | None = None) -> Path:
        return Path(root) if root is not None else config.data_dir() / DATA_FOLDER_NAME

    def check_present(self, root: Path | None = None) -> None:
        from biobench.ubench.data import missing_files

        path = self.data_path(root)
        missing = missing_files(path)
        if missing:
            raise TaskDataMissing(self.missing_message(path, f"missing {', '.join(missing)}"))

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        """Fetch the shared μ-Bench shards; ``mirror`` is the hub endpoint to use."""
        from biobench.ubench.data import download_ubench

        return download_ubench(self.data_path(root), endpoint=mirror, progress=progress)

    # ---- data -------------------------------------------------------------------------
    def load(self, root: Path | None = None) -> TaskData:
        from biobench.ubench import data as ub

        self.check_present(root)
        path = self.data_path(root)
        rows = list(ub.iter_rows(path, datasets=self.datasets, kinds=(self.kind,)))
        if not rows:
            raise TaskDataMissing(self.missing_message(
                path, f"no rows of {', '.join(self.datasets)} in the shards"))
        classes = ub.class_order(r.questions.get(self.kind) for r in rows)
        images = ub.materialise_images(path, rows)
        examples, by_id = [], {}
        for row, image in zip(rows, images):
            example_id = f"{row.dataset}/{row.image_id}"
            if example_id in by_id:
                raise ValueError(f"task '{self.name}': image {example_id} appears twice in "
                                 f"{path}; the shards are not the pinned revision's")
            question = row.questions.get(self.kind)
            label = -1 if question is None else self._class_index(classes, question, example_id)
            examples.append(Example(example_id, (ImageRef(image),), label, group=row.dataset))
            by_id[example_id] = row
        return TaskData([], examples, classes, {ROWS_KEY: by_id})

    def _class_index(self, classes: list[str], question, example_id: str) -> int:
        try:
            return classes.index(question.answer)
        except ValueError:
            raise ValueError(f"task '{self.name}': image {example_id}: gold answer "
                             f"{question.answer!r} is not among the options") from None

    # ---- questions --------------------------------------------------------------------
    def slot_names(self) -> tuple[str, str]:
        return (f"{self.kind}_0", f"{self.kind}_1")

    def _rows(self, data: TaskData):
        rows = data.extra.get(ROWS_KEY)
        if rows is None:
            raise ValueError(f"task '{self.name}': TaskData has no μ-Bench rows; build it with "
                             f"the task's load()")
        return [rows[ex.id] for ex in data.test]

    def zero_shot_questions(self, data: TaskData):
        """Two slots per image (the two caption phrasings); a null question fills neither."""
        from biobench.zeroshot.base import MultipleChoice, QuestionSet

        questions = []
        for i, row in enumerate(self._rows(data)):
            q = row.questions.get(self.kind)
            if q is None:
                continue
            for slot, captions in enumerate(row.caption_phrasings(self.kind)):
                if captions is None:
                    raise ValueError(
                        f"task '{self.name}': image {row.dataset}/{row.image_id} has a "
                        f"{self.kind} question but no captions for phrasing {slot}")
                if len(captions) != len(q.options):
                    raise ValueError(
                        f"task '{self.name}': image {row.dataset}/{row.image_id}: "
                        f"{len(captions)} captions (phrasing {slot}) for {len(q.options)} options")
                questions.append(MultipleChoice(
                    i, slot, self.kind, q.question, q.options, q.answer_idx,
                    tuple((c,) for c in captions), id=f"{q.id or row.image_id}/{slot}"))
        return QuestionSet(tuple(questions), len(data.test), 2, self.slot_names())

    def generative_questions(self, data: TaskData):
        """One slot per image: the question as asked, with its options (a generative model is
        asked once). Captions are the options themselves (the contract wants one set each)."""
        from biobench.zeroshot.base import MultipleChoice, QuestionSet

        questions = tuple(
            MultipleChoice(i, 0, self.kind, q.question, q.options, q.answer_idx,
                           tuple((o,) for o in q.options), id=q.id or row.image_id)
            for i, row in enumerate(self._rows(data))
            if (q := row.questions.get(self.kind)) is not None)
        return QuestionSet(questions, len(data.test), 1, (self.kind,))


class UbenchFineTask(UbenchTask, CrossFittedTask):
    kind = FINE_KIND
    protocols = ("zero_shot", "logreg", "torch_logreg", "simpleshot", "knn")
    dataset: ClassVar[UbenchDataset]
    in_official_total: ClassVar[bool] = True


class UbenchCoarseTask(UbenchTask):
    protocols = ("zero_shot",)
    modality = "microscopy (light, fluorescence, electron)"
    datasets = tuple(UBENCH_DATASETS)


def _fine(meta: UbenchDataset) -> type[UbenchFineTask]:
    return type(f"UbenchFine_{meta.key}", (UbenchFineTask,), {
        "__module__": __name__, "__doc__": f"μ-Bench fine-grained: {meta.display}.",
        "name": f"ubench_{meta.key}", "display": f"μ-Bench: {meta.display}",
        "modality": f"{meta.modality} microscopy", "datasets": (meta.key,), "dataset": meta,
        "in_official_total": meta.in_official_total})


def _coarse(kind: str) -> type[UbenchCoarseTask]:
    return type(f"UbenchCoarse_{kind}", (UbenchCoarseTask,), {
        "__module__": __name__, "__doc__": f"μ-Bench coarse perception: {kind}.",
        "name": f"ubench_coarse_{kind}", "display": f"μ-Bench coarse: {kind}", "kind": kind})


FINE_TASKS: dict[str, type[UbenchFineTask]] = {
    key: register_task(_fine(meta)) for key, meta in UBENCH_DATASETS.items()}
COARSE_TASKS: dict[str, type[UbenchCoarseTask]] = {
    kind: register_task(_coarse(kind)) for kind in COARSE_KINDS}
