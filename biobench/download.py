"""Fetching task data: resumable, checksum-verified downloads and safe archive extraction.

A task lists its ``RemoteFile`` entries; ``download_task`` fetches each one into
``<root>/.downloads``, verifies it, unpacks archives into ``<root>``, and writes the completion
marker ``<root>/.biobench-complete`` last. A folder without the marker is never complete, so an
interrupted download can not be mistaken for data.

Checksums: a ``RemoteFile`` carries the published sum where one exists. Where none exists, the
sha256 seen on the first download is pinned (in ``.downloads/state.json`` and in the marker), and
a later re-download of a file whose content changed is refused.

``mirror="http://127.0.0.1:PORT"`` swaps the scheme and host of every URL and keeps the path:
tests serve fixture archives from a local server this way.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

from tqdm import tqdm  # plain bars: tqdm.auto warns on stderr in notebooks without ipywidgets

from biobench.atomic import atomic_file

MARKER_NAME = ".biobench-complete"
DOWNLOADS_DIR = ".downloads"
STATE_NAME = "state.json"
NO_PUBLISHED_CHECKSUM = "no published checksum; pinned on first download"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
USER_AGENT = "biobench-book (+https://github.com/samuelstevens/biobench data download)"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A download, checksum or extraction failed; the message names the URL/file and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One remote file of a task.

    ``extract``: archives (.zip/.tar/.tar.gz/.tgz) are unpacked into the task folder; other
    files are stored there as they are. ``extract_as``: unpack into this sub-folder instead
    ("." for the task folder itself) and strip the archive's single top-level folder, for
    archives whose top folder has an awkward name (``labeled_20201020/`` -> ``train/``).
    """

    url: str
    filename: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract: bool = True
    note: str = ""
    extract_as: str | None = None

    @property
    def name(self) -> str:
        """File name on disk: ``filename`` or the basename of the URL path."""
        # rsplit, not PurePosixPath: ".../contents/blob/" names a folder-like endpoint, no file
        name = self.filename or unquote(urlsplit(self.url).path).rsplit("/", 1)[-1]
        if not name:
            raise ValueError(f"RemoteFile {self.url}: the URL has no file name; set filename=")
        return name

    @property
    def is_archive(self) -> bool:
        return self.extract and is_archive_name(self.name)

    @property
    def has_published_checksum(self) -> bool:
        return bool(self.sha256 or self.md5)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def mirror_url(url: str, mirror: str | None) -> str:
    """Replace scheme and host of ``url`` by those of ``mirror``; keep the path and query.

    A mirror with a path (``http://host/prefix``) puts that prefix before the URL's path.
    """
    if not mirror:
        return url
    source = urlsplit(url)
    target = urlsplit(mirror)
    if not target.scheme or not target.netloc:
        raise ValueError(f"mirror must look like 'http://host:port', got {mirror!r}")
    path = target.path.rstrip("/") + source.path
    return urlunsplit((target.scheme, target.netloc, path, source.query, source.fragment))


# ---- checksums ------------------------------------------------------------------------------
def file_digests(path: Path, *, md5: bool = False) -> dict[str, Any]:
    """sha256 (and md5 when asked) and size of a file, in one pass."""
    hashers = {"sha256": hashlib.sha256()}
    if md5:
        hashers["md5"] = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            for h in hashers.values():
                h.update(chunk)
    out: dict[str, Any] = {name: h.hexdigest() for name, h in hashers.items()}
    out["size"] = Path(path).stat().st_size
    return out


def _mismatches(digests: dict, sha256: str | None, md5: str | None, size: int | None) -> list[str]:
    problems = []
    if size is not None and digests["size"] != size:
        problems.append(f"size {digests['size']} bytes, expected {size}")
    if sha256 and digests["sha256"] != sha256.lower():
        problems.append(f"sha256 {digests['sha256']}, expected {sha256.lower()}")
    if md5 and digests.get("md5") != md5.lower():
        problems.append(f"md5 {digests.get('md5')}, expected {md5.lower()}")
    return problems


# ---- one file -------------------------------------------------------------------------------
class _Interrupted(Exception):
    """The transfer stopped early; the .part file is kept so the next attempt resumes."""


def _http_error_message(url: str, code: int, reason: str) -> str:
    if code in (401, 403):
        what = "access denied: the source is gated or needs a login (see the task's download note)"
    elif code == 404:
        what = "not found: the remote file is missing or has moved; check the task's source URL"
    else:
        what = "the server refused the request; try again later"
    return f"Download of {url} failed with HTTP {code} {reason}: {what}."


class _DropAuthOnHostChange(HTTPRedirectHandler):
    """Follow redirects, but never send a login token on to another host (hub files redirect
    to a CDN whose signed URLs need no token and may reject one)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = build_opener(_DropAuthOnHostChange)


def _open(url: str, headers: dict[str, str] | None, offset: int):
    request = Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return _OPENER.open(request, timeout=TIMEOUT_S)


def _transfer(url: str, part: Path, *, headers: dict[str, str] | None, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range request), or rewrite it when the server
    does not honour the range. Raises ``_Interrupted`` on a short or broken transfer."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, headers, offset)
    except HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send, or the .part is too long
            if exc.headers.get("Content-Range", "") == f"bytes */{offset}":
                return  # the .part already holds the whole file (killed before verifying)
            part.unlink()
            return _transfer(url, part, headers=headers, progress=progress)
        raise DownloadError(_http_error_message(url, exc.code, exc.reason)) from exc
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"Could not reach {url} ({reason}). Check the network connection and run the "
            "download again; a partial file resumes where it stopped."
        ) from exc
    with response:
        if response.status == 206 and not response.headers.get(
                "Content-Range", "").startswith(f"bytes {offset}-"):
            # a range we did not ask for: start over rather than corrupt the file
            response.close()
            part.unlink(missing_ok=True)
            return _transfer(url, part, headers=headers, progress=progress)
        resumed = offset > 0 and response.status == 206
        start = offset if resumed else 0
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header else None
        received = 0
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=start + length if length is not None else None,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
            leave=False,
        ) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                raise _Interrupted(f"{type(exc).__name__} after {start + received} bytes") from exc
        if length is not None and received < length:
            raise _Interrupted(f"connection closed after {start + received} of {start + length} bytes")


def _fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    md5: str | None,
    size: int | None,
    progress: bool,
    retries: int,
    headers: dict[str, str] | None,
    checksum_origin: str = "published",
) -> dict[str, Any]:
    """``download_file`` returning the observed digests (sha256, md5 if asked, size)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want_md5 = md5 is not None
    if dest.exists():
        digests = file_digests(dest, md5=want_md5)
        if not _mismatches(digests, sha256, md5, size):
            return digests
        dest.unlink()  # stale or changed: fetch again
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, headers=headers, progress=progress)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DownloadError(
                    f"Download of {url} was interrupted ({exc}). The partial file {part} is kept: "
                    "run the download again to resume it."
                ) from exc
            time.sleep(min(2**attempt, 10) * 0.1)
    digests = file_digests(part, md5=want_md5)
    problems = _mismatches(digests, sha256, md5, size)
    if problems:
        part.unlink()
        cause = (
            "the remote file changed since it was first downloaded (the sum was pinned then)"
            if checksum_origin == "pinned"
            else "the transfer was corrupted or the remote file changed"
        )
        raise DownloadError(
            f"Checksum mismatch for {dest.name} from {url}: {'; '.join(problems)}. Likely cause: "
            f"{cause}. The bad file was deleted; run the download again, and if it fails the same "
            "way the source has changed: report it to the project."
        )
    os.replace(part, dest)
    return digests


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = 2,
    headers: dict[str, str] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    The file only appears at ``dest`` after its size and checksums are verified. An existing
    ``dest`` that matches the checksums is reused. A transfer that breaks off is retried
    ``retries`` times, each time resuming; after that the ``.part`` is kept for the next call.
    """
    _fetch(url, dest, sha256=sha256, md5=md5, size=size, progress=progress, retries=retries,
           headers=headers)
    return Path(dest)


def fetch_many(
    jobs: Sequence[tuple[str, Path]],
    *,
    max_workers: int = 16,
    progress: bool = True,
    desc: str = "files",
    headers: dict[str, str] | None = None,
) -> list[Path]:
    """Download many small files (``(url, dest)`` pairs) with a bounded thread pool.

    Files already present are kept, so a second call fetches only what is missing. Failures
    are collected and reported together after every other file has been tried.
    """
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=max_workers) as pool, tqdm(
        total=len(jobs), desc=desc, unit="file", disable=not progress
    ) as bar:
        futures = {
            pool.submit(download_file, url, Path(dest), progress=False, headers=headers): url
            for url, dest in jobs
        }
        for future in as_completed(futures):
            try:
                future.result()
            except DownloadError as exc:
                failures.append(str(exc))
            bar.update(1)
    if failures:
        shown = "\n  ".join(failures[:5])
        raise DownloadError(
            f"{len(failures)} of {len(jobs)} {desc} failed to download; the others are kept, "
            f"so running the download again fetches only the missing ones. First failures:\n  {shown}"
        )
    return [Path(dest) for _, dest in jobs]


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.extend(value for key, value in attrs if key == "href" and value)


def page_links(url: str, *, headers: dict[str, str] | None = None) -> list[str]:
    """Absolute URLs of every ``<a href>`` on an HTML page, in page order."""
    try:
        with _open(url, headers, 0) as response:
            charset = response.headers.get_content_charset() or "utf-8"
            html = response.read().decode(charset, errors="replace")
    except HTTPError as exc:
        raise DownloadError(_http_error_message(url, exc.code, exc.reason)) from exc
    except (URLError, OSError) as exc:
        raise DownloadError(f"Could not reach {url} ({getattr(exc, 'reason', exc)}).") from exc
    parser = _LinkParser()
    parser.feed(html)
    return [urljoin(url, link) for link in parser.links]


# ---- archives -------------------------------------------------------------------------------
def _check_member_path(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DownloadError(
            f"Archive {archive} contains the unsafe path '{name}', which would be written outside "
            "the extraction folder; refusing to extract it. Delete the archive; if it came from "
            "the official source, report it."
        )


def _unpack(archive: Path, into: Path, progress: bool) -> None:
    name = archive.name.lower()
    bar = tqdm(desc=f"extract {archive.name}", unit="file", leave=False, disable=not progress)
    with bar:
        if name.endswith(".zip") or (not name.endswith(ARCHIVE_SUFFIXES) and zipfile.is_zipfile(archive)):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for member in members:
                    _check_member_path(archive, member.filename)
                bar.total = len(members)
                for member in members:
                    zf.extract(member, into)
                    bar.update(1)
            return
        with tarfile.open(archive, "r:*") as tf:
            # member by member: a truncated archive fails part-way, into the temporary folder
            for member in tf:
                _check_member_path(archive, member.name)
                tf.extract(member, into, filter="data")
                bar.update(1)


def _move_contents(source: Path, dest: Path) -> None:
    """Move everything in ``source`` into ``dest``, merging folders that already exist."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _move_contents(entry, target)
            entry.rmdir()
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def extract_archive(archive: Path, dest_dir: Path, *, strip_top_folder: bool = False,
                    progress: bool = False) -> Path:
    """Unpack ``archive`` into ``dest_dir``; return ``dest_dir``.

    Everything is first unpacked into a hidden temporary folder inside ``dest_dir`` and only
    moved into place once the whole archive has been read, so a corrupt archive leaves nothing
    behind. Members with absolute paths, ``..`` or links pointing outside are refused.
    ``strip_top_folder``: when the archive holds a single top-level folder, move its contents
    (not the folder itself).
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise DownloadError(f"Archive {archive} does not exist; run the download again.")
    dest_dir.mkdir(parents=True, exist_ok=True)
    for stale in dest_dir.glob(f".extract-{archive.name}-*"):  # left by a killed extraction
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{archive.name}-", dir=dest_dir))
    try:
        try:
            _unpack(archive, tmp, progress)
        except tarfile.FilterError as exc:  # link or path escaping the folder
            raise DownloadError(
                f"Archive {archive} contains an unsafe member ({exc}); refusing to extract it. "
                "Delete the archive; if it came from the official source, report it."
            ) from exc
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as exc:
            raise DownloadError(
                f"Archive {archive} is corrupt or truncated ({type(exc).__name__}: {exc}). "
                "Delete it and run the download again."
            ) from exc
        shutil.rmtree(tmp / "__MACOSX", ignore_errors=True)  # resource forks zipped on macOS
        source = tmp
        if strip_top_folder:
            entries = list(tmp.iterdir())
            if len(entries) == 1 and entries[0].is_dir():
                source = entries[0]
        _move_contents(source, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


# ---- a task's files -------------------------------------------------------------------------
class DownloadState:
    """Per-file records of a task folder, kept in ``.downloads/state.json`` across runs.

    A record holds the URL, observed sha256 (the pin when no sum is published), size, and
    whether the file has been extracted, so an interrupted task download neither re-fetches
    finished archives nor forgets a pinned checksum.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / DOWNLOADS_DIR / STATE_NAME
        self.files: dict[str, dict[str, Any]] = {}
        self.marker_extra: dict[str, Any] = {}  # more fields for the completion marker
        marker = read_marker(self.root)
        for source in (marker.get("files", []) if marker else [], self._read_state()):
            for record in source:
                self.files[record["filename"]] = record

    def _read_state(self) -> list[dict]:
        try:
            return json.loads(self.path.read_text()).get("files", [])
        except (FileNotFoundError, json.JSONDecodeError):
            return []

    def pinned_sha256(self, name: str) -> str | None:
        return self.files.get(name, {}).get("sha256")

    def update(self, record: dict[str, Any]) -> None:
        self.files[record["filename"]] = record
        _write_json_atomic(self.path, {"files": list(self.files.values())})


def _write_json_atomic(path: Path, payload: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))


def read_marker(root: Path) -> dict | None:
    """The completion marker's content, or ``None`` when absent or unreadable."""
    try:
        return json.loads((Path(root) / MARKER_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def is_complete(root: Path) -> bool:
    """True only when a download finished and wrote its marker."""
    return read_marker(root) is not None


def begin_download(root: Path) -> DownloadState:
    """Start (or resume) filling ``root``: load the file records, then remove the marker so
    the folder reads as incomplete until ``write_marker`` runs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = DownloadState(root)  # reads pins from the marker before it goes
    (root / MARKER_NAME).unlink(missing_ok=True)
    return state


def write_marker(root: Path, task_name: str, files: Iterable[dict[str, Any]], **extra: Any) -> Path:
    """Write the completion marker (atomically). Call it last."""
    marker = Path(root) / MARKER_NAME
    payload = {
        "task": task_name,
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": list(files),
        **extra,
    }
    _write_json_atomic(marker, payload)
    return marker


def fetch_remote_file(
    remote: RemoteFile,
    root: Path,
    state: DownloadState,
    *,
    mirror: str | None = None,
    progress: bool = True,
    force: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Download, verify and (for archives) extract one ``RemoteFile``; return its record."""
    root = Path(root)
    name = remote.name
    previous = state.files.get(name, {})
    if previous.get("extracted") and not force:
        return previous  # finished in an earlier, interrupted run
    url = mirror_url(remote.url, mirror)
    dest = root / DOWNLOADS_DIR / name if remote.is_archive else root / name
    if force:
        dest.unlink(missing_ok=True)
    pinned = None if remote.has_published_checksum else state.pinned_sha256(name)
    digests = _fetch(
        url, dest, sha256=remote.sha256 or pinned, md5=remote.md5, size=remote.size,
        progress=progress, retries=2, headers=headers,
        checksum_origin="pinned" if pinned else "published",
    )
    record = {
        "filename": name,
        "url": remote.url,
        "sha256": digests["sha256"],
        "md5": digests.get("md5"),
        "size": digests["size"],
        "checksum": "published" if remote.has_published_checksum else NO_PUBLISHED_CHECKSUM,
        "extracted": False,
    }
    if remote.is_archive:
        target = root / remote.extract_as if remote.extract_as else root
        try:
            extract_archive(dest, target, strip_top_folder=remote.extract_as is not None,
                            progress=progress)
        except DownloadError as exc:
            dest.unlink(missing_ok=True)  # so the next run fetches a fresh copy
            raise DownloadError(f"{exc} (The archive from {url} was deleted.)") from exc
        record["extracted"] = True
        dest.unlink()  # archives are large; the extracted files are what we keep
    state.update(record)
    return record


def run_download(task, root: Path, steps: Callable[[DownloadState], list[dict]], *,
                 force: bool = False) -> Path:
    """The frame every task download shares: nothing to do when ``root`` is complete (unless
    ``force``); otherwise open the folder's ``DownloadState``, run ``steps(state)`` (it fetches
    and returns one record per file, and may add fields to ``state.marker_extra``), and write
    the completion marker last."""
    root = Path(root)
    if is_complete(root) and not force:
        return root
    state = begin_download(root)
    records = steps(state)
    write_marker(root, task.name, records, **state.marker_extra)
    return root


def download_task(
    task,
    root: Path,
    *,
    mirror: str | None = None,
    progress: bool = True,
    force: bool = False,
    headers: dict[str, str] | None = None,
) -> Path:
    """Fetch every ``task.remote_files`` entry into ``root`` and mark the folder complete.

    A folder already marked complete for the same files is left alone unless ``force``;
    ``force`` fetches everything again and checks it against the published or pinned sums.
    """
    root = Path(root)
    remote_files: Sequence[RemoteFile] = tuple(task.remote_files)
    if not remote_files:
        raise DownloadError(
            f"Task '{task.name}' lists no remote files to download. "
            f"{getattr(task, 'download_hint', '') or 'See its chapter for how to get the data.'}"
        )
    marker = read_marker(root)
    # a marker written for another list of files (the task's sources changed) is stale
    stale = marker is not None and {f["filename"] for f in marker.get("files", [])} != {
        r.name for r in remote_files}

    def fetch_all(state: DownloadState) -> list[dict]:
        return [
            fetch_remote_file(r, root, state, mirror=mirror, progress=progress, force=force,
                              headers=headers)
            for r in tqdm(remote_files, desc=f"{task.name}: files", unit="file",
                          disable=not progress or len(remote_files) < 2)
        ]

    return run_download(task, root, fetch_all, force=force or stale)
