"""Beluga whale re-identification (Cook Inlet belugas, LILA "beluga-id-2022").

Source: Wild Me / NOAA on LILA, one tar.gz. On disk:

    <data>/beluga/beluga.coco/images/train2022/<file_name>
    <data>/beluga/beluga.coco/annotations/instances_train2022.json   (COCO)

Every image has exactly one annotation; its ``name`` is the individual whale, the label. The
example id is the COCO ``image_id``. There is no split: every image is scored.

Protocol: leave-one-out k-nearest neighbours with k = 5, the value the BioBench reference code
uses (its docstring says 1). Each image is a query against all *other* images, never itself;
the neighbours vote with equal weight, and a tie goes to the tied individual whose first
neighbour is nearest. Similarity is cosine on the features, as the project's ``knn`` probe, whose
``k`` is used (``--probe-param k=3`` changes it). ``knn`` is the only protocol this task
accepts: leave-one-out re-identification is a nearest-neighbour protocol, and any other probe
is refused rather than silently replaced. Metric: macro-F1 over individuals.
An individual photographed once can never be matched, which is part of why scores are low.
Re-identification scores are recorded too: top-1 and top-5 accuracy (is the same whale among
the nearest 1 / 5 other images) and mean average precision over queries with another image of
the same whale.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm  # plain bars: tqdm.auto warns on stderr in notebooks without ipywidgets

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import (Example, ImageRef, Prediction, TaskData, TaskDataMissing,
                                 register_task)

ROOT_DIR = "beluga.coco"
ANNOTATIONS = f"{ROOT_DIR}/annotations/instances_train2022.json"
IMAGE_DIR = f"{ROOT_DIR}/images/train2022"
DEFAULT_K = 5
QUERY_BLOCK = 1024  # queries per block of the similarity matrix (memory stays O(block * n))


def leave_one_out_knn(x: np.ndarray, labels: np.ndarray, k: int = DEFAULT_K,
                      progress: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Leave-one-out k-NN predictions (cosine similarity, self excluded) and re-ID scores.

    Returns ``(predictions, {"top1": ..., "top5": ..., "map": ...})``. Ties in similarity keep
    input order (stable sort), so the result is deterministic.
    """
    from biobench.probes import l2_normalise, majority_vote
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise ValueError("leave-one-out needs at least two examples")
    z = l2_normalise(np.asarray(x, dtype=np.float64))
    k = min(k, n - 1)
    preds = np.empty(n, dtype=labels.dtype)
    top1 = top5 = 0
    average_precisions = []
    for start in tqdm(range(0, n, QUERY_BLOCK), desc="leave-one-out k-NN", unit="block",
                      disable=not progress):
        rows = np.arange(start, min(start + QUERY_BLOCK, n))
        sims = z[rows] @ z.T
        sims[np.arange(len(rows)), rows] = -np.inf  # the query is not its own neighbour
        order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]  # self sorts last
        for query, ranked in zip(rows, order):
            preds[query] = majority_vote(labels[ranked[:k]])
            hits = labels[ranked] == labels[query]
            top1 += bool(hits[0])
            top5 += bool(hits[:5].any())
            if hits.any():
                ranks = np.flatnonzero(hits) + 1
                average_precisions.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    scores = {"top1": top1 / n, "top5": top5 / n,
              "map": float(np.mean(average_precisions)) if average_precisions else float("nan"),
              "n_queries_with_match": len(average_precisions)}
    return preds, scores


@register_task
class Beluga(DownloadedTask):
    name = "beluga"
    display = "Beluga whale re-identification"
    kingdom = "Animalia (cetaceans)"
    modality = "aerial survey photos (individual re-identification)"
    citation = ("Cook Inlet Beluga Whale Photo-ID (beluga-id-2022), NOAA Fisheries and Wild Me; "
                "distributed by LILA BC. https://lila.science/datasets/beluga-id-2022/")
    metric_name = "macro_f1"
    default_probe = "knn"
    protocols = ("knn",)
    group = "benchmark"
    cross_fitted = True  # no split: leave-one-out over every image, so n_train does not apply
    remote_files = (
        RemoteFile("http://us-west-2.opendata.source.coop.s3.amazonaws.com/agentmorris/"
                   "lila-wildlife/wild-me/beluga.coco.tar.gz",
                   note="no published size or checksum"),
    )
    required_paths = (ANNOTATIONS, IMAGE_DIR)

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        coco_file = path / ANNOTATIONS
        try:
            coco = json.loads(coco_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{coco_file} is not valid JSON ({exc}); delete the folder and "
                             "download again.") from exc
        per_image = Counter(a["image_id"] for a in coco["annotations"])
        wrong = {i: c for i, c in per_image.items() if c != 1}
        unannotated = [im["id"] for im in coco["images"] if im["id"] not in per_image]
        if wrong or unannotated:
            raise ValueError(f"{coco_file}: every image needs exactly one annotation; image ids "
                             f"{sorted(wrong)[:5] or unannotated[:5]} do not")
        names = {a["image_id"]: str(a["name"]) for a in coco["annotations"]}
        individuals = sorted(set(names.values()))
        index = {name: i for i, name in enumerate(individuals)}
        examples = []
        for image in sorted(coco["images"], key=lambda im: im["id"]):
            file = path / IMAGE_DIR / image["file_name"]
            if not file.is_file():
                raise TaskDataMissing(self.missing_message(path, f"missing image {file}"))
            name = names[image["id"]]
            examples.append(Example(str(image["id"]), (ImageRef(file),), index[name], group=name))
        return TaskData([], examples, individuals, {"n_individuals": len(individuals)})

    def fit_predict(self, probe, train_x, train_y, test_x, data: TaskData, *,
                    seed: int) -> Prediction:
        """Leave-one-out over the test images with the knn probe's ``k`` (its hyper-parameter,
        read through ``get_params``); the vote and similarity are the probe's own rules."""
        k = int(probe.get_params()["k"])
        preds, reid = leave_one_out_knn(test_x, self.labels_array(data.test), k=k, progress=True)
        return Prediction(preds, {"k": k, **reid})
