"""Shared machinery of the offline tasks, whose data come from package-registry wheels."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from biobench.tasks.base import Example

COMPLETE_MARKER = ".biobench-complete"


def stratified_half_split(examples: Sequence[Example], seed: int = 0) -> tuple[list, list]:
    """Split each class in two halves (test gets the smaller half), seeded and deterministic.

    The registry packages ship tiny official test splits (8 images for the plankton demo set),
    too small for a bootstrap interval to mean anything; half of every class goes to test.
    """
    rng = np.random.default_rng(seed)
    by_label: dict = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    train, test = [], []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda e: e.id)
        order = rng.permutation(len(items))
        n_test = len(items) // 2
        test_idx = set(order[:n_test].tolist())
        for i, ex in enumerate(items):
            (test if i in test_idx else train).append(ex)
    return sorted(train, key=lambda e: e.id), sorted(test, key=lambda e: e.id)


def install_files(files: dict[str, Path], dest: Path, provenance: dict) -> Path:
    """Copy ``{relative name: source file}`` into ``dest`` atomically, marker last."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for rel, src in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(provenance, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest
