"""Batched feature extraction, cached on disk per (model, task, split, preprocessing, pooling).

The cache is written in chunks of ``CHUNK`` examples, each chunk atomically (temporary file,
then rename), and the assembled ``features.npz`` last. A run killed half-way therefore resumes
from the last finished chunk, and nothing half-written is ever read as complete. The cache key
hashes the model name, its transform, the task, the split, the pooling and every example's id and
image references, so a changed dataset or transform never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm  # plain bars: tqdm.auto warns on stderr in notebooks without ipywidgets

from biobench import config
from biobench.atomic import atomic_file
from biobench.images import UnreadableImage, load_image
from biobench.tasks.base import Example

CHUNK = 1024  # examples per cache chunk: the unit of resumption


@dataclass
class FeatureSet:
    ids: list[str]  # example ids, in input order, of the examples that have features
    x: np.ndarray  # (N, D) float32
    n_skipped: int = 0  # images that could not be read (only with skip_unreadable)
    skipped_files: list[str] = field(default_factory=list)


def cache_key(model_name: str, preprocessing_id: str, task_name: str, split: str, pooling: str,
              examples: Sequence[Example], skip_unreadable: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model_name, preprocessing_id, task_name, split, pooling,
                         skip_unreadable]).encode())
    for ex in examples:
        h.update(ex.id.encode())
        for ref in ex.images:
            h.update(ref.cache_token().encode())
    return h.hexdigest()[:20]


def _atomic_save(path: Path, **arrays) -> None:
    with atomic_file(path, suffix=".npz") as tmp:  # np.savez keeps a name ending in .npz
        np.savez(tmp, **arrays)


def _pool(feats: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        return feats.mean(dim=0)
    if pooling == "max":
        return feats.max(dim=0).values
    raise ValueError(f"unknown pooling '{pooling}' (use 'mean' or 'max')")


def _extract_chunk(backbone, examples: Sequence[Example], pooling: str, batch_size: int,
                   device: str, skip_unreadable: bool, bar: tqdm) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of one chunk: (kept mask, (n_kept, D) features, skipped file names)."""
    flat = [(i, ref) for i, ex in enumerate(examples) for ref in ex.images]
    per_image: list[list[torch.Tensor]] = [[] for _ in examples]
    skipped: list[str] = []
    use_amp = device.startswith("cuda")
    for start in range(0, len(flat), batch_size):
        batch = flat[start:start + batch_size]
        tensors, owners = [], []
        for i, ref in batch:
            try:
                img = load_image(ref)
            except UnreadableImage:
                if not skip_unreadable:
                    raise
                skipped.append(str(ref.path))
                continue
            tensors.append(backbone.transform(img))
            owners.append(i)
        if tensors:
            x = torch.stack(tensors).to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                feats = backbone(x).float().cpu()
            for i, f in zip(owners, feats):
                per_image[i].append(f)
        bar.update(len(batch))
    kept = np.array([bool(f) for f in per_image])
    pooled = [_pool(torch.stack(f), pooling).numpy() for f in per_image if f]
    dim = backbone.feature_dim
    x = np.stack(pooled).astype(np.float32) if pooled else np.zeros((0, dim), np.float32)
    return kept, x, skipped


def extract_features(backbone, examples: Sequence[Example], *, task_name: str, split: str,
                     pooling: str = "mean", batch_size: int = 32, device: str = "cpu",
                     cache: bool = True, skip_unreadable: bool = False,
                     cache_dir: Path | None = None) -> FeatureSet:
    """Features for ``examples`` (images of one example pooled), from cache when possible.

    An unreadable image raises ``UnreadableImage`` naming the file, unless ``skip_unreadable``:
    then it is left out, counted in ``n_skipped``, and an example with no readable image is
    dropped from ``ids``.
    """
    examples = list(examples)
    key = cache_key(backbone.info.name, backbone.preprocessing_id, task_name, split, pooling,
                    examples, skip_unreadable)
    folder = (cache_dir or config.features_dir()) / backbone.info.name / task_name / f"{split}-{key}"
    final = folder / "features.npz"
    if cache and final.exists():
        with np.load(final, allow_pickle=False) as z:
            return FeatureSet([str(i) for i in z["ids"]], z["x"], int(z["n_skipped"]),
                              [str(f) for f in z["skipped_files"]])

    backbone = backbone.to(device)
    n_images = sum(len(ex.images) for ex in examples)
    kept_all, xs, skipped_all = [], [], []
    with tqdm(total=n_images, desc=f"{backbone.info.name} | {task_name}/{split}", unit="img",
              disable=None) as bar:
        for c, start in enumerate(range(0, len(examples), CHUNK)):
            chunk = examples[start:start + CHUNK]
            chunk_file = folder / f"chunk-{c:05d}.npz"
            if cache and chunk_file.exists():
                with np.load(chunk_file, allow_pickle=False) as z:
                    kept, x, skipped = z["kept"], z["x"], list(z["skipped"])
                bar.update(sum(len(ex.images) for ex in chunk))
            else:
                kept, x, skipped = _extract_chunk(backbone, chunk, pooling, batch_size, device,
                                                  skip_unreadable, bar)
                if cache:
                    _atomic_save(chunk_file, kept=kept, x=x, skipped=np.array(skipped, dtype=str))
            kept_all.append(kept)
            xs.append(x)
            skipped_all.extend(skipped)
    kept = np.concatenate(kept_all) if kept_all else np.zeros(0, bool)
    x = np.concatenate(xs) if xs else np.zeros((0, backbone.feature_dim), np.float32)
    ids = [ex.id for ex, k in zip(examples, kept) if k]
    result = FeatureSet(ids, x, len(skipped_all), skipped_all)
    if cache:
        _atomic_save(final, ids=np.array(ids, dtype=str), x=x, n_skipped=np.array(result.n_skipped),
                     skipped_files=np.array(skipped_all, dtype=str))
        for chunk_file in folder.glob("chunk-*.npz"):
            chunk_file.unlink()
    return result
