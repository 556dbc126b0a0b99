"""The package installs, imports without extras, and its book is committed clean."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = re.match(r"^\s+- (?!-e )([A-Za-z0-9_.\-]+)", line)
        if item and not line.strip().startswith("- pip:"):
            conda.add(CONDA_TO_PYPI.get(item.group(1).lower(), item.group(1).lower()))
    conda -= {"python", "pip"}
    assert conda == pyproject, f"only in environment.yml: {conda - pyproject}; only in pyproject: {pyproject - conda}"


def test_package_imports_without_dev_extras():
    code = (
        "import importlib, pkgutil, sys, sppnet_lite\n"
        "for m in pkgutil.iter_modules(sppnet_lite.__path__):\n"
        "    importlib.import_module('sppnet_lite.' + m.name)\n"
        "leaked = sorted({'pytest', 'hypothesis', 'nbval'} & set(sys.modules))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: a cell has outputs"
            assert cell.get("execution_count") is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_follows_the_chapter_shape(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name)
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown", "a chapter opens with what the reader will learn"
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert "banner()" in "".join(first_code["source"]), "the first code cell shows the quick-mode flag"
    tail = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "Summary" in tail and "Exercises" in tail
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "interact" in source and "ipywidgets" in source:
            assert source.startswith("# NBVAL_IGNORE_OUTPUT"), f"{path.name}: widget cell not marked"
