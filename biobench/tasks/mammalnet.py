"""MammalNet: mammal behaviour in web video (Chen et al., CVPR 2023), composition split.

Source: ``full_video.tar.gz`` (the untrimmed videos) and ``annotation.tar`` from the MammalNet
bucket. ``biobench download mammalnet`` fetches both, then prepares every clip of the
composition split with a real ffmpeg (see ``biobench.video``):

1. trim the annotated segment of the full video into ``trimmed_videos/<id>.mp4`` (H.264, CRF 23,
   no audio); a video with several segments gives ``<video>_1``, ``<video>_2``, ...;
2. write 32 evenly spaced JPEG frames to ``frames/<id>/frame_01.jpg`` ... ``frame_32.jpg``.

Both steps run every time (no opt-in flags), skip finished outputs, and are atomic, so an
interrupted preparation resumes and never leaves a half-written clip or frame folder. A clip
that cannot be made (its source video is absent from the archive, or ffmpeg fails on it) is
listed with the reason in ``frames/unavailable.json``; loading drops exactly those clips and
reports their number, and any *other* clip without frames is an error, so the test set never
changes silently. On disk:

    <data>/mammalnet/annotation/composition/{train,test}.csv
        space-delimited, no header: trimmed_videos/<id>.mp4 <behaviour id> <species id>
    <data>/mammalnet/annotation/detection_annotations.json   segments of each full video
    <data>/mammalnet/full_videos/<video>.mp4, trimmed_videos/<id>.mp4, frames/<id>/frame_NN.jpg

Protocol: the 32 frame features of a clip are max-pooled (kept in fp32; the BioBench reference
cast them to fp16 first), the label is the behaviour id (12 behaviours), and the run's probe
(default: logistic regression with C by cross-validation on macro-F1) classifies clips.
Metric: macro-F1.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tqdm import tqdm  # plain bars: tqdm.auto warns on stderr in notebooks without ipywidgets

from biobench import download, video
from biobench.atomic import write_text_if_changed
from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedTask
from biobench.tasks.base import Example, ImageRef, TaskData, TaskDataMissing, register_task

if TYPE_CHECKING:  # pandas is imported where used: the task registry loads fast
    import pandas as pd

BUCKET = "https://mammalnet.s3.amazonaws.com/"
SPLIT_FILES = {"train": "annotation/composition/train.csv",
               "test": "annotation/composition/test.csv"}
DETECTIONS = "annotation/detection_annotations.json"
BEHAVIOUR_NAMES = "annotation/behavior_to_id.txt"
FULL_DIR, TRIMMED_DIR, FRAMES_DIR = "full_videos", "trimmed_videos", "frames"
UNAVAILABLE = f"{FRAMES_DIR}/unavailable.json"
FRAMES_PER_CLIP = 32


def clip_segments(detections: dict) -> dict[str, tuple[str, float, float]]:
    """``{clip id: (full video id, start s, end s)}`` from ``detection_annotations.json``.

    A video with one annotated segment gives the clip ``<video>``; with several, the clips
    ``<video>_1``, ``<video>_2``, ... in annotation order.
    """
    clips = {}
    for video_id, entry in detections.items():
        segments = entry.get("annotations", [])
        for k, annotation in enumerate(segments, start=1):
            start, end = (float(t) for t in annotation["segment"])
            clip_id = video_id if len(segments) == 1 else f"{video_id}_{k}"
            clips[clip_id] = (video_id, start, end)
    return clips


def prepare_clip(path: Path, clip_id: str, segment: tuple[str, float, float] | None) -> str | None:
    """Trim and sample one clip; return None when done, else why it cannot be made."""
    frames = path / FRAMES_DIR / clip_id
    trimmed = path / TRIMMED_DIR / f"{clip_id}.mp4"
    names = video.frame_names(FRAMES_PER_CLIP)
    if frames.is_dir() and all((frames / n).exists() for n in names):
        return None
    if not trimmed.exists():
        if segment is None:
            return f"no segment for {clip_id} in {DETECTIONS}"
        source = path / FULL_DIR / f"{segment[0]}.mp4"
        if not source.exists():
            return f"source video {FULL_DIR}/{source.name} is not in the archive"
        try:
            video.trim_clip(source, trimmed, segment[1], segment[2])
        except (video.VideoError, ValueError) as exc:
            return str(exc)
    try:
        video.sample_frames(trimmed, frames, FRAMES_PER_CLIP)
    except (video.VideoError, ValueError) as exc:
        return str(exc)
    return None


@register_task
class MammalNet(DownloadedTask):
    name = "mammalnet"
    display = "MammalNet web-video behaviour"
    kingdom = "Animalia (mammals)"
    modality = "web video (frames)"
    citation = ("Chen, J. et al. MammalNet: A Large-Scale Video Benchmark for Mammal Recognition "
                "and Behavior Understanding. CVPR 2023.")
    metric_name = "macro_f1"
    pooling = "max"  # over the 32 frames of a clip
    default_probe = "logreg"
    group = "benchmark"
    remote_files = (
        RemoteFile(BUCKET + "full_video.tar.gz", note="untrimmed videos; no published checksum"),
        RemoteFile(BUCKET + "annotation.tar"),
    )
    required_paths = (*SPLIT_FILES.values(), FRAMES_DIR)

    # ---- download + preparation ---------------------------------------------------------
    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        # No early return for a complete folder: fetched archives are skipped (recorded in
        # the marker) and finished clips are kept, so a re-run only repairs what is missing.
        path = self.data_path(root)
        state = download.begin_download(path)
        records = [download.fetch_remote_file(r, path, state, mirror=mirror, progress=progress)
                   for r in self.remote_files]
        unavailable = self.prepare(path, progress=progress)
        download.write_marker(path, self.name, records, unavailable_clips=len(unavailable))
        return path

    def split_rows(self, path: Path, split: str) -> pd.DataFrame:
        """Clip id and behaviour label of each row of a composition CSV."""
        import pandas as pd
        csv = path / SPLIT_FILES[split]
        if not csv.is_file():
            raise TaskDataMissing(self.missing_message(path, f"missing {SPLIT_FILES[split]}"))
        rows = pd.read_csv(csv, sep=r"\s+", header=None, names=["video", "behaviour", "species"],
                           dtype={"video": str})
        rows["clip_id"] = [PurePosixPath(v).stem for v in rows["video"]]
        return rows

    def prepare(self, path: Path, *, progress: bool = True, workers: int | None = None) -> dict:
        """Trim and sample every clip of the composition split; returns ``{clip: reason}`` for
        the clips that could not be made (also written to ``frames/unavailable.json``)."""
        detections_file = path / DETECTIONS
        if not detections_file.is_file():
            raise TaskDataMissing(self.missing_message(path, f"missing {DETECTIONS}"))
        segments = clip_segments(json.loads(detections_file.read_text()))
        clip_ids = sorted({c for split in SPLIT_FILES for c in self.split_rows(path, split)["clip_id"]})
        unavailable = {}
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
                total=len(clip_ids), desc="mammalnet: trim + frames", unit="clip",
                disable=not progress) as bar:
            jobs = {pool.submit(prepare_clip, path, c, segments.get(c)): c for c in clip_ids}
            for job in as_completed(jobs):
                reason = job.result()
                if reason is not None:
                    unavailable[jobs[job]] = reason
                bar.update(1)
        out = path / UNAVAILABLE
        write_text_if_changed(out, json.dumps(dict(sorted(unavailable.items())), indent=1))
        return unavailable

    # ---- data -------------------------------------------------------------------------------
    def class_names(self, path: Path, n_labels: int) -> list[str]:
        names = [f"behaviour {i}" for i in range(n_labels)]
        mapping = path / BEHAVIOUR_NAMES
        if mapping.is_file():
            for line in mapping.read_text().splitlines():
                *words, last = line.split() or ["", ""]
                if words and last.isdigit() and int(last) < n_labels:
                    names[int(last)] = " ".join(words)
        return names

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        unavailable_file = path / UNAVAILABLE
        unavailable = json.loads(unavailable_file.read_text()) if unavailable_file.is_file() else {}
        names = video.frame_names(FRAMES_PER_CLIP)
        splits, dropped, max_label = {}, {}, 0
        for split in SPLIT_FILES:
            examples, dropped[split] = [], 0
            for row in self.split_rows(path, split).itertuples():
                if row.clip_id in unavailable:
                    dropped[split] += 1
                    continue
                frames = [path / FRAMES_DIR / row.clip_id / n for n in names]
                if not all(f.is_file() for f in frames):
                    raise TaskDataMissing(self.missing_message(
                        path, f"clip {row.clip_id} ({SPLIT_FILES[split]}) has no complete "
                              f"{FRAMES_DIR}/{row.clip_id}/ folder; the preparation did not "
                              "finish"))
                examples.append(Example(row.clip_id, tuple(ImageRef(f) for f in frames),
                                        int(row.behaviour)))
                max_label = max(max_label, int(row.behaviour))
            splits[split] = examples
        return TaskData(splits["train"], splits["test"], self.class_names(path, max_label + 1),
                        {"unavailable_clips_dropped": dropped})
