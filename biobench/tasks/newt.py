"""NeWT: 164 binary natural-world tasks (Van Horn et al. 2021), prior work.

Source: the iNat competition bucket, two archives. On disk:

    <data>/newt/newt2021_labels.csv   (id, label, split, task, task_cluster, task_subcluster)
    <data>/newt/newt2021_images/<id>.jpg

Each row is one image of one sub-task; ``label`` is 0 or 1 within that sub-task and ``split``
is its official train/test split. ``Example.group`` is the sub-task name.

Protocol, per sub-task: L2-normalise the features, subtract the mean of the sub-task's training
features, L2-normalise again, then fit the run's probe on the sub-task's training images
(default: a linear SVM with C = 1). Metric: accuracy pooled over all test images of all
sub-tasks (so a sub-task weighs by its number of test images); this is not the mean of the
per-task accuracies, which is recorded beside it together with each task's accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import (Example, ImageRef, Prediction, TaskData, TaskDataMissing,
                                 register_task)

BUCKET = "https://ml-inat-competition-datasets.s3.amazonaws.com/newt/"
LABELS_CSV = "newt2021_labels.csv"
IMAGE_DIR = "newt2021_images"
COLUMNS = ("id", "label", "split", "task", "task_cluster", "task_subcluster")


def per_task_features(x: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """L2-normalise, centre on the mean of ``train_rows``, L2-normalise again."""
    from biobench.probes import l2_normalise
    z = l2_normalise(np.asarray(x, dtype=np.float64))
    return l2_normalise(z - z[train_rows].mean(axis=0))


@register_task
class NeWT(DownloadedTask):
    name = "newt"
    display = "NeWT (164 binary natural-world tasks)"
    kingdom = "mixed (Animalia, Plantae, Fungi)"
    modality = "citizen-science photos"
    citation = ("Van Horn, G. et al. Benchmarking Representation Learning for Natural World "
                "Image Collections. CVPR 2021.")
    metric_name = "accuracy"
    default_probe = "linear_svm"
    group = "prior_work"
    remote_files = (
        RemoteFile(BUCKET + "newt2021_images.tar.gz", note="~4 GB"),
        RemoteFile(BUCKET + "newt2021_labels.csv.tar.gz"),
    )
    required_paths = (LABELS_CSV, IMAGE_DIR)

    def load(self, root: Path | None = None) -> TaskData:
        import pandas as pd
        self.check_present(root)
        path = self.data_path(root)
        csv = path / LABELS_CSV
        frame = pd.read_csv(csv, dtype={"id": str})
        absent = [c for c in COLUMNS if c not in frame.columns]
        if absent:
            raise ValueError(f"{csv}: columns {absent} not found; delete it and download again.")
        bad_split = sorted(set(frame["split"]) - {"train", "test"})
        if bad_split or not set(frame["label"]).issubset({0, 1}):
            raise ValueError(f"{csv}: split must be train/test and label 0/1 "
                             f"(found splits {bad_split or 'ok'})")
        splits: dict[str, list[Example]] = {"train": [], "test": []}
        for row in frame.itertuples(index=False):
            file = path / IMAGE_DIR / f"{row.id}.jpg"
            splits[row.split].append(Example(f"{row.task}/{row.id}", (ImageRef(file),),
                                             int(row.label), group=str(row.task)))
        missing = [ex.images[0].path for ex in splits["train"] + splits["test"]
                   if not ex.images[0].path.is_file()]
        if missing:
            raise TaskDataMissing(self.missing_message(
                path, f"{len(missing)} images are missing from {IMAGE_DIR}/, e.g. {missing[0]}"))
        clusters = frame.groupby("task")["task_cluster"].first().to_dict()
        return TaskData(splits["train"], splits["test"], ["0", "1"],
                        {"n_tasks": frame["task"].nunique(), "task_cluster": clusters})

    def fit_predict(self, probe, train_x, train_y, test_x, data: TaskData, *,
                    seed: int) -> Prediction:
        from sklearn.base import clone
        train_groups = np.array([ex.group for ex in data.train])
        test_groups = np.array([ex.group for ex in data.test])
        train_y = np.asarray(train_y)
        y_true = self.labels_array(data.test)
        y_pred = np.zeros(len(test_groups), dtype=int)
        per_task = {}
        for task in sorted(set(test_groups)):
            tr, te = train_groups == task, test_groups == task
            labels = np.unique(train_y[tr])
            if len(labels) < 2:  # nothing to separate (possible only after subsampling)
                y_pred[te] = labels[0] if len(labels) else 0
            else:
                x = per_task_features(np.concatenate([train_x[tr], test_x[te]]),
                                      np.arange(tr.sum()))
                model = clone(probe).fit(x[: tr.sum()], train_y[tr])
                y_pred[te] = model.predict(x[tr.sum():])
            per_task[task] = float(np.mean(y_pred[te] == y_true[te]))
        return Prediction(y_pred, {"per_task_accuracy": per_task,
                                   "mean_task_accuracy": float(np.mean(list(per_task.values())))})
