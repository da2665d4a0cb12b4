"""One function makes any model or task name safe for file names and page names.

Model names may hold slashes, colons and ``@`` (``open_clip:hf-hub:org/repo``,
``timm:resnet50@/data/w.safetensors``, ``folder:/home/me/my-images``); used raw as a path they
would create nested folders or escape the cache. ``safe_name`` keeps short, plain names as
they are (so ``mobilenet_v2`` stays readable on disk) and otherwise replaces every unsafe
character and appends a short hash of the original, so two names never collide.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 80  # file-name stems stay well under every file system's 255-byte limit


def safe_name(name: str) -> str:
    """A file-name-safe stem for ``name``: unchanged when already safe, else a readable
    slug plus 8 hex characters of its sha256 (so distinct names stay distinct)."""
    if not name:
        raise ValueError("a model or task name cannot be empty")
    if not _UNSAFE.search(name) and not name.startswith(".") and len(name) <= MAX_STEM:
        return name
    slug = _UNSAFE.sub("-", name).strip("-.")[: MAX_STEM - 9] or "name"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{slug}-{digest}"
