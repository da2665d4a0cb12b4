"""The grid runner: grid files, skip/atomic-write logic, the generated table of contents."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from biobench import config
from biobench import book as B
from biobench import grid as G
from biobench.atomic import write_text_if_changed
from biobench.evaluate import code_version, probe_params_json, run_key
from biobench.pages import load_own_runs
from biobench.store import ResultsStore, RunKey, RunRecord
from biobench.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def _grid(**kw) -> G.Grid:
    data = {"models": ["m1", "m2"], "tasks": ["t1"], **kw}
    return G.parse_grid(data, "test.toml", check_names=False)


# ---- grid files --------------------------------------------------------------------------
def test_cells_are_task_major_and_seed_pages_are_distinct():
    grid = _grid(tasks=["t1", "t2"], seeds=[0, 1])
    cells = grid.cells()
    assert [(c.task, c.model, c.seed) for c in cells[:4]] == [
        ("t1", "m1", 0), ("t1", "m1", 1), ("t1", "m2", 0), ("t1", "m2", 1)]
    assert len({c.notebook_path(Path("r")) for c in cells}) == len(cells) == 8
    assert _grid().cells()[0].page_name == "m1"  # one seed: the page is named after the model


@pytest.mark.parametrize("data, message", [
    ({"models": ["m"], "tasks": ["t"], "modles": []}, "unknown key(s) ['modles']"),
    ({"tasks": ["t"]}, "missing 'models'"),
    ({"models": [], "tasks": ["t"]}, "'models' must be a non-empty list"),
    ({"models": ["m", "m"], "tasks": ["t"]}, "lists a name twice"),
    ({"models": ["m"], "tasks": ["t"], "seeds": ["0"]}, "'seeds' must be an integer"),
    ({"models": ["m"], "tasks": ["t"], "n_bootstrap": 1.5}, "'n_bootstrap' must be an integer"),
])
def test_bad_grid_is_rejected_with_the_file_named(data, message):
    with pytest.raises(G.GridError) as err:
        G.parse_grid(data, "configs/bad.toml", check_names=False)
    assert message in str(err.value)
    assert "configs/bad.toml" in str(err.value)


def test_unknown_model_task_and_protocol_are_named_with_the_valid_ones(tmp_path):
    from biobench.backbones import list_models
    from biobench.tasks import list_tasks

    path = tmp_path / "g.toml"
    path.write_text('models = ["random_tiny", "no_such_model"]\ntasks = ["synthetic"]\n')
    with pytest.raises(G.GridError, match="unknown model\\(s\\) no_such_model") as err:
        G.load_grid(path)
    assert str(path) in str(err.value) and list_models()[0] in str(err.value)

    path.write_text('models = ["random_tiny"]\ntasks = ["no_such_task"]\n')
    with pytest.raises(G.GridError, match="unknown task\\(s\\) no_such_task") as err:
        G.load_grid(path)
    assert list_tasks()[0] in str(err.value)

    path.write_text('models = ["random_tiny"]\ntasks = ["synthetic"]\nprotocol = "svm"\n')
    with pytest.raises(G.GridError, match="unknown protocol\\(s\\) svm. Valid protocols: .*logreg"):
        G.load_grid(path)


def test_missing_or_broken_grid_file(tmp_path):
    with pytest.raises(G.GridError, match="not found"):
        G.load_grid(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("models = [\n")
    with pytest.raises(G.GridError, match="broken.toml: not valid TOML"):
        G.load_grid(tmp_path / "broken.toml")


def test_offline_grid_names_registered_models_and_tasks():
    grid = G.load_grid(ROOT / "configs" / "offline.toml")  # raises on an unknown name
    assert {"plankton_flowcam", "neon_tree_crowns"} == set(grid.tasks)
    assert len(grid.cells()) == 12


# ---- table of contents -------------------------------------------------------------------
PAGES = [B.TaskPages("t1", "Task one", (("m1", "Model 1"), ("m2", "Model 2"))),
         B.TaskPages("t2", "Task two", (("m1", "Model 1"),))]


def test_toc_block_is_valid_and_deterministic():
    toc_text = (ROOT / "_toc.yml").read_text()
    first = B.render_toc(toc_text, B.toc_block(PAGES, "book/runs"))
    assert first == B.render_toc(toc_text, B.toc_block(PAGES, "book/runs"))
    # regenerating over an already generated toc gives the same text (idempotent)
    assert B.render_toc(first, B.toc_block(PAGES, "book/runs")) == first
    toc = yaml.safe_load(first)
    runs = [p for p in toc["parts"] if p["caption"] == "Runs"]
    assert runs == [{"caption": "Runs", "chapters": [
        {"file": "book/runs/t1/index",
         "sections": [{"file": "book/runs/t1/m1"}, {"file": "book/runs/t1/m2"}]},
        {"file": "book/runs/t2/index", "sections": [{"file": "book/runs/t2/m1"}]}]}]
    # the hand-written parts survive, in order
    captions = [p["caption"] for p in toc["parts"]]
    assert captions.index("Methods") < captions.index("Runs")
    assert len(captions) == len(yaml.safe_load(toc_text)["parts"]) + (
        0 if "Runs" in [p["caption"] for p in yaml.safe_load(toc_text)["parts"]] else 1)


def test_empty_grid_leaves_no_runs_part():
    toc = yaml.safe_load(B.render_toc((ROOT / "_toc.yml").read_text(), B.toc_block([], "book/runs")))
    assert "Runs" not in [p["caption"] for p in toc["parts"]]


@pytest.mark.parametrize("text", ["parts:\n  - caption: A\n",
                                  f"parts:\n  {B.TOC_END}\n  {B.TOC_BEGIN}\n",
                                  f"parts:\n  {B.TOC_BEGIN}\n  {B.TOC_BEGIN}\n  {B.TOC_END}\n"])
def test_toc_without_one_marker_pair_is_rejected(text):
    with pytest.raises(B.TocError, match="exactly one"):
        B.render_toc(text, "")


def test_every_file_in_the_committed_toc_exists_or_is_generated():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def files(entries):
        for entry in entries:
            if "file" in entry:
                yield entry["file"]
            yield from files(entry.get("sections", []))

    listed = [toc["root"]] + [f for part in toc["parts"] for f in files(part["chapters"])]
    for name in listed:
        if name.startswith("book/runs/"):
            continue  # written by the grid runner
        assert any((ROOT / f"{name}{ext}").is_file() for ext in (".md", ".ipynb")), name


def test_write_if_changed_keeps_mtime_of_identical_content(tmp_path):
    path = tmp_path / "sub" / "page.md"
    assert write_text_if_changed(path, "a\n")
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert not write_text_if_changed(path, "a\n")
    assert path.stat().st_mtime_ns == before
    assert write_text_if_changed(path, "b\n") and path.read_text() == "b\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.md"]  # no temp file left


# ---- execution: skip, atomic write, failures ---------------------------------------------
def _record(model: str, task: str = "synthetic", protocol: str = "simpleshot") -> RunRecord:
    """A stored run as run_evaluation leaves it, fingerprint of the task's data included."""
    from biobench.evaluate import data_fingerprint
    from biobench.tasks import get_task

    if task != "synthetic":  # a task name the registry does not know: default probe settings
        key = RunKey(model, task, protocol, probe_params=probe_params_json(protocol))
        return RunRecord(key, "macro_f1", 0.5, 0.4, 0.6)
    spec = get_task(task)
    return RunRecord(run_key(model, spec, protocol), "macro_f1", 0.5, 0.4, 0.6,
                     code_version=code_version(spec, protocol),
                     extra={"data_fingerprint": data_fingerprint(spec, spec.load())})


@pytest.fixture
def book(tmp_path):
    """A throwaway book: copy of _toc.yml, a template path, runs dir, store, build dir."""
    (tmp_path / "_toc.yml").write_text((ROOT / "_toc.yml").read_text())
    (tmp_path / "_config.yml").write_text("title: test\n")
    return {"root": tmp_path, "template": ROOT / "notebooks" / "evaluate.md",
            "runs_dir": tmp_path / "book" / "runs", "toc_path": tmp_path / "_toc.yml",
            "store_path": tmp_path / "store.sqlite", "build_dir": tmp_path / "_build"}


def _fake_execute(calls, fail_models=()):
    """Stands in for papermill: writes a partial notebook, then fails or completes."""

    def execute(cell, template_nb, out_path, store_path, cwd, kernel_name=None, force=False):
        calls.append(cell.model)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = out_path.with_name(f".{out_path.stem}.partial.ipynb")
        partial.write_text(json.dumps({"metadata": dict(template_nb.metadata)}))
        if cell.model in fail_models:
            raise RuntimeError(f"kernel died while running {cell.model}")
        ResultsStore(store_path).save_run(_record(cell.model), replace=True)
        partial.rename(out_path)

    return execute


def test_grid_skips_done_cells_and_reruns_when_forced(book, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(G, "execute_cell", _fake_execute(calls))
    grid = G.parse_grid({"models": ["random_tiny"], "tasks": ["synthetic"],
                         "protocol": "simpleshot"}, "g.toml")
    report = G.run_grid(grid, progress=False, **book)
    assert calls == ["random_tiny"] and len(report.executed) == 1
    report = G.run_grid(grid, progress=False, **book)
    assert calls == ["random_tiny"] and len(report.skipped) == 1  # notebook + stored run: skip

    # the notebook alone is not enough: a run missing from the store is executed again
    ResultsStore(book["store_path"]).delete_runs("own")
    G.run_grid(grid, progress=False, **book)
    assert calls == ["random_tiny"] * 2
    G.run_grid(grid, progress=False, force=True, **book)
    assert calls == ["random_tiny"] * 3

    # a page made from another version of the template is made again, once
    template = book["root"] / "evaluate.md"
    shutil.copy(book["template"], template)
    copied = {**book, "template": template}
    G.run_grid(grid, progress=False, **copied)
    assert calls == ["random_tiny"] * 3  # same bytes, same template
    template.write_text(template.read_text() + "\nOne more sentence.\n")
    G.run_grid(grid, progress=False, **copied)
    assert calls == ["random_tiny"] * 4
    G.run_grid(grid, progress=False, **copied)
    assert calls == ["random_tiny"] * 4

    # a run whose task data changed since is not done: its page is made again
    test_image = sorted((config.data_dir() / "synthetic" / "test" / "red").glob("*.png"))[0]
    test_image.unlink()
    G.run_grid(grid, progress=False, **copied)
    assert calls == ["random_tiny"] * 5
    shutil.rmtree(config.data_dir() / "synthetic")  # regenerated (seeded) for later tests


def test_failed_cell_is_named_and_the_others_finish(book, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(G, "execute_cell", _fake_execute(calls, fail_models=("random_tiny",)))
    grid = G.Grid(("random_tiny", "second_model"), ("synthetic",), protocol="simpleshot",
                  source="g.toml")
    monkeypatch.setattr(B, "run_pages", lambda grid, runs_dir: [
        B.TaskPages("synthetic", "Synthetic", tuple((c.page_name, c.model) for c in grid.cells()
                                                   if c.notebook_path(runs_dir).is_file()))])
    with pytest.raises(G.GridFailed) as err:
        G.run_grid(grid, progress=False, **book)
    message = str(err.value)
    assert "model 'random_tiny' on task 'synthetic'" in message
    assert "kernel died while running random_tiny" in message
    assert calls == ["random_tiny", "second_model"]
    runs = book["runs_dir"] / "synthetic"
    assert not (runs / "random_tiny.ipynb").exists()  # nothing that looks complete
    assert (runs / "second_model.ipynb").exists()
    toc = yaml.safe_load(book["toc_path"].read_text())
    listed = [s["file"] for p in toc["parts"] if p["caption"] == "Runs"
              for c in p["chapters"] for s in c["sections"]]
    assert listed == ["book/runs/synthetic/second_model"]


def test_execute_cell_is_atomic_when_papermill_fails(tmp_path, monkeypatch):
    import papermill

    def broken(template_nb, output_path, **kwargs):
        Path(output_path).write_text('{"half": "written"}')
        err = papermill.PapermillExecutionError(3, 2, "load()", "ValueError", "bad pixels", [])
        raise err

    monkeypatch.setattr(papermill, "execute_notebook", broken)
    cell = _grid().cells()[0]
    out = tmp_path / "t1" / "m1.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        G.execute_cell(cell, None, out, tmp_path / "s.sqlite", tmp_path)
    assert not out.exists()
    assert (tmp_path / "t1" / "m1.failed.ipynb").exists()
    assert "model 'm1' on task 't1' (seed 0): ValueError: bad pixels" == G._describe_failure(
        cell, err.value)


def test_parameter_cells_are_hidden():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("a = 2", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("print(a)")]
    G.hide_parameter_cells(nb)
    G.hide_parameter_cells(nb)  # idempotent
    assert [c.metadata.get("tags") for c in nb.cells] == [
        ["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], []]


def test_book_cache_is_dropped_only_when_the_store_changes(tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    build = tmp_path / "_build"
    (build / ".jupyter_cache").mkdir(parents=True)
    assert B.drop_stale_book_cache(store, build)  # no fingerprint yet
    assert not (build / ".jupyter_cache").exists()
    (build / ".jupyter_cache").mkdir()
    assert not B.drop_stale_book_cache(store, build)
    assert (build / ".jupyter_cache").exists()
    store.save_run(_record("m"))
    assert B.drop_stale_book_cache(store, build)
    assert not (build / ".jupyter_cache").exists()


# ---- the real thing: papermill on the template, tiny model, synthetic task ----------------
def test_papermill_runs_the_template_end_to_end(book, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_HOME", str(tmp_path / "home"))
    for var in ("BIOBENCH_DATA", "BIOBENCH_FEATURES", "BIOBENCH_STORE"):
        monkeypatch.delenv(var, raising=False)
    grid = G.parse_grid({"models": ["random_tiny"], "tasks": ["synthetic"],
                         "protocol": "simpleshot", "n_bootstrap": 50}, "tiny.toml")
    report = G.run_grid(grid, progress=False, **book)
    assert len(report.executed) == 1
    page = book["runs_dir"] / "synthetic" / "random_tiny.ipynb"
    nb = nbformat.read(page, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    hidden = [c for c in code if "remove-cell" in c.metadata.get("tags", [])]
    assert {t for c in hidden for t in c.metadata["tags"]} >= {"parameters", "injected-parameters"}
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # example images, per-class F1, confusion matrix

    store = ResultsStore(book["store_path"])
    run = store.get_run(run_key("random_tiny", get_task("synthetic"), "simpleshot"))
    glued = {o["metadata"]["scrapbook"]["name"]: o["data"] for c in code
             for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}
    # the page shows the stored score, not a recomputed one
    assert float(glued["score"]["application/papermill.record/text/plain"]) == run["score"]
    from biobench.backbones import model_info

    title = glued["run_title"]["application/papermill.record/text/markdown"]
    assert title == f"{model_info('random_tiny').display} on {get_task('synthetic').display}"

    toc = yaml.safe_load(book["toc_path"].read_text())
    runs_part = [p for p in toc["parts"] if p["caption"] == "Runs"][0]
    for chapter in runs_part["chapters"]:
        for name in [chapter["file"]] + [s["file"] for s in chapter["sections"]]:
            assert any((book["root"] / f"{name}{ext}").is_file() for ext in (".md", ".ipynb"))

    again = G.run_grid(grid, progress=False, **book)
    assert not again.executed and len(again.skipped) == 1

    # --force reaches the page's run_evaluation: the run is recomputed and replaced. A marked
    # score in the stored (still current) row shows whether it was read back or recomputed.
    import sqlite3

    with sqlite3.connect(book["store_path"]) as con:
        con.execute("UPDATE runs SET score = -1 WHERE run_id = ?", (int(run["run_id"]),))
    forced = G.run_grid(grid, progress=False, force=True, **book)
    assert len(forced.executed) == 1
    rerun = store.get_run(run_key("random_tiny", get_task("synthetic"), "simpleshot"))
    assert rerun["score"] == run["score"] != -1 and len(store.runs("own")) == 1  # deterministic


def test_load_own_runs_explains_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        load_own_runs("logreg", store_path=tmp_path / "absent.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()  # no empty store left behind
    store = ResultsStore(tmp_path / "s.sqlite")
    store.save_run(_record("m2", task="t2", protocol="logreg"))
    store.save_run(_record("m1", task="t1", protocol="logreg"))
    store.save_run(_record("m1", task="t1", protocol="knn"))
    with pytest.raises(LookupError, match="protocol='simpleshot'"):
        load_own_runs("simpleshot", store_path=tmp_path / "s.sqlite")
    own = load_own_runs("logreg", store_path=tmp_path / "s.sqlite")
    assert sorted(own.runs["model"]) == ["m1", "m2"] and own.tasks == ["t1", "t2"]


def test_task_chapters_in_the_toc_follow_the_book_order():
    from biobench.taskpage import book_task_order

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c for p in toc["parts"] if p["caption"] == "Tasks" for c in p["chapters"]]
    listed = [s["file"].removeprefix(f"{B.TASK_CHAPTERS}/") for c in chapters
              for s in c.get("sections", [])]
    assert listed == book_task_order()
