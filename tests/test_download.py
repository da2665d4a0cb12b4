"""biobench.download against a local HTTP server: resume, checksums, archives, marker."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from biobench import download
from biobench.download import DownloadError, RemoteFile
from biobench.tasks import Task
from tests.fixtures.archives import make_tar, make_zip

PAYLOAD = os.urandom(50_000)  # random bytes: a wrong splice can not match the hash by luck
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_file_verifies_and_leaves_no_part(http_server, tmp_path):
    url = http_server.add("/data/blob.bin", PAYLOAD)
    dest = download.download_file(url, tmp_path / "blob.bin", sha256=PAYLOAD_SHA256,
                                  md5=hashlib.md5(PAYLOAD).hexdigest(), size=len(PAYLOAD),
                                  progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "blob.bin.part").exists()


def test_interrupted_transfer_keeps_part_then_resumes_with_range(http_server, tmp_path):
    url = http_server.add("/data/blob.bin", PAYLOAD)
    http_server.cut_after = 12_345
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match="interrupted.*run the download again to resume"):
        download.download_file(url, dest, sha256=PAYLOAD_SHA256, progress=False, retries=0)
    part = tmp_path / "blob.bin.part"
    assert not dest.exists() and part.stat().st_size == 12_345

    download.download_file(url, dest, sha256=PAYLOAD_SHA256, progress=False, retries=0)
    assert [r.headers["Range"] for r in http_server.range_requests()] == ["bytes=12345-"]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == PAYLOAD_SHA256
    assert not part.exists()


def test_broken_transfer_is_retried_by_resuming(http_server, tmp_path):
    url = http_server.add("/blob.bin", PAYLOAD)
    http_server.cut_after, http_server.cut_count = 1_000, 2
    dest = download.download_file(url, tmp_path / "blob.bin", sha256=PAYLOAD_SHA256,
                                  progress=False, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert [r.headers["Range"] for r in http_server.range_requests()] == ["bytes=1000-", "bytes=2000-"]


def test_server_ignoring_range_restarts_from_zero(http_server, tmp_path):
    url = http_server.add("/blob.bin", PAYLOAD)
    http_server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 777)  # would corrupt the file if appended to
    dest = download.download_file(url, tmp_path / "blob.bin", sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(http_server.range_requests()) == 1


def test_complete_part_from_a_killed_run_is_verified_not_refetched(http_server, tmp_path):
    url = http_server.add("/blob.bin", PAYLOAD)
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)  # killed between transfer and rename
    dest = download.download_file(url, tmp_path / "blob.bin", sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r.headers["Range"] for r in http_server.gets()] == [f"bytes={len(PAYLOAD)}-"]


def test_bad_checksum_is_refused_and_nothing_is_left(http_server, tmp_path):
    url = http_server.add("/blob.bin", PAYLOAD)
    with pytest.raises(DownloadError, match=r"Checksum mismatch for blob\.bin.*127\.0\.0\.1"):
        download.download_file(url, tmp_path / "blob.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_md5_and_size_are_refused(http_server, tmp_path):
    url = http_server.add("/blob.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="md5"):
        download.download_file(url, tmp_path / "a.bin", md5="0" * 32, progress=False)
    with pytest.raises(DownloadError, match="size"):
        download.download_file(url, tmp_path / "b.bin", size=len(PAYLOAD) + 1, progress=False)


def test_existing_verified_file_is_reused_and_a_stale_one_replaced(http_server, tmp_path):
    url = http_server.add("/blob.bin", PAYLOAD)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(PAYLOAD)
    download.download_file(url, dest, sha256=PAYLOAD_SHA256, progress=False)
    assert http_server.gets() == []
    dest.write_bytes(b"stale")
    download.download_file(url, dest, sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(http_server.gets()) == 1


@pytest.mark.parametrize("code, hint", [(404, "not found"), (401, "gated or needs a login")])
def test_http_errors_name_the_url(http_server, tmp_path, code, hint):
    http_server.status["/missing.bin"] = code
    with pytest.raises(DownloadError, match=rf"missing\.bin failed with HTTP {code}.*{hint}"):
        download.download_file(http_server.url + "/missing.bin", tmp_path / "m.bin", progress=False)


def test_mirror_url_keeps_path_and_query():
    url = "https://zenodo.org/records/5645731/files/plantnet_300K.zip?download=1"
    assert (download.mirror_url(url, "http://127.0.0.1:8123")
            == "http://127.0.0.1:8123/records/5645731/files/plantnet_300K.zip?download=1")
    assert (download.mirror_url("https://a.org/x/y.tar", "http://127.0.0.1:9/pre/")
            == "http://127.0.0.1:9/pre/x/y.tar")
    assert download.mirror_url(url, None) == url
    with pytest.raises(ValueError, match="mirror must look like"):
        download.mirror_url(url, "127.0.0.1:8000")


def test_remote_file_name_defaults_to_url_basename():
    assert RemoteFile("https://h/records/x/files/phytoplankton_Ut%C3%B6_2021_labeled.zip").name \
        == "phytoplankton_Utö_2021_labeled.zip"
    assert RemoteFile("https://h/blob/", filename="a.tar.gz").name == "a.tar.gz"
    with pytest.raises(ValueError, match="set filename"):
        RemoteFile("https://h/rest/blob/").name


# ---- archives -------------------------------------------------------------------------------
def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def sample_folder(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "one.txt").write_text("1")
    (src / "a" / "b" / "two.txt").write_text("2")
    return src


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar", ".zip"])
def test_extract_archive_round_trip(tmp_path, sample_folder, suffix):
    pack = make_zip if suffix == ".zip" else make_tar
    archive = pack(sample_folder, tmp_path / f"x{suffix}")
    out = download.extract_archive(archive, tmp_path / "out")
    assert _tree(out) == _tree(sample_folder)


def test_extract_archive_strips_single_top_folder_and_merges(tmp_path, sample_folder):
    archive = make_zip(sample_folder, tmp_path / "x.zip", arc_root="labeled_20201020")
    dest = tmp_path / "task" / "train"
    (dest / "a").mkdir(parents=True)
    (dest / "a" / "kept.txt").write_text("k")
    download.extract_archive(archive, dest, strip_top_folder=True)
    assert _tree(dest) == {**_tree(sample_folder), "a/kept.txt": b"k"}


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_corrupt_archive_raises_naming_it_and_leaves_nothing(tmp_path, sample_folder, suffix):
    for i in range(40):  # enough content that truncation cuts into the member data
        (sample_folder / f"f{i}.bin").write_bytes(os.urandom(2_000))
    pack = make_zip if suffix == ".zip" else make_tar
    archive = pack(sample_folder, tmp_path / f"broken{suffix}")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=rf"broken{suffix.replace('.', '[.]')} is corrupt"):
        download.extract_archive(archive, out)
    assert list(out.iterdir()) == []


def _tar_with(members: list[tarfile.TarInfo], out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for info in members:
            data = b"evil" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def test_path_traversal_in_tar_is_refused(tmp_path):
    archive = _tar_with([tarfile.TarInfo("ok.txt"), tarfile.TarInfo("../evil.txt")], tmp_path / "t.tar.gz")
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match=r"unsafe path '\.\./evil\.txt'"):
        download.extract_archive(archive, out)
    assert not (tmp_path / "deep" / "evil.txt").exists() and list(out.iterdir()) == []


def test_symlink_escaping_the_folder_is_refused(tmp_path):
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar_with([link], tmp_path / "l.tar.gz")
    with pytest.raises(DownloadError, match="unsafe member"):
        download.extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_path_traversal_in_zip_is_refused(tmp_path):
    archive = tmp_path / "z.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr("/abs/evil.txt", "evil")
    with pytest.raises(DownloadError, match="unsafe path '/abs/evil.txt'"):
        download.extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# ---- a task's files and the completion marker ----------------------------------------------
class TwoFileTask(Task):
    """Not registered: an archive with a published sum and a CSV without one."""

    name = "two_file_test"
    display = "two files"
    kingdom = modality = citation = "-"
    group = "synthetic"

    def __init__(self, archive_sha256: str | None = None):
        self.remote_files = (
            RemoteFile("https://data.example.org/pub/images.tar.gz", sha256=archive_sha256),
            RemoteFile("https://labels.example.org/labels.csv", extract=False,
                       note=download.NO_PUBLISHED_CHECKSUM),
        )

    def load(self, root=None):
        raise NotImplementedError


@pytest.fixture()
def two_files(http_server, tmp_path, sample_folder):
    archive = make_tar(sample_folder, tmp_path / "images.tar.gz", arc_root="images")
    http_server.add("/pub/images.tar.gz", archive)
    http_server.add("/labels.csv", "id,label\n1,a\n")
    return TwoFileTask(hashlib.sha256(archive.read_bytes()).hexdigest())


def test_download_task_extracts_pins_and_marks_complete(http_server, tmp_path, two_files):
    root = tmp_path / "task"
    download.download_task(two_files, root, mirror=http_server.url, progress=False)
    assert (root / "images" / "a" / "one.txt").read_text() == "1"
    assert (root / "labels.csv").read_text() == "id,label\n1,a\n"
    assert not (root / ".downloads" / "images.tar.gz").exists()  # archive removed once unpacked
    marker = json.loads((root / download.MARKER_NAME).read_text())
    files = {f["filename"]: f for f in marker["files"]}
    assert files["labels.csv"]["sha256"] == hashlib.sha256(b"id,label\n1,a\n").hexdigest()
    assert files["labels.csv"]["checksum"] == download.NO_PUBLISHED_CHECKSUM
    assert files["images.tar.gz"]["checksum"] == "published"
    assert download.is_complete(root)
    # complete: a second call does not touch the network
    n_requests = len(http_server.requests)
    download.download_task(two_files, root, mirror=http_server.url, progress=False)
    assert len(http_server.requests) == n_requests
    (root / download.MARKER_NAME).unlink()
    assert not download.is_complete(root)


def test_changed_remote_file_is_detected_against_the_pinned_sum(http_server, tmp_path, two_files):
    root = tmp_path / "task"
    download.download_task(two_files, root, mirror=http_server.url, progress=False)
    http_server.add("/labels.csv", "id,label\n1,b\n")  # the source changed silently
    with pytest.raises(DownloadError, match="labels.csv.*changed since it was first downloaded"):
        download.download_task(two_files, root, mirror=http_server.url, progress=False, force=True)
    assert not download.is_complete(root)


def test_bad_published_checksum_leaves_the_task_incomplete(http_server, tmp_path, two_files):
    task = TwoFileTask(archive_sha256="f" * 64)
    root = tmp_path / "task"
    with pytest.raises(DownloadError, match="Checksum mismatch for images.tar.gz"):
        download.download_task(task, root, mirror=http_server.url, progress=False)
    assert not download.is_complete(root) and not (root / "images").exists()


def test_interrupted_task_download_resumes_and_completes(http_server, tmp_path, two_files):
    root = tmp_path / "task"
    http_server.cut_after, http_server.cut_count = 10, 3  # more cuts than retries
    with pytest.raises(DownloadError, match="interrupted"):
        download.download_task(two_files, root, mirror=http_server.url, progress=False)
    assert not download.is_complete(root)
    download.download_task(two_files, root, mirror=http_server.url, progress=False)
    assert download.is_complete(root) and (root / "images" / "a" / "b" / "two.txt").exists()
    assert http_server.range_requests("/pub/images.tar.gz")


def test_corrupt_remote_archive_is_deleted_and_reported(http_server, tmp_path, sample_folder):
    archive = make_tar(sample_folder, tmp_path / "images.tar.gz")
    http_server.add("/pub/images.tar.gz", archive.read_bytes()[:60])
    task = TwoFileTask(archive_sha256=None)  # nothing to catch it before extraction
    root = tmp_path / "task"
    with pytest.raises(DownloadError, match="images.tar.gz is corrupt.*was deleted"):
        download.download_task(task, root, mirror=http_server.url, progress=False)
    assert not (root / ".downloads" / "images.tar.gz").exists() and not download.is_complete(root)


def test_fetch_many_and_page_links(http_server, tmp_path):
    http_server.add("/page", '<html><a href="files/x.csv.zip">x</a> <a href="/abs/y.txt">y</a></html>')
    assert download.page_links(http_server.url + "/page") == [
        http_server.url + "/files/x.csv.zip", http_server.url + "/abs/y.txt"]
    jobs = [(http_server.add(f"/img/{i}.jpg", f"img{i}"), tmp_path / f"{i}.jpg") for i in range(20)]
    http_server.status["/img/7.jpg"] = 404
    with pytest.raises(DownloadError, match=r"(?s)1 of 20 files failed.*7\.jpg"):
        download.fetch_many(jobs, max_workers=4, progress=False)
    assert sum(p.exists() for _, p in jobs) == 19
    del http_server.status["/img/7.jpg"]
    n_before = len(http_server.gets())
    download.fetch_many(jobs, max_workers=4, progress=False)
    assert len(http_server.gets()) - n_before == 1  # only the missing one
    assert (tmp_path / "7.jpg").read_text() == "img7"


def test_login_token_is_not_forwarded_to_another_host(http_server, tmp_path):
    from tests.http_server import serving

    with serving(tmp_path / "cdn") as cdn:
        target = cdn.add("/signed/blob.bin", PAYLOAD)
        http_server.redirects["/resolve/blob.bin"] = target
        download.download_file(http_server.url + "/resolve/blob.bin", tmp_path / "blob.bin",
                               sha256=PAYLOAD_SHA256, progress=False,
                               headers={"Authorization": "Bearer secret"})
        assert http_server.requests[0].headers["Authorization"] == "Bearer secret"
        assert "Authorization" not in cdn.requests[0].headers
