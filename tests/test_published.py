"""The published leaderboard: locating, fetching (local server only), validating, importing."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest

from biobench import cli, published
from biobench.store import ResultsStore, RunKey, RunRecord

SHARED_COPY = Path(__file__).parents[2] / "shared" / "reference" / "biobench_results.json"
needs_shared_copy = pytest.mark.skipif(
    not SHARED_COPY.is_file(),
    reason=f"the shared copy of the published leaderboard is not at {SHARED_COPY}",
)
URL_PATH = f"/{published.PUBLISHED_REPO}/{published.PUBLISHED_COMMIT}/docs/data/results.json"


@pytest.fixture()
def isolated(monkeypatch, tmp_path):
    """No path setting, a private cache folder, and a store of our own."""
    monkeypatch.delenv(published.PATH_ENV, raising=False)
    monkeypatch.delenv(published.URL_ENV, raising=False)
    monkeypatch.setenv("BIOBENCH_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="module")
def leaderboard() -> published.Published:
    if not SHARED_COPY.is_file():
        pytest.skip(f"the shared copy of the published leaderboard is not at {SHARED_COPY}")
    return published.load_published(SHARED_COPY)


@pytest.fixture(scope="module")
def imported_store(leaderboard, tmp_path_factory) -> ResultsStore:
    """One import shared by the read-only tests (an import writes 1,096 runs: ~2 s)."""
    store = ResultsStore(tmp_path_factory.mktemp("published_store") / "store.sqlite")
    assert published.import_published(store, leaderboard) == 1096
    return store


def _raw() -> dict:
    return json.loads(SHARED_COPY.read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(raw))
    return path


def _small_file(tmp_path: Path, n_models: int = 3) -> Path:
    """A valid file with the first few models only: for plumbing tests, where a full import
    (one transaction per run) would only cost time."""
    raw = _raw()
    keep = {m["ckpt"] for m in raw["models"][:n_models]}
    raw["models"] = [m for m in raw["models"] if m["ckpt"] in keep]
    raw["results"] = [r for r in raw["results"] if r["model"] in keep]
    best = {}
    for r in raw["results"]:
        if r["task"] not in best or r["mean"] > best[r["task"]]["mean"]:
            best[r["task"]] = r
    raw["bests"] = [{"task": t, "best": r["model"], "ties": [r["model"]]} for t, r in best.items()]
    return _write(tmp_path, raw)


def _copy_store(store: ResultsStore, path: Path) -> ResultsStore:
    with sqlite3.connect(store.path) as source, sqlite3.connect(path) as target:
        source.backup(target)
    return ResultsStore(path)


# ---- the file as the spec describes it -----------------------------------------------------------
@needs_shared_copy
def test_shared_copy_is_the_pinned_file(leaderboard):
    assert leaderboard.sha256 == published.PUBLISHED_SHA256
    assert leaderboard.notes == ()


@needs_shared_copy
def test_tables_have_the_spec_shape(leaderboard):
    assert len(leaderboard.models) == 85
    assert len(leaderboard.results) == 1096
    assert len(leaderboard.bests) == 13
    assert leaderboard.tasks.groupby("group").size().to_dict() == {"benchmark": 10, "prior_work": 3}
    assert leaderboard.meta["n_bootstraps"] == 500 and leaderboard.meta["alpha"] == 0.05
    families = leaderboard.models["family"].value_counts().to_dict()
    assert families == {"SigLIP2": 13, "AIMv2": 12, "CNN": 10, "Perception Encoder": 9, "SigLIP": 8,
                        "OpenVision": 7, "cv4ecology": 6, "CLIP": 4, "DINOv2": 4, "SAM2": 4,
                        "DINOv3": 3, "MetaCLIP 2": 2, "V-JEPA": 2, "ViT": 1}
    assert leaderboard.models["release"].isna().sum() == 11
    coverage = leaderboard.results.groupby("task").size()
    assert coverage["ecdysis"] == 82
    assert set(coverage[coverage == 85].index) == {
        "beluga", "fishnet", "herbarium19", "iwildcam", "kabr", "mammalnet"}
    assert set(coverage[coverage == 84].index) == {
        "imagenet1k", "newt", "inat21", "fungiclef", "plankton", "plantnet"}


@needs_shared_copy
def test_bests_and_ties(leaderboard):
    bests = leaderboard.bests.set_index("task")
    assert bests.loc["imagenet1k", "best"] == "PE-Core-bigG-14-448/meta"
    assert set(bests.loc["imagenet1k", "ties"]) == {"PE-Core-bigG-14-448/meta",
                                                    "ViT-gopt-16-SigLIP2-384/webli"}
    assert bests.loc["beluga", "ties"] == ("vith16",)
    assert len(bests.loc["kabr", "ties"]) == 4
    assert len(bests.loc["plankton", "ties"]) == 27
    assert len(leaderboard.ties_with_best()) == sum(map(len, bests["ties"]))


# ---- validation ----------------------------------------------------------------------------------
@needs_shared_copy
@pytest.mark.parametrize("corrupt, words", [
    (lambda raw: raw.pop("bests"), "missing top-level keys bests"),
    (lambda raw: raw["results"][0].pop("ci_low"), "lacks ci_low"),
    (lambda raw: raw["results"][3].update(mean=1.7), "'mean' must be a number in [0, 1]"),
    (lambda raw: raw["results"][3].update(model="no-such-model"), "unlisted models: no-such-model"),
    (lambda raw: raw["results"].append(dict(raw["results"][0])), "duplicate (task, model)"),
    (lambda raw: raw["prior_work_tasks"].append({"name": "mystery", "display": "M"}),
     "no known metric: mystery"),
    (lambda raw: raw["bests"][0].update(ties=["ViT-B-32/openai"]), "best is not in its ties"),
])
def test_schema_errors_name_the_file_and_problem(tmp_path, corrupt, words):
    raw = _raw()
    corrupt(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(published.PublishedSchemaError) as err:
        published.load_published(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_invalid_json_is_a_schema_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(published.PublishedSchemaError, match="not valid JSON"):
        published.load_published(path)


@needs_shared_copy
def test_other_file_version_loads_with_a_note(tmp_path):
    raw = _raw()
    raw["meta"]["generated"] += 1
    loaded = published.load_published(_write(tmp_path, raw))
    assert loaded.sha256 != published.PUBLISHED_SHA256
    assert "not the pinned" in loaded.notes[0]


# ---- locating and fetching -----------------------------------------------------------------------
def test_setting_to_a_missing_path_says_how_to_provide(isolated, monkeypatch):
    missing = isolated / "nowhere.json"
    monkeypatch.setenv(published.PATH_ENV, str(missing))
    with pytest.raises(published.PublishedUnavailable) as err:
        published.published_path()
    assert str(missing) in str(err.value) and published.PATH_ENV in str(err.value)


@needs_shared_copy
def test_setting_wins_over_download(isolated, monkeypatch):
    monkeypatch.setenv(published.PATH_ENV, str(SHARED_COPY))
    monkeypatch.setenv(published.URL_ENV, "http://127.0.0.1:9/never-asked")
    assert published.published_path() == SHARED_COPY
    assert not published.cache_path().exists()


@needs_shared_copy
def test_fetch_from_local_server_caches_verified_file(isolated, monkeypatch, http_server):
    monkeypatch.setenv(published.URL_ENV, http_server.add(URL_PATH, SHARED_COPY))
    path = published.published_path()
    assert path == published.cache_path()
    assert path.read_bytes() == SHARED_COPY.read_bytes()
    assert len(http_server.gets(URL_PATH)) == 1
    # a second look finds the verified cache and does not download again
    assert published.load_published().sha256 == published.PUBLISHED_SHA256
    assert len(http_server.gets(URL_PATH)) == 1


@needs_shared_copy
def test_fetch_refuses_a_changed_file_and_caches_nothing(isolated, monkeypatch, http_server):
    changed = SHARED_COPY.read_bytes().replace(b'"seed": 17', b'"seed": 18', 1)
    assert changed != SHARED_COPY.read_bytes()
    monkeypatch.setenv(published.URL_ENV, http_server.add(URL_PATH, changed))
    with pytest.raises(published.PublishedUnavailable) as err:
        published.published_path()
    assert "Checksum mismatch" in str(err.value) and published.PATH_ENV in str(err.value)
    cache_dir = published.cache_path().parent
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []


@needs_shared_copy
def test_corrupt_cache_is_replaced_by_a_fresh_download(isolated, monkeypatch, http_server):
    monkeypatch.setenv(published.URL_ENV, http_server.add(URL_PATH, SHARED_COPY))
    published.cache_path().parent.mkdir(parents=True)
    published.cache_path().write_text("{}")
    assert published.load_published().sha256 == published.PUBLISHED_SHA256
    assert len(http_server.gets(URL_PATH)) == 1


def test_unreachable_host_fails_fast(isolated, monkeypatch):
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(published.URL_ENV, f"http://127.0.0.1:{port}/results.json")
    start = time.perf_counter()
    with pytest.raises(published.PublishedUnavailable, match=published.PATH_ENV):
        published.published_path(timeout=2)
    assert time.perf_counter() - start < 2
    assert not published.cache_path().exists()


def test_default_url_is_pinned_to_the_spec_commit():
    assert published.PUBLISHED_URL.startswith("https://raw.githubusercontent.com/samuelstevens/biobench/")
    assert f"/{published.PUBLISHED_COMMIT}/docs/data/results.json" in published.PUBLISHED_URL


# ---- import into the store -----------------------------------------------------------------------
@needs_shared_copy
def test_import_writes_one_run_per_result_with_mean_as_score(leaderboard, imported_store):
    store = imported_store
    runs = store.runs("published")
    assert len(runs) == 1096
    assert set(runs["protocol"]) == {"published"} and set(runs["seed"]) == {0}
    assert set(runs["n_train"]) == {-1}
    merged = runs.merge(leaderboard.results, on=["task", "model"], validate="one_to_one",
                        suffixes=("", "_file"))
    assert (merged["score"] == merged["mean"]).all()  # the point estimate, not bootstrap_mean
    assert (merged["score"] != merged["bootstrap_mean"]).any()
    assert (merged["ci_low"] == merged["ci_low_file"]).all()
    assert (merged["ci_high"] == merged["ci_high_file"]).all()
    boot = merged["extra"].map(lambda e: e["bootstrap_mean"])
    assert (boot == merged["bootstrap_mean"]).all()
    metric = runs.groupby("task")["metric"].first()
    assert metric["imagenet1k"] == metric["newt"] == metric["inat21"] == "accuracy"
    assert metric["fishnet"] == "fishnet_macro_f1" and metric["fungiclef"] == "fungiclef_reference_score"
    assert metric["plankton"] == "macro_f1"
    assert set(runs["ci_level"]) == {0.95} and set(runs["n_bootstrap"]) == {500}


@needs_shared_copy
def test_import_flags_ties_best_and_intervals(leaderboard, imported_store):
    store = imported_store
    runs = store.runs("published")
    flag = lambda name: runs["extra"].map(lambda e: e[name])  # noqa: E731
    tied = runs[flag("tied_with_best")].groupby("task").size()
    assert tied["plankton"] == 27 and tied["kabr"] == 4 and tied["beluga"] == 1
    best = runs[flag("is_best")]
    assert len(best) == 13
    assert best.set_index("task").loc["beluga", "model"] == "vith16"
    # the flag agrees with an independent comparison of the columns
    outside = (runs["score"] < runs["ci_low"]) | (runs["score"] > runs["ci_high"])
    assert (flag("ci_excludes_point") == outside).all()
    assert flag("ci_excludes_point").groupby(runs["task"]).sum()["fishnet"] == 85


@needs_shared_copy
def test_import_models_table(leaderboard, imported_store):
    store = imported_store
    models = store.models("published").set_index("model")
    assert len(models) == 85
    imagenet = leaderboard.results.query("task == 'imagenet1k'").set_index("model")["mean"]
    pd.testing.assert_series_equal(models["imagenet_top1"].dropna().sort_index(),
                                   imagenet.sort_index(), check_names=False)
    assert pd.isna(models.loc["vit_pe_spatial_small_patch16_512", "imagenet_top1"])
    assert set(models["imagenet_source"]) == {published.IMAGENET_SOURCE}
    row = models.loc["ViT-B-32/openai"]
    assert (row["display"], row["family"], row["resolution"], row["params"]) == (
        "CLIP ViT-B/32", "CLIP", 224, 87849216)
    assert row["extra"]["release"] == "2021-01-05"


@needs_shared_copy
def test_reimport_replaces_and_leaves_own_runs_alone(leaderboard, imported_store, tmp_path):
    store = _copy_store(imported_store, tmp_path / "copy.sqlite")
    first = store.runs("published").drop(columns=["run_id", "created_at"])
    stale = RunKey(model="gone", task="beluga", protocol="published", source="published")
    store.save_run(RunRecord(key=stale, metric="macro_f1", score=0.5))
    own = RunKey(model="random_tiny", task="beluga", protocol="knn")
    store.save_run(RunRecord(key=own, metric="macro_f1", score=0.1))
    assert not published.is_imported(store, leaderboard)  # the stale run spoils it
    assert published.import_published(store, leaderboard) == 1096
    again = store.runs("published").drop(columns=["run_id", "created_at"])
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again.reset_index(drop=True))
    assert not store.has_run(stale) and store.has_run(own)
    assert published.is_imported(store, leaderboard)


# ---- what a book page sees -----------------------------------------------------------------------
def test_refresh_store_without_the_file_says_so(isolated, monkeypatch):
    monkeypatch.setenv(published.PATH_ENV, str(isolated / "absent.json"))
    store = ResultsStore(isolated / "store.sqlite")
    status = published.refresh_store(store)
    assert not status.available and status.n_runs == 0
    assert "not available" in status.message and published.PATH_ENV in status.message
    assert "Published leaderboard not available" in status.banner_html()
    assert store.runs("published").empty


@needs_shared_copy
def test_refresh_store_imports_once_per_file(isolated, monkeypatch):
    small = _small_file(isolated)
    monkeypatch.setenv(published.PATH_ENV, str(small))
    store = ResultsStore(isolated / "store.sqlite")
    status = published.refresh_store(store)
    n_results = len(published.load_published(small).results)
    assert status.available and status.n_runs == n_results == len(store.runs("published"))
    first_ids = set(store.runs("published")["run_id"])
    published.refresh_store(store)  # already imported: the rows are left as they are
    assert set(store.runs("published")["run_id"]) == first_ids
    assert "sha256" in status.message and "not the pinned" in status.message


def test_page_glue_checks_keys_and_fills_placeholders(capsys):
    page = published.PageGlue(available=True, texts=("r2", "n"), figures=("fig",))
    assert page.number("r2", 0.55488) == "0.555"
    with pytest.raises(KeyError, match="not declared"):
        page.text("typo", "1")
    with pytest.raises(RuntimeError, match="n, fig"):
        page.finish()
    empty = published.PageGlue(available=False, texts=("r2",), figures=("fig",))
    empty.finish()
    assert empty.glued == {"r2", "fig"}


@needs_shared_copy
def test_command_line_imports_into_the_given_store(isolated, monkeypatch, capsys):
    small = _small_file(isolated)
    monkeypatch.setenv(published.PATH_ENV, str(small))
    assert cli.main(["published", "--store", str(isolated / "cli.sqlite")]) == 0
    n_results = len(published.load_published(small).results)
    assert f"Imported {n_results} published runs" in capsys.readouterr().out
    assert len(ResultsStore(isolated / "cli.sqlite").runs("published")) == n_results


def test_command_line_without_the_file_fails_with_advice(isolated, monkeypatch, capsys):
    monkeypatch.setenv(published.PATH_ENV, str(isolated / "absent.json"))
    assert cli.main(["published", "--store", str(isolated / "cli.sqlite")]) == 1
    assert published.PATH_ENV in capsys.readouterr().err
