"""The book's task chapters: facts from the task classes, the missing-data note, the example
grid on real (generated) images, and one page per registered task that calls ``show_task``."""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

import jupytext
import nbclient
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from biobench import published, taskpage
from biobench.images import load_image
from biobench.metrics import METRIC_LABELS
from biobench.probes import KNNProbe
from biobench.tasks import Example, ImageRef, TaskData, base, get_task, list_tasks, synthetic
from biobench.tasks.plankton_ifcb import PlanktonIFCB

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "book" / "tasks"
BOOK_GROUPS = ("offline", "benchmark", "prior_work")


# ---- facts --------------------------------------------------------------------------------
class RenamedPlankton(PlanktonIFCB):
    """Every attribute a page shows, changed in a subclass."""

    name = "renamed_plankton"
    display = "Renamed plankton"
    kingdom = "Fungi"
    modality = "sonar"
    citation = "Someone (2099). A citation that only this subclass has."
    metric_name = "accuracy"
    default_probe = "knn"
    pooling = "max"
    group = "prior_work"
    download_hint = "fetch it by carrier pigeon"


def test_facts_follow_the_class_attributes(monkeypatch, tmp_path):
    monkeypatch.setitem(base._TASKS, RenamedPlankton.name, RenamedPlankton)
    facts = taskpage.task_facts(RenamedPlankton.name, root=tmp_path / "nowhere")

    assert facts["task"] == "renamed_plankton" and facts["title"] == "Renamed plankton"
    assert (facts["kingdom"], facts["modality"]) == ("Fungi", "sonar")
    assert facts["metric"] == f"{METRIC_LABELS['accuracy']} (accuracy)"
    assert facts["default probe"].startswith("knn: ")
    assert KNNProbe.__doc__.strip().splitlines()[0] in facts["default probe"]
    assert facts["pooling (examples of several images)"] == "max"
    assert facts["group"] == taskpage.GROUP_LABELS["prior_work"]
    assert facts["citation"] == RenamedPlankton.citation
    assert facts["download"] == "fetch it by carrier pigeon"
    assert facts["data folder"] == str(tmp_path / "nowhere")
    assert facts["data on this machine"] == "no"
    # every fact but presence differs from the parent's: none is typed into the page code
    default_facts = taskpage.task_facts(RenamedPlankton.name)
    default_original = taskpage.task_facts("plankton")
    changed = {k for k in default_facts if default_facts[k] != default_original[k]}
    assert changed == set(facts) - {"data on this machine"}
    assert default_facts["data folder"].endswith("renamed_plankton")


def test_download_command_falls_back_to_the_cli():
    assert taskpage.download_command("beluga") == "biobench download beluga"
    assert taskpage.download_command("imagenet1k") == get_task("imagenet1k").download_hint


def test_unknown_probe_is_shown_by_name():
    assert taskpage.probe_summary("no_such_probe") == "no_such_probe"


# ---- data absent --------------------------------------------------------------------------
def test_missing_data_gives_a_note_naming_the_command_and_no_figure(monkeypatch, tmp_path):
    task = get_task("beluga")

    def must_not_load(root=None):
        raise AssertionError("show_task loaded a task whose data is absent")

    monkeypatch.setattr(task, "load", must_not_load)
    root = tmp_path / "absent"
    outputs = taskpage.task_page_outputs(task, root=root)

    # the facts, the documented sizes (a caption and a table), then the note
    assert [type(o).__name__ for o in outputs] == ["DataFrame", "Markdown", "DataFrame",
                                                   "DataMissingNote"]
    note = outputs[-1]
    assert "biobench download beluga" in note.text and str(root) in note.text
    assert "<code>biobench download beluga</code>" in note._repr_html_()
    assert 'class="admonition note"' in note._repr_html_()
    assert taskpage.data_sizes(task, root) is None
    assert taskpage.example_grid(task, root=root) is None


def test_note_renders_quoted_commands_of_a_long_hint_as_code(tmp_path):
    note = taskpage.task_page_outputs("imagenet1k", root=tmp_path / "absent")[-1]
    html = note._repr_html_()
    assert "<code>huggingface-cli login</code>" in html
    assert "<code>biobench download imagenet1k</code>" in html
    assert "`" not in html


def test_show_task_writes_nothing_to_stderr(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would reach stderr in a book build
        taskpage.show_task("fishnet", root=tmp_path / "absent")
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "biobench download fishnet" in captured.out


# ---- data present: the synthetic task generates real image files --------------------------
@pytest.fixture
def synthetic_root(tmp_path):
    root = tmp_path / "synthetic"
    get_task("synthetic").download(root, progress=False)
    return root


def drawn_images(ax) -> list[np.ndarray]:
    return [np.asarray(image.get_array()) for image in ax.get_images()]


def test_example_grid_draws_per_class_images_of_the_right_class(synthetic_root):
    fig = taskpage.example_grid("synthetic", per_class=4, root=synthetic_root)
    n_classes = len(synthetic.CLASSES)
    axes = np.asarray(fig.axes).reshape(n_classes, 4)
    assert len(fig.axes) == n_classes * 4

    for label, row in enumerate(axes):
        assert row[0].get_ylabel() == synthetic.CLASSES[label]
        # the class's training files, decoded independently of the grid
        files = sorted((synthetic_root / "train" / synthetic.CLASSES[label]).glob("*.png"))
        originals = [np.asarray(load_image(ImageRef(f))) for f in files]
        for ax in row:
            (image,) = drawn_images(ax)
            assert any(np.array_equal(image, original) for original in originals)
        # four different images, not one repeated
        assert len({drawn_images(ax)[0].tobytes() for ax in row}) == 4


def test_example_grid_is_deterministic_in_its_seed(synthetic_root):
    def picture(seed):
        fig = taskpage.example_grid("synthetic", per_class=3, seed=seed, root=synthetic_root)
        return [drawn_images(ax)[0].tobytes() for ax in fig.axes]

    assert picture(0) == picture(0)
    assert picture(0) != picture(1)


def test_example_grid_caps_classes_and_leaves_missing_cells_empty(synthetic_root):
    n_train = synthetic.PER_CLASS["train"]
    fig = taskpage.example_grid("synthetic", per_class=n_train + 2, max_classes=2,
                                root=synthetic_root)
    assert len(fig.axes) == 2 * (n_train + 2)
    assert sum(len(ax.get_images()) for ax in fig.axes) == 2 * n_train
    assert sum(not ax.axison for ax in fig.axes) == 2 * 2
    assert "2 of 3 classes" in fig.get_suptitle()


def test_data_sizes_count_the_generated_files(synthetic_root):
    sizes = taskpage.data_sizes("synthetic", synthetic_root)
    n_files = {split: len(list((synthetic_root / split).rglob("*.png")))
               for split in ("train", "test")}
    assert sizes["training examples"] == n_files["train"]
    assert sizes["test examples"] == n_files["test"]
    assert sizes["images"] == n_files["train"] + n_files["test"]
    assert sizes["classes"] == sizes["classes with a test example"] == len(synthetic.CLASSES)
    per_class = sum(synthetic.PER_CLASS.values())
    assert sizes["examples in the smallest class"] == per_class
    assert sizes["examples in the largest class"] == per_class


def test_present_data_gives_sizes_and_a_figure_but_no_note(synthetic_root):
    outputs = taskpage.task_page_outputs("synthetic", root=synthetic_root, per_class=2)
    kinds = [type(o).__name__ for o in outputs]
    assert "DataMissingNote" not in kinds
    assert kinds.count("DataFrame") == 2 and kinds[-1] == "FigureImage"
    png = outputs[-1]._repr_png_()
    assert png.startswith(b"\x89PNG") and len(outputs[-1].figure.axes) == 3 * 2


# ---- the BioBench tasks on fixtures in their real layouts ----------------------------------
@pytest.mark.parametrize("name", ["beluga", "fishnet", "fungiclef", "kabr", "newt"])
def test_real_layouts_give_sizes_and_a_grid(name, tmp_path):
    from biobench import download
    from tests.fixtures import beluga, fishnet, fungiclef, kabr, newt

    writers = {"beluga": beluga.write_beluga, "fishnet": fishnet.write_fishnet,
               "fungiclef": fungiclef.write_fungiclef, "kabr": kabr.write_kabr,
               "newt": newt.write_newt}
    root = tmp_path / name
    writers[name](root)
    download.write_marker(root, name, [])  # what a finished download leaves
    task = get_task(name)
    data = task.load(root)

    outputs = taskpage.task_page_outputs(task, root=root)
    sizes = taskpage.data_sizes(task, root, data)
    assert (sizes["training examples"], sizes["test examples"]) == (len(data.train), len(data.test))
    grid = outputs[-1].figure
    shown = [ax for ax in grid.axes if ax.get_images()]
    assert 0 < len(shown) <= 8 * 4
    frames_per_example = len((data.train or data.test)[0].images)
    if frames_per_example > 1:  # a KABR clip or a FungiCLEF observation: its first image
        assert all(ax.get_xlabel().startswith("1st of") for ax in shown)


def test_loader_notes_join_the_sizes():
    ex = Example("a", (ImageRef(Path("a.png")),), 0)
    data = TaskData([ex], [ex], ["one"], {"n_individuals": 5, "frame_seed": 42,
                                          "clips_dropped_under_16_frames": {"train": 2, "test": 0}})
    sizes = taskpage.data_sizes("synthetic", data=data)
    assert sizes["individuals"] == "5" and sizes["frame seed"] == "42"
    assert sizes["clips dropped under 16 frames"] == "train 2, test 0"
    assert sizes["images"] == 1  # the same image in both splits counts once


# ---- clips, multi-label and open-set labels, unreadable files ------------------------------
def test_a_clip_shows_its_first_frame(synthetic_root):
    frames = sorted((synthetic_root / "train" / "red").glob("*.png"))
    clip = Example("clip", tuple(ImageRef(f) for f in frames[:3]), 0)
    data = TaskData([clip], [], ["red"])
    fig = taskpage.example_grid("synthetic", per_class=1, data=data)
    (ax,) = fig.axes
    (image,) = drawn_images(ax)
    assert np.array_equal(image, np.asarray(load_image(ImageRef(frames[0]))))
    assert ax.get_xlabel() == "1st of 3 images"


def test_multi_label_examples_join_every_class_they_have():
    a = Example("a", (), (1, 0, 1))
    b = Example("b", (), (0, 0, 1))
    groups = taskpage.examples_by_class([a, b])
    assert {k: [ex.id for ex in v] for k, v in groups.items()} == {0: ["a"], 2: ["a", "b"]}


def test_unknown_label_is_named_unknown():
    data = TaskData([], [], ["species a"])
    assert taskpage.class_name(data, 0) == "species a"
    assert taskpage.class_name(data, taskpage.UNKNOWN_LABEL) == "unknown"
    assert taskpage.class_name(data, 7) == "class 7"


def test_an_unreadable_image_names_its_file_instead_of_failing(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    data = TaskData([Example("x", (ImageRef(broken),), 0)], [], ["only"])
    fig = taskpage.example_grid("synthetic", per_class=1, data=data)
    (ax,) = fig.axes
    assert not ax.get_images()
    assert "broken.jpg" in " ".join(t.get_text() for t in ax.texts)


def test_small_extras_are_described_and_bulky_ones_left_out():
    assert taskpage._describe_extra(1234) == "1,234"
    assert taskpage._describe_extra({"train": 3, "test": 1}) == "train 3, test 1"
    assert taskpage._describe_extra(["a", "b", "c"]) == "3"
    assert taskpage._describe_extra(0.95) == "0.95"
    assert taskpage._describe_extra({f"task{i}": i for i in range(164)}) is None


# ---- the summary table of the part --------------------------------------------------------
def test_summary_lists_every_book_task_in_book_order():
    from biobench.analysis import PAPER_TASKS

    table = taskpage.task_summary()
    expected = {n for g in BOOK_GROUPS for n in list_tasks(g)}
    assert set(table.index) == expected and len(table) == len(expected)
    order = list(table.index)
    offline, prior = list_tasks("offline"), list_tasks("prior_work")
    assert set(order[: len(offline)]) == set(offline)
    assert set(order[-len(prior):]) == set(prior)
    paper_rows = table.loc[list(PAPER_TASKS), "group"]
    assert (paper_rows == "benchmark (paper)").all()
    assert table.loc["ecdysis", "group"] == "benchmark (after the paper)"
    assert order.index("ecdysis") > max(order.index(n) for n in PAPER_TASKS)


def test_summary_html_links_each_task_to_its_page():
    html = taskpage.task_summary_html(["beluga", "plankton_flowcam"])
    assert '<a href="beluga.html">Beluga whale re-identification</a>' in html
    assert "<code>plankton_flowcam</code>" in html
    assert (PAGES / "beluga.md").is_file() and (PAGES / "plankton_flowcam.md").is_file()


# ---- the pages ------------------------------------------------------------------------------
def page_calls(path: Path) -> list[tuple[str, list, list[str]]]:
    """(function name, positional string arguments, cell tags) of every call in code cells."""
    notebook = jupytext.read(path)
    calls = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                args = [a.value for a in node.args if isinstance(a, ast.Constant)]
                calls.append((node.func.id, args, tags))
    return calls


def test_every_book_task_has_a_page():
    missing = [n for g in BOOK_GROUPS for n in list_tasks(g) if not (PAGES / f"{n}.md").is_file()]
    assert not missing, f"no page under book/tasks for {missing}"


@pytest.mark.parametrize("page", sorted(p.name for p in PAGES.glob("*.md") if p.stem != "index"))
def test_each_page_shows_its_registered_task_once(page):
    path = PAGES / page
    notebook = jupytext.read(path)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "myst"
    shows = [(args, tags) for name, args, tags in page_calls(path) if name == "show_task"]
    assert len(shows) == 1, f"{page} should call show_task exactly once"
    (args, tags), = shows
    assert args == [path.stem] and path.stem in list_tasks()
    assert "remove-input" in tags
    text = path.read_text()
    assert text.count("\n# ") == 1, f"{page} should have one title"
    assert "{glue:md}`citation`" in text


def test_index_page_builds_its_table_from_code():
    calls = [name for name, _, _ in page_calls(PAGES / "index.md")]
    assert "task_summary_html" in calls


def test_a_page_executes_cleanly_without_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("BIOBENCH_PUBLISHED_RESULTS", str(tmp_path / "no_published.json"))
    notebook = jupytext.read(PAGES / "kabr.md")
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("name") == "stderr" or o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "biobench download kabr" in html and "admonition note" in html
    assert "Published scores not available" in html
    assert str(tmp_path) not in json.dumps([dict(o) for o in outputs])  # no machine path
    assert "$BIOBENCH_DATA/kabr" in html
    glued = [o.metadata.get("scrapbook", {}).get("name") for o in outputs if "metadata" in o]
    assert "citation" in glued
    assert set(taskpage.published_scores_glue(None)) <= set(glued)


# ---- no machine paths ---------------------------------------------------------------------
def test_default_data_folder_is_shown_as_the_variable_not_the_machine_path(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOBENCH_DATA", str(tmp_path / "data"))
    facts = taskpage.task_facts("beluga")
    assert facts["data folder"] == "$BIOBENCH_DATA/beluga"
    note = taskpage.task_page_outputs("beluga")[-1]
    assert isinstance(note, taskpage.DataMissingNote)
    assert "$BIOBENCH_DATA/beluga" in note.text and "$BIOBENCH_DATA/beluga" in note._repr_html_()
    assert str(tmp_path) not in note.text + note._repr_html_()


def test_portable_text_leaves_an_explicit_folder_alone(tmp_path):
    task = get_task("beluga")
    message = f"data not found at {tmp_path}"
    assert taskpage.portable_text(message, task, root=tmp_path) == message


# ---- documented sizes ---------------------------------------------------------------------
def test_every_downloaded_book_task_has_documented_sizes_and_offline_ones_none():
    downloaded = [n for g in ("benchmark", "prior_work") for n in list_tasks(g)]
    assert downloaded and all(taskpage.documented_sizes(n) for n in downloaded)
    assert set(taskpage.DOCUMENTED_SIZES) == set(downloaded)  # no entry for an unknown task
    assert all(taskpage.documented_sizes(n) is None for n in list_tasks("offline"))
    # each entry says how the task is split and what its classes are
    for name, sizes in taskpage.DOCUMENTED_SIZES.items():
        assert "classes" in sizes and ({"split"} & set(sizes) or {"training images", "test images"} <= set(sizes)), name


# ---- published scores of one task ---------------------------------------------------------
def _tiny_published() -> published.Published:
    """Five models on Beluga and ImageNet-1K, numbers chosen so every summary can be checked."""
    models = [{"ckpt": f"m{i}", "display": "Same name" if i in (3, 4) else f"Model {i}",
               "family": "cv4ecology" if i == 0 else "CNN", "resolution": 224 + 32 * i,
               "params": 1e6 * (i + 1), "release_ms": 0} for i in range(5)]
    beluga = [0.30, 0.25, 0.20, 0.10, 0.05]
    imagenet = [0.70, 0.80, 0.60, 0.75, 0.50]
    results = []
    for i, (b, x) in enumerate(zip(beluga, imagenet)):
        # model 1's interval excludes its own estimate; the others contain it
        low, high = (b + 0.01, b + 0.03) if i == 1 else (b - 0.02, b + 0.02)
        results.append({"task": "beluga", "model": f"m{i}", "mean": b, "bootstrap_mean": b - 0.01,
                        "ci_low": low, "ci_high": high})
        results.append({"task": "imagenet1k", "model": f"m{i}", "mean": x, "bootstrap_mean": x,
                        "ci_low": x - 0.01, "ci_high": x + 0.01})
    raw = {"meta": {}, "models": models,
           "benchmark_tasks": [{"name": "beluga", "display": "Beluga"}],
           "prior_work_tasks": [{"name": "imagenet1k", "display": "ImageNet-1K"}],
           "results": results,
           "bests": [{"task": "beluga", "best": "m0", "ties": ["m0", "m1"]},
                     {"task": "imagenet1k", "best": "m1", "ties": ["m1"]}]}
    return published.parse_published(raw, origin="tiny")


def test_published_task_scores_match_hand_computed_values():
    scores = taskpage.published_task_scores("beluga", _tiny_published(), top_n=3)
    assert scores.n_models == 5 and scores.n_tied == 2 and scores.n_outside == 1
    assert (scores.lowest, scores.median, scores.highest) == pytest.approx((0.05, 0.20, 0.30))
    assert scores.median_shift_pt == pytest.approx(-1.0)
    assert list(scores.top["model"]) == ["m0", "m1", "m2"]  # best first, cut at top_n
    assert list(scores.top["best"]) == [True, False, False]
    assert list(scores.top["tie"]) == [True, True, False]
    # the association against an independent reference: scipy's Spearman and Pearson
    x, y = [0.70, 0.80, 0.60, 0.75, 0.50], [0.30, 0.25, 0.20, 0.10, 0.05]
    assert scores.imagenet["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert scores.imagenet["r2"] == pytest.approx(stats.pearsonr(x, y).statistic ** 2)
    assert scores.imagenet["n"] == 5


def test_published_scores_table_marks_best_and_ties_and_names_duplicates_apart():
    pub = _tiny_published()
    table = taskpage.published_scores_table(taskpage.published_task_scores("beluga", pub))
    column = "macro-F1 (%), 95 % interval"
    assert list(table[column][:3]) == ["★ 30.0 [28.0, 32.0]", "≈ 25.0 [26.0, 28.0]",
                                       "20.0 [18.0, 22.0]"]
    assert table["model"].is_unique  # "Same name" twice becomes two labels
    assert table.index[0] == 1 and table.index.name == "rank"


def test_imagenet_itself_gets_no_association_and_unscored_tasks_none():
    pub = _tiny_published()
    assert taskpage.published_task_scores("imagenet1k", pub).imagenet is None
    assert taskpage.published_task_scores("kabr", pub) is None
    texts = taskpage.published_scores_glue(taskpage.published_task_scores("imagenet1k", pub))
    assert texts["published_r2"] == "(not applicable)"


def test_glue_texts_are_the_same_keys_with_or_without_the_file():
    pub = _tiny_published()
    with_file = taskpage.published_scores_glue(taskpage.published_task_scores("beluga", pub))
    without = taskpage.published_scores_glue(None)
    assert set(with_file) == set(without)
    assert with_file["published_lowest"] == "5.0 %" and with_file["published_n_outside"] == "1"
    assert with_file["published_median_shift"] == "−1.0"
    assert all("nan" not in v.lower() and "none" not in v.lower() for v in with_file.values())


def test_missing_file_gives_a_note_and_no_numbers():
    outputs, texts = taskpage.published_outputs("beluga", None)
    assert [type(o).__name__ for o in outputs] == ["PublishedMissingNote"]
    assert "BIOBENCH_PUBLISHED_RESULTS" in outputs[0]._repr_html_()
    assert not any(re.search(r"\d", v) for v in texts.values())


def test_chapters_show_their_published_scores_and_quote_only_glued_keys():
    known = set(taskpage.published_scores_glue(None))
    for path in sorted(PAGES.glob("*.md")):
        if path.stem == "index":
            continue
        shows = [args for name, args, _ in page_calls(path) if name == "show_published_scores"]
        assert shows == [[path.stem]], f"{path.name} should call show_published_scores once"
        quoted = set(re.findall(r"\{glue:text\}`(published_\w+)`", path.read_text()))
        assert quoted <= known, f"{path.name} quotes unknown glue keys {quoted - known}"


PUBLISHED_FILE = ROOT.parent / "shared" / "reference" / "biobench_results.json"


@pytest.mark.skipif(not PUBLISHED_FILE.is_file(), reason="the published leaderboard file is not here")
def test_real_file_beluga_summary_matches_the_raw_json():
    raw = json.loads(PUBLISHED_FILE.read_text())
    rows = pd.DataFrame(raw["results"])
    beluga = rows[rows["task"] == "beluga"].set_index("model")["mean"]
    imagenet = rows[rows["task"] == "imagenet1k"].set_index("model")["mean"]
    both = pd.concat([beluga, imagenet], axis=1, join="inner")
    scores = taskpage.published_task_scores("beluga", published.load_published(PUBLISHED_FILE))
    assert scores.n_models == len(beluga)
    assert scores.highest == pytest.approx(beluga.max())
    assert scores.top["model"].iloc[0] == beluga.idxmax()
    assert scores.imagenet["spearman"] == pytest.approx(
        stats.spearmanr(both.iloc[:, 1], both.iloc[:, 0]).statistic)
