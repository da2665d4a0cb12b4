"""Captions for zero-shot classification of a BioBench task from its class names.

A contrastive model scores an image against each class by the mean of the L2-normalised
embeddings of several captions of that class ("prompt ensembling", Radford et al. 2021, CLIP,
§3.1.4): the captions are ``template.format(c=name)`` for every template of the task's set.

Template sets (chosen here, not taken from a benchmark):

- ``GENERIC`` is the first and most used template of CLIP's ImageNet set ("a photo of a {c}.")
  with two close variants from that same set ("a good photo of a {c}.", "a close-up photo of a
  {c}.").
- Every other set keeps "a photo of a {c}." and adds the image kind the task's modality names
  ("a camera-trap photo of a {c}.", "a herbarium specimen of {c}.", "a microscope image of
  {c}.", ...), as CLIP's dataset-specific templates do (e.g. "a satellite photo of a {c}." for
  EuroSAT). The set is picked by matching words of ``Task.modality`` (``templates_for``);
  no match gives ``GENERIC``.

μ-Bench does not use templates: its questions carry the curators' own captions.
"""

from __future__ import annotations

import re

GENERIC: tuple[str, ...] = ("a photo of a {c}.", "a good photo of a {c}.",
                            "a close-up photo of a {c}.")

# (words any of which in Task.modality selects the set, the set)
MODALITY_TEMPLATES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("camera-trap", "camera trap"),
     ("a photo of a {c}.", "a camera-trap photo of a {c}.", "a camera-trap image of a {c}.")),
    (("herbarium",),
     ("a photo of a {c}.", "a herbarium specimen of {c}.", "a scan of a herbarium sheet of {c}.")),
    (("microscop", "micrograph", "cytometry", "flowcam", "plankton"),
     ("a photo of a {c}.", "a microscope image of {c}.", "a micrograph of {c}.")),
    (("specimen",),
     ("a photo of a {c}.", "a photo of a {c} specimen.", "a museum specimen of {c}.")),
    (("aerial", "airborne", "drone", "satellite"),
     ("a photo of a {c}.", "an aerial photo of a {c}.", "an aerial image of {c}.")),
    (("video",),
     ("a photo of a {c}.", "a video frame of a {c}.", "a video frame showing {c}.")),
    (("citizen-science", "in-situ", "field", "web photos"),
     ("a photo of a {c}.", "a photo of a {c} in the wild.", "a nature photo of a {c}.")),
)


def templates_for(modality: str) -> tuple[str, ...]:
    """The template set for a task of this ``modality`` (first matching entry, else GENERIC)."""
    text = modality.lower()
    for words, templates in MODALITY_TEMPLATES:
        if any(word in text for word in words):
            return templates
    return GENERIC


KINGDOMS = frozenset({"Animalia", "Plantae", "Fungi", "Protozoa", "Chromista", "Bacteria",
                      "Archaea"})


def caption_name(class_name: str) -> str:
    """The words a caption uses for a class name:

    - a '|'-joined taxonomy (Ecdysis' "Insecta|...|Genus species"): its most specific part;
    - an iNat21 folder name ("00000_Animalia_..._Genus_species"): the binomial;
    - ImageNet's "tench, Tinca tinca": the first synonym;
    - otherwise the name, underscores as spaces, spaces collapsed.
    """
    parts = [p.strip() for p in class_name.split("|") if p.strip()]
    name = parts[-1] if parts else class_name.strip()
    words = name.split("_")
    if words and words[0].isdigit():
        words = words[1:]
    if len(words) >= 3 and words[0] in KINGDOMS:  # kingdom_phylum_..._genus_species
        words = words[-2:]
    name = " ".join(words).split(",")[0]
    return re.sub(r"\s+", " ", name).strip()


def captions_for(class_name: str, templates: tuple[str, ...]) -> tuple[str, ...]:
    """Every template filled with ``class_name``'s caption words."""
    if not templates:
        raise ValueError("a template set needs at least one template")
    name = caption_name(class_name)
    if not name:
        raise ValueError(f"class name {class_name!r} has no words to put in a caption")
    return tuple(t.format(c=name) for t in templates)
