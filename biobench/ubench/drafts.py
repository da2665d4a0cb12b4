"""μ-Bench numbers this project did not measure: the authors' DRAFT results and the image counts.

Everything here is transcribed from the project's μ-Bench notes (spec/ubench.md) and carries its
provenance, so a page can say exactly what a number is. None of it is the paper's result: the
paper's tables were not read (spec §1). The book shows these numbers only as context, labelled
"draft numbers from the authors' notebooks, not the paper's results".

- ``COARSE_DRAFT`` (spec §8(b)): coarse-perception accuracy per question type on the whole
  benchmark, with the notebook's mean of the five types, and the mean on the pathology +
  light-microscopy slice;
- ``FINE_DRAFT`` (spec §8(c)): fine-grained accuracy, mean over 23 tasks (the code's task list,
  which includes Held-MT, absent from the hub), in %;
- ``SPECIALIST_DRAFT`` (spec §8(e)): fine-tuned specialist minus its generalist base, in
  percentage points, from the notebook's "mean difference" plots;
- ``IMAGE_COUNTS`` (spec §3): images per source dataset; ``confirmed`` marks the counts read from
  shard-0 statistics, the others were inferred from bootstrap denominators in the authors'
  notebooks and are approximate. Pollen and Wu have no count of their own: together they hold
  ``POLLEN_PLUS_WU`` images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from biobench.ubench.meta import COARSE_KINDS, UBENCH_DATASETS

DRAFT_LABEL = "draft numbers from the authors' notebooks, not the paper's results"
SOURCE_NOTEBOOKS = ("the authors' evaluation notebooks in the eVLLM repository (October 2024 "
                    "snapshot), as transcribed in this project's μ-Bench notes")


@dataclass(frozen=True)
class Provenance:
    """Where a set of numbers comes from, and what it is not."""

    spec_section: str  # e.g. "§8(b)"
    source: str
    what: str  # what the numbers measure, in a sentence
    status: str = DRAFT_LABEL


@dataclass(frozen=True)
class CoarseDraft:
    """One model's draft coarse-perception row: accuracy (fraction) per question type."""

    model: str
    per_kind: Mapping[str, float]  # keys: COARSE_KINDS
    mean_of_5: float  # as printed by the notebook (rounded to 2 digits)
    pathology_light_mean: float  # mean of the 5 types on the pathology + light slice

    def __post_init__(self):
        if set(self.per_kind) != set(COARSE_KINDS):
            raise ValueError(f"draft row {self.model}: question types {sorted(self.per_kind)} "
                             f"are not the five coarse ones {list(COARSE_KINDS)}")


def _coarse(model: str, domain: float, modality: float, stain: float, subdomain: float,
            submodality: float, mean: float, pathology_light: float) -> CoarseDraft:
    # argument order = the spec table's column order (domain, modality, stain, subdomain,
    # submodality), so the transcription can be read against it line by line
    return CoarseDraft(model, {"domain": domain, "modality": modality, "stain": stain,
                               "subdomain": subdomain, "submodality": submodality},
                       mean, pathology_light)


COARSE_PROVENANCE = Provenance(
    "§8(b)", SOURCE_NOTEBOOKS,
    "coarse-perception accuracy per question type on the whole benchmark (about 16 K questions "
    "per cell, CI half-width about ±0.007), and the mean of the five types on the pathology + "
    "light-microscopy slice")
COARSE_DRAFT: tuple[CoarseDraft, ...] = (
    _coarse("CogVLM", .46, .62, .36, .54, .62, .52, .614),
    _coarse("Qwen-VL", .39, .72, .46, .56, .36, .50, .650),
    _coarse("BiomedCLIP", .34, .81, .49, .42, .32, .48, .496),
    _coarse("ALIGN", .31, .75, .44, .32, .22, .41, .490),
    _coarse("OpenCLIP B/32", .27, .81, .29, .32, .12, .36, .402),
    _coarse("PaliGemma", .60, .43, .20, .36, .22, .36, .420),
    _coarse("CLIP B/32", .14, .53, .27, .44, .38, .35, .370),
    _coarse("PLIP", .17, .53, .26, .44, .14, .31, .268),
    _coarse("CONCH", .33, .20, .33, .45, .08, .28, .296),
    _coarse("QuiltNet", .06, .39, .36, .32, .20, .27, .280),
    _coarse("BLIP", .19, .32, .19, .20, .20, .22, .222),
    _coarse("Random", .17, .25, .17, .17, .16, .18, .180),
)

FINE_PROVENANCE = Provenance(
    "§8(c)", SOURCE_NOTEBOOKS,
    "fine-grained accuracy (%), mean over 23 tasks including Held-MT, which the public data "
    "lacks")
# model -> mean fine-grained accuracy in %; the notebook's model names, as in COARSE_DRAFT
FINE_DRAFT: Mapping[str, float] = {
    "ALIGN": 33.7, "BiomedCLIP": 33.1, "CLIP B/32": 31.2, "OpenCLIP B/32": 30.3, "CONCH": 29.5,
    "CogVLM": 29.5, "Qwen-VL": 27.8, "PLIP": 27.1, "QuiltNet": 26.3, "BLIP": 25.4,
    "PaliGemma": 21.9, "Random": 20.5,
}


@dataclass(frozen=True)
class SpecialistDraft:
    """A fine-tuned specialist minus its generalist base, in percentage points."""

    specialist: str
    base: str
    coarse_pp: float
    fine_pp: float


SPECIALIST_PROVENANCE = Provenance(
    "§8(e)", SOURCE_NOTEBOOKS,
    "specialist minus generalist base, in percentage points, from the notebook's \"mean "
    "difference\" plots (how those plots average is not recorded)")
SPECIALIST_DRAFT: tuple[SpecialistDraft, ...] = (
    SpecialistDraft("PLIP", "CLIP B/32", -10.2, -4.1),
    SpecialistDraft("QuiltNet", "CLIP B/32", -9.0, -4.9),
    SpecialistDraft("BiomedCLIP", "OpenCLIP B/32", +9.4, +2.8),
)


@dataclass(frozen=True)
class ImageCount:
    """Images of one source dataset: ``n`` (None: not known on its own) and whether it was
    confirmed from shard-0 statistics (else inferred, approximate)."""

    n: int | None
    confirmed: bool

    def label(self) -> str:
        if self.n is None:
            return "see note"
        return f"{self.n:,}" if self.confirmed else f"≈{self.n:,}"


COUNTS_PROVENANCE = Provenance(
    "§3", "shard-0 statistics of the pinned hub revision (confirmed) and bootstrap denominators "
    "in the authors' notebooks (approximate)", "images per source dataset",
    status="bold/confirmed counts are exact; the others are approximate")
_CONFIRMED = {"acevedo_et_al_2020", "burgess_et_al_2024_contour",
              "burgess_et_al_2024_eccentricity", "burgess_et_al_2024_texture",
              "colocalization_benchmark", "empiar_sbfsem"}
_COUNTS = {
    "acevedo_et_al_2020": 1600, "burgess_et_al_2024_contour": 600,
    "burgess_et_al_2024_eccentricity": 600, "burgess_et_al_2024_texture": 600,
    "colocalization_benchmark": 96, "empiar_sbfsem": 154,
    "eulenberg_et_al_2017_brightfield": 743, "eulenberg_et_al_2017_darkfield": 743,
    "eulenberg_et_al_2017_epifluorescence": 743, "held_et_al_2010_galt": 157,
    "held_et_al_2010_h2b": 646, "hussain_et_al_2019": 193, "icpr2020_pollen": None,
    "jung_et_al_2022": 1000, "kather_et_al_2016": 1000, "kather_et_al_2018": 1800,
    "kather_et_al_2018_val7k": 1314, "nirschl_et_al_2018": 400,
    "nirschl_unpub_fluorescence": 934, "tang_et_al_2019": 491, "wong_et_al_2022": 800,
    "wu_et_al_2023": None,
}
IMAGE_COUNTS: Mapping[str, ImageCount] = {
    key: ImageCount(n, key in _CONFIRMED) for key, n in _COUNTS.items()}
TOTAL_IMAGES = 16_130  # the 22 datasets together (spec §3)
POLLEN_PLUS_WU = 1_516  # about; the split between the two is unknown
NULL_STAIN_DATASET = "nirschl_unpub_fluorescence"  # no stain question (spec §2)

if set(IMAGE_COUNTS) != set(UBENCH_DATASETS):  # pragma: no cover - a transcription slip
    raise RuntimeError("biobench.ubench.drafts.IMAGE_COUNTS must name exactly the 22 datasets")


# ---- tables for the book ----------------------------------------------------------------------

def coarse_draft_table() -> pd.DataFrame:
    """The §8(b) table: one row per model (notebook order), accuracy per coarse type, the
    notebook's mean of 5 and the pathology + light mean; fractions."""
    return pd.DataFrame(
        [{"model": d.model, **{k: d.per_kind[k] for k in COARSE_KINDS},
          "mean of 5": d.mean_of_5, "pathology + light, mean of 5": d.pathology_light_mean}
         for d in COARSE_DRAFT]).set_index("model")


def draft_summary_table() -> pd.DataFrame:
    """Per model: coarse mean of 5 (%), pathology + light coarse mean (%), fine mean (%)."""
    coarse = coarse_draft_table()
    return pd.DataFrame({
        "coarse, mean of 5 types (%)": 100 * coarse["mean of 5"],
        "coarse, pathology + light (%)": 100 * coarse["pathology + light, mean of 5"],
        "fine-grained, mean over 23 tasks (%)": pd.Series(FINE_DRAFT),
    }).loc[list(coarse.index)]


def specialist_draft_table() -> pd.DataFrame:
    return pd.DataFrame([{"specialist − base": f"{d.specialist} − {d.base}",
                          "coarse (pp)": d.coarse_pp, "fine (pp)": d.fine_pp}
                         for d in SPECIALIST_DRAFT]).set_index("specialist − base")


def official_question_counts() -> dict[str, int]:
    """Question counts of the public release (spec §4), derived from the image counts: every
    image has 5 coarse questions (less the null stain questions) and 1 fine-grained one; the
    official fine-grained total leaves out the datasets with ``in_official_total = False``."""
    left_out = sum(IMAGE_COUNTS[k].n or 0 for k, d in UBENCH_DATASETS.items()
                   if not d.in_official_total)
    return {"coarse": len(COARSE_KINDS) * TOTAL_IMAGES - (IMAGE_COUNTS[NULL_STAIN_DATASET].n or 0),
            "fine": TOTAL_IMAGES, "fine_official": TOTAL_IMAGES - left_out,
            "fine_left_out": left_out}
