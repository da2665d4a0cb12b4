"""Batched feature extraction, cached on disk per (model, task, split, preprocessing, pooling).

**Input pipeline.** Images are decoded (``biobench.images.load_image``) and run through the
backbone's transform by a torch ``DataLoader``, in ``num_workers`` worker processes (default:
the cores this process may use, ``len(os.sched_getaffinity(0))``, at most ``MAX_WORKERS``, and
none for small jobs; ``BIOBENCH_NUM_WORKERS`` or the ``num_workers`` argument override it; 0
decodes in-process, with one torch thread while loading, as a worker has).
Workers ship images as uint8 where the transform allows it (``split_transform``: a ``Compose``
ending in ``ToTensor`` and ``Normalize``, as timm's, open_clip's and the offline models' do): the
conversion to float and the normalisation run on the batch in the main process, on the device,
with the transform's own ``Normalize``, so features are bit for bit those of the whole transform
while a worker moves a quarter of the bytes (``benchmarks/scale_features.py`` measures it).
Batches come back in input order. On CUDA they are pinned and copied with ``non_blocking``,
the forward pass runs under autocast (bf16 on GPUs with native bf16, else fp16; ``fp32`` when
a task asks for it, with TF32 off), and the batch size starts at ``AUTO_BATCH_SIZE_CUDA``
unless given: an out-of-memory error halves it and retries the same images, and the size that
worked is recorded (``FeatureSet.batch_size``). Workers never raise for an unreadable image:
they report it, and the main process raises ``UnreadableImage`` naming the file (or skips it
with ``skip_unreadable``), so both paths behave the same.

**Cache.** Written in chunks of ``CHUNK`` examples, each chunk atomically (temporary file,
then rename), so a killed run resumes from the last finished chunk. The chunks are then copied
one at a time into ``features.npy`` (written through ``numpy.lib.format.open_memmap``, never
whole in memory) and ``index.npz`` (ids, skipped files) is written last: it marks the entry
complete. A cached matrix is returned memory-mapped, read-only.

**Lean storage.** Features of an autocast forward pass (bf16 or fp16) are stored as float16:
its 11-bit significand is finer than bf16's 8 bits and equal to fp16's, so storage adds at most
half an fp16 rounding step (relative 2**-11) to a pass that already rounded more than that.
The test suite checks that macro-F1 is unchanged within ``FP16_STORAGE_F1_TOLERANCE``. fp32
passes (CPU, or a task that needs fp32) are stored as float32. A matrix with a value beyond
float16's range (65504) is stored as float32 whatever was asked. ``store_as`` overrides.

**Cache key.** It hashes the cache format, the model name, its transform, the forward pass's
precision and device class (bf16 autocast on a GPU and fp32 on a CPU give different features,
never mixed), the storage dtype, the task, the split, the pooling, and every example's id,
image references and image files' sizes and modification times, so a changed dataset, image
or transform never reuses stale features. Caches of older formats (``features.npz``) have
other keys and are simply not found. Folder names go through ``biobench.names.safe_name``: a
model called ``open_clip:hf-hub:org/repo`` gets one folder, not three.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap

from biobench import config
from biobench.atomic import atomic_file
from biobench.images import UnreadableImage, load_image
from biobench.names import safe_name
from biobench.progress import progress_bar, stage
from biobench.tasks.base import Example, ImageRef

CACHE_FORMAT = 2  # 1: one features.npz, float32; 2: features.npy (memory-mapped) + index.npz
CHUNK = 1024  # examples per cache chunk: the unit of resumption
MAX_WORKERS = 16  # decoding a ViT-L's worth of JPEGs needs ~10; more only costs memory
# Below this many images to extract, the default is in-process: starting workers (fork, then
# copy-on-write faults) cost 0.4-1 s on a busy 2-core machine, ~250 images' decoding.
MIN_IMAGES_FOR_WORKERS = 512
WORKERS_ENV = "BIOBENCH_NUM_WORKERS"
AUTO_BATCH_SIZE_CPU = 32
AUTO_BATCH_SIZE_CUDA = 256  # timm's benchmark size; halves on out-of-memory
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what a caller may ask for
STORAGE_DTYPES = ("auto", "float16", "float32")
FP16_MAX = float(np.finfo(np.float16).max)
# Stated tolerance of float16 storage: |macro-F1(fp16-stored) - macro-F1(fp32)| at most this
# (checked in tests/test_features.py on the synthetic task and on realistic-size features).
FP16_STORAGE_F1_TOLERANCE = 0.005


@dataclass
class FeatureSet:
    ids: list[str]  # example ids, in input order, of the examples that have features
    x: np.ndarray  # (N, D) float16 or float32 (see module doc); memory-mapped when cached
    n_skipped: int = 0  # images that could not be read (only with skip_unreadable)
    skipped_files: list[str] = field(default_factory=list)
    precision: str = "fp32"  # the forward pass's precision (see ``resolve_precision``)
    batch_size: int | None = None  # the batch size that fitted (None: nothing was extracted)


# ---- precision and storage ----------------------------------------------------------------
def device_class(device: str) -> str:
    """``cuda:1`` -> ``cuda``: features do not depend on which GPU, but on the kind of device."""
    return str(device).split(":")[0]


def _native_bf16(device: str) -> bool:
    # Compute capability 8 (Ampere) and up run bf16 natively; torch's is_bf16_supported()
    # also says yes for emulated bf16, which is slow.
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def resolve_precision(device: str, requested: str = "auto") -> str:
    """The precision of the forward pass: ``fp32``, ``bf16-autocast`` or ``fp16-autocast``.

    A CPU always runs fp32. On CUDA, ``auto`` is bf16 autocast where the GPU has native bf16,
    else fp16 autocast; ``fp32`` is for tasks whose scores need it.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision '{requested}' (use one of {', '.join(PRECISIONS)})")
    if device_class(device) != "cuda" or requested == "fp32":
        return "fp32"
    if requested == "auto":
        requested = "bf16" if _native_bf16(device) else "fp16"
    return f"{requested}-autocast"


precision = resolve_precision  # the name earlier callers used: precision(device)


def storage_dtype_name(precision_used: str, store_as: str = "auto") -> str:
    """``float16`` for autocast passes, ``float32`` for fp32 ones, unless ``store_as`` says."""
    if store_as not in STORAGE_DTYPES:
        raise ValueError(f"unknown store_as '{store_as}' (use one of {', '.join(STORAGE_DTYPES)})")
    if store_as != "auto":
        return store_as
    return "float32" if precision_used == "fp32" else "float16"


def _fits_float16(absmax: float) -> bool:
    return bool(absmax <= FP16_MAX)  # NaN compares False: such a matrix stays float32


def _absmax(x: np.ndarray) -> float:
    return float(np.abs(x).max()) if x.size else 0.0


# ---- cache layout ---------------------------------------------------------------------------
def cache_key(model_name: str, preprocessing_id: str, task_name: str, split: str, pooling: str,
              examples: Sequence[Example], skip_unreadable: bool, device: str = "cpu",
              precision: str = "auto", store_as: str = "auto") -> str:
    precision_used = resolve_precision(device, precision)
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, model_name, preprocessing_id, task_name, split, pooling,
                         skip_unreadable, device_class(device), precision_used,
                         storage_dtype_name(precision_used, store_as)]).encode())
    for ex in examples:
        h.update(ex.id.encode())
        for ref in ex.images:  # size and mtime too: a replaced image is extracted again
            h.update(ref.content_token().encode())
    return h.hexdigest()[:20]


def _atomic_save(path: Path, **arrays) -> None:
    with atomic_file(path, suffix=".npz") as tmp:  # np.savez keeps a name ending in .npz
        np.savez(tmp, **arrays)


def _chunk_file(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:05d}.npz"


def _is_complete(folder: Path) -> bool:
    return (folder / "index.npz").is_file() and (folder / "features.npy").is_file()


def _load_cached(folder: Path) -> FeatureSet:
    with np.load(folder / "index.npz", allow_pickle=False) as z:
        ids = [str(i) for i in z["ids"]]
        n_skipped, skipped = int(z["n_skipped"]), [str(f) for f in z["skipped_files"]]
        precision_used, batch_size = str(z["precision"]), int(z["batch_size"])
    x = np.load(folder / "features.npy", mmap_mode="r")  # pages are read when touched
    if len(x) != len(ids):
        raise RuntimeError(f"feature cache {folder} is inconsistent ({len(x)} rows, {len(ids)} "
                           "ids); delete that folder and run again")
    return FeatureSet(ids, x, n_skipped, skipped, precision_used,
                      batch_size if batch_size > 0 else None)


def _assemble(folder: Path, examples: list[Example], n_chunks: int, dim: int, dtype_name: str,
              precision_used: str) -> FeatureSet:
    """Copy the finished chunks, one at a time, into a memory-mapped ``features.npy``; write
    ``index.npz`` last (it marks the entry complete); delete the chunks; return it mapped."""
    files = [_chunk_file(folder, c) for c in range(n_chunks)]
    kept_parts, skipped, absmax, batch_sizes = [], [], 0.0, []
    for file in files:  # first pass: small members only, to size and type the matrix
        with np.load(file, allow_pickle=False) as z:
            kept_parts.append(z["kept"])
            skipped.extend(str(f) for f in z["skipped"])
            absmax = max(absmax, float(z["absmax"]))
            batch_sizes.append(int(z["batch_size"]))
    kept = np.concatenate(kept_parts) if kept_parts else np.zeros(0, bool)
    dtype = np.float16 if dtype_name == "float16" and _fits_float16(absmax) else np.float32
    with atomic_file(folder / "features.npy", suffix=".npy") as tmp:
        matrix = open_memmap(tmp, mode="w+", dtype=dtype, shape=(int(kept.sum()), dim))
        row = 0
        for file in files:
            with np.load(file, allow_pickle=False) as z:
                x = z["x"]
            matrix[row:row + len(x)] = x
            row += len(x)
        matrix.flush()
        del matrix  # unmap before the rename
    ids = [ex.id for ex, k in zip(examples, kept) if k]
    used = [b for b in batch_sizes if b > 0]
    _atomic_save(folder / "index.npz", ids=np.array(ids, dtype=str),
                 n_skipped=np.array(len(skipped)), skipped_files=np.array(skipped, dtype=str),
                 precision=np.array(precision_used), batch_size=np.array(min(used, default=0)))
    for file in files:
        file.unlink()
    return _load_cached(folder)


class _InMemoryMatrix:
    """The uncached result, filled chunk by chunk in its storage dtype (never a second copy).
    A chunk outside float16's range turns it float32, as the cached path does."""

    def __init__(self, max_rows: int, dim: int, dtype_name: str):
        self.rows = np.empty((max_rows, dim), np.float16 if dtype_name == "float16" else np.float32)
        self.n = 0

    def append(self, x: np.ndarray) -> None:
        if self.rows.dtype == np.float16 and not _fits_float16(_absmax(x)):
            self.rows = self.rows.astype(np.float32)
        self.rows[self.n:self.n + len(x)] = x
        self.n += len(x)

    def result(self) -> np.ndarray:
        return self.rows[:self.n]


# ---- the input pipeline ---------------------------------------------------------------------
def default_num_workers() -> int:
    """Decoding workers: the cores this process may run on (its affinity, not the machine's),
    at most ``MAX_WORKERS``; 0 (in-process) on a single core, where workers only add copies."""
    override = os.environ.get(WORKERS_ENV)
    if override:
        try:
            return max(0, int(override))
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={override!r} is not a whole number of worker "
                             "processes (0 decodes in the main process)") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, MAX_WORKERS)


class _ImageFiles(torch.utils.data.Dataset):
    """Item i: (i, transformed tensor, None), or (i, None, (path, reason)) when unreadable.

    Paths and boxes are numpy arrays, not lists of ImageRefs: a forked worker that touches a
    Python object writes its reference count and copies the parent's page, which for a
    million-image list is gigabytes per worker (pytorch/pytorch#13246).
    """

    def __init__(self, refs: Sequence[ImageRef], transform):
        self.paths = np.array([os.fsencode(ref.path) for ref in refs], dtype=bytes)
        self.has_box = np.array([ref.box is not None for ref in refs], dtype=bool)
        self.boxes = np.array([ref.box if ref.box is not None else (0, 0, 0, 0) for ref in refs],
                              dtype=np.float64).reshape(len(refs), 4)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def ref(self, i: int) -> ImageRef:
        box = None
        if self.has_box[i]:  # ints stay ints, so error messages match the original box
            box = tuple(int(v) if float(v).is_integer() else float(v) for v in self.boxes[i])
        return ImageRef(Path(os.fsdecode(self.paths[i])), box)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.ref(i))
        except UnreadableImage as exc:  # the main process decides: raise or skip
            return i, None, (str(exc.path), exc.reason)
        return i, self.transform(image), None


class _ToUint8:
    """The transform's steps before ``ToTensor``, then the image as a (C, H, W) uint8 tensor."""

    def __init__(self, before_to_tensor):
        self.before_to_tensor = before_to_tensor

    def __call__(self, image):
        from torchvision.transforms import functional as TF

        image = self.before_to_tensor(image)
        if getattr(image, "mode", None) not in ("RGB", "L"):  # ToTensor would not divide by 255
            raise TypeError(f"expected an 8-bit RGB or L image before ToTensor, got "
                            f"{getattr(image, 'mode', type(image).__name__)}")
        return TF.pil_to_tensor(image)

    def __repr__(self) -> str:
        return f"_ToUint8({self.before_to_tensor!r})"


class _ToFloatNormalised:
    """``ToTensor``'s scaling (uint8 / 255, in float32) and the transform's ``Normalize``, on a
    whole batch: element for element the arithmetic of the transform's own last two steps."""

    def __init__(self, normalize):
        self.normalize = normalize

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(torch.get_default_dtype()).div(255)
        return self.normalize(images) if self.normalize is not None else images


def split_transform(transform):
    """(per-image part, per-batch part): the per-image part ends in uint8 tensors, the
    per-batch part finishes the transform on the device. A transform of another shape is kept
    whole: (transform, None)."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", ())) if isinstance(transform, T.Compose) else []
    normalize = steps.pop() if steps and type(steps[-1]) is T.Normalize else None
    # timm's MaybeToTensor and open_clip's subclass ToTensor without changing it for images
    if not steps or not isinstance(steps[-1], T.ToTensor):
        return transform, None
    return _ToUint8(T.Compose(steps[:-1])), _ToFloatNormalised(normalize)


def _collate(items):
    positions = [i for i, _, _ in items]
    tensors = [t for _, t, _ in items if t is not None]
    failures = {i: failure for i, _, failure in items if failure is not None}
    # default_collate stacks straight into shared memory inside a worker: one copy fewer
    # than stacking and letting the queue move the batch there
    images = torch.utils.data.default_collate(tensors) if tensors else None
    return positions, images, failures


@contextlib.contextmanager
def _batches(dataset: _ImageFiles, batch_size: int, num_workers: int, pin_memory: bool):
    """Batches of ``dataset`` in order; worker processes stop when the block exits."""
    n_batches = -(-len(dataset) // batch_size)
    num_workers = min(num_workers, n_batches) if n_batches > 1 else 0  # one batch: no fork
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=_collate,
                                         pin_memory=pin_memory)
    iterator = iter(loader)
    try:
        yield iterator if num_workers else _one_thread_while_loading(iterator)
    finally:
        # stop the workers now (an interrupted run would keep them until garbage collection)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _one_thread_while_loading(iterator) -> Iterator:
    """In-process loading with one torch thread, as in a worker: a transform's small tensor
    ops gain nothing from threads, and on a busy machine their thread hand-offs cost up to 8x
    (measured: 9 vs 74 img/s on 2 shared cores). The forward pass keeps every thread."""
    threads = torch.get_num_threads()
    while True:
        torch.set_num_threads(1)
        try:
            batch = next(iterator)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield batch


@contextlib.contextmanager
def _numerics(device: str, precision_used: str):
    """Autocast for the mixed precisions; for fp32 on CUDA, TF32 off (10-bit significands
    would make 'fp32' a lie), restored afterwards."""
    if device_class(device) != "cuda":
        yield
        return
    if precision_used != "fp32":
        dtype = torch.bfloat16 if precision_used.startswith("bf16") else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Forward:
    """The backbone on one loaded batch, in slices of ``batch_size``; on out-of-memory the
    slice size halves and the same images are tried again (down to one image)."""

    def __init__(self, backbone, device: str, precision_used: str, batch_size: int,
                 finish_transform=None):
        self.backbone, self.device, self.precision = backbone, device, precision_used
        self.batch_size = batch_size
        self.non_blocking = device_class(device) == "cuda"  # the batch is in pinned memory
        self.finish_transform = finish_transform  # split_transform's per-batch part, or None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=self.non_blocking)
        if self.finish_transform is not None:
            images = self.finish_transform(images)
        outputs, start = [], 0
        while start < len(images):
            size = self.batch_size
            try:
                with _numerics(self.device, self.precision):
                    feats = self.backbone(images[start:start + size])
                outputs.append(feats.float().cpu())
                start += size
                continue
            except torch.cuda.OutOfMemoryError as exc:
                if size == 1:
                    raise torch.cuda.OutOfMemoryError(
                        f"model '{self.backbone.info.name}': out of memory on {self.device} "
                        "even one image at a time; free the GPU or run on another device"
                    ) from exc
            # outside the except block, so the failed attempt's tensors can be freed
            torch.cuda.empty_cache()
            self.batch_size = size // 2
            stage(f"{self.backbone.info.name}: out of memory at batch {size} on {self.device}; "
                  f"retrying at {self.batch_size}")
        return torch.cat(outputs)


def _pool(feats: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        return feats.mean(dim=0)
    if pooling == "max":
        return feats.max(dim=0).values
    raise ValueError(f"unknown pooling '{pooling}' (use 'mean' or 'max')")


class _Chunk:
    """Collects the per-image features of one chunk's examples as they arrive, in order."""

    def __init__(self, index: int, examples: Sequence[Example]):
        self.index = index
        self.examples = examples
        self.owners = [i for i, ex in enumerate(examples) for _ in ex.images]
        self.per_example: list[list[torch.Tensor]] = [[] for _ in examples]
        self.skipped: list[str] = []
        self.received = 0

    @property
    def complete(self) -> bool:
        return self.received == len(self.owners)

    def add(self, feature: torch.Tensor | None, skipped_path: str | None = None) -> None:
        owner = self.owners[self.received]
        self.received += 1
        if feature is None:
            self.skipped.append(skipped_path)
        else:
            self.per_example[owner].append(feature)

    def result(self, pooling: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(kept mask, (n_kept, D) float32 pooled features)."""
        kept = np.array([bool(f) for f in self.per_example], dtype=bool)
        pooled = [(f[0] if len(f) == 1 else _pool(torch.stack(f), pooling)).numpy()
                  for f in self.per_example if f]
        self.per_example = []  # release the per-image features (and their batches)
        x = np.stack(pooled).astype(np.float32) if pooled else np.zeros((0, dim), np.float32)
        return kept, x


def _extract_chunks(chunks: list[_Chunk], refs: list[ImageRef], forward: _Forward, *,
                    transform, pooling: str, dim: int, batch_size: int, num_workers: int,
                    pin_memory: bool, skip_unreadable: bool, bar) -> Iterator[tuple]:
    """Yield (chunk index, kept, x, skipped files) for each chunk as soon as it is finished.

    ``refs`` are the chunks' images in order; batches may straddle chunk boundaries, so the
    workers never wait for a chunk to be saved.
    """
    receiving = 0  # the chunk the next image belongs to
    emitted = 0

    def finished():
        nonlocal emitted
        while emitted < len(chunks) and chunks[emitted].complete:
            chunk = chunks[emitted]
            kept, x = chunk.result(pooling, dim)
            emitted += 1
            yield chunk.index, kept, x, chunk.skipped

    yield from finished()
    if not refs:
        return
    with _batches(_ImageFiles(refs, transform), batch_size, num_workers, pin_memory) as batches:
        for positions, images, failures in batches:
            if failures and not skip_unreadable:
                path, reason = failures[min(failures)]  # the first in input order, as serially
                raise UnreadableImage(path, reason)
            feats = forward(images) if images is not None else None
            row = 0
            for position in positions:
                while chunks[receiving].complete:  # also steps over chunks without images
                    receiving += 1
                if position in failures:
                    chunks[receiving].add(None, failures[position][0])
                else:
                    chunks[receiving].add(feats[row])
                    row += 1
            bar.update(len(positions))
            yield from finished()


def extract_features(backbone, examples: Sequence[Example], *, task_name: str, split: str,
                     pooling: str = "mean", batch_size: int | None = None, device: str = "cpu",
                     cache: bool = True, skip_unreadable: bool = False,
                     cache_dir: Path | None = None, precision: str = "auto",
                     store_as: str = "auto", num_workers: int | None = None) -> FeatureSet:
    """Features for ``examples`` (images of one example pooled), from cache when possible.

    An unreadable image raises ``UnreadableImage`` naming the file, unless ``skip_unreadable``:
    then it is left out, counted in ``n_skipped``, and an example with no readable image is
    dropped from ``ids``. ``precision``: ``auto`` (CPU fp32; CUDA bf16 or fp16 autocast) or
    ``fp32``/``bf16``/``fp16``. ``batch_size`` None: ``AUTO_BATCH_SIZE_CUDA`` on CUDA,
    ``AUTO_BATCH_SIZE_CPU`` otherwise. ``num_workers`` None: ``default_num_workers()``, or
    in-process for fewer than ``MIN_IMAGES_FOR_WORKERS`` images.
    ``store_as``: ``auto`` (see module doc), ``float16`` or ``float32``.
    """
    examples = list(examples)
    precision_used = resolve_precision(device, precision)
    dtype_name = storage_dtype_name(precision_used, store_as)
    on_cuda = device_class(device) == "cuda"
    if batch_size is None:
        batch_size = AUTO_BATCH_SIZE_CUDA if on_cuda else AUTO_BATCH_SIZE_CPU
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    key = cache_key(backbone.info.name, backbone.preprocessing_id, task_name, split, pooling,
                    examples, skip_unreadable, device, precision, store_as)
    folder = ((cache_dir or config.features_dir()) / safe_name(backbone.info.name)
              / safe_name(task_name) / f"{split}-{key}")
    if cache and _is_complete(folder):
        return _load_cached(folder)

    starts = range(0, len(examples), CHUNK)
    pending = [_Chunk(c, examples[s:s + CHUNK]) for c, s in enumerate(starts)
               if not (cache and _chunk_file(folder, c).exists())]
    refs = [ref for chunk in pending for ex in chunk.examples for ref in ex.images]
    if num_workers is None:  # an explicit number (argument or variable) is always honoured
        num_workers = default_num_workers()
        if not os.environ.get(WORKERS_ENV) and len(refs) < MIN_IMAGES_FOR_WORKERS:
            num_workers = 0
    dim = backbone.feature_dim
    if refs:
        backbone = backbone.to(device)
    per_image, per_batch = split_transform(backbone.transform)
    forward = _Forward(backbone, device, precision_used, batch_size, per_batch)
    in_memory = None if cache else _InMemoryMatrix(len(examples), dim, dtype_name)
    kept_all, skipped_all = [], []
    n_images = sum(len(ex.images) for ex in examples)
    with progress_bar(n_images, f"{backbone.info.name} | {task_name}/{split}", "img") as bar:
        bar.update(n_images - len(refs))  # images of chunks finished by an earlier run
        for index, kept, x, skipped in _extract_chunks(
                pending, refs, forward, transform=per_image, pooling=pooling, dim=dim,
                batch_size=batch_size, num_workers=num_workers, pin_memory=on_cuda,
                skip_unreadable=skip_unreadable, bar=bar):
            if cache:
                _atomic_save(_chunk_file(folder, index), kept=kept, x=x,
                             skipped=np.array(skipped, dtype=str), absmax=np.array(_absmax(x)),
                             batch_size=np.array(forward.batch_size))
            else:
                in_memory.append(x)
                kept_all.append(kept)
                skipped_all.extend(skipped)
    batch_used = forward.batch_size if refs else None
    if cache:
        return _assemble(folder, examples, len(starts), dim, dtype_name, precision_used)
    kept = np.concatenate(kept_all) if kept_all else np.zeros(0, bool)
    ids = [ex.id for ex, k in zip(examples, kept) if k]
    return FeatureSet(ids, in_memory.result(), len(skipped_all), skipped_all, precision_used,
                      batch_used)
