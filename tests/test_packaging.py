"""pip (pyproject.toml) and conda (environment.yml) must install the same thing, and the
README's commands must exist where it says they do."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _requirements(lines: list[str], where: str) -> dict[str, SpecifierSet]:
    out: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{where} declares {req.name} twice"
        out[name] = req.specifier
    return out


def pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return _requirements(lines, "pyproject.toml")


def environment_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_requirements() -> dict[str, SpecifierSet]:
    pip_sections = [d["pip"] for d in environment_yml()["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1, "environment.yml needs exactly one `pip:` list"
    # "-e ." installs the project itself; it is not a dependency
    lines = [line for line in pip_sections[0] if not line.startswith("-")]
    return _requirements(lines, "environment.yml")


def test_requirement_parser_sees_a_difference():
    # guard against a comparison that is trivially equal
    a = _requirements(["torch==2.15.0", "numpy>=1.26"], "a")
    b = _requirements(["torch==2.14.0", "numpy>=1.26"], "b")
    assert a != b
    assert _requirements(["Scikit_Learn>=1.5"], "c") == _requirements(["scikit-learn>=1.5"], "d")


def test_pyproject_and_environment_declare_the_same_dependencies():
    pip_reqs = pyproject_requirements()
    conda_reqs = environment_requirements()
    only_pip = sorted(set(pip_reqs) - set(conda_reqs))
    only_conda = sorted(set(conda_reqs) - set(pip_reqs))
    assert not only_pip, f"in pyproject.toml but not environment.yml: {only_pip}"
    assert not only_conda, f"in environment.yml but not pyproject.toml: {only_conda}"
    differing = {n: (str(pip_reqs[n]), str(conda_reqs[n]))
                 for n in pip_reqs if pip_reqs[n] != conda_reqs[n]}
    assert not differing, f"version specifiers differ (pyproject, environment.yml): {differing}"


def test_environment_python_satisfies_requires_python():
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                            ["requires-python"])
    pythons = [d for d in environment_yml()["dependencies"]
               if isinstance(d, str) and re.match(r"python[=<>]", d)]
    assert len(pythons) == 1, "environment.yml must pin one python version"
    version = re.sub(r"^python=+", "", pythons[0])
    assert version + ".0" in requires, f"python {version} does not satisfy {requires}"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.M))


def test_readme_commands_are_make_targets():
    readme = (ROOT / "README.md").read_text()
    targets = _make_targets()
    for command in ("make book", "make test"):
        assert command in readme, f"README.md does not show `{command}`"
        assert command.split()[1] in targets, f"Makefile has no `{command.split()[1]}` target"


def test_ci_script_runs_the_readme_commands():
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    text = ci.read_text()
    book, test = text.find("make book"), text.find("make test")
    assert book != -1 and test != -1, ".ci/run must run `make book` and `make test`"
    assert book < test, "the site test needs the built book: `make book` must come first"


@pytest.mark.parametrize("path", [".venv/", "_build/", "book/runs/", "results/"])
def test_generated_paths_are_git_ignored(path):
    ignored = (ROOT / ".gitignore").read_text().split()
    assert path in ignored, f"{path} is generated and must be in .gitignore"
