"""μ-Bench data: download through huggingface_hub from a local server posing as the hub, the
shard reader and its quirks, the registered tasks and their question sets (fixture shards in
the hub's schema: tests/ubench_fixture.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from biobench.download import MARKER_NAME
from biobench.tasks import TaskDataMissing, get_task, list_tasks
from biobench.tasks._offline import CrossFittedTask
from biobench.ubench import data as ub
from biobench.ubench import meta
from biobench.zeroshot.base import MISSING
from tests import ubench_fixture as fx
from tests.http_server import LocalServer, _make_handler, running

HUB_PREFIX = f"/datasets/{ub.REPO_ID}/resolve/{ub.REVISION}/"

SPEC_KEYS = [  # spec §3, the 22 hub keys, written out by hand
    "acevedo_et_al_2020", "burgess_et_al_2024_contour", "burgess_et_al_2024_eccentricity",
    "burgess_et_al_2024_texture", "colocalization_benchmark", "empiar_sbfsem",
    "eulenberg_et_al_2017_brightfield", "eulenberg_et_al_2017_darkfield",
    "eulenberg_et_al_2017_epifluorescence", "held_et_al_2010_galt", "held_et_al_2010_h2b",
    "hussain_et_al_2019", "icpr2020_pollen", "jung_et_al_2022", "kather_et_al_2016",
    "kather_et_al_2018", "kather_et_al_2018_val7k", "nirschl_et_al_2018",
    "nirschl_unpub_fluorescence", "tang_et_al_2019", "wong_et_al_2022", "wu_et_al_2023"]


# ---- a local hub ----------------------------------------------------------------------------
@contextmanager
def local_hub(root: Path) -> Iterator[LocalServer]:
    """tests/http_server.py's file server plus the headers huggingface_hub requires of a hub
    ``resolve`` answer: ``X-Repo-Commit`` (the revision) and an ``ETag`` (the file's sha256,
    as the hub gives for LFS files)."""
    server = LocalServer(root=root)

    class HubHandler(_make_handler(server)):
        def end_headers(self) -> None:
            path = self.path.split("?", 1)[0]
            file = server.file_for(path)
            if path.startswith("/datasets/") and file.is_file():
                self.send_header("X-Repo-Commit", ub.REVISION)
                self.send_header("ETag", f'"{hashlib.sha256(file.read_bytes()).hexdigest()}"')
            super().end_headers()

    with running(HubHandler) as url:
        server.url = url
        yield server


@pytest.fixture()
def online(monkeypatch, tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE at import (conftest sets it): lift it for a test
    that talks to 127.0.0.1 only, and keep the hub cache in the test's folder."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture()
def hub(tmp_path) -> Iterator[tuple[LocalServer, dict[str, str]]]:
    """A local hub serving the fixture at the pinned revision, and each file's sha256."""
    served = tmp_path / "served"
    sums = fx.write_fixture(served / HUB_PREFIX.strip("/"))
    with local_hub(served) as server:
        yield server, sums


def exact_pins(sums: dict[str, str]) -> dict[str, ub.ShardPin]:
    return {f: ub.ShardPin.exact(sums[f]) for f in ub.SHARD_FILES}


# ---- download -------------------------------------------------------------------------------
def test_spec_pins_are_the_truncated_sums():
    assert len(ub.SHARD_PINS) == 7 and list(ub.SHARD_PINS) == list(ub.SHARD_FILES)
    assert ub.SHARD_FILES[3] == "perception/0.1.0/ubench-test-00003-of-00007.arrow"
    assert str(ub.SHARD_PINS[ub.SHARD_FILES[0]]) == "3d346134…b630f1"
    pin = ub.ShardPin("3d346134", "b630f1")
    assert pin.matches("3d346134" + "0" * 50 + "b630f1")
    assert not pin.matches("3d346134" + "0" * 56)  # right start, wrong end
    assert not pin.matches("0" * 58 + "b630f1")  # right end, wrong start


def test_download_through_huggingface_hub_and_rerun_makes_no_request(online, hub, tmp_path):
    server, sums = hub
    dest = tmp_path / "ubench"
    assert ub.download_ubench(dest, endpoint=server.url, progress=False,
                              pins=exact_pins(sums)) == dest
    for name, sha in sums.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == sha
        assert json.loads((dest / (name + ".verified")).read_text())["sha256"] == sha
    assert (dest / MARKER_NAME).is_file() and ub.missing_files(dest) == []
    # huggingface_hub asked the hub's resolve URL of every file at the pinned revision
    fetched = {r.path for r in server.gets()}
    assert fetched == {HUB_PREFIX + name for name in sums}
    assert {r.path for r in server.requests if r.method == "HEAD"} == fetched
    server.requests.clear()
    ub.download_ubench(dest, endpoint=server.url, progress=False, pins=exact_pins(sums))
    assert server.requests == []  # verified files cost a stat, not a request or a hash
    assert ub.missing_files(dest) == []


def test_spec_pins_refuse_a_shard_that_differs(online, hub, tmp_path):
    server, _ = hub
    dest = tmp_path / "ubench"
    with pytest.raises(ub.UbenchDownloadError) as err:
        ub.download_ubench(dest, endpoint=server.url, progress=False)  # the real pins
    first = ub.SHARD_FILES[0]
    got = hashlib.sha256((server.root / HUB_PREFIX.strip("/") / first).read_bytes()).hexdigest()
    message = str(err.value)
    assert first in message and got in message and "3d346134…b630f1" in message
    assert not (dest / first).exists() and not (dest / (first + ".verified")).exists()
    assert not (dest / MARKER_NAME).exists()
    with pytest.raises(TaskDataMissing, match="biobench download ubench"):
        get_task("ubench_acevedo_et_al_2020").check_present(dest)


def test_changed_shard_is_refused_and_a_rerun_resumes_there(online, hub, tmp_path):
    server, sums = hub
    dest = tmp_path / "ubench"
    changed = ub.SHARD_FILES[3]
    served_file = server.root / HUB_PREFIX.strip("/") / changed
    original = served_file.read_bytes()
    served_file.write_bytes(original + b"tampered")
    with pytest.raises(ub.UbenchDownloadError, match="00003-of-00007") as err:
        ub.download_ubench(dest, endpoint=server.url, progress=False, pins=exact_pins(sums))
    assert sums[changed] in str(err.value)
    assert not (dest / changed).exists()  # refused: deleted, no marker, folder incomplete
    assert not (dest / (changed + ".verified")).exists()
    assert not (dest / ".cache/huggingface/download" / (changed + ".metadata")).exists()
    assert changed in ub.missing_files(dest) and not (dest / MARKER_NAME).exists()
    served_file.write_bytes(original)  # the hub serves the right file again
    server.requests.clear()
    ub.download_ubench(dest, endpoint=server.url, progress=False, pins=exact_pins(sums))
    # shards verified before the refusal are not fetched again; the stop came at shard 3
    assert {r.path for r in server.gets()} == {HUB_PREFIX + f for f in ub.SHARD_FILES[3:]}
    assert ub.missing_files(dest) == []


def test_local_file_changed_after_verification_is_fetched_again(online, hub, tmp_path):
    server, sums = hub
    dest = tmp_path / "ubench"
    ub.download_ubench(dest, endpoint=server.url, progress=False, pins=exact_pins(sums))
    shard = ub.SHARD_FILES[2]
    with open(dest / shard, "ab") as f:
        f.write(b"garbage")  # size changes: the marker no longer describes the file
    server.requests.clear()
    ub.download_ubench(dest, endpoint=server.url, progress=False, pins=exact_pins(sums))
    assert {r.path for r in server.gets()} == {HUB_PREFIX + shard}
    assert hashlib.sha256((dest / shard).read_bytes()).hexdigest() == sums[shard]


def test_task_download_uses_the_mirror_as_hub_endpoint(online, hub, tmp_path, monkeypatch):
    server, sums = hub
    for name, pin in exact_pins(sums).items():
        monkeypatch.setitem(ub.SHARD_PINS, name, pin)
    task = get_task("ubench_coarse_stain")
    path = task.download(tmp_path / "shared", mirror=server.url, progress=False)
    assert path == tmp_path / "shared" and task.is_present(path)
    assert get_task("ubench_kather_et_al_2016").is_present(path)  # one folder for every task


def test_offline_mode_gives_a_clear_error(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1: nothing is fetched, and the message says why
    with pytest.raises(ub.UbenchDownloadError, match="HF_HUB_OFFLINE"):
        ub.download_ubench(tmp_path / "u", endpoint="http://127.0.0.1:9", progress=False)


# ---- reader ---------------------------------------------------------------------------------
@pytest.fixture()
def shards(tmp_path) -> Path:
    root = tmp_path / "ubench"
    fx.write_fixture(root)
    return root


def test_rows_resolve_the_quirks(shards):
    rows = list(ub.iter_rows(shards))
    assert [(r.image_id, r.dataset) for r in rows] == [
        ("acevedo-0", "acevedo_et_al_2020"), ("acevedo-1", "acevedo_et_al_2020"),
        ("acevedo-2", "acevedo_et_al_2020"), ("held-h2b-0", "held_et_al_2010_h2b"),
        ("kather-0", "kather_et_al_2016"), ("kather-1", "kather_et_al_2016"),
        ("kather-2", "kather_et_al_2016"), ("held-h2b-1", "held_et_al_2010_h2b"),
        ("held-galt-0", "held_et_al_2010_galt"),  # "GalT–EGFP" (en dash)
        ("held-galt-1", "held_et_al_2010_galt"),  # "GalT-EGFP" (hyphen)
        ("nirschl-fl-0", "nirschl_unpub_fluorescence"),
        ("nirschl-fl-1", "nirschl_unpub_fluorescence"), ("opencell-0", "opencell")]
    nirschl = rows[10]
    assert nirschl.questions["stain"] is None and nirschl.questions["domain"] is not None
    assert rows[12].questions == {k: None for k in fx.QUESTION_KINDS}
    # shard 0 holds two batches of two rows: acevedo-2 is batch 1, row 0
    assert (rows[2].location.shard.name, rows[2].location.batch, rows[2].location.row) == (
        "ubench-test-00000-of-00007.arrow", 1, 0)
    assert rows[0].microns_per_pixel == 0.25 and rows[3].microns_per_pixel is None
    assert rows[3].stain == "H2B-mCherry" and rows[0].synthetic is False


def test_rows_filtered_by_dataset_and_kind(shards):
    rows = list(ub.iter_rows(shards, datasets={"held_et_al_2010_galt"}, kinds=["stain"]))
    assert [r.image_id for r in rows] == ["held-galt-0", "held-galt-1"]
    assert set(rows[0].questions) == {"stain"} and set(rows[0].captions) == {"stain", "stain_1"}
    q = rows[1].questions["stain"]
    assert q.answer == "GalT\u2013EGFP" and q.answer_idx == 3 and q.options[-1] == fx.NONE


def test_unknown_held_stain_is_an_error_naming_the_row(tmp_path):
    rows = fx.fixture_rows()
    rows[3]["stain"] = "LaminB1-GFP"  # a null-dataset row whose stain names no Held set
    fx.write_fixture(tmp_path, rows=rows)
    with pytest.raises(ub.UbenchDataError, match=r"00000-of-00007.arrow batch 1 row 1.*LaminB1"):
        list(ub.iter_rows(tmp_path))


def test_missing_shard_is_named(shards):
    (shards / ub.SHARD_FILES[5]).unlink()
    with pytest.raises(FileNotFoundError, match="00005-of-00007"):
        list(ub.iter_rows(shards))


def seeded_colour(seed: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.random.default_rng(seed).integers(0, 256, 3))


def test_images_are_read_only_for_the_rows_asked(shards):
    rows = {r.image_id: r for r in ub.iter_rows(shards)}
    image = ub.load_image(rows["held-h2b-0"].location)  # fixture seed 4
    assert image.size == (32, 32) and image.convert("RGB").getpixel((5, 7)) == seeded_colour(4)
    wanted = [rows["kather-2"].location, rows["acevedo-1"].location]
    got = dict(ub.read_image_bytes(wanted))
    assert set(got) == set(wanted)
    assert got[rows["acevedo-1"].location] == fx.png(2)


# ---- tasks ----------------------------------------------------------------------------------
def test_registry_lists_the_27_tasks():
    names = list_tasks("ubench")
    assert names == sorted([f"ubench_{k}" for k in SPEC_KEYS]
                           + [f"ubench_coarse_{k}" for k in
                              ("domain", "subdomain", "modality", "submodality", "stain")])
    fine = get_task("ubench_wu_et_al_2023")
    assert isinstance(fine, CrossFittedTask) and fine.cross_fitted
    assert fine.protocols == ("zero_shot", "logreg", "torch_logreg", "simpleshot", "knn")
    assert fine.default_probe == "zero_shot" and fine.metric_name == "question_accuracy"
    assert get_task("ubench_coarse_domain").protocols == ("zero_shot",)
    left_out = {k for k in SPEC_KEYS if not get_task(f"ubench_{k}").in_official_total}
    assert left_out == {"eulenberg_et_al_2017_darkfield", "eulenberg_et_al_2017_epifluorescence"}


def test_metadata_groups_and_slices():
    assert sorted(meta.UBENCH_DATASETS) == SPEC_KEYS
    assert {d.group for d in meta.UBENCH_DATASETS.values()} == set(meta.TAXONOMY_GROUPS)
    assert set(meta.datasets_in_slice("pathology")) == {
        "hussain_et_al_2019", "acevedo_et_al_2020", "jung_et_al_2022", "kather_et_al_2016",
        "kather_et_al_2018", "kather_et_al_2018_val7k", "nirschl_et_al_2018"}
    assert set(meta.datasets_in_slice("h_and_e")) == {
        "kather_et_al_2016", "kather_et_al_2018", "kather_et_al_2018_val7k", "nirschl_et_al_2018"}
    assert "wu_et_al_2023" not in meta.datasets_in_slice("light")
    # spec §3: 22 tasks, images ~ 200 per class; the class counts sum as the table's
    assert sum(d.n_classes for d in meta.UBENCH_DATASETS.values()) == 126


def test_listing_tasks_imports_no_pyarrow():
    code = ("import sys, biobench.tasks as t; t.discover(); "
            "print(sorted(m for m in ('pyarrow', 'PIL', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture()
def complete(shards) -> Path:
    """The fixture shards, marked as a finished download."""
    from biobench.download import write_marker

    write_marker(shards, "ubench", [])
    return shards


def test_fine_task_load_writes_each_png_once(complete):
    task = get_task("ubench_kather_et_al_2016")
    data = task.load(complete)
    assert data.train == [] and data.class_names == ["tumor", "stroma", "adipose"]
    assert [ex.id for ex in data.test] == ["kather_et_al_2016/kather-0",
                                           "kather_et_al_2016/kather-1",
                                           "kather_et_al_2016/kather-2"]
    assert [ex.label for ex in data.test] == [0, 2, 1]  # kather-2 lists stroma first
    paths = [ex.images[0].path for ex in data.test]
    assert paths[0] == complete / "images" / "kather_et_al_2016" / "kather-0.png"
    assert [p.read_bytes() for p in paths] == [fx.png(5), fx.png(6), fx.png(7)]
    stamps = [p.stat().st_mtime_ns for p in paths]
    again = task.load(complete)
    assert [ex.images[0].path.stat().st_mtime_ns for ex in again.test] == stamps


def test_fine_question_set_by_hand(complete):
    task = get_task("ubench_acevedo_et_al_2020")
    data = task.load(complete)
    assert [ex.label for ex in data.test] == [0, 1, 2]  # fixed option order: == answer_idx
    qs = task.zero_shot_questions(data)
    assert (qs.n_examples, qs.n_slots) == (3, 2)
    assert qs.slot_names == ("classification_0", "classification_1")
    assert len(qs.questions) == 6
    np.testing.assert_array_equal(qs.y_true(), [[0, 0], [1, 1], [2, 2]])
    q = qs.questions[1]  # acevedo-0, second phrasing
    assert (q.example_index, q.slot, q.kind) == (0, 1, "classification")
    assert q.question == "Which class does this image show?"
    assert q.options == ("basophil", "eosinophil", "lymphocyte", "none of the above")
    assert q.captions == (("A micrograph showing basophil.",), ("A micrograph showing eosinophil.",),
                          ("A micrograph showing lymphocyte.",),
                          ("A micrograph showing none of the above.",))
    assert qs.questions[0].captions[2] == ("An image of lymphocyte.",)
    gen = task.generative_questions(data)
    assert (gen.n_slots, len(gen.questions), gen.slot_names) == (1, 3, ("classification",))
    np.testing.assert_array_equal(gen.y_true(), [[0], [1], [2]])
    kather = get_task("ubench_kather_et_al_2016")
    kd = kather.load(complete)
    np.testing.assert_array_equal(kather.zero_shot_questions(kd).y_true()[2], [0, 0])


def test_coarse_stain_question_set_skips_the_null_stain_question(complete):
    task = get_task("ubench_coarse_stain")
    data = task.load(complete)
    ids = [ex.id.split("/")[1] for ex in data.test]
    assert len(ids) == 12 and "opencell-0" not in ids  # segmentation-only source left out
    qs = task.zero_shot_questions(data)
    assert qs.slot_names == ("stain_0", "stain_1") and len(qs.questions) == 2 * 10
    y = qs.y_true()
    nirschl = [i for i, x in enumerate(ids) if x.startswith("nirschl-fl")]
    assert (y[nirschl] == MISSING).all() and (np.delete(y, nirschl, axis=0) >= 0).all()
    assert [data.test[i].label for i in nirschl] == [-1, -1]
    # stain options: Giemsa, H&E, H2B-mCherry, GalT–EGFP, DAPI, none of the above
    by_id = dict(zip(ids, y[:, 0]))
    assert (by_id["acevedo-0"], by_id["kather-0"], by_id["held-h2b-0"], by_id["held-galt-1"]) == (
        0, 1, 2, 3)
    q = next(q for q in qs.questions if q.example_index == ids.index("held-galt-0") and q.slot == 0)
    assert q.captions[3] == ("A microscopy image whose stain is GalT\u2013EGFP.",)
    gen = task.generative_questions(data)
    assert len(gen.questions) == 10 and gen.slot_names == ("stain",)


def test_questions_follow_a_subset_of_examples(complete):
    # the evaluation may keep only some test examples; questions follow them by example id
    from biobench.tasks.base import TaskData

    task = get_task("ubench_coarse_domain")
    data = task.load(complete)
    kept = TaskData([], data.test[3:5], data.class_names, data.extra)
    qs = task.zero_shot_questions(kept)
    assert qs.n_examples == 2
    np.testing.assert_array_equal(qs.y_true(), task.zero_shot_questions(data).y_true()[3:5])


def test_cross_fitted_probe_on_a_fine_task(complete):
    from sklearn.neighbors import KNeighborsClassifier

    task = get_task("ubench_acevedo_et_al_2020")
    rows = fx.fixture_rows()
    extra = [r for r in rows if r["dataset"] == "acevedo_et_al_2020"]
    # two images per class are needed to cross-fit: duplicate the three rows under new ids
    for r in extra:
        copy = dict(r, image_id=r["image_id"] + "b")
        rows.insert(rows.index(r) + 1, copy)
    root = complete.parent / "more"
    fx.write_fixture(root, rows=rows, shard_sizes=(7, 2, 2, 2, 1, 1, 1))
    from biobench.download import write_marker

    write_marker(root, "ubench", [])
    data = task.load(root)
    y = task.labels_array(data.test)
    x = np.eye(3)[y] + 0.01 * np.arange(len(y))[:, None]  # features that separate the classes
    pred = task.fit_predict(KNeighborsClassifier(1), x[:0], y[:0], x, data, seed=0)
    np.testing.assert_array_equal(pred.y_pred, y)
    assert pred.extra["n_folds"] == 2
