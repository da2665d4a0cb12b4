"""The six BioBench tasks whose protocol goes beyond "one image, one label": FishNet,
FungiCLEF, Beluga, NeWT, KABR and MammalNet. Each runs end to end on a fixture in its real
layout, served from a local HTTP server; then each protocol's specific rules are checked, with
one test per reference pitfall that the reference's behaviour would fail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from biobench import download, metrics, stats
from biobench.evaluate import run_evaluation
from biobench.probes import KNNProbe, SimpleShotProbe, make_probe
from biobench.store import ResultsStore
from biobench.tasks import Example, TaskDataMissing, get_task, subsample_train
from tests.fixtures.beluga import serve_beluga, write_beluga
from tests.fixtures.fishnet import HEADER, serve_fishnet, write_fishnet
from tests.fixtures.fungiclef import POISONOUS, serve_fungiclef, write_fungiclef
from tests.fixtures.kabr import serve_kabr, write_kabr
from tests.fixtures.mammalnet import serve_mammalnet
from tests.fixtures.newt import serve_newt, write_newt

SERVERS = {"fishnet": serve_fishnet, "fungiclef": serve_fungiclef, "beluga": serve_beluga,
           "newt": serve_newt, "kabr": serve_kabr, "mammalnet": serve_mammalnet}
# FishNet's default (9 cross-validated logistic regressions) takes ~30 s on the fixture; its
# per-trait logistic path is covered by test_fishnet_constant_trait_is_predicted_as_its_only_value
E2E_PROTOCOL = {"fishnet": "simpleshot"}


def mark_complete(root, task_name):
    """A fixture written straight to disk (no download) gets the marker a download writes."""
    download.write_marker(root, task_name, [])
    return root


# ---- end to end: download from 127.0.0.1, load, features, probe, metric, store row ----------
@pytest.mark.parametrize("name", sorted(SERVERS))
def test_end_to_end_from_local_server(name, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    expected = SERVERS[name](http_server, tmp_path / "served")
    task = get_task(name)
    root = tmp_path / "data" / name
    task.download(root, mirror=http_server.url, progress=False)
    assert download.is_complete(root) and task.is_present(root)
    assert all(r.headers.get("Host", "").startswith("127.0.0.1") for r in http_server.requests)
    data = task.load(root)
    store = ResultsStore(tmp_path / "results.sqlite")
    result = run_evaluation("random_tiny", task, data_root=root, store=store, n_bootstrap=50,
                            protocol=E2E_PROTOCOL.get(name))
    row = store.get_run(result.key)
    assert row["n_test"] == len(data.test) == expected["n_test"] > 0
    assert row["metric"] == task.metric_name
    assert 0.0 <= row["score"] <= 1.0 and row["ci_low"] <= row["ci_high"]
    assert row["score"] == pytest.approx(task.score(result.y_true, result.y_pred))
    assert len(store.predictions(result.run_id)) == len(data.test)


# ---- every task: missing or partial data, clear errors, nothing in the store --------------
@pytest.mark.parametrize("name", sorted(SERVERS))
def test_missing_folder_names_the_download_command(name, tmp_path):
    with pytest.raises(TaskDataMissing, match=f"biobench download {name}"):
        get_task(name).load(tmp_path / "nothing-here")


WRITERS = {"fishnet": write_fishnet, "fungiclef": write_fungiclef, "beluga": write_beluga,
           "newt": write_newt, "kabr": write_kabr}


def on_disk(name, tmp_path):
    """(task, data folder, what the fixture wrote) for a fixture written straight to disk."""
    root = tmp_path / name
    expected = WRITERS[name](root)
    return get_task(name), mark_complete(root, name), expected


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_folder_without_completion_marker_is_not_present(name, tmp_path):
    root = tmp_path / name
    WRITERS[name](root)  # every file there, but no download finished
    task = get_task(name)
    assert not task.is_present(root)
    with pytest.raises(TaskDataMissing, match="did not finish"):
        task.load(root)
    assert task.load(mark_complete(root, name)).test


def test_corrupt_image_is_named_and_leaves_no_store_row(tmp_path, monkeypatch):
    from biobench.images import UnreadableImage

    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    _, root, _ = on_disk("beluga", tmp_path)
    bad = sorted((root / "beluga.coco" / "images" / "train2022").glob("*.jpg"))[3]
    bad.write_bytes(b"not a jpeg")
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(UnreadableImage, match=bad.name):
        run_evaluation("random_tiny", "beluga", data_root=root, store=store, n_bootstrap=10)
    assert store.runs().empty


# ---- FishNet --------------------------------------------------------------------------------
def test_fishnet_fixture_has_the_column_positions_of_the_spec():
    # spec positions (counting from 1): image 4, Folder 13, the nine traits 15-23
    assert HEADER[4 - 1] == "image" and HEADER[13 - 1] == "Folder"
    assert HEADER[15 - 1:23] == ["FeedingPath", "Tropical", "Temperate", "Subtropical", "Boreal",
                                 "Polar", "freshwater", "saltwater", "brackish"]


def test_fishnet_loader_drops_rows_with_any_missing_trait(tmp_path):
    task, root, expected = on_disk("fishnet", tmp_path)
    data = task.load(root)
    for split in ("train", "test"):
        assert len(getattr(data, split)) == expected[split]["kept"]
        assert data.extra["dropped_rows"][split] == expected[split]["dropped"]
    labels = task.labels_array(data.test)
    assert labels.shape == (len(data.test), 9) and set(np.unique(labels)) == {0, 1}
    # pelagic = 1 in the first trait; the image path is Image_Library/<Folder>/<basename>
    sparidae = [ex for ex in data.train if "/Sparidae/" in ex.id]
    assert all(ex.label[0] == 1 for ex in sparidae)
    assert all(ex.images[0].path.is_file() for ex in data.train + data.test)


def test_fishnet_columns_are_picked_by_name(tmp_path):
    import pandas as pd

    task, root, _ = on_disk("fishnet", tmp_path)
    before = task.load(root)
    csv = root / "train.csv"
    frame = pd.read_csv(csv)
    frame[list(reversed(frame.columns))].to_csv(csv, index=False)  # every column moved
    after = task.load(root)
    assert [(e.id, e.label) for e in after.train] == [(e.id, e.label) for e in before.train]


class _FixedProbability:
    """A probe whose P(present) is 0.55 for every image: logit 0.2."""

    classes_ = np.array([0, 1])

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return np.tile([0.45, 0.55], (len(X), 1))

    def get_params(self, deep=True):
        return {}


def test_fishnet_thresholds_probabilities_not_logits():
    from biobench.tasks.fishnet import predict_traits

    train_y = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    pred = predict_traits(_FixedProbability(), np.zeros((4, 2)), train_y, np.zeros((3, 2)))
    # p = 0.55 >= 0.5 is "present"; the reference's logit > 0.5 (here 0.2) would say absent
    assert np.log(0.55 / 0.45) < 0.5
    assert (pred == 1).all()


def test_fishnet_constant_trait_is_predicted_as_its_only_value():
    from biobench.tasks.fishnet import predict_traits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    y = np.stack([(x[:, 0] > 0).astype(int), np.ones(20, int)], axis=1)
    pred = predict_traits(make_probe("logreg", C_grid=(1.0,)), x, y, x)
    assert (pred[:, 1] == 1).all() and (pred[:, 0] == y[:, 0]).mean() > 0.9


def test_fishnet_bootstrap_resamples_all_traits_of_an_image_together():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, size=(60, 9))
    y_pred = np.where(rng.random((60, 9)) < 0.75, y_true, 1 - y_true)
    score = get_task("fishnet").score
    ours = stats.bootstrap_replicates(score, y_true, [y_pred], n_bootstrap=200, seed=0)[0]
    idx = stats.resample_indices(len(y_true), 200, seed=0)
    whole_rows = [score(y_true[r], y_pred[r]) for r in idx]
    np.testing.assert_allclose(ours, whole_rows)

    def trait0_only(rows):  # the reference: resample trait 0, keep the other traits fixed
        t, p = y_true.copy(), y_pred.copy()
        t[:, 0], p[:, 0] = y_true[rows, 0], y_pred[rows, 0]
        return score(t, p)

    reference = np.array([trait0_only(r) for r in idx])
    assert reference.std() < 0.5 * ours.std()  # too narrow an interval
    interval = stats.bootstrap_ci(score, y_true, y_pred, n_bootstrap=200)
    assert interval.contains_estimate


# ---- FungiCLEF ------------------------------------------------------------------------------
def test_importing_tasks_needs_no_network_and_no_data(tmp_path):
    """The reference fetched the poison list at import; here import works offline."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used at import')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import biobench.tasks\n"
        "task = biobench.tasks.get_task('fungiclef')\n"
        "assert task.poisonous_ids is None\n"
        "print('ok')\n"
    )
    env = {"BIOBENCH_HOME": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_fungiclef_reads_poison_list_and_pools_observations(tmp_path):
    task, root, expected = on_disk("fungiclef", tmp_path)
    with pytest.raises(RuntimeError, match="load"):
        task.labels_array([])
    data = task.load(root)
    assert task.poisonous_ids == frozenset(POISONOUS)
    assert len(data.train) == expected["n_train"]
    assert {ex.id: ex.label for ex in data.test} == expected["test_truths"]
    assert sum(len(ex.images) for ex in data.test) == expected["n_test_images"]
    assert max(len(ex.images) for ex in data.test) == 2  # an observation with two photos
    labels = task.labels_array(data.test)
    assert labels.shape == (len(data.test), 2)
    assert ((labels[:, 1] == 1) == np.isin(labels[:, 0], list(POISONOUS))).all()
    assert (labels[:, 0] == -1).sum() == data.extra["n_unknown_observations"] > 0


def _clusters(centres, per_class, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.normal(size=(per_class, len(c))) for c in centres])
    return x


def test_fungiclef_unknown_quantile_is_a_real_parameter(tmp_path):
    from biobench.tasks.fungiclef import FungiCLEF

    task, root, _ = on_disk("fungiclef", tmp_path)
    data = task.load(root)
    centres = np.eye(4)[:3] * 3
    train_x = _clusters(centres, 10)
    train_y = task.with_poison_flag(np.repeat([0, 2, 5], 10))
    test_x = _clusters(centres, 10, seed=1, spread=0.08)
    predicted_unknown = []
    for q in (0.5, 0.95, 1.0):
        t = FungiCLEF(unknown_quantile=q)
        t.poisonous_ids = task.poisonous_ids
        result = t.fit_predict(SimpleShotProbe(), train_x, train_y, test_x, data, seed=0)
        pred = result.y_pred
        predicted_unknown.append(int((pred[:, 0] == -1).sum()))
        assert result.extra["unknown_quantile"] == q
        assert result.extra["n_predicted_unknown"] == predicted_unknown[-1]
    assert predicted_unknown[0] > predicted_unknown[1] >= predicted_unknown[2]


def test_fungiclef_threshold_is_the_quantile_of_training_distances():
    from biobench.tasks._open_set import OpenSetCentroids

    x = _clusters(np.eye(3) * 2, 8)
    y = np.repeat([0, 2, 5], 8)
    model = OpenSetCentroids(SimpleShotProbe(), quantile=0.9).fit(x, y)
    # by hand: centre on the train mean, L2-normalise, class centroids, squared distances
    z = x - x.mean(axis=0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    centroids = np.stack([z[y == c].mean(axis=0) for c in (0, 2, 5)])
    nearest = ((z[:, None] - centroids[None]) ** 2).sum(axis=2).min(axis=1)
    assert model.threshold_ == pytest.approx(np.quantile(nearest, 0.9))
    far = np.array([[-2.0, -2.0, -2.0]])
    assert model.predict(far)[0] == -1


def test_fungiclef_simpleshot_handles_gaps_in_class_ids(tmp_path):
    task, root, _ = on_disk("fungiclef", tmp_path)
    data = task.load(root)
    centres = np.eye(3) * 3
    train_x = _clusters(centres, 10)
    train_y = task.with_poison_flag(np.repeat([0, 2, 5], 10))  # no class 1, 3 or 4
    test_x = _clusters(centres, 5, seed=2)
    pred = task.fit_predict(SimpleShotProbe(), train_x, train_y, test_x, data, seed=0).y_pred
    known = pred[:, 0] != -1
    assert known.mean() > 0.6
    np.testing.assert_array_equal(pred[known, 0], np.repeat([0, 2, 5], 5)[known])
    np.testing.assert_array_equal(pred[:, 1], np.isin(pred[:, 0], [2]).astype(int))


def test_fungiclef_refuses_a_probe_without_distances(tmp_path):
    task, root, _ = on_disk("fungiclef", tmp_path)
    data = task.load(root)
    train_y = task.with_poison_flag([0, 2, 5, 0, 2, 5])
    with pytest.raises(ValueError, match="simpleshot"):
        task.fit_predict(KNNProbe(k=1), np.eye(6), train_y, np.eye(6), data, seed=0)


# ---- Beluga ---------------------------------------------------------------------------------
def _unit(degrees):
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_beluga_query_is_not_its_own_neighbour():
    from biobench.tasks.beluga import leave_one_out_knn

    # query A at 0 degrees; others: B at 10, A at 20, B at 30 (and far away points)
    x = _unit(np.array([0, 10, 20, 30, 180, 190]))
    labels = np.array([0, 1, 0, 1, 2, 2])
    preds, _ = leave_one_out_knn(x, labels, k=3)
    # excluding itself, the query's 3 nearest are B, A, B -> B; counting itself would give A
    assert preds[0] == 1


def test_beluga_leave_one_out_matches_sklearn_neighbours():
    from sklearn.neighbors import KNeighborsClassifier

    from biobench.tasks.beluga import leave_one_out_knn

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)) + np.repeat(rng.normal(size=(2, 6)) * 2, 20, axis=0)
    labels = np.repeat([0, 1], 20)
    for k in (1, 3):  # odd k, two classes: no voting ties
        preds, _ = leave_one_out_knn(x, labels, k=k)
        for i in range(len(x)):
            others = np.arange(len(x)) != i
            ref = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(x[others], labels[others])
            assert preds[i] == ref.predict(x[i:i + 1])[0]


def test_beluga_reid_scores_by_hand():
    from biobench.tasks.beluga import leave_one_out_knn

    # on a circle: whale A at 0 and 12 degrees, whale B at 20 and 100 degrees
    x = _unit(np.array([0, 12, 20, 100]))
    labels = np.array([0, 0, 1, 1])
    _, reid = leave_one_out_knn(x, labels, k=1)
    # ranked others (nearest first) and the rank of the same whale:
    #   0 deg: 12(A) 20 100 -> 1;   12 deg: 20 0(A) 100 -> 2
    #  20 deg: 12 0 100(B) -> 3;   100 deg: 20(B) 12 0 -> 1
    assert reid["top1"] == pytest.approx(2 / 4)
    assert reid["top5"] == 1.0
    assert reid["map"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)


def test_beluga_layout_labels_and_default_k(tmp_path):
    task, root, expected = on_disk("beluga", tmp_path)
    data = task.load(root)
    assert data.train == [] and len(data.test) == expected["n_images"]
    assert data.class_names == expected["individuals"]
    assert all(ex.group == data.class_names[ex.label] for ex in data.test)
    assert all(ex.id.isdigit() for ex in data.test)  # the COCO image_id
    # the docstring's k is the code's k (the reference's docstring said 1, its code used 5)
    assert "k = 5" in sys.modules[type(task).__module__].__doc__
    assert make_probe(task.default_probe).k == 5
    x = np.eye(len(data.test))[:, :8] + 0.01
    assert task.fit_predict(make_probe("knn"), None, None, x, data, seed=0).extra["k"] == 5


def test_beluga_rejects_an_image_with_two_annotations(tmp_path):
    _, root, _ = on_disk("beluga", tmp_path)
    coco_file = root / "beluga.coco" / "annotations" / "instances_train2022.json"
    coco = json.loads(coco_file.read_text())
    coco["annotations"].append(dict(coco["annotations"][0], id=1))
    coco_file.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="exactly one annotation"):
        get_task("beluga").load(root)


# ---- NeWT -----------------------------------------------------------------------------------
def test_newt_groups_are_tasks_and_probe_is_a_linear_svm(tmp_path):
    task, root, expected = on_disk("newt", tmp_path)
    data = task.load(root)
    assert len(data.test) == expected["n_test"]
    per_task = {g: sum(ex.group == g for ex in data.test) for g in expected["test_per_task"]}
    assert per_task == expected["test_per_task"]
    assert len({ex.id for ex in data.train + data.test}) == len(data.train + data.test)
    probe = make_probe(task.default_probe)
    assert probe.C == 1.0 and "SVM" in type(probe).__name__


def test_newt_fit_predict_matches_a_per_task_svm_by_hand(tmp_path):
    from sklearn.preprocessing import normalize
    from sklearn.svm import LinearSVC

    task, root, _ = on_disk("newt", tmp_path)
    data = task.load(root)
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(len(data.train), 5)) + 3
    test_x = rng.normal(size=(len(data.test), 5)) + 3
    train_y = task.labels_array(data.train)
    result = task.fit_predict(make_probe("linear_svm"), train_x, train_y, test_x, data, seed=0)
    ours = result.y_pred
    expected = np.zeros(len(data.test), int)
    for g in {ex.group for ex in data.test}:
        tr = np.array([ex.group == g for ex in data.train])
        te = np.array([ex.group == g for ex in data.test])
        mean = normalize(train_x[tr]).mean(axis=0)
        svm = LinearSVC(C=1.0, max_iter=10000, random_state=0)
        svm.fit(normalize(normalize(train_x[tr]) - mean), train_y[tr])
        expected[te] = svm.predict(normalize(normalize(test_x[te]) - mean))
    np.testing.assert_array_equal(ours, expected)
    reported = result.extra
    y_true = task.labels_array(data.test)
    for g, acc in reported["per_task_accuracy"].items():
        in_g = np.array([ex.group == g for ex in data.test])
        assert acc == pytest.approx(np.mean(ours[in_g] == y_true[in_g]))
    assert reported["mean_task_accuracy"] == pytest.approx(np.mean(list(reported["per_task_accuracy"].values())))


def test_newt_accuracy_is_pooled_not_a_mean_of_tasks(tmp_path):
    task, root, _ = on_disk("newt", tmp_path)
    data = task.load(root)
    big, small = "behavior_ml_egret_feeding", "context_urban_vs_rural_fox"  # 8 and 2 test images
    keep = [ex for ex in data.test if ex.group in (big, small)]
    y_true = task.labels_array(keep)
    in_big = np.array([ex.group == big for ex in keep])
    y_pred = np.where(in_big, y_true, 1 - y_true)  # big task all right, small task all wrong
    assert task.score(y_true, y_pred) == pytest.approx(8 / 10)  # pooled over images
    per_task = [metrics.accuracy(y_true[m], y_pred[m]) for m in (in_big, ~in_big)]
    assert np.mean(per_task) == pytest.approx(0.5)  # what a mean of tasks would report


# ---- KABR -----------------------------------------------------------------------------------
def test_kabr_clip_sampling_stride_and_seed():
    from biobench.tasks.kabr import clip_frame_indices

    rng = np.random.default_rng
    long = clip_frame_indices(200, rng(0))
    assert len(long) == 16 and np.all(np.diff(long) == 5)
    assert np.all(np.diff(clip_frame_indices(40, rng(0))) == 2)  # (40 - 1) // 15 = 2
    assert clip_frame_indices(16, rng(0)) == list(range(16))
    assert clip_frame_indices(200, rng(0)) == long  # deterministic
    starts = {clip_frame_indices(200, rng(s))[0] for s in range(10)}
    assert len(starts) > 1  # the seed moves the start
    with pytest.raises(ValueError):
        clip_frame_indices(15, rng(0))


def test_kabr_clips_labels_and_dropped_short_clips(tmp_path):
    from biobench.tasks.kabr import KABR

    task, root, expected = on_disk("kabr", tmp_path)
    data = task.load(root)
    assert {ex.id: ex.label for ex in data.test} == expected["val"]["labels"]
    assert {ex.id: ex.label for ex in data.train} == expected["train"]["labels"]
    assert data.extra["clips_dropped_under_16_frames"] == {"train": expected["train"]["dropped"],
                                                           "test": expected["val"]["dropped"]}
    assert all(len(ex.images) == 16 for ex in data.train + data.test)
    assert data.class_names[:3] == ["Walk", "Graze", "Browse"]
    # same seed, same frames; another seed moves the start of a long clip
    again = task.load(root)
    assert [ex.images for ex in again.test] == [ex.images for ex in data.test]
    other = KABR(frame_seed=7).load(root)
    assert [ex.images for ex in other.test] != [ex.images for ex in data.test]


def test_kabr_features_are_max_pooled_over_frames(tmp_path):
    from biobench.features import extract_features
    from tests.tiny import tiny_backbone

    task, root, _ = on_disk("kabr", tmp_path)
    clip = task.load(root).test[0]
    # the docstring says what the code does (the reference's said mean pooling)
    doc = sys.modules[type(task).__module__].__doc__
    assert task.pooling == "max" and "max-pooled" in doc
    assert task.default_probe == "logreg" and "logistic" in doc
    pooled = extract_features(tiny_backbone(), [clip], task_name="kabr", split="test",
                              pooling=task.pooling, cache=False)
    frames = [Example(f"{clip.id}/{i}", (ref,), clip.label) for i, ref in enumerate(clip.images)]
    single = extract_features(tiny_backbone(), frames, task_name="kabr", split="frames",
                              pooling="mean", cache=False)
    np.testing.assert_allclose(pooled.x[0], single.x.max(axis=0), atol=1e-6)


def test_kabr_subsampling_with_n_train_works(tmp_path, monkeypatch):
    """The reference crashed for n_train > 0."""
    from tests.tiny import tiny_backbone

    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    task, root, _ = on_disk("kabr", tmp_path)
    data = task.load(root)
    picked = subsample_train(data.train, 3, seed=0)
    assert sorted(ex.label for ex in picked) == [0, 1, 2]
    result = run_evaluation(tiny_backbone(), task, data_root=root, n_train=3, protocol="simpleshot",
                            store=ResultsStore(tmp_path / "r.sqlite"), n_bootstrap=20)
    assert result.n_train_used == 3


def test_kabr_bad_md5_is_refused_and_interrupted_part_resumes(http_server, tmp_path):
    from biobench.tasks.kabr import BASE_URL, IMAGE_DIR, part_names
    from urllib.parse import urlsplit

    serve_kabr(http_server, tmp_path / "served")
    task = get_task("kabr")
    root = tmp_path / "kabr"
    part = urlsplit(f"{BASE_URL}{IMAGE_DIR}/{part_names('giraffes')[1]}").path
    original = (http_server.root / part.lstrip("/")).read_bytes()
    http_server.add(part, original[:-1] + bytes([original[-1] ^ 0xFF]))  # one byte changed
    with pytest.raises(download.DownloadError, match="md5"):
        task.download(root, mirror=http_server.url, progress=False)
    assert not download.is_complete(root) and not task.is_present(root)
    assert not list((root / download.DOWNLOADS_DIR).glob("giraffes_part_*"))
    # the source is fixed; the next attempt is cut mid-transfer once and resumes with a Range
    http_server.add(part, original)
    http_server.cut_after, http_server.cut_count = 5, 1
    task.download(root, mirror=http_server.url, progress=False)
    assert download.is_complete(root)
    assert http_server.range_requests()
    assert len(task.load(root).test) == 3


# ---- MammalNet and the ffmpeg helpers -------------------------------------------------------
def test_video_helpers_trim_count_and_sample_uniformly(tmp_path):
    from biobench import video
    from tests.fixtures.mammalnet import encode_video

    # frame i has grey level 8 i: sampled frames reveal which indices were taken
    levels = np.arange(30) * 8
    frames = np.repeat(levels[:, None, None, None], 32 * 48 * 3).reshape(30, 32, 48, 3).astype(np.uint8)
    source = encode_video(frames, tmp_path / "ramp.mp4", fps=10)
    assert video.count_frames(source) == 30
    clip = video.trim_clip(source, tmp_path / "clip.mp4", 1.0, 2.5)
    assert abs(video.count_frames(clip) - 15) <= 1
    out = video.sample_frames(source, tmp_path / "frames" / "ramp", n_frames=5)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_0{i}.jpg" for i in range(1, 6)]
    from PIL import Image

    brightness = [np.asarray(Image.open(out / n)).mean() for n in names]
    expected = [8 * i for i in video.uniform_frame_indices(30, 5)]  # frames 3, 9, 15, 21, 27
    np.testing.assert_allclose(brightness, expected, atol=6)
    # idempotent: a finished folder is not rewritten
    stamp = (out / names[0]).stat().st_mtime_ns
    video.sample_frames(source, out, n_frames=5)
    assert (out / names[0]).stat().st_mtime_ns == stamp
    # a clip shorter than the frame count repeats frames rather than writing fewer
    short = video.sample_frames(clip, tmp_path / "frames" / "short", n_frames=32)
    assert len(list(short.iterdir())) == 32


def test_video_sampling_is_atomic(tmp_path, monkeypatch):
    from biobench import video
    from tests.fixtures.mammalnet import encode_video

    source = encode_video(np.zeros((12, 32, 48, 3), np.uint8), tmp_path / "v.mp4")
    real_run = video.run_ffmpeg

    def dies_after_writing(args, *, what):
        out = real_run(args, what=what)
        if any(str(a).startswith("select=") for a in args):  # the frame-writing call
            raise video.VideoError("killed after writing frames")
        return out

    monkeypatch.setattr(video, "run_ffmpeg", dies_after_writing)
    with pytest.raises(video.VideoError):
        video.sample_frames(source, tmp_path / "frames" / "v", n_frames=4)
    assert (tmp_path / "frames").is_dir()  # it got as far as writing
    assert list((tmp_path / "frames").iterdir()) == []  # no final and no temporary folder


def test_mammalnet_segments_name_clips_like_the_trimmed_release():
    from biobench.tasks.mammalnet import clip_segments

    clips = clip_segments({"abc": {"annotations": [{"segment": [1, 2]}, {"segment": [3, 4.5]}]},
                           "xyz": {"annotations": [{"segment": ["0.5", "2"]}]}})
    assert clips == {"abc_1": ("abc", 1.0, 2.0), "abc_2": ("abc", 3.0, 4.5), "xyz": ("xyz", 0.5, 2.0)}


def test_mammalnet_unavailable_clips_are_counted_and_other_gaps_are_errors(http_server, tmp_path):
    import shutil

    expected = serve_mammalnet(http_server, tmp_path / "served")
    task = get_task("mammalnet")
    root = tmp_path / "mammalnet"
    task.download(root, mirror=http_server.url, progress=False)
    unavailable = json.loads((root / "frames" / "unavailable.json").read_text())
    assert sorted(unavailable) == expected["unavailable"]
    assert "not in the archive" in next(iter(unavailable.values()))
    data = task.load(root)
    assert {ex.id: ex.label for ex in data.test} == expected["test"]
    assert {ex.id: ex.label for ex in data.train} == expected["train"]
    assert data.extra["unavailable_clips_dropped"] == {"train": 0, "test": 1}
    assert all(len(ex.images) == 32 for ex in data.train + data.test)
    assert data.class_names == ["eat food", "groom"] and task.pooling == "max"
    # a clip whose frames vanished is not silently dropped ...
    gone = data.test[0].id
    shutil.rmtree(root / "frames" / gone)
    with pytest.raises(TaskDataMissing, match=gone):
        task.load(root)
    # ... and running the download again rebuilds only it (archives are not fetched again)
    gets_before = len(http_server.gets())
    task.download(root, mirror=http_server.url, progress=False)
    assert len(http_server.gets()) == gets_before
    assert {ex.id for ex in task.load(root).test} == set(expected["test"])
