"""Ecdysis: insect specimens photographed by the Ecdysis Foundation's "bugbox" (added to
BioBench after the paper; keep it out of means meant to compare with the paper).

Download: the collection page is scraped for its ``.csv.zip`` export; the CSV becomes
``metadata.csv`` and every image is fetched from its ``public_url`` by a bounded thread pool.
No size or checksum is published: the export's sha256 is pinned on first download, and the
export is a live collection, so a later forced re-download reports it when it has changed.

    <data>/ecdysis/metadata.csv   id, specimen_id, image_thumbnail_large, visit_date,
                                  gbif_class, gbif_order, gbif_family, gbif_genus,
                                  gbif_species, public_url, ...
    <data>/ecdysis/images/<basename of image_thumbnail_large>

Split: the label is "class|order|family|genus|species". Within each label, rows are ordered
by ``visit_date`` (ties broken by ``id``, undated rows last); the earliest 80 % (at least
one row) are train and the rest test. Labels with no test row do not enter macro-F1, which
averages over the classes present in the test truth.
"""

from __future__ import annotations

import csv
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from biobench import download
from biobench.atomic import atomic_file
from biobench.download import DownloadError, RemoteFile
from biobench.tasks._downloaded import DownloadedTask, natural_key
from biobench.tasks.base import Example, ImageRef, TaskData, TaskDataMissing, register_task

COLLECTION_PAGE = "https://bugbox.ecdysis.bio/samples/collection-download/1"
TAXON_COLUMNS = ("gbif_class", "gbif_order", "gbif_family", "gbif_genus", "gbif_species")
REQUIRED_COLUMNS = ("id", "image_thumbnail_large", "visit_date", *TAXON_COLUMNS)
EXPORT_NAME = "ecdysis_collection.csv.zip"  # fixed name, so the pinned sum follows the export
TRAIN_FRACTION = (4, 5)
IMAGE_THREADS = 16


def image_name(row: dict) -> str:
    return PurePosixPath(unquote(urlsplit(row["image_thumbnail_large"]).path)).name


def _date_key(value: str) -> tuple:
    """Undated rows sort last; ISO dates and datetimes compare chronologically."""
    value = (value or "").strip()
    if not value:
        return (1, "")
    try:
        return (0, datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None).isoformat())
    except ValueError:
        return (0, value)


def temporal_split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per label: earliest 80 % (at least one) to train, the rest to test."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    train, test = [], []
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda r: (_date_key(r["visit_date"]), natural_key(r["id"])))
        n_train = max(1, len(ordered) * TRAIN_FRACTION[0] // TRAIN_FRACTION[1])
        train += ordered[:n_train]
        test += ordered[n_train:]
    return train, test


@register_task
class Ecdysis(DownloadedTask):
    name = "ecdysis"
    display = "Ecdysis (bugbox insects)"
    kingdom = "Animalia (insects)"
    modality = "specimen photos"
    citation = ("Ecdysis Foundation. Bugbox insect specimen image collection. "
                "https://bugbox.ecdysis.bio/ (added to BioBench after Stevens et al., "
                "arXiv:2511.16315).")
    metric_name = "macro_f1"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "benchmark"
    required_paths = ("metadata.csv", "images")

    def _read_rows(self, path: Path) -> list[dict]:
        with open(path / "metadata.csv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise TaskDataMissing(self.missing_message(
                    path, f"metadata.csv lacks the columns {missing}; is it the bugbox export?"))
            return [row for row in reader if row["image_thumbnail_large"].strip()]

    def load(self, root: Path | None = None) -> TaskData:
        self.check_present(root)
        path = self.data_path(root)
        rows = self._read_rows(path)
        for row in rows:
            row["label"] = "|".join(row[c].strip() for c in TAXON_COLUMNS)
        labels = sorted({row["label"] for row in rows})
        class_id = {label: i for i, label in enumerate(labels)}
        train, test = temporal_split(rows)

        def examples(split_rows: list[dict]) -> list[Example]:
            return [Example(row["id"], (ImageRef(path / "images" / image_name(row)),),
                            class_id[row["label"]]) for row in split_rows]

        return TaskData(examples(train), examples(test), labels)

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        path = self.data_path(root)

        def fetch(state: download.DownloadState) -> list[dict]:
            page = download.mirror_url(COLLECTION_PAGE, mirror)
            exports = [u for u in download.page_links(page) if urlsplit(u).path.endswith(".csv.zip")]
            if not exports:
                raise DownloadError(
                    f"No .csv.zip export link found on {page}: the page layout may have changed. "
                    "Report it to the project; meanwhile download the CSV export from that page "
                    f"by hand and save it as {path / 'metadata.csv'}.")
            export = RemoteFile(exports[0], filename=EXPORT_NAME, extract=False,
                                note=download.NO_PUBLISHED_CHECKSUM)
            record = download.fetch_remote_file(export, path, state, mirror=mirror, progress=progress)
            self._unpack_metadata(path / EXPORT_NAME, path / "metadata.csv")
            jobs = [(download.mirror_url(row["public_url"], mirror), path / "images" / image_name(row))
                    for row in self._read_rows(path) if row.get("public_url", "").strip()]
            download.fetch_many(jobs, max_workers=IMAGE_THREADS, progress=progress,
                                desc="ecdysis images")
            state.marker_extra.update(page=COLLECTION_PAGE, n_images=len(jobs))
            return [record]

        return download.run_download(self, path, fetch)

    @staticmethod
    def _unpack_metadata(export: Path, dest: Path) -> None:
        try:
            with zipfile.ZipFile(export) as zf:
                csvs = [n for n in zf.namelist() if n.lower().endswith(".csv")
                        and not n.startswith("__MACOSX")]
                if len(csvs) != 1:
                    raise DownloadError(f"{export} should hold exactly one .csv, found {csvs}. "
                                        "Report it to the project.")
                with atomic_file(dest) as tmp:
                    tmp.write_bytes(zf.read(csvs[0]))
        except zipfile.BadZipFile as exc:
            export.unlink(missing_ok=True)
            raise DownloadError(f"{export} is not a valid zip ({exc}); it was deleted, run the "
                                "download again.") from exc
