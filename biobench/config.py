"""Where things live on disk. Every path can be moved with an environment variable.

- ``BIOBENCH_HOME``   root of everything below (default ``~/.cache/biobench``)
- ``BIOBENCH_DATA``   datasets, one folder per task (default ``$BIOBENCH_HOME/data``)
- ``BIOBENCH_ASSETS`` files taken from registry packages: weights, demo images
- ``BIOBENCH_FEATURES`` feature cache
- ``BIOBENCH_STORE``  the SQLite results store (default ``results/biobench.sqlite`` in the
  current folder, so that the book and the CLI run from the project root share it)
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def home_dir() -> Path:
    return _env_path("BIOBENCH_HOME", Path("~/.cache/biobench").expanduser())


def data_dir() -> Path:
    return _env_path("BIOBENCH_DATA", home_dir() / "data")


def assets_dir() -> Path:
    return _env_path("BIOBENCH_ASSETS", home_dir() / "assets")


def features_dir() -> Path:
    return _env_path("BIOBENCH_FEATURES", home_dir() / "features")


def store_path() -> Path:
    return _env_path("BIOBENCH_STORE", Path("results") / "biobench.sqlite")
