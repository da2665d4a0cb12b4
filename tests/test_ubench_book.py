"""The μ-Bench part of the book: the draft numbers, the store -> results tables, the GPU grid
file, and the three pages executed with an empty store (and the results page with runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biobench.store import ResultsStore, RunKey, RunRecord
from biobench.ubench import drafts, results
from biobench.ubench.meta import COARSE_KINDS, UBENCH_DATASETS

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "notebooks" / "ubench"
PLIP, CLIP = "hf:vinid/plip", "hf:openai/clip-vit-base-patch32"


# ---- drafts -----------------------------------------------------------------------------------
def test_draft_mean_of_five_agrees_with_its_row():
    """Each printed mean must be the mean of the row's five printed values, up to the two
    roundings to two digits (each at most 0.005): a check of the transcription."""
    for row in drafts.COARSE_DRAFT:
        mean = np.mean([row.per_kind[k] for k in COARSE_KINDS])
        assert abs(mean - row.mean_of_5) <= 0.01, row.model


def test_draft_tables_cover_the_same_models():
    summary = drafts.draft_summary_table()
    assert list(summary.index) == [d.model for d in drafts.COARSE_DRAFT]
    assert set(drafts.FINE_DRAFT) == set(summary.index)
    assert not summary.isna().any().any()
    assert summary.loc["ALIGN", "fine-grained, mean over 23 tasks (%)"] == 33.7
    assert summary.loc["Random", "coarse, mean of 5 types (%)"] == pytest.approx(18.0)
    specialist = drafts.specialist_draft_table()
    assert specialist.loc["PLIP − CLIP B/32", "coarse (pp)"] == -10.2


def test_image_counts_add_up_to_the_benchmark_total():
    known = sum(c.n for c in drafts.IMAGE_COUNTS.values() if c.n is not None)
    assert known + drafts.POLLEN_PLUS_WU == drafts.TOTAL_IMAGES
    assert set(drafts.IMAGE_COUNTS) == set(UBENCH_DATASETS)
    assert drafts.IMAGE_COUNTS["acevedo_et_al_2020"].label() == "1,600"  # confirmed
    assert drafts.IMAGE_COUNTS["kather_et_al_2018"].label() == "≈1,800"  # inferred
    assert drafts.IMAGE_COUNTS["wu_et_al_2023"].label() == "see note"


def test_question_counts_match_the_published_totals():
    # spec §4: 79,716 coarse items (5 x 16,130 - 934 null stain), 14,644 official fine items
    assert drafts.official_question_counts() == {
        "coarse": 79_716, "fine": 16_130, "fine_official": 14_644, "fine_left_out": 1_486}


# ---- a hand-made store ------------------------------------------------------------------------
def save_zero_shot(store: ResultsStore, model: str, task: str, slots: list[str],
                   rows: dict[str, tuple[list[int], list[int]]], *, protocol: str = "zero_shot",
                   probe_params: str = "{}") -> int:
    """A zero-shot run as run_evaluation stores it: (example_id, y_true row, y_pred row)."""
    record = RunRecord(RunKey(model, task, protocol, probe_params=probe_params),
                       "question_accuracy", 0.5, extra={"zero_shot_slots": slots})
    return store.save_run(record, [(eid, t, p) for eid, (t, p) in rows.items()])


@pytest.fixture
def hand_store(tmp_path) -> ResultsStore:
    """Two models on a coarse task (two phrasings; one null question) and two fine tasks.

    Hand counts (correct / questions):
      coarse modality: PLIP 3/6 (acevedo-a: 1+1, acevedo-b: 0+1, darkfield-c: 0+0, darkfield-d:
                       null); CLIP 5/6
      fine, acevedo:   PLIP 3/4; CLIP 1/4
      fine, Eulenberg darkfield (not in the official total): PLIP 0/4; CLIP 4/4
    """
    store = ResultsStore(tmp_path / "store.sqlite")
    m = ["modality_0", "modality_1"]
    c = ["classification_0", "classification_1"]
    save_zero_shot(store, PLIP, "ubench_coarse_modality", m, {
        "acevedo_et_al_2020/a": ([0, 0], [0, 0]),
        "acevedo_et_al_2020/b": ([1, 1], [2, 1]),
        "eulenberg_et_al_2017_darkfield/c": ([0, 0], [1, 1]),
        "eulenberg_et_al_2017_darkfield/d": ([-1, -1], [-1, -1]),
    })
    save_zero_shot(store, CLIP, "ubench_coarse_modality", m, {
        "acevedo_et_al_2020/a": ([0, 0], [0, 0]),
        "acevedo_et_al_2020/b": ([1, 1], [1, 1]),
        "eulenberg_et_al_2017_darkfield/c": ([0, 0], [0, 2]),
        "eulenberg_et_al_2017_darkfield/d": ([-1, -1], [-1, -1]),
    })
    save_zero_shot(store, PLIP, "ubench_acevedo_et_al_2020", c, {
        "acevedo_et_al_2020/a": ([2, 2], [2, 2]), "acevedo_et_al_2020/b": ([3, 3], [3, 0])})
    save_zero_shot(store, CLIP, "ubench_acevedo_et_al_2020", c, {
        "acevedo_et_al_2020/a": ([2, 2], [2, 1]), "acevedo_et_al_2020/b": ([3, 3], [0, 0])})
    save_zero_shot(store, PLIP, "ubench_eulenberg_et_al_2017_darkfield", c, {
        "eulenberg_et_al_2017_darkfield/c": ([1, 1], [0, 0]),
        "eulenberg_et_al_2017_darkfield/d": ([4, 4], [0, 0])})
    save_zero_shot(store, CLIP, "ubench_eulenberg_et_al_2017_darkfield", c, {
        "eulenberg_et_al_2017_darkfield/c": ([1, 1], [1, 1]),
        "eulenberg_et_al_2017_darkfield/d": ([4, 4], [4, 4])})
    # not read: a probe run of a μ-Bench task, and a zero-shot run of another benchmark
    store.save_run(RunRecord(RunKey(PLIP, "ubench_acevedo_et_al_2020", "logreg"),
                             "question_accuracy", 0.9), [("acevedo_et_al_2020/a", 0, 0)])
    save_zero_shot(store, PLIP, "plankton", ["plankton"], {"x": ([0], [0])})
    return store


def row(table: pd.DataFrame, model: str, value: str) -> pd.Series:
    (i,) = np.flatnonzero((table["model"] == model) & (table["value"] == value))
    return table.iloc[i]


def test_answers_are_the_stored_questions(hand_store):
    runs = results.load_ubench_runs(hand_store)
    assert set(runs.runs["task"]) == {"ubench_coarse_modality", "ubench_acevedo_et_al_2020",
                                      "ubench_eulenberg_et_al_2017_darkfield"}
    assert set(runs.runs["protocol"]) == {"zero_shot"} and runs.superseded.empty
    # per model: 6 coarse answers (one image has a null question) + 4 + 4 fine answers
    assert runs.answers.groupby("model").size().to_dict() == {PLIP: 14, CLIP: 14}
    assert runs.models == (CLIP, PLIP)  # MODEL_LABELS order
    assert runs.label(PLIP) == "PLIP"
    # an image keeps one id across tasks: that is what makes the bootstrap image-level
    assert set(runs.answers["image_id"]) == {"a", "b", "c", "d"}
    assert runs.answers.groupby("image_id")["kind"].nunique().to_dict() == {
        "a": 2, "b": 2, "c": 2, "d": 1}  # d: a null coarse question, a fine one


def test_accuracy_tables_match_hand_counts(hand_store):
    answers = results.load_ubench_runs(hand_store).answers
    coarse = results.coarse_accuracy(answers, n_boot=200)
    assert row(coarse, PLIP, "modality")["accuracy"] == pytest.approx(3 / 6)
    assert row(coarse, CLIP, "all")["accuracy"] == pytest.approx(5 / 6)
    assert set(coarse["value"]) == {"modality", "all"}

    fine = results.fine_accuracy(answers, n_boot=200)
    assert row(fine, PLIP, "acevedo_et_al_2020")["accuracy"] == pytest.approx(3 / 4)
    assert row(fine, CLIP, "eulenberg_et_al_2017_darkfield")["accuracy"] == 1.0
    # the official total leaves Eulenberg darkfield out; the total over all datasets keeps it
    assert row(fine, PLIP, results.OFFICIAL_TOTAL)["accuracy"] == pytest.approx(3 / 4)
    assert row(fine, PLIP, results.ALL_DATASETS)["accuracy"] == pytest.approx(3 / 8)
    assert row(fine, CLIP, results.ALL_DATASETS)["accuracy"] == pytest.approx(5 / 8)
    for table in (coarse, fine):
        assert ((table["low"] <= table["accuracy"]) & (table["accuracy"] <= table["high"])).all()


def test_groups_and_slices(hand_store):
    answers = results.load_ubench_runs(hand_store).answers
    table = results.group_slice_accuracy(answers, n_boot=100)
    fine = table[table["part"] == "fine"]
    acevedo, eulenberg = UBENCH_DATASETS["acevedo_et_al_2020"], UBENCH_DATASETS[
        "eulenberg_et_al_2017_darkfield"]
    assert row(fine, PLIP, acevedo.group)["accuracy"] == pytest.approx(3 / 4)
    assert row(fine, PLIP, eulenberg.group)["accuracy"] == 0.0
    # Acevedo is in the pathology slice, Eulenberg darkfield only in light: light pools both
    assert row(fine, PLIP, "pathology")["accuracy"] == pytest.approx(3 / 4)
    assert row(fine, PLIP, "light")["accuracy"] == pytest.approx(3 / 8)
    assert "h_and_e" not in set(fine["value"])  # neither dataset is H&E
    coarse = table[table["part"] == "coarse"]
    assert row(coarse, CLIP, "light")["accuracy"] == pytest.approx(5 / 6)


def test_specialist_minus_base_and_pairwise(hand_store):
    runs = results.load_ubench_runs(hand_store)
    assert results.specialist_pairs(runs.models) == [(PLIP, CLIP)]
    assert results.specialist_pairs([PLIP, "open_clip:ViT-B-32/openai"]) == [
        (PLIP, "open_clip:ViT-B-32/openai")]
    assert results.specialist_pairs([PLIP]) == []
    special = results.specialist_differences(runs.answers, runs.models, n_boot=200, n_perm=200)
    by_part = special.set_index("value")
    assert by_part.loc["coarse", "difference"] == pytest.approx(3 / 6 - 5 / 6)
    assert by_part.loc["fine", "difference"] == pytest.approx(3 / 8 - 5 / 8)
    assert (special["specialist"] == PLIP).all() and (special["base"] == CLIP).all()

    pairs = results.pairwise_comparisons(runs.answers, runs.models, n_boot=200, n_perm=200)
    assert len(pairs) == 2  # one pair, coarse and fine
    assert (pairs["p_holm"] >= pairs["p_value"]).all()
    shown = results.comparison_display(pairs, runs.labels)
    assert shown["comparison"].iloc[0] == "CLIP B/32 − PLIP"
    assert results.pairwise_comparisons(runs.answers, [PLIP]).empty


def test_newest_run_of_a_model_and_task_wins(hand_store):
    save_zero_shot(hand_store, CLIP, "ubench_coarse_modality", ["modality_0", "modality_1"], {
        "acevedo_et_al_2020/a": ([0, 0], [1, 1])}, probe_params='{"note":"rerun"}')
    runs = results.load_ubench_runs(hand_store)
    assert len(runs.superseded) == 1
    assert runs.superseded["probe_params"].iloc[0] == "{}"
    coarse = runs.answers[(runs.answers["model"] == CLIP) & (runs.answers["kind"] == "modality")]
    assert len(coarse) == 2 and not coarse["correct"].any()


def test_unreadable_runs_are_named(tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    store.save_run(RunRecord(RunKey(CLIP, "ubench_coarse_domain", "zero_shot"),
                             "question_accuracy", 0.5),
                   [("acevedo_et_al_2020/a", [0, 0], [0, 0])])
    with pytest.raises(results.UbenchResultsError, match=r"run \d+ \(.*clip.* on "
                                                         r"ubench_coarse_domain\).*--force"):
        results.load_ubench_runs(store)

    store = ResultsStore(tmp_path / "t.sqlite")
    save_zero_shot(store, CLIP, "ubench_coarse_domain", ["domain_0", "domain_1"],
                   {"no_such_dataset/a": ([0, 0], [0, 0])})
    with pytest.raises(results.UbenchResultsError, match="no_such_dataset"):
        results.load_ubench_runs(store)


def test_an_empty_store_has_no_runs(tmp_path):
    runs = results.load_ubench_runs(ResultsStore(tmp_path / "s.sqlite"))
    assert runs.empty and runs.models == () and runs.answers.empty


def test_a_real_random_run_reads_back_with_its_stored_score(tmp_path):
    """run_evaluation on the fixture shards: the answers this module rebuilds pool to the score
    that the evaluation stored (computed by biobench.metrics, independently of this module)."""
    from biobench.download import write_marker
    from biobench.evaluate import run_evaluation
    from tests import ubench_fixture as fx

    data = tmp_path / "ubench"
    fx.write_fixture(data)
    write_marker(data, "ubench", [])
    store = ResultsStore(tmp_path / "store.sqlite")
    for task in ("ubench_coarse_stain", "ubench_acevedo_et_al_2020"):
        run_evaluation("random", task, protocol="zero_shot", store=store, data_root=data,
                       n_bootstrap=20)
    runs = results.load_ubench_runs(store)
    stored = runs.runs.set_index("task")["score"]
    answers = runs.answers
    stain = answers[answers["kind"] == "stain"]
    # fixture: 12 images with questions, 2 of them (nirschl fluorescence) with a null stain one
    assert len(stain) == 2 * 10
    assert stain["correct"].mean() == pytest.approx(stored["ubench_coarse_stain"])
    fine = answers[answers["kind"] == "classification"]
    assert fine["correct"].mean() == pytest.approx(stored["ubench_acevedo_et_al_2020"])
    assert set(fine["dataset"]) == {"acevedo_et_al_2020"}
    assert {"held_et_al_2010_h2b", "held_et_al_2010_galt"} <= set(stain["dataset"])


# ---- the grid file ----------------------------------------------------------------------------
def test_the_gpu_grid_loads_with_name_checks():
    """Name checks run offline: open_clip validates the architecture and tag from its own
    tables, hf: names are not looked up, and tasks come from the registry."""
    from biobench.grid import load_grid
    from biobench.tasks import list_tasks

    grid = load_grid(ROOT / "configs" / "ubench.toml", check_names=True)
    assert grid.protocol == "zero_shot"
    assert set(grid.tasks) == {t for t in list_tasks() if t.startswith("ubench")}
    assert len(grid.tasks) == 27
    assert set(grid.models) == set(results.MODEL_LABELS)  # every model has a short label
    for specialist, bases in results.SPECIALIST_BASES:
        assert specialist in grid.models and bases[0] in grid.models


# ---- the pages --------------------------------------------------------------------------------
def execute_page(name: str):
    import jupytext
    import nbclient

    notebook = jupytext.read(PAGES / f"{name}.md")
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(PAGES)}}).execute()
    return notebook


def outputs(notebook) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def glued(notebook) -> dict[str, dict]:
    return {o.metadata["scrapbook"]["name"]: o.data for o in outputs(notebook)
            if "scrapbook" in o.get("metadata", {})}


def glued_markdown(notebook, key: str) -> str:
    return glued(notebook)[key]["application/papermill.record/text/markdown"]


def assert_clean(notebook) -> None:
    bad = [o for o in outputs(notebook) if o.get("name") == "stderr" or o.output_type == "error"]
    assert not bad, bad


def glue_keys_used(name: str) -> set[str]:
    """The glue keys the page's markdown cells refer to (roles and directives); the
    markdown that code cells glue is checked by the build."""
    import re

    import jupytext

    cells = jupytext.read(PAGES / f"{name}.md").cells
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    return set(re.findall(r"\{glue:(?:text|md)\}`([^`]+)`", text)) | set(
        re.findall(r"\{glue:(?:figure|md)\} (\w+)", text))


@pytest.fixture
def empty_book(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BIOBENCH_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("name", ["overview", "statistics", "results"])
def test_pages_execute_cleanly_without_data_or_runs(name, empty_book):
    notebook = execute_page(name)
    assert_clean(notebook)
    values = glued(notebook)
    missing = glue_keys_used(name) - set(values)
    assert not missing, f"{name}.md refers to glue keys never glued: {missing}"
    if name == "results":
        body = glued_markdown(notebook, "body")
        assert "No μ-Bench runs in this build" in body
        assert "biobench grid configs/ubench.toml" in body and "biobench download ubench" in body
        assert "{numref}" not in body  # nothing that could refer to an absent figure
        assert not (empty_book / "store.sqlite").exists()  # reading created no store
    if name == "overview":
        assert "not on this machine" in glued_markdown(notebook, "examples")
        prompt = glued_markdown(notebook, "prompt")
        assert "Question:Which imaging modality" in prompt and "B) fluorescence microscopy" in prompt
        assert str(empty_book) not in str([dict(o) for o in outputs(notebook)])  # no machine path
    if name == "statistics":
        text = values["true_sd"]["application/papermill.record/text/plain"]
        assert float(text.strip("'")) > 0


def test_results_page_shows_every_section_with_runs(hand_store, monkeypatch, tmp_path):
    monkeypatch.setenv("BIOBENCH_STORE", str(hand_store.path))
    monkeypatch.setenv("BIOBENCH_DATA", str(tmp_path / "data"))
    notebook = execute_page("results")
    assert_clean(notebook)
    body = glued_markdown(notebook, "body")
    values = glued(notebook)
    for label, key in (("fig-ubench-coarse", "fig_coarse"), ("fig-ubench-fine", "fig_fine"),
                       ("fig-ubench-groups", "fig_groups"), ("tbl-ubench-pairs", "tbl_pairs"),
                       ("tbl-ubench-specialist", "tbl_special")):
        assert f":name: {label}" in body and f"{{numref}}`{label}`" in body
        assert key in values
    assert "No μ-Bench runs" not in body
    assert "PLIP" in body and "6 runs" in body.replace("**", "").replace("μ-Bench zero-shot ", "")


def test_overview_counts_and_shows_images_when_the_data_is_there(tmp_path, monkeypatch):
    from biobench.download import write_marker
    from tests import ubench_fixture as fx

    data = tmp_path / "data" / "ubench"
    fx.write_fixture(data)
    write_marker(data, "ubench", [])
    monkeypatch.setenv("BIOBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BIOBENCH_STORE", str(tmp_path / "store.sqlite"))
    notebook = execute_page("overview")
    assert_clean(notebook)
    values = glued(notebook)
    examples = glued_markdown(notebook, "examples")
    assert ":name: fig-ubench-examples" in examples and "fig_examples" in values
    assert "application/papermill.record/image/png" in values["fig_examples"]
    # one panel per taxonomy group that the fixture's datasets reach
    from biobench.ubench.data import resolve_dataset

    groups = {UBENCH_DATASETS[resolve_dataset(r["dataset"], r["stain"], "fixture")].group
              for r in fx.fixture_rows() if r["dataset"] != "opencell"}
    assert f"with {len(groups)} Axes" in values["fig_examples"][
        "application/papermill.record/text/plain"]
    table = values["tbl_datasets"]["application/papermill.record/text/html"]
    assert "images in this download" in table
    # the fixture's counts: 3 Acevedo, 2 Held H2B (named by stain), 0 for a dataset it lacks
    counts = fx.fixture_rows()
    assert sum(r["dataset"] == "acevedo_et_al_2020" for r in counts) == 3
    assert ">3<" in table and ">2<" in table
