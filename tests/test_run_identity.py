"""Run identity and the task-probe contract: what makes a stored run reusable, and what a
task accepts and returns."""

import os
import sqlite3
import time

import numpy as np
import pytest

import biobench.evaluate as evaluate
from biobench.config import project_root, store_path
from biobench.evaluate import run_evaluation, run_key
from biobench.features import cache_key
from biobench.names import safe_name
from biobench.probes import make_probe
from biobench.store import SCHEMA_VERSION, ResultsStore, RunKey
from biobench.tasks import Example, ImageRef, Prediction, TaskData, UnsupportedProtocol, get_task
from tests.tiny import tiny_backbone


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    return {"store": ResultsStore(tmp_path / "r.sqlite"), "data_root": tmp_path / "synthetic"}


# ---- identity: probe hyper-parameters, code version, data contents -------------------------
def test_probe_hyper_parameters_are_part_of_the_run_identity(env):
    k1 = run_evaluation(tiny_backbone(), "synthetic", protocol="knn", probe_params={"k": 1},
                        n_bootstrap=20, **env)
    k3 = run_evaluation(tiny_backbone(), "synthetic", protocol="knn", probe_params={"k": 3},
                        n_bootstrap=20, **env)
    assert not k3.reused and k1.key != k3.key
    runs = env["store"].runs("own")
    assert sorted(runs["probe_params"].map(lambda s: s.count('"k":1') + 3 * s.count('"k":3'))) == [1, 3]
    # the same settings again: read back; the defaults spelled out are the same identity
    bb = tiny_backbone()
    again = run_evaluation(bb, "synthetic", protocol="knn", probe_params={"k": 3}, n_bootstrap=20, **env)
    assert again.reused and bb.net.images_seen == 0
    task = get_task("synthetic")
    default_k = make_probe("knn").get_params()["k"]
    assert run_key("m", task, "knn", probe_params={"k": default_k}) == run_key("m", task, "knn")


def test_a_run_stored_by_other_scoring_code_is_recomputed_and_replaced(env, monkeypatch):
    first = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=20, **env)
    stored = env["store"].get_run(first.key)
    assert stored["code_version"] == evaluate.code_version(get_task("synthetic"), "simpleshot")
    monkeypatch.setattr(evaluate, "code_version", lambda task, protocol: "edited-probe-code")
    bb = tiny_backbone()
    second = run_evaluation(bb, "synthetic", n_bootstrap=20, **env)
    assert not second.reused and bb.net.images_seen == 0  # recomputed from cached features
    runs = env["store"].runs("own")
    assert len(runs) == 1 and runs.iloc[0]["code_version"] == "edited-probe-code"


def test_code_version_follows_the_task_and_probe_sources(tmp_path):
    synthetic, beluga = get_task("synthetic"), get_task("beluga")
    # different task modules: different versions; the same task and probe: the same value
    assert evaluate.code_version(synthetic, "knn") != evaluate.code_version(beluga, "knn")
    assert evaluate.code_version(synthetic, "knn") == evaluate.code_version(synthetic, "knn")
    # the probe's own module is part of it (here both probes live in one module: equal)
    probe_module = type(make_probe("knn")).__module__
    same_module = type(make_probe("simpleshot")).__module__ == probe_module
    assert (evaluate.code_version(synthetic, "simpleshot")
            == evaluate.code_version(synthetic, "knn")) is same_module


def test_changed_image_contents_make_the_stored_run_stale(env):
    first = run_evaluation(tiny_backbone(), "synthetic", n_bootstrap=20, **env)
    image = sorted((env["data_root"] / "test" / "red").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:200])  # truncated, same name, label and split
    later = time.time() + 5
    os.utime(image, (later, later))
    bb = tiny_backbone()
    with pytest.raises(Exception, match=image.name):  # not served from the store: re-read
        run_evaluation(bb, "synthetic", n_bootstrap=20, **env)
    assert env["store"].get_run(first.key)["run_id"] == first.run_id  # old run kept until replaced


# ---- the task-probe contract ---------------------------------------------------------------
def test_beluga_refuses_a_non_knn_protocol_before_reading_data(env):
    with pytest.raises(UnsupportedProtocol, match="beluga.*knn"):
        run_evaluation(tiny_backbone(), "beluga", protocol="logreg", **env)
    assert env["store"].runs().empty


def test_fungiclef_refuses_a_probe_without_distances(env):
    for protocol in ("linear_svm", "logreg", "knn"):
        with pytest.raises(UnsupportedProtocol, match="fungiclef.*simpleshot"):
            run_evaluation(tiny_backbone(), "fungiclef", protocol=protocol, **env)


def _toy(n_per_class=6, dim=4, seed=0, groups=None):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    x = rng.normal(size=(len(y), dim)) + 3 * y[:, None]
    examples = [Example(f"e{i}", (ImageRef(f"/nonexistent/{i}.png"),), int(label),
                        group=None if groups is None else groups[i]) for i, label in enumerate(y)]
    return x, y, examples


def test_fit_predict_returns_values_and_mutates_nothing():
    x, y, examples = _toy()
    data = TaskData(examples, examples, ["a", "b"], {"note": 1})
    probe = make_probe("logreg", C_grid=(1.0,))
    result = get_task("synthetic").fit_predict(probe, x, y, x, data, seed=0)
    assert isinstance(result, Prediction) and result.y_pred.shape == y.shape
    assert data.extra == {"note": 1}  # nothing passed back through the task data
    assert not hasattr(probe, "classes_")  # the caller's probe is never fitted: clones are
    assert result.extra["probe_C_"] == 1.0  # the fitted scalars come back as values


def test_beluga_uses_the_knn_probes_k_and_returns_reid_extras():
    x, y, examples = _toy()
    data = TaskData([], examples, ["a", "b"], {})
    task = get_task("beluga")
    one = task.fit_predict(make_probe("knn", k=1), None, None, x, data, seed=0)
    three = task.fit_predict(make_probe("knn", k=3), None, None, x, data, seed=0)
    assert one.extra["k"] == 1 and three.extra["k"] == 3
    assert {"top1", "top5", "map"} <= set(one.extra) and data.extra == {}


def test_cross_fitted_folds_follow_the_seed_argument():
    x, y, examples = _toy(n_per_class=10)
    rng = np.random.default_rng(1)
    x = x + rng.normal(scale=3.0, size=x.shape)  # noisy: fold assignment changes predictions
    data = TaskData([], examples, ["a", "b"], {})
    task = get_task("plankton_flowcam")
    probe = make_probe("knn", k=1)
    runs = {seed: task.fit_predict(probe, None, None, x, data, seed=seed).y_pred
            for seed in range(6)}
    np.testing.assert_array_equal(runs[0], task.fit_predict(probe, None, None, x, data, seed=0).y_pred)
    assert any(not np.array_equal(runs[0], runs[s]) for s in range(1, 6))


# ---- names safe for paths, cache keys, the one store path ----------------------------------
@pytest.mark.parametrize("name", ["open_clip:hf-hub:org/repo", "timm:resnet50@/w/x.safetensors",
                                  "folder:/home/me/my images", "../../etc", "a" * 300])
def test_safe_name_has_no_path_separators_and_keeps_names_apart(name):
    safe = safe_name(name)
    assert "/" not in safe and "\\" not in safe and ":" not in safe and not safe.startswith(".")
    assert len(safe) <= 80
    assert safe_name(name + "x") != safe


def test_safe_name_leaves_plain_names_alone():
    for name in ("mobilenet_v2", "efficientnet_lite0", "plankton_flowcam", "random_tiny-seed1"):
        assert safe_name(name) == name
    # the slug alone would collide; the hash keeps them apart
    assert safe_name("org/repo") != safe_name("org:repo")


def test_feature_cache_key_separates_precision_and_device_class():
    _, _, examples = _toy()
    key = lambda device: cache_key("m", "pre", "t", "test", "mean", examples, False, device)  # noqa: E731
    assert key("cuda") == key("cuda:1")  # which GPU does not matter
    assert key("cpu") != key("cuda")  # fp32 on a CPU and fp16 autocast on a GPU never mix


def test_store_path_is_resolved_in_one_place_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOBENCH_STORE", raising=False)
    (tmp_path / "_config.yml").write_text("")
    (tmp_path / "_toc.yml").write_text("")
    nested = tmp_path / "book" / "runs" / "task"
    nested.mkdir(parents=True)
    assert project_root(nested) == tmp_path
    assert store_path(nested) == tmp_path / "results" / "biobench.sqlite"
    monkeypatch.chdir(nested)
    monkeypatch.setenv("BIOBENCH_STORE", "relative.sqlite")
    assert store_path() == nested / "relative.sqlite" and store_path().is_absolute()


def test_an_old_schema_store_is_moved_aside_not_mixed(tmp_path):
    old = tmp_path / "old.sqlite"
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE runs (run_id INTEGER PRIMARY KEY, model TEXT)")
    con.execute("INSERT INTO runs (model) VALUES ('m')")
    con.commit()
    con.close()
    with pytest.warns(UserWarning, match="older biobench"):
        store = ResultsStore(old)
    assert store.runs().empty and (tmp_path / "old.sqlite.v0.bak").is_file()
    con = sqlite3.connect(old)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    ResultsStore(old)  # the current schema opens without a warning or a move
    assert not (tmp_path / "old.sqlite.v2.bak").exists()


def test_run_key_where_selects_exactly_one_identity(tmp_path):
    from biobench.store import RunRecord

    store = ResultsStore(tmp_path / "s.sqlite")
    a = RunKey("m", "t", "knn", probe_params='{"k":1}')
    b = RunKey("m", "t", "knn", probe_params='{"k":3}')
    store.save_run(RunRecord(a, "macro_f1", 0.1))
    store.save_run(RunRecord(b, "macro_f1", 0.3))
    assert store.get_run(a)["score"] == 0.1 and store.get_run(b)["score"] == 0.3
    store.save_run(RunRecord(a, "macro_f1", 0.2), replace=True)
    assert store.get_run(a)["score"] == 0.2 and store.get_run(b)["score"] == 0.3


# ---- a model name with slashes, end to end ---------------------------------------------------
def _fake_hub_repo(cache: "os.PathLike", repo: str, arch: str) -> None:
    """An open_clip repo in the Hugging Face cache layout (refs/main -> snapshot), as a first
    download leaves it, holding a randomly initialised small CLIP and its config."""
    import json
    from pathlib import Path

    import open_clip
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    model = open_clip.create_model(arch, pretrained_text=False)
    config = {"model_cfg": open_clip.get_model_config(arch),
              "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(snapshot / "open_clip_model.safetensors"))


@pytest.mark.slow
def test_a_hub_model_name_with_slashes_runs_and_its_paths_hold_no_slash(tmp_path):
    import subprocess
    import sys

    from biobench import grid as G

    name = "open_clip:hf-hub:test-org/tiny-clip"
    hub = tmp_path / "hub"
    _fake_hub_repo(hub, "test-org/tiny-clip", "ViT-S-32-alt")
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "BIOBENCH_FEATURES": str(tmp_path / "features"),
           "BIOBENCH_STORE": str(tmp_path / "store.sqlite")}
    done = subprocess.run([sys.executable, "-m", "biobench.cli", "run", "--model", name,
                           "--task", "synthetic", "--n-bootstrap", "20"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = ResultsStore(tmp_path / "store.sqlite").runs("own")
    assert list(run["model"]) == [name]  # the store keeps the real name
    # the cache holds one folder for the model, named without the name's slashes
    (model_dir,) = (tmp_path / "features").iterdir()
    assert model_dir.name == safe_name(name) and "/" not in model_dir.name
    assert {p.name for p in model_dir.iterdir()} == {"synthetic"}
    # and its run page goes to one file directly under the task's folder
    (cell,) = G.parse_grid({"models": [name], "tasks": ["synthetic"]}, "g.toml",
                           check_names=False).cells()
    page = cell.notebook_path(tmp_path / "runs")
    assert page.parent == tmp_path / "runs" / "synthetic" and page.name == f"{safe_name(name)}.ipynb"
