"""iNat21 (prior work): 10,000 species from iNaturalist, the 2021 ``train_mini`` split.

On disk, as the official archives unpack:

    <data>/inat21/train_mini/<NNNNN_Kingdom_..._species>/<uuid>.jpg   (50 per species)
    <data>/inat21/val/<NNNNN_Kingdom_..._species>/<uuid>.jpg          (10 per species)

Metric: top-1 accuracy over however many validation images are present (nothing assumes
exactly 100,000).
"""

from __future__ import annotations

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedImageFolderTask
from biobench.tasks.base import register_task

_BASE = "https://ml-inat-competition-datasets.s3.amazonaws.com/2021"


@register_task
class INat21(DownloadedImageFolderTask):
    name = "inat21"
    display = "iNat21 (train_mini)"
    kingdom = "all (Animalia, Plantae, Fungi, ...)"
    modality = "citizen-science photos"
    citation = ("Van Horn, G., Cole, E., Beery, S., Wilber, K., Belongie, S., & Mac Aodha, O. "
                "(2021). Benchmarking Representation Learning for Natural World Image Collections. "
                "CVPR 2021, 12884–12893.")
    metric_name = "accuracy"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "prior_work"
    train_dir = "train_mini"
    test_dir = "val"
    # MD5 sums published with the iNat 2021 competition (also in torchvision's INaturalist)
    remote_files = (
        RemoteFile(f"{_BASE}/train_mini.tar.gz", md5="db6ed8330e634445efc8fec83ae81442",
                   note="42 GB, 500,000 images"),
        RemoteFile(f"{_BASE}/val.tar.gz", md5="f6f6e0e242e3d4c9569ba56400938afc",
                   note="8.4 GB, 100,000 images"),
    )
