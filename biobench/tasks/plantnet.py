"""Pl@ntNet-300K: 1,081 plant species in-situ, long-tailed, with high label ambiguity.

On disk (the archive's top folder ``plantnet_300K/`` stripped):

    <data>/plantnet/images/{train,val,test}/<species id>/<image>.jpg
    <data>/plantnet/plantnet300K_species_id_2_name.json

Train is ``images/train`` (≈243,916 images) and the test set ``images/val`` (≈31,118).
Class ids run over the species of train ∪ val; class names come from the species JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedImageFolderTask
from biobench.tasks.base import register_task

SPECIES_NAMES = "plantnet300K_species_id_2_name.json"


@register_task
class PlantNet(DownloadedImageFolderTask):
    name = "plantnet"
    display = "Pl@ntNet-300K"
    kingdom = "Plantae"
    modality = "in-situ citizen-science photos"
    citation = ("Garcin, C., Joly, A., Bonnet, P., Affouard, A., Lombardo, J.-C., Chouet, M., "
                "Servajean, M., Lorieul, T., & Salmon, J. (2021). Pl@ntNet-300K: a plant image "
                "dataset with high label ambiguity and a long-tailed distribution. NeurIPS 2021 "
                "Datasets and Benchmarks Track. https://doi.org/10.5281/zenodo.5645731")
    metric_name = "macro_f1"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "benchmark"
    train_dir = "images/train"
    test_dir = "images/val"
    remote_files = (
        RemoteFile("https://zenodo.org/records/5645731/files/plantnet_300K.zip",
                   sha256="3a079076c8ad4476beac54d89ea344958256a999428937eba47ec352dadce00d",
                   extract_as=".",
                   note="29.5 GB; sha256 pinned by the birder project's datahub (Zenodo lists an "
                        "MD5 this project does not have)"),
    )

    def class_names_for(self, root: Path, labels: Sequence[str]) -> list[str]:
        names_file = root / SPECIES_NAMES
        names = json.loads(names_file.read_text()) if names_file.is_file() else {}
        return [names.get(key, key) for key in labels]
