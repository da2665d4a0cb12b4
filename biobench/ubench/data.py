"""μ-Bench data: download the pinned hub shards, read rows and images without holding 3.6 GB.

Download (``download_ubench``). The 7 Arrow shards and ``dataset_info.json`` of
``jnirschl/uBench`` at the pinned revision come through ``huggingface_hub.hf_hub_download``
(resumable; a file already fetched for this revision is not fetched again). Each shard is then
hashed (streaming, 1 MiB chunks) and checked against the spec's truncated sha256 (first 8 and
last 6 hex digits): a shard that does not match is deleted, with huggingface_hub's record of it,
and refused with both digests named. A shard that passes gets a ``<shard>.verified`` marker
holding its sha256, size and mtime, so a rerun costs one ``stat`` per file, not a 3.6 GB hash.
The folder's completion marker (``biobench.download.MARKER_NAME``) is written last.

Reading. The shards are Arrow IPC *stream* files (HF ``datasets`` cache format). A stream has
no footer, so rows can not be fetched by index; instead every shard is memory-mapped and its
record batches read in order. Reading from a memory map is zero-copy: a batch's buffers are
views into the file, and a column (the images) that is never touched is never paged in. So:

- ``iter_rows`` turns the metadata, question and caption columns into ``UbenchRow`` values,
  converting to Python only the rows (datasets) and question types asked for, batch by batch;
- each row keeps its ``ImageLocation`` (shard, batch index, row in batch): three small ints,
  so 17,315 rows cost a few MB, and an image is read only when asked for (``load_image``,
  ``read_image_bytes``), by skipping the batches before it (metadata only, no image bytes).

Re-scanning was the alternative to storing locations; it would hold nothing but costs a pass
over the metadata of every shard per request, while locations make a later image read touch
only its own batch.

Quirks resolved here (spec §2): rows of Held et al. 2010 have ``dataset = null`` and are
named by their stain (``meta.HELD_BY_STAIN``); an unknown stain on such a row is an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping, Sequence

from biobench.atomic import atomic_file
from biobench.download import MARKER_NAME, DownloadError
from biobench.progress import progress_bar, stage
from biobench.ubench.meta import FINE_KIND, HELD_BY_STAIN

REPO_ID = "jnirschl/uBench"
REVISION = "3f2c5b590bc7a208d5b60f3527ce4c76a331aa2b"
DATA_FOLDER = "perception/0.1.0"
N_SHARDS = 7
SHARD_FILES: tuple[str, ...] = tuple(
    f"{DATA_FOLDER}/ubench-test-{i:05d}-of-{N_SHARDS:05d}.arrow" for i in range(N_SHARDS))
INFO_FILE = f"{DATA_FOLDER}/dataset_info.json"
VERIFIED_SUFFIX = ".verified"
CHUNK_BYTES = 1 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGES_DIR = "images"


class UbenchDownloadError(DownloadError):
    """A μ-Bench file could not be fetched or failed its checksum; the message says which."""


class UbenchDataError(ValueError):
    """The μ-Bench data do not look as the reader expects; the message names the file/row."""


@dataclass(frozen=True)
class ShardPin:
    """The spec's truncated sha256: a digest passes when it starts with ``head`` and ends
    with ``tail``. A full digest pins exactly (``ShardPin.exact``)."""

    head: str
    tail: str

    def matches(self, sha256: str) -> bool:
        sha256 = sha256.lower()
        return sha256.startswith(self.head.lower()) and sha256.endswith(self.tail.lower())

    @classmethod
    def exact(cls, sha256: str) -> "ShardPin":
        return cls(sha256.lower(), "")

    def __str__(self) -> str:
        return f"{self.head}…{self.tail}" if self.tail else self.head


# spec §2: sha256 of the shards at the pinned revision, first 8 and last 6 hex digits
SHARD_PINS: dict[str, ShardPin] = dict(zip(SHARD_FILES, (
    ShardPin("3d346134", "b630f1"),
    ShardPin("79059163", "31ccac"),
    ShardPin("c370cd84", "20bf74"),
    ShardPin("832cdd6f", "a7f814"),
    ShardPin("e2741415", "0f4a69"),
    ShardPin("89deae84", "143d34"),
    ShardPin("534beca2", "edad6c"),
)))


# ---- download -------------------------------------------------------------------------------
def sha256_of(path: Path, *, progress: bool = False) -> str:
    """sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, progress_bar(total=size, desc=f"sha256 {path.name}", unit="B",
                                              enabled=progress and size > 64 * CHUNK_BYTES) as bar:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _marker_path(file: Path) -> Path:
    return file.with_name(file.name + VERIFIED_SUFFIX)


def _read_verified(file: Path) -> dict[str, Any] | None:
    """The ``.verified`` record of ``file`` when it still describes the file on disk (same
    size and mtime), else None."""
    try:
        record = json.loads(_marker_path(file).read_text())
        st = file.stat()
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    return record


def _write_verified(file: Path, filename: str, sha256: str) -> dict[str, Any]:
    st = file.stat()
    record = {"filename": filename, "sha256": sha256, "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "repo": REPO_ID, "revision": REVISION}
    with atomic_file(_marker_path(file)) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    return record


def _forget(dest: Path, filename: str) -> None:
    """Delete a local file, its marker and huggingface_hub's download record of it, so that
    nothing of a refused file is left looking complete and the next run fetches it anew."""
    file = dest / filename
    file.unlink(missing_ok=True)
    _marker_path(file).unlink(missing_ok=True)
    hf_meta = dest / ".cache" / "huggingface" / "download" / f"{filename}.metadata"
    hf_meta.unlink(missing_ok=True)


def _hub_download(dest: Path, filename: str, endpoint: str | None, progress: bool) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from tqdm.auto import tqdm

    class _Silent(tqdm):  # huggingface_hub only takes a tqdm class to silence its bar
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    where = endpoint or huggingface_hub.constants.ENDPOINT
    try:
        return Path(huggingface_hub.hf_hub_download(
            REPO_ID, filename, repo_type="dataset", revision=REVISION, local_dir=dest,
            endpoint=endpoint, tqdm_class=None if progress else _Silent))
    except LocalEntryNotFoundError as exc:
        offline = huggingface_hub.constants.HF_HUB_OFFLINE
        why = ("HF_HUB_OFFLINE is set: unset it to download" if offline
               else f"could not reach {where}; check the network and run the download again "
                    "(a partial file resumes)")
        raise UbenchDownloadError(
            f"μ-Bench: {filename} of {REPO_ID}@{REVISION[:8]} is not here and {why}.") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise UbenchDownloadError(
            f"μ-Bench: download of {filename} from {REPO_ID}@{REVISION[:8]} ({where}) failed: "
            f"{exc}. Run the download again to resume; if it persists, check that the "
            f"revision still exists on the hub.") from exc


def _fetch_verified(dest: Path, filename: str, pin: ShardPin | None, *, endpoint: str | None,
                    progress: bool) -> dict[str, Any]:
    file = dest / filename
    record = _read_verified(file)
    if record is not None and (pin is None or pin.matches(record["sha256"])):
        stage(f"μ-Bench: {filename} already verified (sha256 {record['sha256'][:8]}…)")
        return record
    if file.exists() and pin is not None:
        # a file from an earlier run without its marker: hash it before trusting it, since
        # huggingface_hub returns a local file of this revision without looking at it
        sha = sha256_of(file, progress=progress)
        if pin.matches(sha):
            return _write_verified(file, filename, sha)
        _forget(dest, filename)
    stage(f"μ-Bench: fetching {filename}")
    path = _hub_download(dest, filename, endpoint, progress)
    sha = sha256_of(path, progress=progress)
    if pin is not None and not pin.matches(sha):
        _forget(dest, filename)
        raise UbenchDownloadError(
            f"μ-Bench: shard {filename} has sha256 {sha}, but the pinned revision "
            f"{REVISION[:8]} has {pin}. The file was deleted. A changed file on the hub or a "
            f"corrupted transfer: run the download again; if it fails again, the hub content "
            f"changed and the pin in biobench/ubench/data.py needs review.")
    stage(f"μ-Bench: {filename} verified (sha256 {sha[:8]}…)")
    return _write_verified(path, filename, sha)


def download_ubench(dest: Path, *, endpoint: str | None = None, progress: bool = True,
                    pins: Mapping[str, ShardPin] | None = None) -> Path:
    """Fetch and verify the μ-Bench shards into ``dest``; return ``dest``.

    ``endpoint`` replaces the hub address (tests: a server on 127.0.0.1). ``pins`` replaces
    the spec's shard checksums (tests pin their fixture shards); ``dataset_info.json`` has no
    published checksum and is recorded, not pinned.
    """
    from biobench import download

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins = SHARD_PINS if pins is None else dict(pins)
    missing = [f for f in SHARD_FILES if f not in pins]
    if missing:
        raise ValueError(f"download_ubench: no sha256 pin for {', '.join(missing)}")
    (dest / MARKER_NAME).unlink(missing_ok=True)  # incomplete until every file passes
    records = [_fetch_verified(dest, f, pins.get(f), endpoint=endpoint, progress=progress)
               for f in (INFO_FILE, *SHARD_FILES)]
    download.write_marker(dest, "ubench", records, repo=REPO_ID, revision=REVISION)
    return dest


def missing_files(root: Path) -> list[str]:
    """What keeps ``root`` from being a complete μ-Bench download (empty when complete):
    the completion marker and every shard must be there. Costs a few ``stat`` calls."""
    root = Path(root)
    out = [f for f in (INFO_FILE, *SHARD_FILES) if not (root / f).is_file()]
    if not (root / MARKER_NAME).is_file():
        out.append(f"{MARKER_NAME} (written when a download finishes)")
    return out


# ---- rows -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageLocation:
    """Where one row's image sits: record batch ``batch`` of the stream file ``shard``, row
    ``row`` within it."""

    shard: Path
    batch: int
    row: int


@dataclass(frozen=True)
class Question:
    """One hub question (``questions[kind]``): the text, its options (the last is always
    "none of the above") and the gold answer."""

    kind: str
    question: str
    options: tuple[str, ...]
    answer: str
    answer_idx: int
    id: str
    name: str


@dataclass(frozen=True)
class UbenchRow:
    """One μ-Bench image with its metadata. ``dataset`` is quirk-resolved (Held rows are named
    by stain). ``questions`` maps question type to ``Question`` or None (a null question);
    ``captions`` maps caption key (``domain``, ``domain_1``, ``classification_0``, ...) to one
    sentence per option, or None. Only the types asked of ``iter_rows`` are present."""

    image_id: str
    dataset: str
    label: int
    label_name: str
    domain: str | None
    subdomain: str | None
    modality: str | None
    submodality: str | None
    stain: str | None
    institution: str | None
    license: str | None
    microns_per_pixel: float | None
    ncbitaxon_id: str | None
    ncbitaxon_name: str | None
    pmid: str | None
    split: str | None
    synthetic: bool | None
    questions: Mapping[str, Question | None]
    captions: Mapping[str, tuple[str, ...] | None]
    location: ImageLocation

    def caption_phrasings(self, kind: str) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        """The two caption phrasings of question type ``kind``: keys ``<kind>`` (coarse) or
        ``<kind>_0`` (classification) for the first, ``<kind>_1`` for the second."""
        first = self.captions.get(kind) or self.captions.get(f"{kind}_0")
        return first, self.captions.get(f"{kind}_1")


SCALAR_COLUMNS = ("image_id", "label", "label_name", "dataset", "domain", "subdomain",
                  "modality", "submodality", "stain", "institution", "license",
                  "microns_per_pixel", "ncbitaxon_id", "ncbitaxon_name", "pmid", "split",
                  "synthetic")


def shard_paths(root: Path) -> list[Path]:
    """The 7 shard files under ``root``; a missing one is an error naming it."""
    paths = [Path(root) / f for f in SHARD_FILES]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"μ-Bench shards missing: {', '.join(absent)}. Run "
                                f"`biobench download ubench` (every μ-Bench task shares them).")
    return paths


def resolve_dataset(dataset: str | None, stain: str | None, where: str) -> str:
    """The dataset key of a row: its ``dataset`` value, or for the Held et al. 2010 rows
    (``dataset`` null) the key their stain names."""
    if dataset is not None:
        return dataset
    if stain in HELD_BY_STAIN:
        return HELD_BY_STAIN[stain]
    raise UbenchDataError(
        f"{where}: dataset is null and stain {stain!r} names no Held et al. 2010 set (known: "
        f"{', '.join(sorted(HELD_BY_STAIN))}); the hub data differ from the pinned revision's")


def _open_batches(path: Path):
    """The record batches of a stream file, read zero-copy from a memory map."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    source = pa.memory_map(str(path), "r")
    try:
        return source, ipc.open_stream(source)
    except pa.ArrowInvalid as exc:
        source.close()
        raise UbenchDataError(f"{path}: not an Arrow IPC stream ({exc}); delete it and run "
                              f"the μ-Bench download again") from exc


def _caption_keys(kinds: Collection[str]) -> list[str]:
    return [k for kind in kinds for k in (kind, f"{kind}_0", f"{kind}_1")]


def _question(kind: str, value: dict | None) -> Question | None:
    if value is None:
        return None
    return Question(kind, value["question"], tuple(value["options"]), value["answer"],
                    int(value["answer_idx"]), str(value.get("id") or ""), value.get("name") or "")


def iter_rows(root: Path, *, datasets: Collection[str] | None = None,
              kinds: Collection[str] | None = None) -> Iterator[UbenchRow]:
    """Every row of the shards under ``root`` (in shard order), optionally only those of
    ``datasets`` (resolved keys) and only the questions/captions of ``kinds``. Memory stays
    at one record batch's metadata: image bytes are never read here."""
    import pyarrow.compute as pc

    wanted = None if datasets is None else frozenset(datasets)
    for path in shard_paths(root):
        source, reader = _open_batches(path)
        with source:
            names = set(reader.schema.names)
            absent = [c for c in (*SCALAR_COLUMNS, "questions", "captions") if c not in names]
            if absent:
                raise UbenchDataError(f"{path}: columns {absent} missing; not a μ-Bench shard")
            q_fields = {f.name for f in reader.schema.field("questions").type}
            c_fields = {f.name for f in reader.schema.field("captions").type}
            q_kinds = sorted(q_fields) if kinds is None else [k for k in kinds if k in q_fields]
            c_keys = (sorted(c_fields) if kinds is None
                      else [k for k in _caption_keys(kinds) if k in c_fields])
            for b, batch in enumerate(reader):
                ds_values = batch.column("dataset").to_pylist()
                stains = batch.column("stain").to_pylist()
                keys = [resolve_dataset(d, s, f"{path.name} batch {b} row {r}")
                        for r, (d, s) in enumerate(zip(ds_values, stains))]
                picked = [r for r, k in enumerate(keys) if wanted is None or k in wanted]
                if not picked:
                    continue
                sub = batch.select([*SCALAR_COLUMNS, "questions", "captions"]).take(picked)
                scalars = {c: sub.column(c).to_pylist() for c in SCALAR_COLUMNS}
                questions = {k: pc.struct_field(sub.column("questions"), k).to_pylist()
                             for k in q_kinds}
                captions = {k: pc.struct_field(sub.column("captions"), k).to_pylist()
                            for k in c_keys}
                for i, r in enumerate(picked):
                    values = {c: scalars[c][i] for c in SCALAR_COLUMNS}
                    values["dataset"] = keys[r]
                    if values["ncbitaxon_id"] is not None:
                        values["ncbitaxon_id"] = str(values["ncbitaxon_id"])
                    if values["pmid"] is not None:
                        values["pmid"] = str(values["pmid"])
                    yield UbenchRow(
                        **values,
                        questions={k: _question(k, questions[k][i]) for k in q_kinds},
                        captions={k: None if captions[k][i] is None else tuple(captions[k][i])
                                  for k in c_keys},
                        location=ImageLocation(path, b, r))


# ---- images ---------------------------------------------------------------------------------
def read_image_bytes(locations: Iterable[ImageLocation]) -> Iterator[tuple[ImageLocation, bytes]]:
    """The encoded image of each location, one at a time, grouped by shard and batch (so in
    file order, not input order). Batches without a wanted row are skipped unread."""
    import pyarrow.compute as pc

    by_shard: dict[Path, dict[int, list[ImageLocation]]] = defaultdict(lambda: defaultdict(list))
    for loc in locations:
        by_shard[loc.shard][loc.batch].append(loc)
    for shard, by_batch in by_shard.items():
        last = max(by_batch)
        source, reader = _open_batches(shard)
        with source:
            for b, batch in enumerate(reader):
                if b in by_batch:
                    images = batch.column("image")
                    blobs, paths = pc.struct_field(images, "bytes"), pc.struct_field(images, "path")
                    for loc in sorted(by_batch[b], key=lambda x: x.row):
                        if loc.row >= batch.num_rows:
                            raise UbenchDataError(f"{shard.name} batch {b} has {batch.num_rows} "
                                                  f"rows; no row {loc.row}")
                        blob = blobs[loc.row].as_py()
                        if blob is None:
                            raise UbenchDataError(
                                f"{shard.name} batch {b} row {loc.row}: the image has no "
                                f"embedded bytes (path {paths[loc.row].as_py()!r}); the hub "
                                f"shards embed every image, so this shard is not one of them")
                        yield loc, blob
                if b >= last:
                    break
            else:
                raise UbenchDataError(f"{shard}: has no batch {last}; the file changed since "
                                      f"its rows were read")


def load_image(location: ImageLocation):
    """The image at ``location`` as a PIL image (decoded lazily, on first pixel access)."""
    from PIL import Image

    for _, blob in read_image_bytes([location]):
        return Image.open(io.BytesIO(blob))
    raise UbenchDataError(f"no image at {location}")  # pragma: no cover - the loop yields one


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_cache_path(root: Path, row: UbenchRow) -> Path:
    """Where the PNG of ``row`` is kept: ``<root>/images/<dataset>/<image_id>.png``."""
    name = _UNSAFE.sub("_", row.image_id).strip(".") or "image"
    return Path(root) / IMAGES_DIR / _UNSAFE.sub("_", row.dataset) / f"{name}.png"


def _as_png(blob: bytes) -> bytes:
    if blob.startswith(PNG_MAGIC):
        return blob  # the hub stores PNG: write the bytes as they are, no re-encoding
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(blob)).save(out, format="PNG")
    return out.getvalue()


def materialise_images(root: Path, rows: Sequence[UbenchRow], *,
                       progress: bool = True) -> list[Path]:
    """The PNG file of each row (``image_cache_path``), writing those not there yet from the
    shards (each atomically, so a file that exists is complete). One pass per shard."""
    paths = [image_cache_path(root, r) for r in rows]
    todo = {r.location: p for r, p in zip(rows, paths) if not p.is_file()}
    if todo:
        stage(f"μ-Bench: writing {len(todo):,} images as PNG under {Path(root) / IMAGES_DIR}")
        with progress_bar(total=len(todo), desc="μ-Bench images", unit="img",
                          enabled=progress) as bar:
            for loc, blob in read_image_bytes(todo):
                target = todo[loc]
                with atomic_file(target, suffix=".png") as tmp:
                    tmp.write_bytes(_as_png(blob))
                bar.update(1)
    return paths


def class_order(questions: Iterable[Question | None]) -> list[str]:
    """The class names of a question type: its options in first-seen order, without the
    trailing "none of the above" (never a gold answer). When every row lists the options in
    one order, a row's class index equals its ``answer_idx``."""
    seen: dict[str, None] = {}
    for q in questions:
        if q is not None:
            for option in q.options:
                if option.strip().lower() != "none of the above":
                    seen.setdefault(option, None)
    return list(seen)


def read_dataset_info(root: Path) -> dict[str, Any]:
    """``dataset_info.json`` of the download (HF ``datasets`` features and split sizes)."""
    path = Path(root) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} missing: run the μ-Bench download") from exc
    except json.JSONDecodeError as exc:
        raise UbenchDataError(f"{path} is not JSON ({exc}); delete it and download again") from exc


__all__ = [
    "REPO_ID", "REVISION", "SHARD_FILES", "INFO_FILE", "SHARD_PINS", "ShardPin",
    "UbenchDownloadError", "UbenchDataError", "download_ubench", "missing_files", "iter_rows",
    "UbenchRow", "Question", "ImageLocation", "read_image_bytes", "load_image",
    "materialise_images", "image_cache_path", "class_order", "resolve_dataset", "FINE_KIND",
    "sha256_of", "read_dataset_info",
]
