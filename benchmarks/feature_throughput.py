"""Feature-extraction throughput (images/s) of the offline backbones on CPU.

    python benchmarks/feature_throughput.py              # 64 plankton images, batch 32, 2 threads
    python benchmarks/feature_throughput.py --generated  # random images, no asset needed

The images are decoded once (``biobench.images.load_image``). For each model, its own
transform and its forward pass are timed separately, each after a warm-up that is not counted,
and the fastest of ``--repeats`` passes is reported (the least disturbed by other processes).
Prints a plain table; figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import time

# Read by huggingface_hub at import: a hub lookup must fail at once, not retry for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from biobench import assets  # noqa: E402
from biobench.backbones import create_backbone, list_models, model_info  # noqa: E402
from biobench.images import load_image  # noqa: E402
from biobench.tasks.base import ImageRef  # noqa: E402

DEFAULT_MODELS = list_models(loader="offline") + ["random_tiny"]


def plankton_images(n_images: int) -> list[Image.Image]:
    folder = assets.fetch_asset(assets.PLANKTON_IMAGES, progress=False)
    paths = sorted(folder.rglob("*.jpg"))[:n_images]
    return [load_image(ImageRef(path)) for path in paths]


def generated_images(n_images: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
            for h, w in rng.integers(64, 512, size=(n_images, 2))]


def best_seconds(work, repeats: int) -> float:
    """Fastest of ``repeats`` timed runs: the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(name: str, images: list[Image.Image], batch_size: int, repeats: int) -> dict:
    started = time.perf_counter()
    backbone = create_backbone(name)
    load_s = time.perf_counter() - started

    backbone.transform(images[0])  # warm-up: lazy imports and resampling-filter setup
    tensors = [backbone.transform(image) for image in images]
    transform_s = best_seconds(lambda: [backbone.transform(image) for image in images], repeats)

    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    backbone(batches[0])  # warm-up: first-call allocations and kernel selection
    forward_s = best_seconds(lambda: [backbone(x) for x in batches], repeats)
    n = len(images)
    return dict(model=name, resolution=model_info(name).resolution, load_s=load_s,
                transform_ips=n / transform_s, forward_ips=n / forward_s,
                total_ips=n / (transform_s + forward_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--generated", action="store_true",
                        help="random images instead of the planktonclas demo images")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images = (generated_images(args.n_images) if args.generated
              else plankton_images(args.n_images))
    source = "generated" if args.generated else "planktonclas demo images"
    print(f"{len(images)} {source}, batch {args.batch_size}, {args.threads} CPU threads, "
          f"best of {args.repeats}, torch {torch.__version__}")
    header = f"{'model':<28}{'px':>5}{'load s':>9}{'transform img/s':>17}" \
             f"{'forward img/s':>15}{'total img/s':>13}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        row = measure(name, images, args.batch_size, args.repeats)
        print(f"{row['model']:<28}{row['resolution']:>5}{row['load_s']:>9.2f}"
              f"{row['transform_ips']:>17.1f}{row['forward_ips']:>15.1f}{row['total_ips']:>13.1f}")


if __name__ == "__main__":
    main()
