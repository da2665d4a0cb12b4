"""μ-Bench dataset metadata: the 22 source datasets, their taxonomy group and analysis slices.

Facts come from /work/shared/spec/ubench.md §3 (datasets, class counts), §4 (the official
fine-grained total leaves out Eulenberg darkfield and epifluorescence) and §6 (slices). Pure
Python: importing this module is cheap (``biobench list tasks`` reads it).

Taxonomy groups. The authors' code sorts the tasks into 7 groups but the spec does not list
which dataset sits in which; the assignment below is ours, made from each dataset's task (what
its classification question asks):

================================  ====================================================
group                             datasets
================================  ====================================================
cell/organism/structure id.       acevedo_et_al_2020, jung_et_al_2022 (white-blood-cell
                                  types), empiar_sbfsem, nirschl_unpub_fluorescence
                                  (organisms/structures), icpr2020_pollen
cell cycle and stage              eulenberg_et_al_2017_{brightfield,darkfield,
                                  epifluorescence}, held_et_al_2010_h2b
texture and morphology profiling  burgess_et_al_2024_{contour,eccentricity,texture},
                                  held_et_al_2010_galt (Golgi morphology),
                                  wu_et_al_2023 (mitochondrial morphology)
normal vs abnormal                hussain_et_al_2019 (Pap smear grade),
                                  nirschl_et_al_2018 (failing vs non-failing heart; a
                                  histology set, but the question is normal vs abnormal)
single-molecule imaging           colocalization_benchmark
neoplastic histopathology         kather_et_al_2016, kather_et_al_2018,
                                  kather_et_al_2018_val7k (colorectal tissue classes)
non-neoplastic histopathology     tang_et_al_2019, wong_et_al_2022 (amyloid morphology)
================================  ====================================================

Slices (spec §6): ``pathology`` is the official pathology subset (Hussain, Acevedo, Jung,
Kather ×3, Nirschl 2018); ``h_and_e`` is Kather ×3 and Nirschl 2018; ``light`` marks datasets
whose modality is light microscopy (spec §3 table). The row-level ``modality`` column is the
authority for a per-image light-microscopy filter; this per-dataset flag agrees with it for
every dataset in the table.
"""

from __future__ import annotations

from dataclasses import dataclass

TAXONOMY_GROUPS: tuple[str, ...] = (
    "cell/organism/structure identification",
    "cell cycle and stage",
    "texture and morphology profiling",
    "normal vs abnormal",
    "single-molecule imaging",
    "neoplastic histopathology",
    "non-neoplastic histopathology",
)
SLICES: tuple[str, ...] = ("pathology", "h_and_e", "light")
# The coarse question types, in the spec's order (§4), and the fine-grained one.
COARSE_KINDS: tuple[str, ...] = ("domain", "subdomain", "modality", "submodality", "stain")
FINE_KIND = "classification"
# Hub sources with images but no questions used by the benchmark (spec §3 notes).
EXCLUDED_SOURCES: frozenset[str] = frozenset({"opencell", "sirinukunwattana_et_al_2016"})


@dataclass(frozen=True)
class UbenchDataset:
    """One μ-Bench source dataset (a fine-grained task)."""

    key: str  # the hub ``dataset`` value (Held rows: resolved from their stain)
    display: str
    group: str  # one of TAXONOMY_GROUPS
    n_classes: int  # from the spec's table (Kather 2018: the table's 9; the code used 8)
    modality: str  # spec §3 table: light, fluorescence or electron
    in_official_total: bool = True  # False: left out of the official fine-grained total
    slices: tuple[str, ...] = ()

    def __post_init__(self):
        if self.group not in TAXONOMY_GROUPS:
            raise ValueError(f"μ-Bench dataset {self.key}: unknown taxonomy group {self.group!r}")
        unknown = set(self.slices) - set(SLICES)
        if unknown:
            raise ValueError(f"μ-Bench dataset {self.key}: unknown slices {sorted(unknown)}")


_ID, _CYCLE, _MORPH, _ABNORMAL, _MOLECULE, _NEOPLASTIC, _NON_NEOPLASTIC = TAXONOMY_GROUPS
_PATH_LIGHT = ("pathology", "light")
_HE = ("pathology", "h_and_e", "light")

UBENCH_DATASETS: dict[str, UbenchDataset] = {d.key: d for d in (
    UbenchDataset("acevedo_et_al_2020", "White blood cells (Acevedo 2020)", _ID, 8, "light",
                  slices=_PATH_LIGHT),
    UbenchDataset("burgess_et_al_2024_contour", "Cell contour (Burgess 2024, synthetic)", _MORPH,
                  3, "fluorescence"),
    UbenchDataset("burgess_et_al_2024_eccentricity", "Cell eccentricity (Burgess 2024, synthetic)",
                  _MORPH, 3, "fluorescence"),
    UbenchDataset("burgess_et_al_2024_texture", "Cell texture (Burgess 2024, synthetic)", _MORPH,
                  3, "fluorescence"),
    UbenchDataset("colocalization_benchmark", "Molecule colocalisation (synthetic)", _MOLECULE, 4,
                  "fluorescence"),
    UbenchDataset("empiar_sbfsem", "Organisms and structures in SBF-SEM (EMPIAR)", _ID, 5,
                  "electron"),
    UbenchDataset("eulenberg_et_al_2017_brightfield", "Cell-cycle phase, brightfield (Eulenberg 2017)",
                  _CYCLE, 7, "light", slices=("light",)),
    UbenchDataset("eulenberg_et_al_2017_darkfield", "Cell-cycle phase, darkfield (Eulenberg 2017)",
                  _CYCLE, 7, "light", in_official_total=False, slices=("light",)),
    UbenchDataset("eulenberg_et_al_2017_epifluorescence",
                  "Cell-cycle phase, epifluorescence (Eulenberg 2017)", _CYCLE, 5, "fluorescence",
                  in_official_total=False),
    UbenchDataset("held_et_al_2010_galt", "Golgi morphology, GalT-EGFP (Held 2010)", _MORPH, 8,
                  "fluorescence"),
    UbenchDataset("held_et_al_2010_h2b", "Chromatin / cell cycle, H2B-mCherry (Held 2010)", _CYCLE,
                  9, "fluorescence"),
    UbenchDataset("hussain_et_al_2019", "Pap smear grading (Hussain 2019)", _ABNORMAL, 4, "light",
                  slices=_PATH_LIGHT),
    UbenchDataset("icpr2020_pollen", "Pollen structures (ICPR 2020)", _ID, 4, "light",
                  slices=("light",)),
    UbenchDataset("jung_et_al_2022", "White blood cells, synthetic (Jung 2022)", _ID, 5, "light",
                  slices=_PATH_LIGHT),
    UbenchDataset("kather_et_al_2016", "Colorectal tissue (Kather 2016)", _NEOPLASTIC, 8, "light",
                  slices=_HE),
    UbenchDataset("kather_et_al_2018", "Colorectal tissue (Kather 2018)", _NEOPLASTIC, 9, "light",
                  slices=_HE),
    UbenchDataset("kather_et_al_2018_val7k", "Colorectal tissue, VAL-7K (Kather 2018)", _NEOPLASTIC,
                  9, "light", slices=_HE),
    UbenchDataset("nirschl_et_al_2018", "Chronic heart failure (Nirschl 2018)", _ABNORMAL, 2,
                  "light", slices=_HE),
    UbenchDataset("nirschl_unpub_fluorescence", "Fluorescent organisms and structures (Nirschl)",
                  _ID, 13, "fluorescence"),
    UbenchDataset("tang_et_al_2019", "Amyloid morphology (Tang 2019)", _NON_NEOPLASTIC, 4, "light",
                  slices=("light",)),
    UbenchDataset("wong_et_al_2022", "Amyloid morphology (Wong 2022)", _NON_NEOPLASTIC, 4, "light",
                  slices=("light",)),
    UbenchDataset("wu_et_al_2023", "Mitochondrial morphology, cryo-ET (Wu 2023)", _MORPH, 2,
                  "electron"),
)}

# Hub rows of Held et al. 2010 have ``dataset = null``; their stain names the dataset (spec §2).
# The hub writes the GalT stain with an en dash; a hyphen is accepted too.
HELD_BY_STAIN: dict[str, str] = {
    "H2B-mCherry": "held_et_al_2010_h2b",
    "GalT\u2013EGFP": "held_et_al_2010_galt",
    "GalT-EGFP": "held_et_al_2010_galt",
}


def datasets_in_slice(slice_name: str) -> tuple[str, ...]:
    """The dataset keys in ``slice_name`` (one of ``SLICES``)."""
    if slice_name not in SLICES:
        raise ValueError(f"unknown μ-Bench slice {slice_name!r}; known: {', '.join(SLICES)}")
    return tuple(k for k, d in UBENCH_DATASETS.items() if slice_name in d.slices)
