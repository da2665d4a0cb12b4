"""The command line: clear errors for bad names and missing data, and the happy path."""

import pytest

from biobench.cli import main
from biobench.store import ResultsStore


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_task_lists_valid_names(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", "random_tiny", "--task", "planktn",
                           "--store", str(tmp_path / "r.sqlite"))
    assert code == 2
    assert "Unknown task 'planktn'" in err and "plankton_flowcam" in err and "synthetic" in err
    assert "Traceback" not in err


def test_unknown_model_lists_valid_names(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", "efficientnet_lite9", "--task", "synthetic",
                           "--store", str(tmp_path / "r.sqlite"))
    assert code == 2
    assert "efficientnet_lite9" in err and "efficientnet_lite0" in err and "random_tiny" in err


def test_missing_data_says_how_to_get_it(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", "random_tiny", "--task", "plankton_flowcam",
                           "--data-root", str(tmp_path / "nowhere"),
                           "--store", str(tmp_path / "r.sqlite"))
    assert code == 2
    assert str(tmp_path / "nowhere") in err and "biobench download plankton_flowcam" in err
    if (tmp_path / "r.sqlite").exists():
        assert ResultsStore(tmp_path / "r.sqlite").runs().empty


def test_list_tasks_shows_presence(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "list", "tasks", "--data-root", str(tmp_path))
    assert code == 0
    line = next(l for l in out.splitlines() if l.strip().startswith("plankton_flowcam"))
    assert "False" in line and str(tmp_path / "plankton_flowcam") in line


def test_run_then_results(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    store = str(tmp_path / "r.sqlite")
    args = ["run", "--model", "random_tiny", "--task", "synthetic", "--store", store,
            "--data-root", str(tmp_path / "synthetic"), "--n-bootstrap", "50"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "stored" in out and "macro_f1" in out
    code, out, _ = run_cli(capsys, *args)
    assert "already in the store" in out
    code, out, _ = run_cli(capsys, "results", "--store", store)
    assert code == 0 and "random_tiny" in out and "synthetic" in out


def test_results_without_store(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "results", "--store", str(tmp_path / "none.sqlite"))
    assert code == 2 and "No results store" in out
