"""Shared machinery of the offline tasks, whose data come from package-registry wheels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np

from biobench.atomic import atomic_directory
from biobench.download import MARKER_NAME as COMPLETE_MARKER  # one marker name for every task
from biobench.tasks.base import Prediction, Task, TaskData, TaskDataMissing


class CrossFittedTask(Task):
    """A task too small for a held-out split: every example is predicted out of fold.

    ``load`` returns all examples as ``test`` (and no ``train``). ``fit_predict`` splits them
    into ``n_folds`` stratified folds (shuffled with the run's seed) and predicts each fold with
    a fresh copy of the probe fitted on the other folds, so no example is ever predicted by a
    probe that saw it, and every example is scored (105 plankton images rather than a held-out
    handful). Intervals then reflect test-example sampling, as for the other tasks.
    """

    n_folds: ClassVar[int] = 5
    cross_fitted = True

    def fit_predict(self, probe, train_x, train_y, test_x, data: TaskData, *,
                    seed: int) -> Prediction:
        from sklearn.base import clone
        from sklearn.model_selection import StratifiedKFold
        y = self.labels_array(data.test)
        smallest_class = int(np.unique(y, return_counts=True)[1].min())
        n_folds = min(self.n_folds, smallest_class)
        if n_folds < 2:
            raise ValueError(f"task '{self.name}': a class has a single example; cannot cross-fit")
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        pred = np.empty_like(y)
        for fit_idx, predict_idx in folds.split(test_x, y):
            pred[predict_idx] = clone(probe).fit(test_x[fit_idx], y[fit_idx]).predict(test_x[predict_idx])
        return Prediction(pred, {"n_folds": n_folds})


class RegistryWheelTask(CrossFittedTask):
    """An offline task whose files come out of a package-registry wheel (``biobench.assets``)
    and are installed into the task's data folder with a completion marker."""

    group = "offline"
    metric_name = "macro_f1"
    default_probe = "logreg"

    def check_present(self, root: Path | None = None) -> None:
        path = self.data_path(root)
        if not (path / COMPLETE_MARKER).exists():
            raise TaskDataMissing(self.missing_message(path))


def install_files(files: dict[str, Path], dest: Path, provenance: dict) -> Path:
    """Copy ``{relative name: source file}`` into ``dest`` atomically, marker last."""
    with atomic_directory(dest) as tmp:
        for rel, src in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(provenance, indent=2))
    return dest
