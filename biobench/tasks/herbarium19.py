"""Herbarium19 (FGVC6 2019): 683 species on digitised herbarium sheets of the New York
Botanical Garden.

On disk, as the official archives unpack:

    <data>/herbarium19/train/<category id>/<image id>.jpg        (34,225 images)
    <data>/herbarium19/validation/<category id>/<image id>.jpg   (2,679 images; our test set)

The unlabelled test archive (9,565 images, 11 GB) is not downloaded. Image ids repeat across
categories, so example ids are ``train/<category>/<image>``.
"""

from __future__ import annotations

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedImageFolderTask
from biobench.tasks.base import register_task

_BASE = "https://storage.googleapis.com/nybg/herbarium-2019-fgvc6"
# MD5 sums as listed in the BioBench reference download script (its "MD5-checked" step).
_MD5_NOTE = "MD5 from the BioBench reference's download script"


@register_task
class Herbarium19(DownloadedImageFolderTask):
    name = "herbarium19"
    display = "Herbarium19"
    kingdom = "Plantae"
    modality = "herbarium sheet scans"
    citation = ("Tan, K. C., Liu, Y., Ambrose, B., Tulig, M., & Belongie, S. (2019). The Herbarium "
                "Challenge 2019 Dataset. arXiv:1906.05372.")
    metric_name = "macro_f1"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "benchmark"
    train_dir = "train"
    test_dir = "validation"
    remote_files = (
        RemoteFile(f"{_BASE}/train.tar.gz", md5="53c6b9ee2f831f5101dbe00958091dc8",
                   note=f"38 GB, 34,225 images; {_MD5_NOTE}"),
        RemoteFile(f"{_BASE}/validation.tar.gz", md5="2f854d580949e54f114993a74adc3d4b",
                   note=f"3 GB, 2,679 images; {_MD5_NOTE}"),
    )
