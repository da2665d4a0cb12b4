"""Write files and folders so that nothing half-written ever looks complete.

Both helpers build the result under a temporary name beside its destination (same file system,
so the final rename is atomic) and move it into place only when the ``with`` block succeeds; on
any error, the temporary is removed and the destination is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``dest`` when the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():  # an older or incomplete copy
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def atomic_file(dest: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path that replaces ``dest`` when the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically; leave the file (and its mtime, which Sphinx watches) alone
    when it already holds exactly that text. Returns True when the file was written."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return True
