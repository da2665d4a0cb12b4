"""Peak memory of reading μ-Bench with ``biobench.ubench.data`` (prints figures).

    .venv/bin/python benchmarks/ubench_read_memory.py [--size-gb 1.0] [--keep DIR]

Writes a fixture download (tests/ubench_fixture.py schema) whose shard 0 holds ``--size-gb``
of rows with ~100 kB of random "PNG" bytes each (generated and written one record batch at a
time, never whole in memory), then, in a fresh process:

1. reads every row's metadata, all six questions and all captions (``iter_rows``), keeping the
   rows as a task does;
2. reads 5 images from batches spread over the shard (``load_image``) and writes 50 as PNG
   files (``materialise_images``).

Figures, above the process's level after imports: the peak resident set (VmHWM; it also counts
pages of the memory-mapped shard that were touched: page cache, given back under pressure), the
peak anonymous memory (RssAnon sampled every ms: the heap, what a copy of the data would cost)
and pyarrow's memory-pool peak. Target: peak resident set under 500 MB for a 1 GB shard.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_BYTES = 100_000
BATCH_ROWS = 100  # HF datasets writes image datasets in batches of 100 rows

MEASURE = r'''
import json, sys, threading, time
root = sys.argv[1]

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

import pyarrow as pa
from pathlib import Path
from biobench.ubench import data as ub
base_anon, base_hwm = status("RssAnon"), status("VmHWM")
peak_anon = [base_anon]
done = threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.001)
threading.Thread(target=sample, daemon=True).start()

t0 = time.perf_counter()
rows = list(ub.iter_rows(Path(root)))
t_rows = time.perf_counter() - t0
n_questions = sum(q is not None for r in rows for q in r.questions.values())
step = max(1, len(rows) // 5)
t0 = time.perf_counter()
sizes = [ub.load_image(rows[i].location).size for i in range(0, len(rows), step)][:5]
t_images = time.perf_counter() - t0
t0 = time.perf_counter()
written = ub.materialise_images(Path(root), rows[::max(1, len(rows) // 50)][:50], progress=False)
t_png = time.perf_counter() - t0
done.set()
print(json.dumps({
    "rows": len(rows), "questions": n_questions, "images_read": len(sizes),
    "pngs_written": len(written), "seconds_rows": t_rows, "seconds_5_images": t_images,
    "seconds_50_pngs": t_png,
    "peak_rss_mb": (status("VmHWM") - base_hwm) / 1e6,
    "peak_rss_total_mb": status("VmHWM") / 1e6,
    "peak_anon_mb": (peak_anon[0] - base_anon) / 1e6,
    "arrow_pool_peak_mb": pa.default_memory_pool().max_memory() / 1e6,
}))
'''


def write_big_fixture(root: Path, size_gb: float) -> int:
    """The fixture download with a shard 0 of about ``size_gb``; returns its row count."""
    import numpy as np
    import pyarrow as pa

    from tests import ubench_fixture as fx

    rows = fx.fixture_rows()  # the small rows fill shards 1..6 (one or more each)
    names = fx.label_names(rows)
    for r in rows:
        r["label"] = names.index(r["label_name"])
    sch = fx.schema(names)
    templates = [r for r in rows if r["dataset"] != "opencell"]
    n_rows = max(1, int(size_gb * 1e9 / IMAGE_BYTES))
    rng = np.random.default_rng(0)
    pngs = [fx.png(seed) for seed in range(50)]

    def batches():
        for start in range(0, n_rows, BATCH_ROWS):
            chunk = []
            for i in range(start, min(n_rows, start + BATCH_ROWS)):
                row = dict(templates[i % len(templates)], image_id=f"big-{i}")
                # a real 32x32 PNG padded with random bytes to the size of a μ-Bench image
                # (PIL stops at the PNG's end, so every image still opens)
                blob = pngs[i % len(pngs)] + rng.bytes(IMAGE_BYTES)
                row["image"] = {"bytes": blob, "path": None}
                chunk.append(row)
            yield pa.RecordBatch.from_pylist(chunk, schema=sch)

    fx.write_stream(root / fx.SHARD_FILES[0], sch, batches())
    small = [1] * 6
    start = 0
    for filename, n in zip(fx.SHARD_FILES[1:], small):
        fx.write_stream(root / filename, sch, [pa.RecordBatch.from_pylist(
            rows[start:start + n], schema=sch)])
        start += n
    (root / fx.INFO_FILE).write_text(json.dumps({"features": fx.features(names)}))
    return n_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the big shard")
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep it")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="ubench-mem-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        n_rows = write_big_fixture(root, args.size_gb)
        shard = root / "perception/0.1.0/ubench-test-00000-of-00007.arrow"
        print(f"wrote {n_rows:,} rows, shard 0 = {shard.stat().st_size / 1e9:.2f} GB "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True,
                             text=True, env=env, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        figures["shard_gb"] = shard.stat().st_size / 1e9
        print(json.dumps(figures, indent=1))
        verdict = "under" if figures["peak_rss_mb"] < 500 else "OVER"
        print(f"peak resident set {figures['peak_rss_mb']:.0f} MB above imports: {verdict} the "
              f"500 MB target ({figures['peak_anon_mb']:.0f} MB heap, arrow pool peak "
              f"{figures['arrow_pool_peak_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
