"""Where things live on disk. Every path can be moved with an environment variable.

- ``BIOBENCH_HOME``   root of everything below (default ``~/.cache/biobench``)
- ``BIOBENCH_DATA``   datasets, one folder per task (default ``$BIOBENCH_HOME/data``)
- ``BIOBENCH_ASSETS`` files taken from registry packages: weights, demo images
- ``BIOBENCH_FEATURES`` feature cache
- ``BIOBENCH_STORE``  the SQLite results store (default ``results/biobench.sqlite`` under the
  project root: the nearest folder upwards from the current one holding the book's
  ``_config.yml`` and ``_toc.yml``, so the CLI, the grid and every page, wherever it executes,
  share one store)
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


def project_root(start: Path | None = None) -> Path:
    """The folder holding the book's ``_config.yml`` and ``_toc.yml``, searched upwards from
    ``start`` (default: the current folder); the current folder when there is none (a user's
    own project)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "_toc.yml").is_file():
            return folder
    return here


def store_path(start: Path | None = None) -> Path:
    """The results store, as an absolute path: ``$BIOBENCH_STORE`` (a relative value is taken
    from the current folder), else ``results/biobench.sqlite`` under ``project_root(start)``."""
    value = os.environ.get("BIOBENCH_STORE")
    if value:
        return Path(value).expanduser().resolve()
    return project_root(start) / "results" / "biobench.sqlite"
