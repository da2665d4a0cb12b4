"""Plankton: SYKE-plankton_IFCB_2022, phytoplankton imaged by an Imaging FlowCytobot (IFCB).

Train is the 2020 laboratory set, test the 2021 field set from Utö: a shift in time and in
site. On disk (the archives' top folders renamed on extraction):

    <data>/plankton/train/<class>/*.png   from phytoplankton_labeled.zip (labeled_20201020/)
    <data>/plankton/val/<class>/*.png     from phytoplankton_Utö_2021_labeled.zip

Images are grayscale; ``biobench.images.load_image`` repeats them over three channels.

Labels: the reference built class ids per split from each split's own sorted folder names,
which misaligns labels whenever the folder sets differ. Here ids come once from the union of
both splits' folder names (``ImageFolderTask``); a class found only in the test set keeps its
own id, which no probe can predict, so its images count as errors.
"""

from __future__ import annotations

from biobench.download import RemoteFile
from biobench.tasks._downloaded import DownloadedImageFolderTask
from biobench.tasks.base import register_task

_PIN_NOTE = ("sha256 pinned by the birder project's datahub (not published by SYKE); "
             "size not stated by the source")


@register_task
class PlanktonIFCB(DownloadedImageFolderTask):
    name = "plankton"
    display = "Plankton (IFCB, SYKE 2022)"
    kingdom = "Chromista / Protista"
    modality = "imaging flow cytometry (IFCB) micrographs"
    citation = ("Kraft, K., Velhonoja, O., Eerola, T., Suikkanen, S., Tamminen, T., Haraguchi, L., "
                "Ylöstalo, P., Kielosto, S., Johansson, M., Lensu, L., Kälviäinen, H., Haario, H., "
                "& Seppälä, J. (2022). Towards operational phytoplankton recognition with automated "
                "high-throughput imaging, near-real-time data processing, and convolutional neural "
                "networks. Frontiers in Marine Science, 9, 867695. Data: SYKE-plankton_IFCB_2022, "
                "EUDAT B2SHARE, https://b2share.eudat.eu/records/xvnrp-7ga56")
    metric_name = "macro_f1"
    default_probe = "logreg"
    reference_probe = "linear_head"
    group = "benchmark"
    train_dir = "train"
    test_dir = "val"
    remote_files = (
        RemoteFile("https://b2share.eudat.eu/records/xvnrp-7ga56/files/phytoplankton_labeled.zip",
                   sha256="0c47acd8dfad46829fe42758a6c24adcdb5e6f2456be4ced975cbb9de9644704",
                   extract_as="train", note=f"2020 lab set; {_PIN_NOTE}"),
        RemoteFile("https://b2share.eudat.eu/records/w7y96-6jd66/files/"
                   "phytoplankton_Ut%C3%B6_2021_labeled.zip",
                   filename="phytoplankton_Uto_2021_labeled.zip",
                   sha256="b017809515c3d58171ecbfd196d6725239e9380c2a22ae880ac56e878bbfcfa4",
                   extract_as="val", note=f"2021 Utö field set; {_PIN_NOTE}"),
    )
