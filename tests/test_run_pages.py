"""Run pages: the rendering of every label shape (``biobench.runpage``) checked on hand-made
predictions, and the papermill template (``notebooks/evaluate.md``) executed on every registered
task's fixture with the tiny random model."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from biobench import metrics, runpage
from biobench.runpage import MULTI_LABEL, OPEN_SET, SINGLE_LABEL, RunView
from biobench.store import ResultsStore, RunKey, RunRecord
from biobench.taskpage import FigureImage

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "notebooks" / "evaluate.md"


def view_of(y_true, y_pred, *, metric="macro_f1", class_names=(), extra=None, score=0.5):
    """A RunView as the store would give it, from plain lists (JSON-decoded predictions)."""
    run = {"run_id": 7, "model": "m", "task": "t", "metric": metric, "score": score,
           "extra": {"class_names": list(class_names), **(extra or {})}}
    predictions = pd.DataFrame({"example_id": [str(i) for i in range(len(y_true))],
                                "y_true": list(y_true), "y_pred": list(y_pred)})
    return RunView.from_store(run, predictions)


def captions(blocks) -> list[str]:
    return [b.data.strip("*") for b in blocks if hasattr(b, "data") and isinstance(b.data, str)]


def figures(blocks) -> list:
    return [b.figure for b in blocks if isinstance(b, FigureImage)]


def tables(blocks) -> list[pd.DataFrame]:
    return [b for b in blocks if isinstance(b, pd.DataFrame)]


# ---- which layout a run gets ----------------------------------------------------------------
def test_layout_follows_label_shape_and_metric():
    assert runpage.label_kind(np.array([0, 2, 1]), "macro_f1") == SINGLE_LABEL
    traits = np.array([[0, 1, 1], [1, 0, 0]])
    assert runpage.label_kind(traits, "fishnet_macro_f1") == MULTI_LABEL
    open_set = np.array([[3, 0], [-1, 0], [5, 1]])
    assert runpage.label_kind(open_set, "fungiclef_reference_score") == OPEN_SET
    assert runpage.label_kind(open_set, "fungiclef_reference_score") == OPEN_SET
    # two 0/1 columns under another metric are traits, not an open set
    assert runpage.label_kind(np.array([[0, 1], [1, 1]]), "macro_f1") == MULTI_LABEL


def test_unknown_label_shape_names_the_run():
    with pytest.raises(runpage.UnrenderableRun, match=r"run 7 \(m on t\).*shape \(2, 2\)"):
        view_of([[3, 4], [5, 6]], [[3, 4], [5, 6]], metric="macro_f1")
    with pytest.raises(runpage.UnrenderableRun, match=r"run 7 \(m on t\).*\(n, 2\).*\(2, 3\)"):
        view_of([[1, 0, 0], [2, 1, 0]], [[1, 0, 0], [2, 1, 0]], metric="fungiclef_reference_score")
    with pytest.raises(runpage.UnrenderableRun, match="force=True"):
        view_of([0, 1], [[0], [1]])


def test_view_reads_back_a_stored_multi_label_run(tmp_path):
    """The store JSON-encodes each example's labels; the view gets (n, traits) arrays back."""
    store = ResultsStore(tmp_path / "s.sqlite")
    y_true = np.array([[1, 0, 1], [0, 0, 1]])
    y_pred = np.array([[1, 1, 1], [0, 0, 0]])
    record = RunRecord(RunKey("m", "fishnet", "simpleshot"), "fishnet_macro_f1", 0.4,
                       extra={"class_names": ["a", "b", "c"]})
    run_id = store.save_run(record, zip(["x", "y"], y_true, y_pred))
    view = RunView.from_store(store.get_run(record.key), store.predictions(run_id))
    assert view.kind == MULTI_LABEL and view.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(view.y_true, y_true)
    np.testing.assert_array_equal(view.y_pred, y_pred)


def test_probe_settings_spell_out_the_stored_json():
    assert runpage.probe_settings({"probe_params": '{"k":10,"metric":"cosine"}'}) == "k=10, metric=cosine"
    assert runpage.probe_settings({"probe_params": "{}"}) == "none"
    assert runpage.probe_settings({}) == "not recorded"


# ---- one label per example ------------------------------------------------------------------
def test_per_class_table_by_hand():
    # class 0: TP 1, FP 1 (example 4), FN 1 (example 1) -> P = R = F1 = 1/2
    # class 1: TP 2, FP 1 (example 1), FN 1 (example 4) -> P = R = F1 = 2/3
    # class 2: TP 0, never predicted, FN 1 -> P 0, R 0, F1 0;  class 3: only predicted: no row
    table = runpage.per_class_table([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 3], ["a", "b", "c", "d"])
    assert table["class"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(table["f1"], [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(table["precision"], [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(table["recall"], [1 / 2, 2 / 3, 0])
    assert table["support"].tolist() == [2, 3, 1]


def test_per_class_table_matches_sklearn_and_the_metric():
    rng = np.random.default_rng(0)
    y_true = rng.choice([-1, 0, 2, 5, 9], size=300)  # gaps in the ids, and the unknown id
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.choice([0, 2, 5, 7], size=300))
    table = runpage.per_class_table(y_true, y_pred, [f"c{i}" for i in range(10)])
    present = np.unique(y_true)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    np.testing.assert_allclose(table["f1"], f)
    np.testing.assert_allclose(table["precision"], p)
    np.testing.assert_allclose(table["recall"], r)
    assert table["support"].tolist() == s.tolist()
    assert table["class"].tolist() == ["unknown", "c0", "c2", "c5", "c9"]
    assert table["f1"].mean() == pytest.approx(metrics.macro_f1(y_true, y_pred))


def test_extreme_classes_put_the_larger_class_first_among_ties():
    table = pd.DataFrame({"label": [0, 1, 2, 3], "class": list("abcd"),
                          "f1": [0.0, 0.0, 1.0, 0.5], "support": [1, 9, 2, 4]})
    worst, best = runpage.extreme_classes(table, n=3)
    assert worst["class"].tolist() == ["b", "a", "d"]  # b and a tie at 0; b has 9 examples
    assert best["class"].tolist() == ["c", "d", "b"]


def test_confusion_table_matches_sklearn_with_names():
    y_true = np.array([0, 0, 1, -1, 2, 2])
    y_pred = np.array([0, 1, 1, 0, 2, -1])
    matrix = runpage.confusion_table(y_true, y_pred, ["a", "b", "c"])
    expected = confusion_matrix(y_true, y_pred, labels=[-1, 0, 1, 2])
    np.testing.assert_array_equal(matrix.to_numpy(), expected)
    assert matrix.index.tolist() == matrix.columns.tolist() == ["unknown", "a", "b", "c"]
    assert (matrix.index.name, matrix.columns.name) == ("true", "predicted")


def test_top_confusions_by_hand():
    # mistakes: a->b twice (a has 4 examples), c->a once (c has 1), b->c once (b has 2)
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [1, 1, 0, 0, 2, 1, 0]
    top = runpage.top_confusions(y_true, y_pred, ["a", "b", "c"], n=2)
    assert top.to_dict("records") == [
        {"true class": "a", "predicted as": "b", "examples": 2, "share of the true class": 0.5},
        {"true class": "b", "predicted as": "c", "examples": 1, "share of the true class": 0.5},
    ]
    assert runpage.top_confusions([0, 1], [0, 1], ["a", "b"]).empty


def test_few_classes_get_bars_and_a_heatmap():
    view = view_of([0, 0, 1, 1, 2], [0, 1, 1, 1, 2], class_names=["a", "b", "c"])
    blocks = runpage.breakdown_blocks(view)
    assert captions(blocks) == ["Per-class F1", "Confusion matrix (rows: true, columns: predicted)"]
    bars, heatmap = figures(blocks)
    assert len(bars.axes[0].patches) == 3  # one bar per class
    assert tables(blocks)[0].index.tolist() == ["a", "b", "c"]
    prose = runpage.breakdown_prose(view)
    for text in ("From the 5 stored predictions", "each of the 3 classes",
                 "their mean is the macro-F1"):
        assert text in prose


def test_many_classes_get_a_histogram_extremes_and_top_confusions():
    n_classes = runpage.MANY_CLASSES + 10
    y_true = np.repeat(np.arange(n_classes), 3)
    y_pred = y_true.copy()
    y_pred[::3] = (y_pred[::3] + 1) % n_classes  # one mistake per class, to the next class
    view = view_of(y_true, y_pred, class_names=[f"species {i}" for i in range(n_classes)])
    blocks = runpage.breakdown_blocks(view)
    assert captions(blocks) == [
        f"Per-class F1 of the {n_classes} classes with a test example",
        "The 10 worst classes", "The 10 best classes", "The 15 most frequent confusions"]
    (histogram,) = figures(blocks)  # no heatmap
    assert sum(p.get_height() for p in histogram.axes[0].patches) == n_classes
    worst, best, confusions = tables(blocks)
    assert len(worst) == len(best) == 10
    np.testing.assert_allclose(worst["f1"], 2 / 3, atol=5e-4)  # shown rounded to 3 places
    assert len(confusions) == 15 and (confusions["examples"] == 1).all()
    assert confusions.iloc[0][["true class", "predicted as"]].tolist() == ["species 0", "species 1"]
    assert f"with {n_classes} classes (more than {runpage.MANY_CLASSES})" in runpage.breakdown_prose(view)


def test_accuracy_task_does_not_call_the_mean_macro_f1():
    view = view_of([0, 1, 1], [0, 1, 0], metric="accuracy", class_names=["x", "y"])
    assert "their mean is not the task's metric (accuracy)" in runpage.breakdown_prose(view)
    bars = figures(runpage.breakdown_blocks(view))[0]
    assert bars.axes[0].get_legend().get_texts()[0].get_text() == "mean over classes"


# ---- re-identification ----------------------------------------------------------------------
REID = {"k": 5, "top1": 0.5, "top5": 1.0, "map": 0.70833, "n_queries_with_match": 4}


def test_reid_figures_sit_next_to_macro_f1():
    view = view_of([0, 0, 1, 1], [0, 1, 1, 1], class_names=["whale A", "whale B"], extra=REID,
                   score=0.733)
    assert view.has_reid and view.noun == "individual"
    blocks = runpage.breakdown_blocks(view)
    assert captions(blocks)[:2] == ["Re-identification", "Per-individual F1"]
    reid = tables(blocks)[0][""]
    assert reid[runpage.REID_FIGURES[1][1]] == 0.5
    assert reid[runpage.REID_FIGURES[3][1]] == 0.7083  # shown to 4 places
    assert reid["macro-F1 over individuals (the task's metric)"] == 0.733
    prose = runpage.breakdown_prose(view)
    for text in ("50.0% of the queries (top-1)", "100.0% (top-5)", "over the 4 queries",
                 "is 0.708", "vote of the 5 nearest"):
        assert text in prose


def test_many_individuals_get_a_histogram():
    n = runpage.MANY_CLASSES + 1
    view = view_of(np.arange(n).repeat(2), np.arange(n).repeat(2), extra=REID)
    blocks = runpage.breakdown_blocks(view)
    assert f"Per-individual F1 of the {n} individuals with a test example" in captions(blocks)
    assert figures(blocks)[0].axes[0].get_ylabel() == "individuals"


# ---- sub-tasks (NeWT) -----------------------------------------------------------------------
def test_subtasks_histogram_and_worst_table():
    per_task = {"gull_vs_tern": 0.5, "egret_feeding": 1.0, "fox_urban": 0.0, "owl_age": 0.5}
    view = view_of([0, 1, 1, 0], [0, 1, 0, 1], metric="accuracy", score=0.5,
                   extra={"per_task_accuracy": per_task, "mean_task_accuracy": 0.5})
    blocks = runpage.breakdown_blocks(view)
    assert captions(blocks) == ["Per-sub-task accuracy", "The 4 worst sub-tasks"]
    worst = tables(blocks)[0]
    assert worst.index.tolist() == ["fox_urban", "gull_vs_tern", "owl_age", "egret_feeding"]
    (histogram,) = figures(blocks)
    assert sum(p.get_height() for p in histogram.axes[0].patches) == 4
    prose = runpage.breakdown_prose(view)
    assert "4 binary sub-tasks" in prose and "`fox_urban`, reaches 0.000" in prose
    assert "mean of the per-sub-task accuracies is 0.500" in prose


# ---- traits (FishNet) -----------------------------------------------------------------------
def test_per_trait_table_by_hand_and_against_sklearn():
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    y_pred = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    table = runpage.per_trait_table(y_true, y_pred, ["pelagic", "tropical", "polar"])
    # trait 0: present-F1: TP 1, FP 1, FN 1 -> 1/2; absent-F1: TP 1, FP 1, FN 1 -> 1/2
    # trait 1: present-F1: TP 2, FP 1 -> 4/5; absent-F1: TP 1, FN 1 -> 2/3
    # trait 2: never present nor predicted: present-F1 0/0 (NaN); absent-F1 1, macro-F1 1
    np.testing.assert_allclose(table[runpage.TRAIT_MACRO], [1 / 2, (4 / 5 + 2 / 3) / 2, 1.0])
    np.testing.assert_allclose(table[runpage.TRAIT_PRESENT][:2], [1 / 2, 4 / 5])
    assert np.isnan(table[runpage.TRAIT_PRESENT][2])
    assert table["images with the trait"].tolist() == [2, 2, 0]
    np.testing.assert_allclose(table["share predicted present"], [1 / 2, 3 / 4, 0])
    reference = [f1_score(y_true[:, t], y_pred[:, t], average="macro") for t in range(2)]
    np.testing.assert_allclose(table[runpage.TRAIT_MACRO][:2], reference)
    assert table[runpage.TRAIT_MACRO].mean() == pytest.approx(metrics.fishnet_macro_f1(y_true, y_pred))


def test_traits_page_shows_bars_table_and_the_metric():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, size=(40, 9))
    y_pred = np.where(rng.random((40, 9)) < 0.7, y_true, 1 - y_true)
    names = [f"trait{i}" for i in range(9)]
    score = metrics.fishnet_macro_f1(y_true, y_pred)
    view = view_of(y_true.tolist(), y_pred.tolist(), metric="fishnet_macro_f1",
                   class_names=names, score=score)
    blocks = runpage.breakdown_blocks(view)
    assert captions(blocks) == ["Per-trait F1"]
    assert len(figures(blocks)[0].axes[0].patches) == 18  # two bars per trait
    assert tables(blocks)[0].index.tolist() == names
    assert f"{len(names)} macro-F1 values, {score:.3f}, is the task's" in runpage.breakdown_prose(view)


# ---- open set (FungiCLEF) -------------------------------------------------------------------
OPEN_TRUE = [[0, 0], [2, 1], [2, 1], [-1, 0], [-1, 0], [5, 0]]
OPEN_PRED = [[0, 0], [2, 1], [0, 0], [-1, 0], [5, 0], [-1, 0]]


def test_known_unknown_and_poison_confusions_by_hand():
    known = runpage.known_unknown_confusion(np.array(OPEN_TRUE), np.array(OPEN_PRED))
    # known truths: 0, 2, 2, 5 -> predicted known 3, unknown 1; unknown truths: 1 known, 1 unknown
    assert known.to_numpy().tolist() == [[3, 1], [1, 1]]
    assert known.index.tolist() == known.columns.tolist() == ["known species", "unknown species"]
    poison = runpage.poison_confusion(np.array(OPEN_TRUE), np.array(OPEN_PRED))
    # poisonous truths (2, 2): one called poisonous, one edible; 4 edible truths all edible
    assert poison.to_numpy().tolist() == [[1, 1], [0, 4]]


def test_metric_extras_get_readable_names_whatever_the_keys():
    table = runpage.metric_extras_table(
        {"ce": 0.25, "worst_psc": 17.5, "track2_ood_f1": 0.4, "detail": {"n_wrong": 3}})
    assert table.loc["classification error (CE, Track 4 costs)", "value"] == 0.25
    assert table.loc["worst possible PSC", "stored as"] == "worst_psc"
    assert table.loc["track2 OOD F1", "value"] == 0.4
    assert table.loc["detail: n wrong", "stored as"] == "detail.n_wrong"
    assert runpage.metric_extras_table(None).empty


def test_open_set_page_shows_both_confusions_losses_and_species():
    # by hand, Track 1: 3 of 6 observations get a wrong id (a wrong known species, a known
    # called unknown, an unknown called known) -> 0.5; Track 2: one poisonous called edible
    # -> 100 / 6
    losses = {"track1_classification_error": 0.5, "track2_poison_confusion_cost": 100 / 6}
    extra = {"metric_extras": losses, "n_predicted_unknown": 2, "distance_threshold": 0.8125,
             "unknown_quantile": 0.95}
    view = view_of(OPEN_TRUE, OPEN_PRED, metric="fungiclef_reference_score", extra=extra,
                   class_names=["Amanita rubescens", "x", "Amanita phalloides", "y", "z",
                                "Boletus edulis"], score=0.4)
    blocks = runpage.breakdown_blocks(view)
    assert captions(blocks)[:4] == [
        "Known and unknown species", "Known/unknown confusion",
        "Poisonous/edible confusion (an unknown species counts as edible)",
        "The challenge's losses, as stored with the run"]
    assert "Per-species F1" in captions(blocks)
    facts, known, poison, loss_table, per_species = tables(blocks)
    assert facts.loc["of species unseen in training (true unknown)", ""] == 2
    assert known.to_numpy().tolist() == [[3, 1], [1, 1]]
    assert loss_table["value"].tolist() == pytest.approx([0.5, 100 / 6])
    assert loss_table.index[1] == "Track 2: poisonous/edible confusion cost (PSC)"
    assert "unknown" in per_species.index
    prose = runpage.breakdown_prose(view)
    for text in ("Of the 6 test observations, 2 are of species never", "called 2 observations unknown",
                 "exceeds 0.812", "the 95% quantile"):
        assert text in prose


def test_open_set_without_stored_extras_says_so():
    view = view_of(OPEN_TRUE, OPEN_PRED, metric="fungiclef_reference_score")
    assert "called not recorded observations" in runpage.breakdown_prose(view)
    assert tables(runpage.breakdown_blocks(view))[3].empty  # no losses stored: an empty table


# ---- legends never cover bars ---------------------------------------------------------------
def _legend_overlaps_a_bar(fig) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        box = legend.get_window_extent(renderer)
        if any(p.get_width() and box.overlaps(p.get_window_extent(renderer)) for p in ax.patches):
            return True
    return False


def test_legends_sit_outside_the_bars():
    full = pd.DataFrame({"class": list("abc"), "f1": [1.0, 1.0, 0.95]})  # bars reach the right
    traits = pd.DataFrame({"trait": ["a", "b"], runpage.TRAIT_MACRO: [1.0, 0.9],
                           runpage.TRAIT_PRESENT: [1.0, np.nan]})
    subtasks = pd.DataFrame({"sub-task": list("abcd"), "accuracy": [1.0, 1.0, 1.0, 0.0]})
    for fig in (runpage.per_class_bars(full, "mean"), runpage.per_trait_bars(traits),
                runpage.f1_histogram([1.0] * 50 + [0.0], "mean"),
                runpage.subtask_histogram(subtasks, 0.8, 0.75)):
        assert fig.axes[0].get_legend() is not None
        assert not _legend_overlaps_a_bar(fig)
    # the check itself can fail: matplotlib's own placement inside the axes covers a bar here
    inside = runpage.per_class_bars(full, "mean")
    inside.axes[0].legend(loc="lower right")
    assert _legend_overlaps_a_bar(inside)


# ---- the dataset section ----------------------------------------------------------------------
def test_class_counts_per_split_and_summary_for_many_classes():
    from biobench.tasks import Example, ImageRef, TaskData

    def examples(labels):
        return [Example(str(i), (ImageRef(Path("x.png")),), label) for i, label in enumerate(labels)]

    small = TaskData(examples([0, 0, 1]), examples([1, 2]), ["a", "b", "c"])
    counts = runpage.class_counts(small)
    assert counts.to_dict() == {"train": {"a": 2, "b": 1, "c": 0, "total": 3},
                                "test": {"a": 0, "b": 1, "c": 1, "total": 2}}
    n = runpage.MANY_CLASSES + 1
    many = TaskData([], examples(list(range(n)) + [0, 0]), [str(i) for i in range(n)])
    summary = runpage.class_counts(many)["examples"]
    assert summary.to_dict() == {"examples": n + 2, "classes": n, "smallest class": 1,
                                 "median class": 1.0, "largest class": 3}


def test_dataset_section_turns_loader_warnings_into_notes(tmp_path, recwarn):
    import warnings

    from biobench.tasks.synthetic import Synthetic

    class WarningSynthetic(Synthetic):
        def load(self, root=None):
            warnings.warn("1 class(es) occur only in the test set: 'blue'", UserWarning)
            return super().load(root)

    outputs = runpage.dataset_outputs(WarningSynthetic(), tmp_path / "synthetic")
    notes = [o.data for o in outputs if hasattr(o, "data") and isinstance(o.data, str)]
    assert notes == ["**Note from the task's loader:** 1 class(es) occur only in the test set: 'blue'"]
    assert not [w for w in recwarn if "only in the test set" in str(w.message)]  # not on stderr
    counts = tables(outputs)[0]
    assert counts.loc["total"].tolist() == [24, 18]  # synthetic: 8 and 6 per class, 3 classes
    assert len(figures(outputs)) == 1


def test_dataset_section_without_data_names_the_download(tmp_path):
    from biobench.taskpage import DataMissingNote
    from biobench.tasks import get_task

    (note,) = runpage.dataset_outputs(get_task("herbarium19"), tmp_path / "nowhere")
    assert isinstance(note, DataMissingNote)
    assert "nowhere" in note.reason and "biobench download herbarium19" in note.text


# ---- the template, executed by papermill on every registered task -------------------------------
def _offline_flowcam(root: Path) -> None:
    """plankton_flowcam as its download installs it: demo-images/<Class>/*.jpg, classes.txt."""
    from biobench.download import write_marker
    from tests.fixtures.images import write_image

    classes = ["Ciliophora", "Tripos"]
    for label, cls in enumerate(classes):
        for i in range(5):  # 5-fold cross-fitting needs 5 per class
            write_image(root / "demo-images" / cls / f"ecotaxa_{cls}_{i}.jpg", label, 2, seed=i)
    (root / "dataset_files").mkdir(parents=True)
    (root / "dataset_files" / "classes.txt").write_text("\n".join(classes) + "\n")
    write_marker(root, "plankton_flowcam", [], note="test fixture")


def _offline_neon(root: Path) -> None:
    """neon_tree_crowns as its download installs it: one tile and testfile_multi.csv."""
    from PIL import Image

    from biobench.download import write_marker

    tile = np.zeros((40, 240, 3), np.uint8)
    rows = ["image_path,xmin,ymin,xmax,ymax,label"]
    for i in range(12):
        label = "Alive" if i % 2 else "Dead"
        tile[:, 20 * i:20 * i + 20] = (40, 200, 60) if label == "Alive" else (150, 110, 80)
        rows.append(f"SOAP_061.png,{20 * i},0,{20 * i + 20},40,{label}")
    root.mkdir(parents=True)
    Image.fromarray(tile).save(root / "SOAP_061.png")
    (root / "testfile_multi.csv").write_text("\n".join(rows) + "\n")
    write_marker(root, "neon_tree_crowns", [], note="test fixture")


def _served(module: str):
    """A task served from the local HTTP server in its real archives, downloaded as a user would."""
    def build(root: Path, server, workdir: Path) -> None:
        from biobench.tasks import get_task
        from tests.fixtures.common import with_fixture_checksums

        name = root.name
        served = importlib.import_module(f"tests.fixtures.{module}").serve(server, workdir)
        with_fixture_checksums(get_task(name), served.files).download(
            root, mirror=server.url, progress=False)
    return build


def _written(writer: str):
    """A task written straight into its extracted layout, with the marker a download leaves."""
    def build(root: Path, server, workdir: Path) -> None:
        from biobench.download import write_marker

        getattr(importlib.import_module(f"tests.fixtures.{root.name}"), writer)(root)
        write_marker(root, root.name, [])
    return build


def _mammalnet(root: Path, server, workdir: Path) -> None:
    from biobench.tasks import get_task
    from tests.fixtures.mammalnet import serve_mammalnet

    serve_mammalnet(server, workdir)  # the download trims clips and samples frames (ffmpeg)
    get_task("mammalnet").download(root, mirror=server.url, progress=False)


FIXTURES = {
    **{name: _served(name) for name in ("herbarium19", "plankton", "plantnet", "inat21",
                                        "imagenet1k", "iwildcam", "ecdysis")},
    **{name: _written(f"write_{name}") for name in ("fishnet", "fungiclef", "beluga", "newt", "kabr")},
    "mammalnet": _mammalnet,
    "plankton_flowcam": lambda root, server, workdir: _offline_flowcam(root),
    "neon_tree_crowns": lambda root, server, workdir: _offline_neon(root),
    "synthetic": lambda root, server, workdir: None,  # generated on first load
}
# FishNet's default probe fits 9 cross-validated logistic regressions (~30 s on the fixture);
# the page's layout depends on the labels, not on the probe.
PROTOCOL = {"fishnet": "simpleshot"}
# Beluga also checks that probe_params reaches the run (the re-ID figures record k).
PROBE_PARAMS = {"beluga": {"k": 3}}


def _task_names() -> list[str]:
    """Every registered task but μ-Bench's: its runs are zero-shot question matrices, read by
    the μ-Bench part of the book (notebooks/ubench/), not by the per-run template."""
    from biobench.tasks import list_tasks

    return [name for name in list_tasks() if not name.startswith("ubench")]


def _outputs(nb) -> list[tuple[dict, dict]]:
    return [(cell, out) for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", [])]


def page_text(nb) -> str:
    """Everything the executed page shows as text: Markdown, HTML tables, plain text."""
    parts = []
    for _, out in _outputs(nb):
        data = out.get("data", {})
        for mime in ("text/markdown", "text/html", "text/plain"):
            if mime in data:
                parts.append(data[mime])
    return "\n".join(parts)


def glued(nb) -> dict[str, dict]:
    return {out["metadata"]["scrapbook"]["name"]: out["data"] for _, out in _outputs(nb)
            if "scrapbook" in out.get("metadata", {})}


@pytest.fixture
def page_env(tmp_path, monkeypatch):
    """A private data folder, feature cache and store for one page; the kernel inherits them."""
    monkeypatch.setenv("BIOBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    monkeypatch.setenv("BIOBENCH_STORE", str(tmp_path / "store.sqlite"))
    return tmp_path


def execute_template(out: Path, **parameters):
    """Run the template as ``biobench.grid.execute_cell`` does: jupytext, then papermill."""
    import jupytext
    import nbformat
    import papermill

    try:
        papermill.execute_notebook(jupytext.read(TEMPLATE), str(out), parameters=parameters,
                                   progress_bar=False, cwd=str(out.parent))
    except papermill.PapermillExecutionError as err:
        pytest.fail(f"the template failed on {parameters}: {err.ename}: {err.evalue}\n"
                    f"{''.join(err.traceback)[-3000:]}")
    return nbformat.read(str(out), as_version=4)


def assert_clean_page(nb) -> None:
    """No error, and no stderr outside cells tagged remove-stderr (the strict book build
    turns any other stderr into a failure)."""
    for cell, out in _outputs(nb):
        assert out.output_type != "error", f"{out.ename}: {out.evalue}"
        if out.output_type == "stream" and out.name == "stderr":
            assert "remove-stderr" in cell.metadata.get("tags", []), out.text


def expected_section(name: str, run: dict) -> list[str]:
    """What the page must show for this task's labels, from the stored run."""
    extra = run["extra"]
    if run["metric"] == "fishnet_macro_f1":
        return ["Per-trait F1", runpage.TRAIT_MACRO, *extra["class_names"]]
    if runpage.is_open_set_metric(run["metric"]):
        return ["Known/unknown confusion", "unknown species", "Poisonous/edible confusion",
                "The challenge's losses", "Per-species F1"]
    if "per_task_accuracy" in extra:
        return ["Per-sub-task accuracy", "worst sub-tasks", *extra["per_task_accuracy"]]
    if "top1" in extra:
        return ["Re-identification", "top-1", "mAP", "Per-individual F1"]
    return ["Per-class F1", "Confusion matrix"]


@pytest.mark.slow
@pytest.mark.parametrize("name", _task_names())
def test_template_renders_every_registered_task(name, page_env, http_server):
    from biobench.tasks import get_task

    assert name in FIXTURES, (f"task '{name}' has no fixture in tests/test_run_pages.py: add a "
                              "builder to FIXTURES so its run page is tested")
    root = page_env / "data" / name
    FIXTURES[name](root, http_server, page_env / "served")
    started = time.perf_counter()
    nb = execute_template(page_env / f"{name}.ipynb", model="random_tiny", task=name,
                          protocol=PROTOCOL.get(name), n_bootstrap=30,
                          probe_params=PROBE_PARAMS.get(name))
    print(f"{name}: page executed in {time.perf_counter() - started:.1f} s")
    assert_clean_page(nb)

    store = ResultsStore(page_env / "store.sqlite")
    (run_id,) = store.runs("own", task=name)["run_id"]
    run = store.runs("own", task=name).iloc[0].to_dict()
    assert run["protocol"] == PROTOCOL.get(name, get_task(name).default_probe)
    predictions = store.predictions(int(run_id))
    assert len(predictions) == run["n_test"] > 0

    text = page_text(nb)
    for snippet in expected_section(name, run):
        assert snippet in text, f"{name}: the page lacks {snippet!r}"
    values = glued(nb)
    assert float(values["score"]["application/papermill.record/text/plain"]) == run["score"]
    prose = values["breakdown_prose"]["application/papermill.record/text/markdown"]
    view = RunView.from_store(run, predictions)
    assert prose == runpage.breakdown_prose(view)  # the page's paragraph is the store's
    assert f"{run['n_test']:,}" in prose
    images = [out for _, out in _outputs(nb) if "image/png" in out.get("data", {})]
    assert len(images) >= 2  # example images, and at least one figure of the breakdown
    if name in PROBE_PARAMS:
        assert json.loads(run["probe_params"])["k"] == run["extra"]["k"] == 3
        assert "k=3" in text


@pytest.mark.slow
def test_force_recomputes_a_stored_run(page_env):
    first = execute_template(page_env / "first.ipynb", model="random_tiny", task="synthetic",
                             n_bootstrap=20)
    store = ResultsStore(page_env / "store.sqlite")
    before = store.runs("own", task="synthetic")
    time.sleep(1.1)  # created_at has one-second resolution
    again = execute_template(page_env / "again.ipynb", model="random_tiny", task="synthetic",
                             n_bootstrap=20)
    assert store.runs("own", task="synthetic")["created_at"].tolist() == before["created_at"].tolist()
    forced = execute_template(page_env / "forced.ipynb", model="random_tiny", task="synthetic",
                              n_bootstrap=20, force=True)
    after = store.runs("own", task="synthetic")
    # recomputed: a new row replaced the stored one (SQLite may reuse the run id itself)
    assert len(after) == 1 and after["created_at"].iloc[0] > before["created_at"].iloc[0]
    assert after["score"].iloc[0] == before["score"].iloc[0]  # same features, same probe
    for nb in (first, again, forced):
        assert_clean_page(nb)


@pytest.mark.slow
def test_template_renders_a_users_own_folder_task(page_env):
    """A task that is not registered (``folder:PATH``) takes the generic single-label path."""
    from biobench.tasks import get_task
    from tests.fixtures.images import write_image

    folder = page_env / "beetles"
    for split, n in (("train", 5), ("test", 3)):
        for label, cls in enumerate(["carabus", "pterostichus"]):
            for i in range(n):
                write_image(folder / split / cls / f"{cls}_{i}.png", label, 2, seed=10 * label + i)
    spec = f"folder:{folder}"
    nb = execute_template(page_env / "beetles.ipynb", model="random_tiny", task=spec,
                          n_bootstrap=20)
    assert_clean_page(nb)
    (run,) = ResultsStore(page_env / "store.sqlite").runs("own").to_dict("records")
    assert run["task"] == get_task(spec).name and run["n_test"] == 6
    text = page_text(nb)
    for snippet in ("Per-class F1", "carabus", "pterostichus"):
        assert snippet in text
