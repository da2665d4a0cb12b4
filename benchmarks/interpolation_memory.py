"""Peak memory of building an interpolated model from two checkpoints (prints figures).

    .venv/bin/python benchmarks/interpolation_memory.py [--arch vit_base_patch16_224]
                                                        [--format safetensors|pth] [--keep DIR]

Writes two random checkpoints of ``--arch`` (timm key names; the default ViT-B/16 has 86 M
parameters, 346 MB per state dict; ``vit_large_patch16_224`` is the ViT-L case, 1.2 GB each)
and measures, each in a fresh process so that one measurement cannot inherit another's heap:

- ``interp``: ``create_backbone("interp:0.5:timm:ARCH@A|timm:ARCH@B")``, this project's way
  (BASE built as usual, FINETUNED streamed from its file and mixed in place);
- ``naive``: both state dicts loaded whole, a third one computed, loaded into a fresh network
  (what a two-line script does).

For each: the peak of anonymous memory (heap: what a copy of a state dict costs; sampled every
millisecond from /proc/self/status RssAnon) and the peak resident set (VmHWM, which also counts
pages of memory-mapped checkpoint files: they are the page cache, given back under pressure),
both above the process's level after imports, in MB and in state-dict copies. The target is at
most one extra copy beyond the result: peak resident set <= 2 state dicts (the stricter of the
two figures: safetensors' loader maps files, so a loaded state dict can be file pages, not
heap). The two results are also
compared, by a float64 checksum over every floating tensor (they must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r'''
import json, sys, threading, time
arch, a, b, mode = sys.argv[1:5]


def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


import torch, timm  # noqa: E402  (imports are not what is measured)
from safetensors.torch import load_file  # noqa: E402
from biobench.backbones import create_backbone  # noqa: E402
import biobench.backbones.interpolate  # noqa: E402,F401

try:  # reset the resident-set high-water mark to the level after imports
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
start_anon, start_hwm = status("RssAnon"), status("VmHWM")
peak = [start_anon]
done = threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.001)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.perf_counter()
if mode == "interp":
    net = create_backbone(f"interp:0.5:timm:{arch}@{a}|timm:{arch}@{b}").net
else:
    def load(path):
        return load_file(path) if path.endswith(".safetensors") else torch.load(
            path, map_location="cpu", weights_only=True)
    sa, sb = load(a), load(b)
    mixed = {k: (0.5 * sa[k] + 0.5 * sb[k]) if sa[k].is_floating_point() else sb[k] for k in sa}
    net = timm.create_model(arch, pretrained=False, num_classes=0)
    net.load_state_dict({k: v for k, v in mixed.items() if not k.startswith("head.")},
                        strict=False)
seconds = time.perf_counter() - started
done.set()
sampler.join()
peak[0] = max(peak[0], status("RssAnon"))
checksum = float(sum(p.double().sum() for p in net.state_dict().values()
                     if p.is_floating_point()))
print(json.dumps({"peak_anon": peak[0] - start_anon, "peak_rss": status("VmHWM") - start_hwm,
                  "seconds": seconds,
                  "checksum": checksum}))
'''


def write_checkpoints(arch: str, folder: Path, fmt: str) -> tuple[Path, Path, int]:
    import timm
    import torch
    from safetensors.torch import save_file

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = timm.create_model(arch, pretrained=False).state_dict()
        path = folder / f"{arch}-{seed}.{fmt}"
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)
        paths.append(path)
        size = sum(v.numel() * v.element_size() for v in state.values())
        del state
    return paths[0], paths[1], size


def measure(arch: str, a: Path, b: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, arch, str(a), str(b), mode],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise SystemExit(f"{mode} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_base_patch16_224")
    parser.add_argument("--format", choices=("safetensors", "pth"), default="safetensors")
    parser.add_argument("--keep", type=Path, help="write the checkpoints here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        a, b, size = write_checkpoints(args.arch, folder, args.format)
        mb = size / 2**20
        print(f"{args.arch}: one state dict = {mb:.0f} MB ({args.format} files)")
        results = {mode: measure(args.arch, a, b, mode) for mode in ("interp", "naive")}
    for mode, r in results.items():
        print(f"  {mode:6s}: peak heap +{r['peak_anon'] / 2**20:6.0f} MB = "
              f"{r['peak_anon'] / size:4.2f} state dicts; peak resident +"
              f"{r['peak_rss'] / 2**20:6.0f} MB = {r['peak_rss'] / size:4.2f}; "
              f"{r['seconds']:.1f} s")
    # judged on the resident peak, the stricter figure: it also counts mapped file pages
    resident = results["interp"]["peak_rss"] / size
    print(f"target (peak resident at most the result + one extra state dict, <= 2 state "
          f"dicts): {'met' if resident <= 2.05 else 'NOT met'} ({resident:.2f})")
    same = abs(results["interp"]["checksum"] - results["naive"]["checksum"]) <= 1e-6 * max(
        1.0, abs(results["naive"]["checksum"]))
    print(f"the two mixes agree (checksum of every float tensor): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
