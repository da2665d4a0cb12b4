"""Herbarium19, Plankton, Pl@ntNet, iNat21, ImageNet-1K, iWildCam and Ecdysis on fixtures in
their real layouts: download from a local server, load, evaluate, and the reference's pitfalls."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from biobench import download
from biobench.download import DownloadError
from biobench.evaluate import run_evaluation
from biobench.store import ResultsStore
from biobench.tasks import TaskDataMissing, get_task, subsample_train
from tests.fixtures.common import with_fixture_checksums

TASKS = ["herbarium19", "plankton", "plantnet", "inat21", "imagenet1k", "iwildcam", "ecdysis"]


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))


def serve_fixture(name, server, tmp_path):
    """Pack the task's fixture into its real archives, serve them; return (task, served)."""
    served = importlib.import_module(f"tests.fixtures.{name}").serve(server, tmp_path / "fixture")
    return with_fixture_checksums(get_task(name), served.files), served


def downloaded(name, server, tmp_path):
    task, served = serve_fixture(name, server, tmp_path)
    root = tmp_path / "data" / name
    task.download(root, mirror=server.url, progress=False)
    return task, served, root


# ---- end to end -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TASKS)
def test_download_load_evaluate_store(name, http_server, tmp_path):
    task, served, root = downloaded(name, http_server, tmp_path)
    data = task.load(root)
    assert (len(data.train), len(data.test)) == (served.n_train, served.n_test)
    assert len({ex.id for ex in data.train + data.test}) == served.n_train + served.n_test
    assert all(ex.images[0].path.is_file() for ex in data.train + data.test)
    assert not list(root.rglob(".extract-*")) and not list(root.rglob("*.part"))

    store = ResultsStore(tmp_path / "results.sqlite")
    result = run_evaluation("random_tiny", task, data_root=root, store=store, n_bootstrap=50)
    row = store.get_run(result.key)
    assert row["n_test"] == served.n_test and row["metric"] == task.metric_name
    assert 0.0 <= row["score"] <= 1.0
    assert len(store.predictions(result.run_id)) == served.n_test

    (root / download.MARKER_NAME).unlink()
    with pytest.raises(TaskDataMissing, match=rf"(?s)did not finish.*biobench download {name}"):
        task.check_present(root)


# The seven tasks the BioBench reference scores with its LayerNorm + linear head (the probe
# column of spec/biobench-tasks.md), written out here rather than read from the code
REFERENCE_LINEAR_HEAD = {"ecdysis", "herbarium19", "iwildcam", "plankton", "plantnet",
                         "imagenet1k", "inat21"}


def test_reference_linear_head_tasks_offer_it_and_every_logreg_task_offers_torch_logreg():
    from biobench.tasks import list_tasks

    offering = {n for n in list_tasks() if "linear_head" in get_task(n).protocols}
    assert offering == REFERENCE_LINEAR_HEAD
    for name in list_tasks():
        protocols = get_task(name).protocols
        assert ("logreg" in protocols) == ("torch_logreg" in protocols), name


@pytest.mark.parametrize("protocol, params", [("linear_head", {"max_steps": 200}),
                                              ("torch_logreg", {})])
def test_torch_probes_score_a_benchmark_task_end_to_end(protocol, params, http_server, tmp_path):
    task, served, root = downloaded("plantnet", http_server, tmp_path)
    store = ResultsStore(tmp_path / "results.sqlite")
    result = run_evaluation("random_tiny", task, data_root=root, store=store, n_bootstrap=50,
                            protocol=protocol, probe_params=params)
    row = store.get_run(result.key)
    assert row["protocol"] == protocol and row["n_test"] == served.n_test
    assert row["ci_low"] <= row["score"] <= row["ci_high"]
    assert row["score"] == pytest.approx(task.score(result.y_true, result.y_pred))


@pytest.mark.parametrize("name", TASKS)
def test_missing_folder_names_the_download_command(name, tmp_path):
    with pytest.raises(TaskDataMissing, match=rf"data not found at .*nowhere.*biobench download {name}"):
        get_task(name).load(tmp_path / "nowhere")


def test_partial_folder_names_the_missing_part(tmp_path):
    root = tmp_path / "herbarium19"
    (root / "train" / "0").mkdir(parents=True)
    with pytest.raises(TaskDataMissing, match="missing validation"):
        get_task("herbarium19").check_present(root)


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("herbarium19", "md5"), ("plankton", "sha256")])
def test_published_checksum_refuses_a_changed_file(name, kind, http_server, tmp_path):
    importlib.import_module(f"tests.fixtures.{name}").serve(http_server, tmp_path / "fixture")
    task = get_task(name)  # the real published sums: the fixture archive does not match them
    root = tmp_path / name
    with pytest.raises(DownloadError, match=rf"Checksum mismatch for {task.remote_files[0].name}.*{kind}"):
        task.download(root, mirror=http_server.url, progress=False)
    assert not download.is_complete(root) and not (root / "train").exists()
    with pytest.raises(TaskDataMissing):
        task.load(root)


def test_corrupt_archive_is_reported_and_nothing_marked_complete(http_server, tmp_path):
    task, served = serve_fixture("iwildcam", http_server, tmp_path)
    blob = served.files["iwildcam_v2.0.tar.gz"]
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    http_server.add("/rest/bundles/0x6313da2b204647e79a14b468131fcd64/contents/blob/", blob)
    root = tmp_path / "iwildcam"
    with pytest.raises(DownloadError, match="iwildcam_v2.0.tar.gz is corrupt"):
        task.download(root, mirror=http_server.url, progress=False)
    assert not download.is_complete(root) and not (root / "metadata.csv").exists()


def test_corrupt_image_names_the_file_and_leaves_no_store_row(http_server, tmp_path):
    task, _, root = downloaded("herbarium19", http_server, tmp_path)
    broken = root / "validation" / "2" / "00001.jpg"
    broken.write_bytes(b"not a jpeg")
    store = ResultsStore(tmp_path / "results.sqlite")
    with pytest.raises(OSError, match=r"validation/2/00001\.jpg"):
        run_evaluation("random_tiny", task, data_root=root, store=store, n_bootstrap=20)
    assert store.runs().empty


# ---- per-task behaviour and the reference's pitfalls ----------------------------------------
def test_plankton_labels_align_by_folder_name_across_splits(http_server, tmp_path):
    from tests.fixtures import plankton as fixture

    task, _, root = downloaded("plankton", http_server, tmp_path)
    data = task.load(root)
    folder = lambda ex: ex.id.split("/")[1]  # noqa: E731  "<split>/<class>/<file>"
    train_id = {folder(ex): ex.label for ex in data.train}
    for ex in data.test:
        assert data.class_names[ex.label] == folder(ex)
        if folder(ex) in train_id:  # the reference gave Dolichospermum 1 in test, 2 in train
            assert ex.label == train_id[folder(ex)]
    test_only = data.class_names.index(fixture.TEST_ONLY)
    assert test_only not in train_id.values()  # its own id: it counts as an error
    assert data.extra["test_only_classes"] == [fixture.TEST_ONLY]
    assert fixture.MISSING_FROM_TEST in train_id


@pytest.mark.parametrize("name", ["iwildcam", "plantnet", "ecdysis"])
def test_class_absent_from_test_is_not_scored_as_zero(name):
    y_true = np.array([0, 0, 2, 2])
    y_pred = np.array([0, 2, 2, 2])
    # by hand: class 0 F1 = 2/3, class 2 F1 = 4/5; class 1 has no true example
    expected = (2 / 3 + 4 / 5) / 2
    score = get_task(name).score(y_true, y_pred)
    assert score == pytest.approx(expected)
    assert score == pytest.approx(f1_score(y_true, y_pred, labels=[0, 2], average="macro"))
    assert score != pytest.approx((2 / 3 + 0 + 4 / 5) / 3)  # the reference's ids 0..max


def test_plantnet_n_train_is_class_balanced_seeded_and_used(http_server, tmp_path):
    task, _, root = downloaded("plantnet", http_server, tmp_path)
    data = task.load(root)
    assert data.class_names[0] == "Lactuca virosa L."  # species names from the JSON
    first = subsample_train(data.train, 8, seed=3)
    assert [ex.id for ex in first] == [ex.id for ex in subsample_train(data.train, 8, seed=3)]
    assert np.bincount([ex.label for ex in first]).tolist() == [2, 2, 2, 2]
    others = {tuple(ex.id for ex in subsample_train(data.train, 8, seed=s)) for s in range(4, 9)}
    assert len(others | {tuple(ex.id for ex in first)}) > 1
    store = ResultsStore(tmp_path / "r.sqlite")
    result = run_evaluation("random_tiny", task, data_root=root, store=store, n_train=8,
                            n_bootstrap=20, seed=3, protocol="simpleshot")
    assert store.get_run(result.key)["n_train_used"] == 8
    # the test set (images/val) is never subsampled
    assert store.get_run(result.key)["n_test"] == len(data.test)


def test_herbarium19_numeric_categories_keep_numeric_order(http_server, tmp_path):
    task, _, root = downloaded("herbarium19", http_server, tmp_path)
    data = task.load(root)
    assert data.class_names == ["0", "2", "10"]
    assert {ex.label for ex in data.train if ex.id.startswith("train/10/")} == {2}
    # image ids repeat across categories; example ids stay unique
    assert "train/0/00000.jpg" in {ex.id for ex in data.train}
    assert "train/2/00000.jpg" in {ex.id for ex in data.train}


def test_iwildcam_ids_are_file_names_and_splits_follow_metadata(http_server, tmp_path):
    task, served, root = downloaded("iwildcam", http_server, tmp_path)
    data = task.load(root)
    rows = served.extra["rows"]
    assert {ex.id for ex in data.test} == {r["filename"] for r in rows if r["split"] == "test"}
    assert {ex.id: ex.label for ex in data.train} == {
        r["filename"]: r["y"] for r in rows if r["split"] == "train"}
    assert data.class_names == ["empty", "tayassu pecari", "dasyprocta punctata", "cuniculus paca"]
    marker = json.loads((root / download.MARKER_NAME).read_text())
    assert marker["files"][0]["checksum"] == download.NO_PUBLISHED_CHECKSUM
    assert len(marker["files"][0]["sha256"]) == 64  # pinned on first download


def test_imagenet_labels_from_hub_file_names_and_classes_py(http_server, tmp_path):
    from tests.fixtures import imagenet1k as fixture

    task, served, root = downloaded("imagenet1k", http_server, tmp_path)
    data = task.load(root)
    assert data.class_names == list(fixture.CLASSES.values())
    wnids = sorted(fixture.CLASSES)
    assert [wnids[ex.label] for ex in sorted(data.test, key=lambda e: e.id)] == fixture.VAL
    assert len(data.test) == len(fixture.VAL) == 7  # every val image, no fixed n


def test_imagenet_hand_made_image_folder_loads_alike(tmp_path):
    from tests.fixtures.images import write_image

    root = tmp_path / "imagenet1k"
    for split, n in (("train", 2), ("val", 1)):
        for k, wnid in enumerate(["n01443537", "n01440764"]):
            for i in range(n):
                write_image(root / split / wnid / f"{wnid}_{i}.JPEG", k, 2, seed=i)
    download.write_marker(root, "imagenet1k", [], note="arranged by hand")
    data = get_task("imagenet1k").load(root)
    assert data.class_names == ["n01440764", "n01443537"]  # sorted wnids; no classes.py
    assert {ex.id: ex.label for ex in data.test} == {
        "val/n01443537/n01443537_0.JPEG": 1, "val/n01440764/n01440764_0.JPEG": 0}


def test_imagenet_without_login_explains_the_gated_licence(monkeypatch, tmp_path):
    import biobench.tasks.imagenet1k as imagenet_module

    monkeypatch.setattr(imagenet_module, "hub_token", lambda: None)
    with pytest.raises(DownloadError, match=r"(?s)gated.*accept the licence.*huggingface-cli login"):
        get_task("imagenet1k").download(tmp_path / "imagenet1k", progress=False)
    assert not (tmp_path / "imagenet1k").exists()


def test_imagenet_sends_the_token_to_the_hub_only(monkeypatch, tmp_path):
    import biobench.tasks.imagenet1k as imagenet_module

    seen = {}
    monkeypatch.setattr(imagenet_module, "hub_token", lambda: "hf_test")
    monkeypatch.setattr(download, "download_task",
                        lambda task, root, **kw: seen.setdefault("headers", kw["headers"]))
    get_task("imagenet1k").download(tmp_path / "a", progress=False)
    assert seen.pop("headers") == {"Authorization": "Bearer hf_test"}
    get_task("imagenet1k").download(tmp_path / "b", mirror="http://127.0.0.1:1", progress=False)
    assert seen.pop("headers") is None


def test_imagenet_refused_access_repeats_the_licence_steps(http_server, tmp_path):
    http_server.status["/datasets/ILSVRC/imagenet-1k/resolve/main/data/train_images_0.tar.gz"] = 403
    with pytest.raises(DownloadError, match=r"(?s)HTTP 403.*accept the licence"):
        get_task("imagenet1k").download(tmp_path / "imagenet1k", mirror=http_server.url, progress=False)


def test_ecdysis_scrapes_the_export_and_splits_by_visit_date(http_server, tmp_path):
    task, served, root = downloaded("ecdysis", http_server, tmp_path)
    data = task.load(root)
    assert {ex.id for ex in data.test} == served.extra["test_ids"]
    only_in_train = {data.class_names[ex.label] for ex in data.train} - {
        data.class_names[ex.label] for ex in data.test}
    assert only_in_train == {"Insecta|Diptera|Syrphidae|Toxomerus|Toxomerus marginatus"}
    marker = json.loads((root / download.MARKER_NAME).read_text())
    assert marker["n_images"] == len(served.extra["rows"])
    assert marker["files"][0]["checksum"] == download.NO_PUBLISHED_CHECKSUM
    assert len(list((root / "images").iterdir())) == len(served.extra["rows"])


def test_ecdysis_page_without_export_link_is_a_clear_error(http_server, tmp_path):
    from biobench.tasks.ecdysis import COLLECTION_PAGE
    from tests.fixtures.common import serve_at_url_path

    page = tmp_path / "page.html"
    page.write_text('<html><a href="/about">about</a></html>')
    serve_at_url_path(http_server, COLLECTION_PAGE, page)
    with pytest.raises(DownloadError, match=r"No \.csv\.zip export link found"):
        get_task("ecdysis").download(tmp_path / "ecdysis", mirror=http_server.url, progress=False)
    assert not download.is_complete(tmp_path / "ecdysis")
