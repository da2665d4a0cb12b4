"""FishNet: nine ecological traits of a fish species, predicted from one specimen photo.

Source: Khan et al., FishNet (ICCV 2023). Images come as one zip from Google Drive; the labels
are the official ``train.csv`` and ``test.csv`` of the FishNet repository. On disk:

    <data>/fishnet/train.csv, test.csv
    <data>/fishnet/Image_Library/<Folder>/<image file>

Each row is one image; its path is ``Image_Library/<Folder>/<basename of image>``. The nine
binary traits are, in this order: FeedingPath (pelagic = 1, benthic = 0), Tropical, Temperate,
Subtropical, Boreal, Polar, freshwater, saltwater, brackish. Columns are picked by name. Rows
with a missing or unrecognised value in any trait are dropped (all nine, not only the last one
checked, as the original training script did).

Protocol: one binary classifier per trait on the frozen features (the run's probe, e.g. the
standardised logistic regression), each predicting "present" when its probability is at least
0.5. (The BioBench reference thresholded *logits* at 0.5, i.e. probability 0.62, and trained
an MLP whose learning rate decayed to zero within a few hundred steps.) Metric: for each trait
the two-class macro-F1, averaged over the nine traits (``fishnet_macro_f1``); a bootstrap
resamples whole images, all traits together.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import (Example, ImageRef, Prediction, TaskData, TaskDataMissing,
                                 register_task)

if TYPE_CHECKING:  # pandas is imported where used: the task registry loads fast
    import pandas as pd

TRAITS = ("FeedingPath", "Tropical", "Temperate", "Subtropical", "Boreal", "Polar",
          "freshwater", "saltwater", "brackish")
FEEDING_PATH = {"pelagic": 1, "benthic": 0}
IMAGE_COLUMN, FOLDER_COLUMN = "image", "Folder"
IMAGE_DIR = "Image_Library"
SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}
PROBABILITY_THRESHOLD = 0.5
LABELS_URL = "https://raw.githubusercontent.com/faixan-khan/FishNet/main/anns/"
IMAGES_DRIVE_ID = "1mqLoap9QIVGYaPJ7T_KSBfLxJOg2yFY3"


def trait_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(rows, 9) float array of the trait values, NaN where a value is missing or unknown."""
    import pandas as pd
    columns = []
    for trait in TRAITS:
        if trait == "FeedingPath":
            values = frame[trait].astype(str).str.strip().str.lower().map(FEEDING_PATH)
        else:
            values = pd.to_numeric(frame[trait], errors="coerce")
            values = values.where(values.isin([0, 1]))
        columns.append(values.to_numpy(dtype=float))
    return np.stack(columns, axis=1)


def predict_traits(probe, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   threshold: float = PROBABILITY_THRESHOLD) -> np.ndarray:
    """One clone of ``probe`` per trait (column of ``train_y``); 1 where P(present) >= threshold.

    A probe without ``predict_proba`` predicts labels directly. A trait with a single value in
    the training set is predicted as that value (there is nothing to fit).
    """
    from sklearn.base import clone
    train_y = np.asarray(train_y)
    out = np.zeros((len(test_x), train_y.shape[1]), dtype=int)
    for t in range(train_y.shape[1]):
        column = train_y[:, t]
        values = np.unique(column)
        if len(values) == 1:
            out[:, t] = values[0]
            continue
        model = clone(probe).fit(train_x, column)
        if hasattr(model, "predict_proba"):
            present = list(model.classes_).index(1)
            out[:, t] = model.predict_proba(test_x)[:, present] >= threshold
        else:
            out[:, t] = model.predict(test_x)
    return out


@register_task
class FishNet(DownloadedTask):
    name = "fishnet"
    display = "FishNet functional traits"
    kingdom = "Animalia (fish)"
    modality = "specimen and field photos"
    citation = ("Khan, F. F. et al. FishNet: A Large-scale Dataset and Benchmark for Fish "
                "Recognition, Detection, and Functional Trait Prediction. ICCV 2023.")
    metric_name = "fishnet_macro_f1"
    feature_precision = "fp32"  # the reference extracted FishNet features in fp32
    default_probe = "logreg"
    group = "benchmark"
    remote_files = (
        RemoteFile(f"https://drive.usercontent.google.com/download?id={IMAGES_DRIVE_ID}"
                   "&export=download&confirm=t", filename="FishNet_Image_Library.zip",
                   note="~5.4 GB; Google Drive (no published checksum)"),
        RemoteFile(LABELS_URL + "train.csv", extract=False),
        RemoteFile(LABELS_URL + "test.csv", extract=False),
    )
    required_paths = (*SPLIT_FILES.values(), IMAGE_DIR)

    def read_split(self, path: Path, split: str) -> tuple[list[Example], int]:
        """Examples of one split and the number of rows dropped for missing trait values."""
        import pandas as pd
        csv = path / SPLIT_FILES[split]
        frame = pd.read_csv(csv, low_memory=False)
        absent = [c for c in (IMAGE_COLUMN, FOLDER_COLUMN, *TRAITS) if c not in frame.columns]
        if absent:
            raise ValueError(f"{csv}: columns {absent} not found (has {list(frame.columns)}); "
                             "the FishNet label files changed, re-download them.")
        bits = trait_matrix(frame)
        keep = ~np.isnan(bits).any(axis=1) & frame[IMAGE_COLUMN].notna().to_numpy() \
            & frame[FOLDER_COLUMN].notna().to_numpy()
        examples, seen = [], Counter()
        for image, folder, row_bits in zip(frame[IMAGE_COLUMN][keep], frame[FOLDER_COLUMN][keep],
                                           bits[keep].astype(int)):
            file = PurePosixPath(str(image).replace("\\", "/")).name
            rel = f"{IMAGE_DIR}/{folder}/{file}"
            seen[rel] += 1
            # an image listed twice is two scored rows: ids must stay unique
            example_id = rel if seen[rel] == 1 else f"{rel}#{seen[rel]}"
            examples.append(Example(example_id, (ImageRef(path / rel),),
                                    tuple(int(b) for b in row_bits)))
        dropped = int((~keep).sum())
        return examples, dropped

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        train, dropped_train = self.read_split(path, "train")
        test, dropped_test = self.read_split(path, "test")
        missing = [ex.images[0].path for ex in train + test if not ex.images[0].path.is_file()]
        if missing:
            raise TaskDataMissing(self.missing_message(
                path, f"{len(missing)} images listed in the CSVs are missing, e.g. {missing[0]}"))
        return TaskData(train, test, list(TRAITS),
                        {"dropped_rows": {"train": dropped_train, "test": dropped_test}})

    def fit_predict(self, probe, train_x, train_y, test_x, data: TaskData, *,
                    seed: int) -> Prediction:
        return Prediction(predict_traits(probe, train_x, train_y, test_x),
                          {"probability_threshold": PROBABILITY_THRESHOLD})
