"""FungiCLEF 2023: fungi species from citizen-science photos, with unknown species and poison.

Source: the Danish Fungi dataset server (Picek et al.). Train = DF20 (300 px images), test =
the DF21 validation set. On disk:

    <data>/fungiclef/FungiCLEF2023_train_metadata_PRODUCTION.csv   (DF20)
    <data>/fungiclef/FungiCLEF2023_val_metadata_PRODUCTION.csv     (DF21)
    <data>/fungiclef/poison_status_list.csv                        (class_id, poisonous)
    <data>/fungiclef/DF20_300/<image_path>, DF21_300/<image_path>

The metadata columns used are ``image_path``, ``class_id`` (``-1`` = a species unknown at
training time) and ``observationID``. A training example is one image. A test example is one
*observation*: all its photos, whose features are mean-pooled, so there is one prediction per
observation (without an ``observationID`` column each image is its own observation).

Protocol (open set): the run's probe, by default SimpleShot (centre on the training mean,
L2-normalise, nearest class centroid), predicts a known species; an observation whose distance
to its nearest centroid exceeds the ``unknown_quantile`` (default 0.95) quantile of the
training images' own nearest-centroid distances is called unknown (-1). Centroids exist only
for classes seen in training, so class ids need not be 0..C-1. (The BioBench reference measured
Mahalanobis distances under a shrinkage LDA and hard-coded the 95th percentile, ignoring its
``alpha`` argument; here the quantile is a constructor argument that the rule really uses.)

Metric: BioBench's FungiCLEF score (``fungiclef_reference_score``), kept so that runs compare
with the published leaderboard. It adds the challenge's Track 4 classification cost (10 for an
unknown species called known, 0.1 for a known one called unknown, 1 for a wrong known species)
to its poison cost PSC (100 for a poisonous species called edible, 1 for the reverse), normalised
to 1 = perfect and 0 = worst possible. It is *not* the challenge's Track 3 user-focused loss,
which adds PSC to Track 1's classification error (every error costs 1): for truth [unknown,
species 3] predicted [species 3, unknown], Track 4 CE + PSC is 5.05 but the user-focused loss
1.0. The four official losses (Tracks 1-4) are stored with every run (``metric_extras``). The
poison list is read from the data folder when the task loads; it is downloaded with the data
(never at import).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biobench.download import RemoteFile
from biobench.metrics import FUNGICLEF_UNKNOWN
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import (Example, ImageRef, Prediction, TaskData, TaskDataMissing,
                                 register_task)

if TYPE_CHECKING:  # pandas is imported where used: the task registry loads fast
    import pandas as pd

SERVER = "http://ptak.felk.cvut.cz/plants/DanishFungiDataset/"
SPLITS = {
    "train": ("FungiCLEF2023_train_metadata_PRODUCTION.csv", "DF20_300"),
    "test": ("FungiCLEF2023_val_metadata_PRODUCTION.csv", "DF21_300"),
}
POISON_LIST = "poison_status_list.csv"
DEFAULT_UNKNOWN_QUANTILE = 0.95


@register_task
class FungiCLEF(DownloadedTask):
    name = "fungiclef"
    display = "FungiCLEF 2023 (open-set fungi)"
    kingdom = "Fungi"
    modality = "citizen-science photos"
    citation = ("Picek, L. et al. Overview of FungiCLEF 2023: Fungi Recognition Beyond 1/0 "
                "Cost. CLEF 2023 Working Notes; Picek, L. et al. Danish Fungi 2020 - Not Just "
                "Another Image Recognition Dataset. WACV 2022.")
    metric_name = "fungiclef_reference_score"
    pooling = "mean"  # the photos of one observation
    default_probe = "simpleshot"
    # the open-set rule needs distances to class centroids: only SimpleShot provides them (a
    # linear SVM's margins are not distances: 70% of observations would be called unknown)
    protocols = ("simpleshot",)
    group = "benchmark"
    remote_files = (
        RemoteFile(SERVER + "DF20-300px.tar.gz", note="~6.5 GB, train images"),
        RemoteFile(SERVER + "DF21_300px.tar.gz", note="~2.5 GB, validation (test) images"),
        RemoteFile(SERVER + SPLITS["train"][0], extract=False),
        RemoteFile(SERVER + SPLITS["test"][0], extract=False),
        RemoteFile(SERVER + POISON_LIST, extract=False),
    )
    required_paths = (*(f for pair in SPLITS.values() for f in pair), POISON_LIST)

    def __init__(self, unknown_quantile: float = DEFAULT_UNKNOWN_QUANTILE):
        self.unknown_quantile = unknown_quantile
        self.poisonous_ids: frozenset[int] | None = None  # read from the data folder by load()

    # ---- data ---------------------------------------------------------------------------
    def read_poison_list(self, path: Path) -> frozenset[int]:
        import pandas as pd
        csv = path / POISON_LIST
        frame = pd.read_csv(csv)
        if not {"class_id", "poisonous"} <= set(frame.columns):
            raise ValueError(f"{csv}: expected columns class_id and poisonous, found "
                             f"{list(frame.columns)}; delete it and download again.")
        return frozenset(int(c) for c in frame.loc[frame["poisonous"] == 1, "class_id"])

    def read_metadata(self, path: Path, split: str) -> pd.DataFrame:
        import pandas as pd
        csv_name, folder = SPLITS[split]
        csv = path / csv_name
        frame = pd.read_csv(csv, low_memory=False)
        absent = {"image_path", "class_id"} - set(frame.columns)
        if absent:
            raise ValueError(f"{csv}: columns {sorted(absent)} not found; delete it and "
                             "download again.")
        image_dir = path / folder
        # The 300 px archives may change the case of file names: match case-insensitively.
        on_disk = {p.name.lower(): p.name for p in image_dir.iterdir()}
        names = frame["image_path"].astype(str).map(lambda s: s.replace("\\", "/").split("/")[-1])
        resolved = names.map(lambda n: on_disk.get(n.lower()))
        if resolved.isna().any():
            missing = names[resolved.isna()]
            raise TaskDataMissing(self.missing_message(
                path, f"{len(missing)} images of {csv_name} are missing from {folder}/, "
                      f"e.g. {missing.iloc[0]}"))
        frame = frame.assign(file=[image_dir / n for n in resolved],
                             class_id=frame["class_id"].astype(int))
        if "observationID" not in frame.columns:
            frame["observationID"] = names.str.lower()
        return frame

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        self.poisonous_ids = self.read_poison_list(path)
        train_meta = self.read_metadata(path, "train")
        test_meta = self.read_metadata(path, "test")
        # a training image of an unknown species has no class to learn
        train_meta = train_meta[train_meta["class_id"] != FUNGICLEF_UNKNOWN]
        train = [Example(str(r.image_path), (ImageRef(r.file),), int(r.class_id))
                 for r in train_meta.itertuples()]
        test = []
        for obs, photos in test_meta.groupby("observationID", sort=True):
            labels = photos["class_id"].unique()
            if len(labels) != 1:
                raise ValueError(f"observation {obs} in {SPLITS['test'][0]} has photos of "
                                 f"several classes {sorted(labels)}")
            files = tuple(ImageRef(f) for f in sorted(photos["file"]))
            test.append(Example(str(obs), files, int(labels[0])))
        return TaskData(train, test, self.class_names(train_meta),
                        {"poisonous_class_ids": sorted(self.poisonous_ids),
                         "n_test_images": len(test_meta),
                         "n_unknown_observations": sum(ex.label == FUNGICLEF_UNKNOWN for ex in test)})

    @staticmethod
    def class_names(train_meta: pd.DataFrame) -> list[str]:
        """Names indexed by class id (species when the metadata has them)."""
        n = int(train_meta["class_id"].max()) + 1 if len(train_meta) else 0
        names = [f"class {i}" for i in range(n)]
        if "species" in train_meta.columns:
            for cid, species in train_meta.groupby("class_id")["species"].first().items():
                names[int(cid)] = str(species)
        return names

    # ---- labels: [class id, poisonous] so the metric needs nothing but the two arrays ------
    def with_poison_flag(self, class_ids) -> np.ndarray:
        if self.poisonous_ids is None:
            raise RuntimeError("FungiCLEF: call load() first; the poison list comes with the data")
        ids = np.asarray(class_ids, dtype=int).reshape(-1)
        flags = np.isin(ids, sorted(self.poisonous_ids)).astype(int)
        return np.stack([ids, flags], axis=1)

    def labels_array(self, examples) -> np.ndarray:
        return self.with_poison_flag([ex.label for ex in examples])

    def metric_extras(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """The challenge's official losses (Tracks 1-4, lower is better), next to the task's
        metric, which is BioBench's normalised Track 4 score."""
        from biobench.metrics import fungiclef_official_losses

        return fungiclef_official_losses(y_true, y_pred)

    def fit_predict(self, probe, train_x, train_y, test_x, data: TaskData, *,
                    seed: int) -> Prediction:
        from biobench.tasks._open_set import OpenSetCentroids  # scikit-learn: imported on use

        classifier = OpenSetCentroids(probe, self.unknown_quantile)
        classifier.fit(train_x, np.asarray(train_y)[:, 0])
        pred = classifier.predict(test_x)
        return Prediction(self.with_poison_flag(pred), {
            "unknown_quantile": self.unknown_quantile,
            "distance_threshold": classifier.threshold_,
            "n_predicted_unknown": int(np.sum(pred == FUNGICLEF_UNKNOWN))})
