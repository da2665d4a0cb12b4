"""The command line: clear errors for bad names and missing data, and the happy path."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from biobench import cli
from biobench.cli import main
from biobench.probes import PROBES
from biobench.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
# Libraries a wrong name must be reported without: each costs seconds to import.
HEAVY = ("torch", "timm", "open_clip", "papermill", "matplotlib")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_task_lists_valid_names(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", "random_tiny", "--task", "planktn",
                           "--store", str(tmp_path / "r.sqlite"))
    assert code == 2
    assert "Unknown task 'planktn'" in err and "plankton_flowcam" in err and "synthetic" in err
    assert "Did you mean plankton" in err  # as for models
    assert "folder:PATH" in err and "PATH.toml" in err  # how to name your own data
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
    code, out, _ = run_cli(capsys, "list", "tasks", "--data-dir", str(tmp_path))
    assert code == 0
    line = next(l for l in out.splitlines() if l.strip().startswith("plankton_flowcam"))
    assert "False" in line and str(tmp_path / "plankton_flowcam") in line


def test_data_root_means_one_tasks_folder_and_list_says_so(capsys, tmp_path):
    """--data-root is one task's own folder everywhere; `list` takes --data-dir (the parent)."""
    code, _, err = run_cli(capsys, "list", "tasks", "--data-root", str(tmp_path))
    assert code == 2 and "--data-dir" in err and "one task's own folder" in err
    help_text = subcommand_help(capsys, "run")
    assert "--data-root DIR always means ONE task's own data folder" in help_text
    assert "the task's own data folder to fill" in subcommand_help(capsys, "download")


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


# ---- help: generated from the registries -----------------------------------------------------
def subcommand_help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_run_help_lists_every_name_form_and_every_probe(capsys):
    text = subcommand_help(capsys, "run")
    for form in ("timm:ARCH@FILE", "open_clip:ARCH@FILE", "open_clip:hf-hub:ORG/REPO",
                 "<scheme>:ARCH@random", "folder:PATH", "TASK.toml", "path,label,split"):
        assert form in text, form
    # the option's own help (below the usage line), whitespace-normalised
    probe_line = " ".join(text.split("\n  --protocol PROBE", 1)[1].split("--probe-param")[0].split())
    assert list(PROBES) == re.findall(r"\b(" + "|".join(PROBES) + r")\b", probe_line)[:len(PROBES)]


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(re.search(rf"^\s+{command}\b", text, re.M) for command in cli.COMMANDS)


def test_list_probes_shows_each_probes_parameters(capsys):
    code, out, _ = run_cli(capsys, "list", "probes")
    assert code == 0
    for name, cls in PROBES.items():
        line = next(l for l in out.splitlines() if l.strip().startswith(name))
        params = [p for p in cls().get_params() if p != "random_state"]
        assert all(f"{p}=" in line for p in params), (name, params)


# ---- --protocol and --probe-param ----------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("k=10", ("k", 10)), ("C=0.5", ("C", 0.5)), ("class_weight=null", ("class_weight", None)),
    ("fit_intercept=true", ("fit_intercept", True)), ("C_grid=[0.1, 1]", ("C_grid", [0.1, 1])),
    ("class_weight=balanced", ("class_weight", "balanced")),  # not JSON: kept as text
    ("name=a=b", ("name", "a=b")),  # only the first '=' separates
])
def test_probe_param_value_is_json_when_it_parses(text, expected):
    assert cli.parse_probe_param(text) == expected


@pytest.mark.parametrize("text", ["k", "=3", "1k=3", "k-x=3"])
def test_probe_param_without_a_key_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        cli.parse_probe_param(text)


def test_probe_params_reach_run_evaluation(capsys, tmp_path, monkeypatch):
    import biobench.evaluate

    calls = []

    def fake_run_evaluation(model, task, **kwargs):
        calls.append((model, task, kwargs))
        raise SystemExit(0)  # the CLI's part ends here

    monkeypatch.setattr(biobench.evaluate, "run_evaluation", fake_run_evaluation)
    with pytest.raises(SystemExit):
        main(["run", "--model", "random_tiny", "--task", "synthetic", "--protocol", "knn",
              "--probe-param", "k=3", "--force", "--store", str(tmp_path / "r.sqlite")])
    ((model, task, kwargs),) = calls
    assert model == "random_tiny" and task.name == "synthetic"
    assert kwargs["probe_params"] == {"k": 3} and kwargs["protocol"] == "knn"
    assert kwargs["force"] is True


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "knn", "--probe-param", "kk=3"], "--probe-param: Probe 'knn'"),
    (["--protocol", "knn", "--probe-param", "k=3", "--probe-param", "k=4"], "k is given twice"),
    (["--probe-param", "random_state=3"], "random_state is the run's --seed"),
    (["--protocol", "logrg"], "Unknown probe 'logrg'. Did you mean logreg?"),
])
def test_bad_probe_options_fail_before_any_work(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "run", "--model", "random_tiny", "--task", "synthetic",
                           "--store", str(tmp_path / "r.sqlite"), *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "r.sqlite").exists()


def test_unsupported_protocol_and_cross_fitted_n_train_are_named(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", "random_tiny", "--task", "beluga",
                           "--protocol", "logreg")
    assert code == 2 and "task 'beluga' cannot be scored with protocol 'logreg'" in err
    code, _, err = run_cli(capsys, "run", "--model", "random_tiny", "--task", "plankton_flowcam",
                           "--n-train", "10")
    assert code == 2 and "--n-train does not apply" in err


# ---- speed: a wrong name never waits for torch ----------------------------------------------
NAME_ERRORS = """
import json, sys
from biobench.cli import main
from biobench.backbones import model_info
codes = [main(["run", "--model", "nope", "--task", "x"]),
         main(["run", "--model", "mobilenet_v2", "--task", "nope"]),
         main(["run", "--model", "timm_typo:resnet", "--task", "synthetic"]),
         main(["run", "--model", "mobilenet_v2", "--task", "folder:/no/such", "--protocol", "lgreg"])]
resolution = model_info("mobilenet_v2").resolution
print(json.dumps({"codes": codes, "resolution": resolution,
                  "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def test_name_errors_import_no_torch_in_a_fresh_process():
    """The timing itself is in benchmarks/cli_latency.py; here, what makes it fast."""
    done = subprocess.run([sys.executable, "-c", NAME_ERRORS], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == [2, 2, 2, 2]
    assert report["resolution"] == 224  # registered models are described without torch
    assert report["heavy"] == []
    assert "Unknown model 'nope'" in done.stderr and "Unknown task 'nope'" in done.stderr
    assert "Unknown probe 'lgreg'. Did you mean logreg?" in done.stderr


# ---- one command: grid and published are subcommands -----------------------------------------
def test_python_m_biobench_is_the_cli(tmp_path):
    done = subprocess.run([sys.executable, "-m", "biobench", "grid", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: biobench grid" in done.stdout
    assert "--force" in done.stdout and "--kernel" in done.stdout


def test_grid_subcommand_names_a_missing_grid_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "grid", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml not found" in err


def test_makefile_calls_the_subcommands_and_no_python_snippets():
    makefile = (ROOT / "Makefile").read_text()
    recipes = {m.group(1): m.group(2) for m in
               re.finditer(r"^([a-z]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)}
    for target in ("assets", "grid", "published"):
        assert f"$(BIOBENCH) {target}" in recipes[target], recipes.get(target)
    assert "BIOBENCH := $(VENV)/bin/biobench" in makefile
    assert not re.search(r"\$\(PY\) -c", makefile)
    assert "-m biobench." not in makefile
