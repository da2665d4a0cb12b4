"""Bringing your own task: folder:PATH, a CSV, a TOML task file, and plug-ins by entry point.

Everything here uses data a test writes into a temporary folder: nothing is added to the
package, and no completion marker is ever written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from biobench import download
from biobench.cli import main
from biobench.store import ResultsStore
from biobench.tasks import TaskDataMissing, get_task, list_tasks, registered_tasks
from biobench.tasks.folder import FolderTask, ImageFolderTask, OwnTaskError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("red_beetle", "green_beetle", "blue_beetle")
SIZE = 20


def write_image(path: Path, channel: int, seed: int) -> None:
    """A small image dominated by one colour channel: classes a probe can tell apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(SIZE, SIZE, 3), dtype=np.uint8)
    pixels[..., channel] += 170
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_class_folders(root: Path, test_dir: str = "test", per_class=(6, 3),
                       classes=CLASSES) -> dict[str, list[str]]:
    """root/train/<class>/<i>.png and root/<test_dir>/<class>/<i>.png; returns the example ids
    per split, as paths relative to root."""
    ids: dict[str, list[str]] = {"train": [], "test": []}
    seed = 0
    for split, folder, n in (("train", "train", per_class[0]), ("test", test_dir, per_class[1])):
        for channel, name in enumerate(classes):
            for i in range(n):
                rel = f"{folder}/{name}/{i}.png"
                write_image(root / rel, channel % 3, seed)
                ids[split].append(rel)
                seed += 1
    return ids


@pytest.fixture
def beetles(tmp_path) -> Path:
    root = tmp_path / "my beetles"  # a space: own folders are not always tidy
    make_class_folders(root)
    return root


def quiet_load(task, root=None):
    """Load with every warning turned into an error: a clean folder must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return task.load(root)


# ---- folder:PATH ----------------------------------------------------------------------------
def test_a_folder_of_class_folders_is_a_task_without_marker_or_code(beetles, monkeypatch):
    monkeypatch.chdir(beetles.parent)
    task = get_task("folder:my beetles")  # relative to the current folder
    assert isinstance(task, FolderTask) and isinstance(task, ImageFolderTask)
    assert task.name == f"folder:{beetles.resolve()}"  # absolute: stable across folders
    assert task.name not in registered_tasks()  # made on the fly, nothing registered
    assert not (beetles / download.MARKER_NAME).exists() and task.is_present()
    data = quiet_load(task)
    # class ids: the naturally sorted class folder names, shared by both splits
    assert data.class_names == sorted(CLASSES)
    assert len(data.train) == 6 * 3 and len(data.test) == 3 * 3  # per_class=(6, 3), 3 classes
    for example in data.train + data.test:
        class_folder = example.id.split("/")[1]
        assert data.class_names[example.label] == class_folder
        assert example.images[0].path == beetles.resolve() / example.id
    # the name round-trips: the grid and the papermill template resolve it again
    again = get_task(task.name)
    assert [(e.id, e.label) for e in quiet_load(again).test] == [(e.id, e.label) for e in data.test]


def test_val_folder_is_the_test_split_when_there_is_no_test_folder(tmp_path):
    root = tmp_path / "plankton"
    ids = make_class_folders(root, test_dir="val")
    data = quiet_load(get_task(f"folder:{root}"))
    assert sorted(e.id for e in data.test) == sorted(ids["test"])
    assert all(e.id.startswith("val/") for e in data.test)


def test_empty_class_folder_and_test_only_class_are_named_in_warnings(beetles):
    (beetles / "train" / "empty_beetle").mkdir()
    write_image(beetles / "test" / "rare_beetle" / "0.png", 0, 99)
    task = get_task(f"folder:{beetles}")
    with pytest.warns(UserWarning) as caught:
        data = task.load()
    messages = [str(w.message) for w in caught]
    empty = [m for m in messages if "hold no images" in m]
    test_only = [m for m in messages if "only in the test set" in m]
    assert len(empty) == 1 and "'empty_beetle'" in empty[0] and str(beetles / "train") in empty[0]
    assert len(test_only) == 1 and "'rare_beetle'" in test_only[0]
    # the empty folder is no class; the test-only class keeps an id no training example has
    assert "empty_beetle" not in data.class_names
    rare = data.class_names.index("rare_beetle")
    assert rare not in {e.label for e in data.train}
    assert data.extra["test_only_classes"] == ["rare_beetle"]
    # the warning points at the caller's line, not at a line inside the task modules
    assert all(Path(w.filename).parent != ROOT / "biobench" / "tasks" for w in caught)


def test_images_outside_class_folders_are_skipped_with_a_warning(beetles):
    write_image(beetles / "train" / "stray.png", 0, 7)
    with pytest.warns(UserWarning, match=r"not in a class folder.*'stray.png'"):
        data = get_task(f"folder:{beetles}").load()
    assert all("stray" not in e.id for e in data.train)


@pytest.mark.parametrize("layout, message", [
    (None, "data folder {root} not found"),
    ("train_only", "missing test/ or val/"),
    ("csv_only", "To use its CSV file instead: folder:{root}/labels.csv"),
])
def test_an_incomplete_folder_says_what_layout_is_expected(tmp_path, layout, message):
    root = tmp_path / "mine"
    if layout == "train_only":
        write_image(root / "train" / "a" / "0.png", 0, 0)
    elif layout == "csv_only":
        root.mkdir()
        (root / "labels.csv").write_text("path,label,split\n")
    with pytest.raises(TaskDataMissing) as err:
        get_task(f"folder:{root}").load()
    text = str(err.value)
    assert message.format(root=root) in text
    assert "train/<class>/<image>" in text and "biobench download" not in text


# ---- a CSV file path,label,split -------------------------------------------------------------
def test_csv_gives_the_same_task_as_the_class_folders(beetles):
    """An independent reference: the CSV lists the folder layout's images with their class
    folder as label; both routes must give identical examples and class ids."""
    by_folder = quiet_load(get_task(f"folder:{beetles}"))
    rows = ["path,label,split,notes"]
    for split, examples in (("train", by_folder.train), ("val", by_folder.test)):
        for e in examples:
            rows.append(f"{e.id},{e.id.split('/')[1]},{split},ignored column")
    (beetles / "labels.csv").write_text("\n".join(rows) + "\n")
    task = get_task(f"folder:{beetles}/labels.csv")
    assert task.name == f"folder:{beetles.resolve()}/labels.csv"
    by_csv = quiet_load(task)
    assert by_csv.class_names == by_folder.class_names
    for split in ("train", "test"):
        assert ([(e.id, e.label, e.images[0].path) for e in getattr(by_csv, split)]
                == [(e.id, e.label, e.images[0].path.resolve()) for e in getattr(by_folder, split)])


def test_csv_with_a_test_only_label_warns(tmp_path):
    for i, (label, split) in enumerate([("a", "train"), ("b", "train"), ("a", "test"),
                                        ("ghost", "test")]):
        write_image(tmp_path / f"{i}.png", i % 3, i)
    (tmp_path / "l.csv").write_text("path,label,split\n0.png,a,train\n1.png,b,train\n"
                                    "2.png,a,test\n3.png,ghost,test\n")
    with pytest.warns(UserWarning, match="only in the test set: 'ghost'"):
        data = get_task(f"folder:{tmp_path}/l.csv").load()
    assert data.class_names == ["a", "b", "ghost"] and [e.label for e in data.test] == [0, 2]


@pytest.mark.parametrize("csv_text, error, message", [
    ("file,label,split\n0.png,a,train\n", OwnTaskError, "missing column(s) path"),
    ("path,label,split\n0.png,a,holdout\n", OwnTaskError, "line 2: every row needs"),
    ("path,label,split\n0.png,a,train\n0.png,b,test\n", OwnTaskError, "'0.png' is listed twice"),
    ("path,label,split\n0.png,a,train\nnope.png,a,test\n", TaskDataMissing,
     "1 image(s) listed in"),
    ("path,label,split\n0.png,a,train\n", TaskDataMissing, "has no 'test' rows (or 'val')"),
])
def test_a_broken_csv_names_the_file_and_the_problem(tmp_path, csv_text, error, message):
    write_image(tmp_path / "0.png", 0, 0)
    (tmp_path / "l.csv").write_text(csv_text)
    with pytest.raises(error) as err:
        get_task(f"folder:{tmp_path}/l.csv").load()
    assert message in str(err.value) and str(tmp_path / "l.csv") in str(err.value)


# ---- a TOML task file ------------------------------------------------------------------------
def test_task_file_gives_name_title_metric_and_probe(beetles):
    spec = beetles.parent / "beetles.toml"
    spec.write_text(textwrap.dedent(f"""\
        name = "beetles"
        title = "Ground beetles of the garden"
        data = "{beetles.name}"
        metric = "accuracy"
        default_probe = "knn"
        citation = "Photographed by the tests."
    """))
    task = get_task(str(spec))
    assert (task.name, task.display, task.metric_name, task.default_probe, task.citation) == (
        "beetles", "Ground beetles of the garden", "accuracy", "knn", "Photographed by the tests.")
    assert task.data_path() == beetles.resolve()
    data = quiet_load(task)
    assert len(data.test) == 9
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])
    assert task.score(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))


@pytest.mark.parametrize("body, message", [
    ('name = "x"\ndata = "d"\nlabel = "y"\n', "unknown key(s) label"),
    ('name = "x"\n', "give exactly one of 'data'"),
    ('name = "x"\ndata = "d"\ncsv = "d/l.csv"\n', "give exactly one of 'data'"),
    ('name = "my task"\ndata = "d"\n', "'name' must be given and use only"),
    ('name = "synthetic"\ndata = "d"\n', "'synthetic' is already a registered task"),
    ('name = "x"\ndata = "d"\nmetric = "fishnet_macro_f1"\n', "use one of macro_f1, accuracy"),
    ('name = "x"\ndata = "d"\ndefault_probe = "svm"\n', "default_probe 'svm' is not a probe"),
    ('name = "x"\ncsv = "d/labels.txt"\n', "'csv' must name a .csv file"),
    ('name = x\n', "not valid TOML"),
    ('name = "x"\ndata = 3\n', "data must be text"),
])
def test_a_bad_task_file_names_itself_and_the_fix(tmp_path, body, message):
    spec = tmp_path / "t.toml"
    spec.write_text(body)
    with pytest.raises(OwnTaskError) as err:
        get_task(str(spec))
    assert message in str(err.value) and str(spec) in str(err.value)


def test_missing_task_file_is_named(tmp_path):
    with pytest.raises(OwnTaskError, match="task file .*none.toml not found"):
        get_task(str(tmp_path / "none.toml"))


# ---- the download marker is only for this project's downloads --------------------------------
@pytest.mark.parametrize("marker_text", [None, ""])
def test_downloaded_task_without_its_marker_explains_what_the_marker_is(tmp_path, marker_text):
    root = tmp_path / "plankton"
    make_class_folders(root, test_dir="val")  # the IFCB layout, put there by hand
    if marker_text is not None:
        (root / download.MARKER_NAME).write_text(marker_text)  # what `touch` makes
    with pytest.raises(TaskDataMissing) as err:
        get_task("plankton").load(root)
    text = str(err.value)
    assert "the file `biobench download` writes when a download finishes" in text
    assert ("is not one it wrote" if marker_text is not None else "is not there") in text
    assert f"Your own data needs no such file: use --task folder:{root}" in text
    # ... and that route works on the very same folder
    assert len(quiet_load(get_task(f"folder:{root}")).test) == 9


# ---- end to end: one command, nothing added to the package -----------------------------------
def _run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_folder_task_runs_end_to_end_from_the_command_line(beetles, tmp_path, capsys):
    store_path = tmp_path / "r.sqlite"
    code, out, err = _run_cli(capsys, "run", "--model", "random_tiny", "--task",
                              f"folder:{beetles}", "--protocol", "simpleshot",
                              "--n-bootstrap", "30", "--store", str(store_path))
    assert code == 0, err
    name = f"folder:{beetles.resolve()}"
    assert f"random_tiny on {name} (simpleshot, seed 0)" in out and "(stored" in out
    assert "[biobench " in err  # progress lines reach stderr (and so a piped log)
    store = ResultsStore(store_path)
    runs = store.runs("own", task=name)
    assert len(runs) == 1 and runs["n_test"].iloc[0] == 9
    predictions = store.predictions(int(runs["run_id"].iloc[0]))
    y_true = np.array(list(predictions["y_true"]))
    y_pred = np.array(list(predictions["y_pred"]))
    reference = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                         zero_division=0)
    assert runs["score"].iloc[0] == pytest.approx(reference)
    assert not (beetles / download.MARKER_NAME).exists()
    assert name not in list_tasks()


def test_task_file_runs_end_to_end_under_its_own_name(beetles, tmp_path, capsys):
    spec = tmp_path / "beetles.toml"
    spec.write_text(f'name = "garden_beetles"\ntitle = "Garden beetles"\ndata = "{beetles}"\n')
    store_path = tmp_path / "r.sqlite"
    code, out, err = _run_cli(capsys, "run", "--model", "random_tiny", "--task", str(spec),
                              "--protocol", "knn", "--n-bootstrap", "20", "--store",
                              str(store_path))
    assert code == 0, err
    runs = ResultsStore(store_path).runs("own")
    assert runs["task"].tolist() == ["garden_beetles"] and runs["protocol"].tolist() == ["knn"]


@pytest.mark.slow
def test_papermill_template_runs_a_folder_task(beetles, tmp_path, monkeypatch):
    import jupytext
    import nbformat
    import papermill

    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    store_path = tmp_path / "store.sqlite"
    out = tmp_path / "page.ipynb"
    task = f"folder:{beetles}"
    papermill.execute_notebook(
        jupytext.read(ROOT / "notebooks" / "evaluate.md"), str(out),
        parameters={"model": "random_tiny", "task": task, "protocol": "simpleshot",
                    "n_bootstrap": 20, "store_path": str(store_path)},
        progress_bar=False, cwd=str(tmp_path))
    nb = nbformat.read(str(out), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    runs = ResultsStore(store_path).runs("own")
    assert runs["task"].tolist() == [f"folder:{beetles.resolve()}"]
    glued = {o["metadata"]["scrapbook"]["name"]: o["data"] for o in outputs
             if "scrapbook" in o.get("metadata", {})}
    title = glued["run_title"]["application/papermill.record/text/markdown"]
    assert title.endswith(" on my beetles (own task)")
    assert float(glued["score"]["application/papermill.record/text/plain"]) == runs["score"][0]


# ---- a task module inside the package: found on first use, no import line -----------------------
def test_a_task_module_in_the_package_is_found_on_first_use(tmp_path, monkeypatch, beetles):
    import biobench.tasks as package
    from biobench.tasks import base

    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(base, "_TASKS", dict(base._TASKS))
    monkeypatch.setattr(package, "_discovered", False)
    (tmp_path / "extra_beetles.py").write_text(textwrap.dedent(f"""\
        from pathlib import Path
        from biobench.tasks import register_task
        from biobench.tasks.folder import ImageFolderTask

        @register_task
        class ExtraBeetles(ImageFolderTask):
            name = "extra_beetles"
            display = "Extra beetles"
            def data_path(self, root=None):
                return Path(root or {str(beetles)!r})
        """))
    try:
        assert "extra_beetles" in list_tasks() and "synthetic" in list_tasks()
        assert len(quiet_load(get_task("extra_beetles")).train) == 18
    finally:
        sys.modules.pop("biobench.tasks.extra_beetles", None)


# ---- plug-ins from another installed distribution (entry points) -----------------------------
PLUGIN_TASKS = '''
from pathlib import Path
import os

from biobench.tasks import register_task
from biobench.tasks.folder import ImageFolderTask


@register_task
class PluginBeetles(ImageFolderTask):
    name = "plugin_beetles"
    display = "Beetles from a plug-in"
    citation = "tests/test_own_task.py"

    def data_path(self, root=None):
        return Path(root) if root is not None else Path(os.environ["PLUGIN_DATA"])
'''

PLUGIN_MODELS = '''
import torch
from torch import nn
from torchvision import transforms

from biobench.backbones import ModelInfo, register_model

INFO = ModelInfo(name="plugin_tiny", display="Plug-in tiny net", family="test",
                 loader="random", pretrained=False, resolution=16)


@register_model("plugin_tiny", INFO)
def build(info):
    from biobench.backbones.base import Backbone

    torch.manual_seed(0)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 8))
    transform = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])
    return Backbone(net, transform, info, feature_dim=8)
'''

PLUGIN_CHECK = '''
import json, sys, warnings
from biobench.backbones import list_models, model_info
from biobench.cli import main
from biobench.tasks import get_task, list_tasks

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tasks, models = list_tasks(), list_models()
code = main(["run", "--model", "plugin_tiny", "--task", "plugin_beetles", "--protocol",
             "simpleshot", "--n-bootstrap", "10", "--store", sys.argv[1]])
print(json.dumps({"tasks": tasks, "models": models, "code": code,
                  "display": get_task("plugin_beetles").display,
                  "warnings": [str(w.message) for w in caught]}))
'''


def write_distribution(site: Path, name: str, modules: dict[str, str], entry_points: str) -> None:
    """What ``pip install`` leaves for a tiny package: its modules and a ``.dist-info`` folder
    with METADATA and entry_points.txt (importlib.metadata reads exactly these)."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_tasks_and_models_from_another_distribution_register_by_entry_point(beetles, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(
        site, "beetle_plugins",
        {"beetle_tasks": PLUGIN_TASKS, "beetle_models": PLUGIN_MODELS,
         "broken_plugin": "raise ImportError('this plug-in is broken on purpose')\n"},
        "[biobench.tasks]\nbeetles = beetle_tasks\nbroken = broken_plugin\n\n"
        "[biobench.backbones]\ntiny = beetle_models\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),
               PLUGIN_DATA=str(beetles), BIOBENCH_FEATURES=str(tmp_path / "features"))
    done = subprocess.run([sys.executable, "-c", PLUGIN_CHECK, str(tmp_path / "r.sqlite")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "plugin_beetles" in report["tasks"] and "synthetic" in report["tasks"]
    assert "plugin_tiny" in report["models"] and "mobilenet_v2" in report["models"]
    assert report["display"] == "Beetles from a plug-in"
    # a broken plug-in is named (entry point, distribution, error) and the others still work
    (broken,) = [w for w in report["warnings"] if "broken" in w]
    assert "broken = broken_plugin" in broken and "beetle_plugins" in broken
    assert "broken on purpose" in broken
    assert report["code"] == 0
    runs = ResultsStore(tmp_path / "r.sqlite").runs("own")
    assert (runs["model"].tolist(), runs["task"].tolist()) == (["plugin_tiny"], ["plugin_beetles"])
