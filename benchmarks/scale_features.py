"""Does the input pipeline keep a model busy, and does the feature cache stay lean?

    python benchmarks/scale_features.py            # a few minutes on a 2-core CPU
    python benchmarks/scale_features.py --quick    # fewer images, a smaller matrix

Prints, never pass/fail:

(a) the input pipeline alone (decode + a 224-px ImageNet eval transform, no model), images/s
    in-process (0 workers) vs 2 worker processes, on real-sized JPEGs generated here (500x375);
    target ratio >= 1.8x on 2 cores;
(b) end-to-end extraction (``extract_features``, uncached) vs the bare forward pass on
    pre-decoded tensors at the same batch size, for a random-init timm MobileNetV2 (no
    download): the ratio is the pipeline's efficiency (1.0 = decoding costs nothing);
(c) the feature cache's peak memory when reading a large synthetic cached matrix (float16):
    memory-mapped and streamed in row blocks, vs loaded whole, vs the old float32 ``.npz``;
(d) on a CUDA machine only: random-init ViT-B/16 and ViT-L/14 end-to-end vs bare forward
    (autocast, automatic batch size), beside timm's published RTX 4090 AMP figures.

The machine is usually shared: figures on a busy CPU are lower and noisier than on an idle one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# Read by huggingface_hub at import: a hub lookup must fail at once, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from biobench import features as F  # noqa: E402
from biobench.tasks.base import Example, ImageRef  # noqa: E402

CPU_MODEL = "timm:mobilenetv2_100@random"
# timm's published inference figures (RTX 4090, AMP), as quoted in issue 12
GPU_MODELS = {"timm:vit_base_patch16_224@random": 2800,
              "timm:vit_large_patch14_clip_224@random": 660}


def write_jpegs(folder: Path, n: int, size=(500, 375), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields plus grain, quality 90): file sizes and decode
    costs of real camera images at that size, unlike pure noise or flat colour."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        fx, fy, phase = rng.uniform(0.005, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
        base = np.stack([np.sin(xx * fx + phase + c) * np.cos(yy * fy - c) for c in range(3)], -1)
        pixels = 127 + 90 * base + rng.normal(0, 12, (h, w, 3))
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def imagenet_eval_transform():
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def pipeline_images_per_s(paths, transform, num_workers: int,
                          batch_size: int = 32) -> tuple[float, float]:
    """(images/s, CPU seconds per image) decoding + transforming every image through the
    extraction's own loader (uint8 from the workers, scaled and normalised per batch in this
    process, as ``extract_features`` does); worker start-up is included (a run pays it)."""
    per_image, per_batch = F.split_transform(transform)  # as extract_features does
    dataset = F._ImageFiles([ImageRef(p) for p in paths], per_image)
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    n = 0
    with F._batches(dataset, batch_size, num_workers, pin_memory=False) as batches:
        for positions, images, _failures in batches:
            if per_batch is not None:
                per_batch(images)
            n += len(positions)
    wall = time.perf_counter() - started
    return n / wall, (_cpu_seconds() - cpu_before) / n


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers, once shut down)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def part_a(paths) -> None:
    transform = imagenet_eval_transform()
    pipeline_images_per_s(paths[:64], transform, 0)  # warm the page cache and lazy imports
    serial, serial_cpu = pipeline_images_per_s(paths, transform, 0)
    parallel, parallel_cpu = pipeline_images_per_s(paths, transform, 2)
    print(f"(a) input pipeline alone, {len(paths)} JPEGs 500x375 -> 224 px, batch 32 "
          "(CPU ms/img: all processes; equal = no overhead from the workers)")
    print(f"    0 workers (in-process) {serial:8.1f} img/s   {1000 * serial_cpu:6.1f} CPU ms/img")
    print(f"    2 workers              {parallel:8.1f} img/s   "
          f"{1000 * parallel_cpu:6.1f} CPU ms/img   ratio {parallel / serial:.2f}x "
          "(target >= 1.8x)")


def bare_forward_images_per_s(backbone, paths, batch_size: int, device: str,
                              precision_used: str) -> float:
    """The forward pass alone on pre-decoded, pre-transformed batches already on ``device``."""
    from biobench.images import load_image

    tensors = [backbone.transform(load_image(ImageRef(p))) for p in paths]
    batches = [torch.stack(tensors[i:i + batch_size]).to(device)
               for i in range(0, len(tensors), batch_size)]
    forward = F._Forward(backbone, device, precision_used, batch_size)
    forward(batches[0])  # warm-up: allocations, kernel selection
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for x in batches:
        forward(x)  # includes the copy of the features back to the CPU, as extraction does
    return len(tensors) / (time.perf_counter() - started)


def end_to_end_images_per_s(backbone, paths, batch_size: int | None, device: str,
                            num_workers: int) -> tuple[float, int]:
    examples = [Example(str(i), (ImageRef(p),), 0) for i, p in enumerate(paths)]
    started = time.perf_counter()
    result = F.extract_features(backbone, examples, task_name="bench", split="x", cache=False,
                                batch_size=batch_size, device=device, num_workers=num_workers)
    return len(paths) / (time.perf_counter() - started), result.batch_size


def part_b(paths, batch_size: int = 32) -> None:
    from biobench.backbones import create_backbone

    backbone = create_backbone(CPU_MODEL)
    end_to_end_images_per_s(backbone, paths[:batch_size], batch_size, "cpu", 0)  # warm-up
    bare = bare_forward_images_per_s(backbone, paths, batch_size, "cpu", "fp32")
    print(f"(b) {CPU_MODEL} on CPU ({torch.get_num_threads()} threads), {len(paths)} images, "
          f"batch {batch_size}")
    print(f"    bare forward on pre-decoded tensors {bare:8.1f} img/s")
    for workers in (0, 2):
        e2e, _ = end_to_end_images_per_s(backbone, paths, batch_size, "cpu", workers)
        print(f"    end to end, {workers} workers         {e2e:8.1f} img/s   efficiency "
              f"{e2e / bare:.2f}")


MEMORY_PROBE = textwrap.dedent("""
    import json, sys, time, tracemalloc
    import numpy as np
    from pathlib import Path
    from biobench.features import _load_cached  # imports (torch) before anything is measured

    def status_mb(field):  # this process only (ru_maxrss would include the parent's, via exec)
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    mode, folder = sys.argv[1], Path(sys.argv[2])
    before_hwm, before_anon = status_mb("VmHWM"), status_mb("RssAnon")
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    started = time.perf_counter()
    if mode == "old-npz-float32":
        with np.load(folder / "features.npz") as z:
            x = z["x"]
    elif mode == "npy-loaded":
        x = np.load(folder / "features.npy")
    else:
        x = _load_cached(folder).x
    opened = time.perf_counter() - started
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), 4096):  # what a streaming consumer does: touch every row
        total += x[start:start + 4096].sum(axis=0, dtype=np.float64)
    print(json.dumps({"heap_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20,
                      "hwm_growth_mb": max(0.0, status_mb("VmHWM") - before_hwm),
                      "anon_growth_mb": status_mb("RssAnon") - before_anon,
                      "file_pages_mb": status_mb("RssFile"),
                      "open_s": opened, "checksum": float(total.sum())}))
""")


def write_synthetic_cache(folder: Path, rows: int, dim: int) -> None:
    """A format-2 cache entry (float16 features.npy + index.npz) and the format-1 equivalent
    (float32 features.npz), written in blocks so this process never holds the matrix."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(0)
    matrix = open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, 8192):
        block = min(8192, rows - start)
        matrix[start:start + block] = rng.normal(0, 1, (block, dim)).astype(np.float16)
    matrix.flush()
    np.savez(folder / "index.npz", ids=np.array([str(i) for i in range(rows)]),
             n_skipped=np.array(0), skipped_files=np.array([], dtype=str),
             precision=np.array("bf16-autocast"), batch_size=np.array(256))
    # the old layout held float32 in one .npz, loaded whole
    np.savez(folder / "features.npz", x=np.asarray(matrix, dtype=np.float32))
    del matrix


def part_c(rows: int, dim: int = 1024) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_synthetic_cache(folder, rows, dim)
        print(f"(c) reading a cached {rows:,} x {dim:,} matrix and summing it in 4,096-row "
              f"blocks (float16 matrix: {rows * dim * 2 / 2**20:,.0f} MiB)")
        for mode, label in (("memory-mapped", "float16 .npy, memory-mapped (now)"),
                            ("npy-loaded", "float16 .npy, loaded whole"),
                            ("old-npz-float32", "float32 .npz, loaded whole (before)")):
            out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, str(folder)],
                                 capture_output=True, text=True, check=True)
            r = __import__("json").loads(out.stdout)
            print(f"    {label:<38} heap peak {r['heap_peak_mb']:8.1f} MiB   anonymous RSS "
                  f"+{r['anon_growth_mb']:7.1f} MiB   RSS high-water +{r['hwm_growth_mb']:7.1f} "
                  f"MiB   open {r['open_s']:6.3f} s")
        print("    (the memory map's high-water mark counts file pages it touched: page cache "
              "that the kernel can drop, shared, not the process's own memory)")


def part_d(n_images: int) -> None:
    from biobench.backbones import create_backbone

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), n_images)
        workers = F.default_num_workers()
        print(f"(d) CUDA: {torch.cuda.get_device_name(0)}, {n_images} JPEGs, {workers} workers")
        for name, published in GPU_MODELS.items():
            backbone = create_backbone(name).to("cuda")
            precision_used = F.resolve_precision("cuda")
            end_to_end_images_per_s(backbone, paths[:512], None, "cuda", workers)  # warm-up
            e2e, batch = end_to_end_images_per_s(backbone, paths, None, "cuda", workers)
            bare = bare_forward_images_per_s(backbone, paths, batch, "cuda", precision_used)
            print(f"    {name:<40} {precision_used}, batch {batch}: end to end {e2e:8.1f} img/s,"
                  f" bare forward {bare:8.1f} img/s, efficiency {e2e / bare:.2f}"
                  f"   (timm RTX 4090 AMP: ~{published:,} img/s)")
            del backbone
            torch.cuda.empty_cache()


def section(quick: bool = False) -> None:
    # enough images that the workers' start-up (paid once per run, over thousands of images in
    # a real one) is a small part of the timed pass
    n_images = 192 if quick else 1536
    cores = len(os.sched_getaffinity(0))
    print(f"scale_features: {cores} cores available, torch {torch.__version__}; the CPU is "
          "shared with other work, so figures are lower and noisier than on an idle machine")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), n_images)
        part_a(paths)
        part_b(paths[: 64 if quick else 192])
    part_c(20_000 if quick else 200_000)
    if torch.cuda.is_available():
        part_d(1024 if quick else 4096)
    else:
        print("(d) no CUDA device: ViT-B/16 and ViT-L/14 figures skipped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, smaller matrix")
    section(quick=parser.parse_args().quick)
