"""`run_book` executes chapters in fresh kernels, keeps going past a failure, and says so."""

import json

import nbformat

from sppnet_lite import book, config


def _write(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_run_book_executes_chapters_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "BUILD_DIR", tmp_path / "build")
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path / "build" / "results")
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _write(chapters / "01_ok.ipynb", "import os\nassert os.environ['SPPNET_QUICK'] == '1'\nprint(6 * 7)")
    _write(chapters / "02_broken.ipynb", "raise ValueError('on purpose')")

    assert book.run_book(quick=True, chapters_dir=chapters) == 1

    executed = nbformat.read(tmp_path / "build" / "chapters" / "01_ok.ipynb", as_version=4)
    assert "42" in executed.cells[1].outputs[0]["text"]
    assert (tmp_path / "build" / "chapters" / "02_broken.html").exists()
    summary = json.loads((tmp_path / "build" / "results" / "book.json").read_text())
    assert [c["ok"] for c in summary["chapters"]] == [True, False]
    assert "on purpose" in summary["chapters"][1]["error"]
    assert "01_ok" in (tmp_path / "build" / "index.html").read_text()
