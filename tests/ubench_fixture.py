"""Fixture μ-Bench shards: the hub's exact schema (spec §2), a handful of tiny rows.

``write_fixture(folder)`` writes ``perception/0.1.0/ubench-test-0000{i}-of-00007.arrow`` (Arrow
IPC *stream* files, as the HF ``datasets`` cache stores them) and ``dataset_info.json`` under
``folder`` and returns each file's sha256. The rows (``fixture_rows``) cover the quirks:

- acevedo_et_al_2020: 3 rows, options in one fixed order (class index == answer_idx);
- kather_et_al_2016: 3 rows, the last listing its options in another order;
- Held et al. 2010: ``dataset`` null, named by stain: 2 "H2B-mCherry" rows, one "GalT–EGFP"
  (en dash, as on the hub) and one "GalT-EGFP" (hyphen) row;
- nirschl_unpub_fluorescence: 2 rows whose stain question and stain captions are null;
- opencell: 1 row with no questions (segmentation only; excluded from the tasks).

Images are 32x32 PNGs of one seeded colour per row, stored as HF's Image feature stores them:
a struct ``{bytes: binary, path: string}``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

DATA_FOLDER = "perception/0.1.0"
N_SHARDS = 7
SHARD_FILES = tuple(f"{DATA_FOLDER}/ubench-test-{i:05d}-of-{N_SHARDS:05d}.arrow"
                    for i in range(N_SHARDS))
INFO_FILE = f"{DATA_FOLDER}/dataset_info.json"
NONE = "none of the above"
COARSE = ("domain", "subdomain", "modality", "submodality", "stain")
QUESTION_KINDS = ("modality", "submodality", "domain", "subdomain", "stain", "classification")
CAPTION_KEYS = ("domain", "domain_1", "subdomain", "subdomain_1", "modality", "modality_1",
                "submodality", "submodality_1", "stain", "stain_1", "classification_0",
                "classification_1")

# ---- schema (spec §2) -----------------------------------------------------------------------
QUESTION_TYPE = pa.struct([
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string()),
    ("answer_idx", pa.int64()), ("id", pa.string()), ("name", pa.string())])
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF Image feature


def schema(label_names: list[str]) -> pa.Schema:
    fields = [
        ("image_id", pa.string()), ("image", IMAGE_TYPE), ("label", pa.int64()),
        ("label_name", pa.string()), ("dataset", pa.string()), ("domain", pa.string()),
        ("institution", pa.string()), ("license", pa.string()),
        ("microns_per_pixel", pa.float64()), ("modality", pa.string()),
        ("ncbitaxon_id", pa.string()), ("ncbitaxon_name", pa.string()), ("pmid", pa.string()),
        ("split", pa.string()), ("stain", pa.string()), ("subdomain", pa.string()),
        ("submodality", pa.string()), ("synthetic", pa.bool_()),
        ("captions", pa.struct([(k, pa.list_(pa.string())) for k in CAPTION_KEYS])),
        ("questions", pa.struct([(k, QUESTION_TYPE) for k in QUESTION_KINDS])),
        ("bbox", pa.list_(pa.list_(pa.float64()))),
        ("polygon", pa.list_(pa.list_(pa.list_(pa.float64())))),
    ]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features(label_names)}})})


def features(label_names: list[str]) -> dict[str, Any]:
    """The HF ``datasets`` features description of the schema (dataset_info.json)."""
    s = {"dtype": "string", "_type": "Value"}
    q = {k: s for k in ("question", "answer", "id", "name")}
    q["options"] = {"feature": s, "_type": "Sequence"}
    q["answer_idx"] = {"dtype": "int64", "_type": "Value"}
    return {
        "image_id": s, "image": {"_type": "Image"},
        "label": {"names": label_names, "_type": "ClassLabel"}, "label_name": s, "dataset": s,
        "domain": s, "institution": s, "license": s,
        "microns_per_pixel": {"dtype": "float64", "_type": "Value"}, "modality": s,
        "ncbitaxon_id": s, "ncbitaxon_name": s, "pmid": s, "split": s, "stain": s,
        "subdomain": s, "submodality": s, "synthetic": {"dtype": "bool", "_type": "Value"},
        "captions": {k: {"feature": s, "_type": "Sequence"} for k in CAPTION_KEYS},
        "questions": {k: q for k in QUESTION_KINDS},
        "bbox": {"feature": {"feature": {"dtype": "float64", "_type": "Value"}, "_type": "Sequence"},
                 "_type": "Sequence"},
        "polygon": {"feature": {"feature": {"feature": {"dtype": "float64", "_type": "Value"},
                                            "_type": "Sequence"}, "_type": "Sequence"},
                    "_type": "Sequence"},
    }


# ---- rows -----------------------------------------------------------------------------------
COARSE_OPTIONS = {
    "domain": ["cell biology", "pathology", NONE],
    "subdomain": ["hematology", "colorectal pathology", "cell cycle", "organelle biology", NONE],
    "modality": ["light microscopy", "fluorescence microscopy", "electron microscopy", NONE],
    "submodality": ["brightfield", "epifluorescence", "confocal", NONE],
    "stain": ["Giemsa", "H&E", "H2B-mCherry", "GalT\u2013EGFP", "DAPI", NONE],
}


def png(seed: int, size: int = 32) -> bytes:
    """A deterministic size x size PNG of one seeded colour."""
    from PIL import Image

    colour = tuple(int(v) for v in np.random.default_rng(seed).integers(0, 256, 3))
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def _question(image_id: str, kind: str, text: str, options: list[str], answer: str) -> dict:
    return {"question": text, "options": list(options), "answer": answer,
            "answer_idx": options.index(answer), "id": f"{image_id}-{kind}", "name": kind}


def coarse_caption(kind: str, option: str, phrasing: int) -> str:
    return (f"A microscopy image whose {kind} is {option}." if phrasing == 0
            else f"This {kind} of this image: {option}.")


def fine_caption(option: str, phrasing: int) -> str:
    return f"An image of {option}." if phrasing == 0 else f"A micrograph showing {option}."


def _row(image_id: str, dataset: str | None, values: dict, label_name: str,
         fine_options: list[str] | None, seed: int, *, null_stain_question: bool = False) -> dict:
    """One row; ``fine_options`` None: no questions at all (opencell)."""
    questions: dict[str, dict | None] = {k: None for k in QUESTION_KINDS}
    captions: dict[str, list[str] | None] = {k: None for k in CAPTION_KEYS}
    if fine_options is not None:
        for kind in COARSE:
            if kind == "stain" and null_stain_question:
                continue
            opts = COARSE_OPTIONS[kind]
            answer = values.get(f"{kind}_answer", values[kind])
            questions[kind] = _question(image_id, kind, f"What is the {kind} of this image?",
                                        opts, answer)
            captions[kind] = [coarse_caption(kind, o, 0) for o in opts]
            captions[f"{kind}_1"] = [coarse_caption(kind, o, 1) for o in opts]
        questions["classification"] = _question(
            image_id, "classification", "Which class does this image show?", fine_options,
            label_name)
        captions["classification_0"] = [fine_caption(o, 0) for o in fine_options]
        captions["classification_1"] = [fine_caption(o, 1) for o in fine_options]
    return {
        "image_id": image_id, "image": {"bytes": png(seed), "path": None},
        "label_name": label_name, "dataset": dataset, "institution": "Fixture University",
        "license": "CC-BY-4.0", "microns_per_pixel": values.get("microns_per_pixel"),
        "ncbitaxon_id": "9606", "ncbitaxon_name": "Homo sapiens", "pmid": "12345678",
        "split": "test", "synthetic": False, "captions": captions, "questions": questions,
        "bbox": None, "polygon": [[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]] if dataset is None else None,
        **{k: values[k] for k in COARSE},
    }


ACEVEDO_CLASSES = ["basophil", "eosinophil", "lymphocyte", NONE]
KATHER_CLASSES = ["tumor", "stroma", "adipose", NONE]
HELD_H2B_CLASSES = ["interphase", "prophase", "metaphase", NONE]
HELD_GALT_CLASSES = ["compact Golgi", "dispersed Golgi", NONE]
NIRSCHL_FL_CLASSES = ["mitochondria", "nucleus", NONE]

_BLOOD = dict(domain="pathology", subdomain="hematology", modality="light microscopy",
              submodality="brightfield", stain="Giemsa", microns_per_pixel=0.25)
_COLON = dict(domain="pathology", subdomain="colorectal pathology", modality="light microscopy",
              submodality="brightfield", stain="H&E", microns_per_pixel=0.5)
_H2B = dict(domain="cell biology", subdomain="cell cycle", modality="fluorescence microscopy",
            submodality="epifluorescence", stain="H2B-mCherry", microns_per_pixel=None)
_GALT = dict(domain="cell biology", subdomain="organelle biology",
             modality="fluorescence microscopy", submodality="epifluorescence",
             stain="GalT\u2013EGFP", microns_per_pixel=None)
_FLUO = dict(domain="cell biology", subdomain="organelle biology",
             modality="fluorescence microscopy", submodality="confocal", stain="DAPI",
             microns_per_pixel=0.1)


def fixture_rows() -> list[dict]:
    """The fixture's rows in file order, as dicts keyed by column (``label`` filled in by
    ``write_fixture`` from the global label list)."""
    rows = [
        _row("acevedo-0", "acevedo_et_al_2020", _BLOOD, "basophil", ACEVEDO_CLASSES, 1),
        _row("acevedo-1", "acevedo_et_al_2020", _BLOOD, "eosinophil", ACEVEDO_CLASSES, 2),
        _row("acevedo-2", "acevedo_et_al_2020", _BLOOD, "lymphocyte", ACEVEDO_CLASSES, 3),
        _row("held-h2b-0", None, _H2B, "metaphase", HELD_H2B_CLASSES, 4),
        _row("kather-0", "kather_et_al_2016", _COLON, "tumor", KATHER_CLASSES, 5),
        _row("kather-1", "kather_et_al_2016", _COLON, "adipose", KATHER_CLASSES, 6),
        # the same classes in another order: class index 1 (stroma), answer_idx 0
        _row("kather-2", "kather_et_al_2016", _COLON, "stroma",
             ["stroma", "tumor", "adipose", NONE], 7),
        _row("held-h2b-1", None, _H2B, "interphase", HELD_H2B_CLASSES, 8),
        _row("held-galt-0", None, _GALT, "dispersed Golgi", HELD_GALT_CLASSES, 9),
        _row("held-galt-1", None, {**_GALT, "stain": "GalT-EGFP", "stain_answer": "GalT\u2013EGFP"}, "compact Golgi",
             HELD_GALT_CLASSES, 10),
        _row("nirschl-fl-0", "nirschl_unpub_fluorescence", _FLUO, "nucleus", NIRSCHL_FL_CLASSES,
             11, null_stain_question=True),
        _row("nirschl-fl-1", "nirschl_unpub_fluorescence", _FLUO, "mitochondria",
             NIRSCHL_FL_CLASSES, 12, null_stain_question=True),
        _row("opencell-0", "opencell", _FLUO, "nucleus", None, 13),
    ]
    return rows


SHARD_SIZES = (4, 2, 2, 2, 1, 1, 1)  # rows per shard: shard 0 has two batches of 2


def label_names(rows: list[dict]) -> list[str]:
    """The global ClassLabel names (over all datasets), in first-seen order."""
    return list(dict.fromkeys(r["label_name"] for r in rows))


def write_stream(path: Path, sch: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
    """An Arrow IPC stream file, batch by batch (nothing held beyond one batch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, sch) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _batches(rows: list[dict], sch: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(rows), batch_rows):
        yield pa.RecordBatch.from_pylist(rows[start:start + batch_rows], schema=sch)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fixture(folder: Path, *, rows: list[dict] | None = None,
                  shard_sizes: tuple[int, ...] = SHARD_SIZES, batch_rows: int = 2) -> dict[str, str]:
    """Write the fixture shards and ``dataset_info.json`` under ``folder``; return
    ``{relative file name: sha256}``."""
    rows = fixture_rows() if rows is None else rows
    if sum(shard_sizes) != len(rows) or len(shard_sizes) != N_SHARDS:
        raise ValueError(f"shard sizes {shard_sizes} do not split {len(rows)} rows into 7 shards")
    names = label_names(rows)
    for r in rows:
        r["label"] = names.index(r["label_name"])
    sch = schema(names)
    folder = Path(folder)
    start = 0
    for filename, n in zip(SHARD_FILES, shard_sizes):
        write_stream(folder / filename, sch, _batches(rows[start:start + n], sch, batch_rows))
        start += n
    info = {"description": "μ-Bench fixture", "features": features(names),
            "splits": {"test": {"name": "test", "num_examples": len(rows)}},
            "config_name": "default"}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2))
    return {f: sha256_file(folder / f) for f in (INFO_FILE, *SHARD_FILES)}
