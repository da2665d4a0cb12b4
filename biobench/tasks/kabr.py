"""KABR: behaviour of giraffes, Grevy's and plains zebras in drone video (Kholiavchenko et al.).

Source: the Hugging Face dataset ``imageomics/KABR``. The frames come as one zip per species,
split into parts (``giraffes_part_aa`` ...); the parts are concatenated, checked against the
published MD5 (``<species>_md5.txt``) and unpacked. On disk:

    <data>/kabr/annotation/classes.json        {behaviour name: id}
    <data>/kabr/annotation/{train,val}.csv     space-delimited, one header line, columns
                                               original id, video_id, frame_id, path, label
    <data>/kabr/dataset/image/<path>           one JPEG per frame

A clip is the frames of one ``video_id``, in ``frame_id`` order. Split: train / val (val is the
test set). Clips with fewer than 16 frames are dropped (their number is recorded).

Protocol: 16 frames per clip at stride 5; a clip too short for stride 5 uses the largest stride
that fits. The start frame is drawn from a generator seeded with ``frame_seed`` (default 42) and
the clip id, so it is the same on every run and does not depend on clip order. The 16 frame
features are max-pooled (element-wise maximum), then the run's probe (default: logistic
regression with C chosen by cross-validation on macro-F1) classifies the clip. The clip's label
is the most common label of its 16 sampled frames (ties: the smaller id). Metric: macro-F1.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from biobench import download
from biobench.download import DownloadError, RemoteFile
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import Example, ImageRef, TaskData, TaskDataMissing, register_task

BASE_URL = "https://huggingface.co/datasets/imageomics/KABR/resolve/main/KABR/"
ANNOTATION_FILES = ("annotation/classes.json", "annotation/train.csv", "annotation/val.csv")
IMAGE_DIR = "dataset/image"
# split-zip parts per species, first and last suffix (inclusive), as published
ANIMAL_PARTS = {"giraffes": ("aa", "ad"), "zebras_grevys": ("aa", "am"), "zebras_plains": ("aa", "al")}
CSV_COLUMNS = ("original_id", "video_id", "frame_id", "path", "label")
SPLIT_FILES = {"train": "annotation/train.csv", "test": "annotation/val.csv"}
FRAMES_PER_CLIP = 16
FRAME_STRIDE = 5
DEFAULT_FRAME_SEED = 42


def part_names(animal: str) -> list[str]:
    """``<animal>_part_aa`` ... up to the published last suffix (two letters, a-z each)."""
    first, last = ANIMAL_PARTS[animal]
    letters = "abcdefghijklmnopqrstuvwxyz"
    suffixes = [a + b for a in letters for b in letters if first <= a + b <= last]
    return [f"{animal}_part_{s}" for s in suffixes]


def clip_frame_indices(n_available: int, rng: np.random.Generator,
                       n_frames: int = FRAMES_PER_CLIP, stride: int = FRAME_STRIDE) -> list[int]:
    """``n_frames`` indices at ``stride`` (shrunk to fit a short clip) from a random start."""
    if n_available < n_frames:
        raise ValueError(f"a clip of {n_available} frames is shorter than {n_frames}")
    stride = max(1, min(stride, (n_available - 1) // (n_frames - 1)))
    span = (n_frames - 1) * stride + 1
    start = int(rng.integers(0, n_available - span + 1))
    return [start + i * stride for i in range(n_frames)]


def most_common_label(labels) -> int:
    counts = Counter(int(v) for v in labels)
    best = max(counts.values())
    return min(label for label, c in counts.items() if c == best)


@register_task
class KABR(DownloadedTask):
    name = "kabr"
    display = "KABR drone-video behaviour"
    kingdom = "Animalia (giraffes, zebras)"
    modality = "drone video (frames)"
    citation = ("Kholiavchenko, M. et al. KABR: In-Situ Dataset for Kenyan Animal Behavior "
                "Recognition from Drone Videos. WACV Workshops 2024.")
    metric_name = "macro_f1"
    pooling = "max"  # over the 16 sampled frames of a clip
    default_probe = "logreg"
    group = "benchmark"
    remote_files = tuple(RemoteFile(BASE_URL + f, filename=f, extract=False)
                         for f in ANNOTATION_FILES)
    required_paths = (*ANNOTATION_FILES, IMAGE_DIR)

    def __init__(self, frame_seed: int = DEFAULT_FRAME_SEED):
        self.frame_seed = frame_seed

    # ---- download: annotation files, then per species: parts -> zip -> MD5 -> extract ------
    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        path = self.data_path(root)
        if download.is_complete(path):
            return path
        state = download.begin_download(path)
        records = [download.fetch_remote_file(r, path, state, mirror=mirror, progress=progress)
                   for r in self.remote_files]
        for animal in ANIMAL_PARTS:
            records.append(self._fetch_animal(animal, path, state, mirror, progress))
        download.write_marker(path, self.name, records)
        return path

    def _fetch_animal(self, animal: str, path: Path, state, mirror, progress) -> dict:
        zip_name = f"{animal}.zip"
        if state.files.get(zip_name, {}).get("extracted"):
            return state.files[zip_name]  # finished by an earlier, interrupted run
        staging = path / download.DOWNLOADS_DIR
        url = download.mirror_url(f"{BASE_URL}{IMAGE_DIR}/", mirror)
        md5_file = download.download_file(url + f"{animal}_md5.txt",
                                          staging / f"{animal}_md5.txt", progress=progress)
        expected = md5_file.read_text().split()[0].lower()
        parts = [download.download_file(url + name, staging / name, progress=progress)
                 for name in part_names(animal)]
        archive = staging / zip_name
        with open(archive.with_suffix(".zip.tmp"), "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        archive.with_suffix(".zip.tmp").replace(archive)
        digests = download.file_digests(archive, md5=True)
        if digests["md5"] != expected:
            for f in (archive, *parts):  # one of the parts is bad; fetch them all again
                f.unlink(missing_ok=True)
            raise DownloadError(
                f"Checksum mismatch for {zip_name} (parts {parts[0].name}..{parts[-1].name} "
                f"from {url}): md5 {digests['md5']}, expected {expected} from {md5_file.name}. "
                "The parts were deleted; run the download again.")
        download.extract_archive(archive, path / IMAGE_DIR)
        record = {"filename": zip_name, "url": f"{BASE_URL}{IMAGE_DIR}/{animal}_part_*",
                  "sha256": digests["sha256"], "md5": digests["md5"], "size": digests["size"],
                  "checksum": "published", "extracted": True}
        state.update(record)
        for f in (archive, md5_file, *parts):
            f.unlink(missing_ok=True)
        return record

    # ---- data -------------------------------------------------------------------------------
    def class_names(self, path: Path) -> list[str]:
        classes_file = path / ANNOTATION_FILES[0]
        name_to_id = json.loads(classes_file.read_text())
        names = [""] * (max(name_to_id.values()) + 1)
        for name, i in name_to_id.items():
            names[int(i)] = name
        return names

    def read_clips(self, path: Path, split: str) -> tuple[list[Example], int]:
        """Clips of one split and how many were dropped for having fewer than 16 frames."""
        import pandas as pd
        csv = path / SPLIT_FILES[split]
        frame = pd.read_csv(csv, sep=r"\s+", header=0, names=CSV_COLUMNS, dtype=str)
        frame["frame_id"] = frame["frame_id"].astype(int)
        frame["label"] = frame["label"].str.strip('"').astype(int)
        clips, dropped = [], 0
        for video_id, rows in frame.groupby("video_id", sort=True):
            rows = rows.sort_values("frame_id")
            if len(rows) < FRAMES_PER_CLIP:
                dropped += 1
                continue
            rng = np.random.default_rng([self.frame_seed, zlib.crc32(str(video_id).encode())])
            chosen = rows.iloc[clip_frame_indices(len(rows), rng)]
            files = tuple(ImageRef(path / IMAGE_DIR / p) for p in chosen["path"])
            missing = [ref.path for ref in files if not ref.path.is_file()]
            if missing:
                raise TaskDataMissing(self.missing_message(
                    path, f"frame {missing[0]} of clip {video_id} ({SPLIT_FILES[split]}) is missing"))
            clips.append(Example(str(video_id), files, most_common_label(chosen["label"])))
        return clips, dropped

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        names = self.class_names(path)
        train, dropped_train = self.read_clips(path, "train")
        test, dropped_test = self.read_clips(path, "test")
        return TaskData(train, test, names,
                        {"clips_dropped_under_16_frames": {"train": dropped_train,
                                                           "test": dropped_test},
                         "frame_seed": self.frame_seed})
