"""ImageNet-1K (prior work): ILSVRC 2012, 1,000 classes. In the published BioBench leaderboard
its linear-probe accuracy on frozen features is the "ImageNet" axis of the correlations; for our
own offline runs, where ImageNet itself is not available, the axis is each checkpoint's
published top-1 (``ModelInfo.imagenet_top1``, stored in the results store's models table).

Source: the gated Hugging Face dataset ``ILSVRC/imagenet-1k`` (accept its licence on the hub,
then log in). On disk, as its archives unpack:

    <data>/imagenet1k/train/<name>_<wnid>.JPEG   from data/train_images_{0..4}.tar.gz
    <data>/imagenet1k/val/ILSVRC2012_val_<n>_<wnid>.JPEG   from data/val_images.tar.gz
    <data>/imagenet1k/classes.py   wnid -> readable name, in class-index order

A hand-made ImageFolder (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) loads the same way.
The label is the WordNet id; class ids follow sorted wnids, which is the standard order.
Metric: top-1 accuracy over every validation image present (the reference hard-coded 49,362).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Sequence

from biobench import download
from biobench.download import DownloadError, RemoteFile
from biobench.tasks._downloaded import DownloadedImageFolderTask
from biobench.tasks.base import register_task

HUB_REPO = "ILSVRC/imagenet-1k"
_BASE = f"https://huggingface.co/datasets/{HUB_REPO}/resolve/main"
_NO_SUM = download.NO_PUBLISHED_CHECKSUM
GATED_HELP = (
    f"ImageNet-1K comes from the gated Hugging Face dataset {HUB_REPO}. To get it: "
    f"(1) sign in at https://huggingface.co/datasets/{HUB_REPO} and accept the licence terms; "
    "(2) run `huggingface-cli login` (or set HF_TOKEN); "
    "(3) run `biobench download imagenet1k`."
)


def hub_token() -> str | None:
    """The user's Hugging Face token from HF_TOKEN or the ``huggingface-cli login`` file."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()


def read_class_names(classes_py: Path) -> dict[str, str]:
    """Parse ``IMAGENET2012_CLASSES = OrderedDict({...})`` without executing the file."""
    tree = ast.parse(classes_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "IMAGENET2012_CLASSES" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and value.args:  # OrderedDict({...})
                value = value.args[0]
            return dict(ast.literal_eval(value))
    raise ValueError(f"{classes_py}: no IMAGENET2012_CLASSES mapping found")


@register_task
class ImageNet1K(DownloadedImageFolderTask):
    name = "imagenet1k"
    display = "ImageNet-1K"
    kingdom = "mixed (mostly Animalia), web photos"
    modality = "web photos"
    citation = ("Russakovsky, O., Deng, J., Su, H., Krause, J., Satheesh, S., Ma, S., Huang, Z., "
                "Karpathy, A., Khosla, A., Bernstein, M., Berg, A. C., & Fei-Fei, L. (2015). "
                "ImageNet Large Scale Visual Recognition Challenge. International Journal of "
                "Computer Vision, 115(3), 211–252.")
    metric_name = "accuracy"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "prior_work"
    download_hint = ("accept the licence of ILSVRC/imagenet-1k on the Hugging Face hub, run "
                     "`huggingface-cli login`, then `biobench download imagenet1k`")
    train_dir = "train"
    test_dir = "val"
    remote_files = tuple(
        RemoteFile(f"{_BASE}/data/train_images_{i}.tar.gz", extract_as="train",
                   note=f"about 27 GB; {_NO_SUM}")
        for i in range(5)
    ) + (
        RemoteFile(f"{_BASE}/data/val_images.tar.gz", extract_as="val",
                   note=f"6.2 GB, 50,000 images; {_NO_SUM}"),
        RemoteFile(f"{_BASE}/classes.py", extract=False, note=_NO_SUM),
    )

    def label_of(self, image: Path, split_dir: Path) -> str:
        rel = image.relative_to(split_dir)
        if len(rel.parts) > 1:  # ImageFolder: train/<wnid>/...
            return rel.parts[0]
        return image.stem.rsplit("_", 1)[-1]  # hub archives: <name>_<wnid>.JPEG

    def class_names_for(self, root: Path, labels: Sequence[str]) -> list[str]:
        classes_py = root / "classes.py"
        names = read_class_names(classes_py) if classes_py.is_file() else {}
        return [names.get(wnid, wnid) for wnid in labels]

    def download(self, root: Path | None = None, *, mirror: str | None = None,
                 progress: bool = True) -> Path:
        headers = None
        if mirror is None:  # the token goes to huggingface.co only, never to a mirror
            token = hub_token()
            if not token:
                raise DownloadError(GATED_HELP)
            headers = {"Authorization": f"Bearer {token}"}
        try:
            return download.download_task(self, self.data_path(root), mirror=mirror,
                                          progress=progress, headers=headers)
        except DownloadError as exc:
            if "HTTP 401" in str(exc) or "HTTP 403" in str(exc):
                raise DownloadError(f"{exc}\n{GATED_HELP}") from exc
            raise
