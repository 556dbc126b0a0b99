"""`run_book` executes chapters in fresh kernels, keeps going past a failure, says so, and
builds the HTML book; widgets become their default figure; the README gives two pages."""

import json

import nbformat

from sppnet_lite import book

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
       "RU5ErkJggg==")


def _write(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t\n\n$$d_x = \\frac{g_x - p_x}{p_w}$$"),
                *map(nbformat.v4.new_code_cell, sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_run_book_executes_chapters_builds_html_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("SPPNET_QUICK", "0")  # run_book sets it for the kernels; restored after
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _write(chapters / "01_ok.ipynb", "import os\nassert os.environ['SPPNET_QUICK'] == '1'\nprint(6 * 7)")
    _write(chapters / "02_broken.ipynb",
           "from ipywidgets import interact\ninteract(lambda value: print(value), value=3);",
           "raise ValueError('on purpose')")

    assert book.run_book(quick=True, chapters_dir=chapters, build_dir=tmp_path / "build") == 1

    executed = nbformat.read(tmp_path / "build" / "chapters" / "01_ok.ipynb", as_version=4)
    assert "42" in executed.cells[1].outputs[0]["text"]
    summary = json.loads((tmp_path / "build" / "results" / "book.json").read_text())
    assert [c["ok"] for c in summary["chapters"]] == [True, False]
    assert "on purpose" in summary["chapters"][1]["error"]
    html = tmp_path / "build" / "html"
    assert (html / "index.html").is_file()
    first = (html / "chapters" / "01_ok.html").read_text()
    assert "42" in first and "<math" in first and "02_broken.html" in first  # next-page link
    broken = (html / "chapters" / "02_broken.html").read_text()
    assert "on purpose" in broken and "value = 3" in broken  # its widget, though a cell failed
    results = (html / "results.html").read_text()
    assert "01_ok" in results and "FAILED" in results


def _widget_notebook():
    nb = nbformat.v4.new_notebook()
    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "box", "version_major": 2,
                                                         "version_minor": 0},
            "text/plain": "interactive(...)"}
    bar = dict(view, **{"application/vnd.jupyter.widget-view+json": {"model_id": "bar"}})
    cell = nbformat.v4.new_code_cell("interact(f, height=(1, 40))")
    cell.outputs = [nbformat.v4.new_output("display_data", data=view),
                    nbformat.v4.new_output("display_data", data=bar)]
    nb.cells = [cell]
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_h", "IPY_MODEL_m",
                                                                   "IPY_MODEL_out"]}},
        "h": {"model_name": "IntSliderModel", "state": {"description": "height", "value": 13}},
        "m": {"model_name": "DropdownModel", "state": {"description": "mode", "index": 1,
                                                        "_options_labels": ["adaptive", "paper"]}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": PNG, "text/plain": "<Figure>"}}]}},
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": "pretraining: 100%"}},
        "r": {"model_name": "HTMLModel", "state": {"value": " 8/8 [00:01&lt;00:00]"}},
    }
    nb.metadata["widgets"] = {book.WIDGET_STATE: {"state": state, "version_major": 2,
                                                  "version_minor": 0}}
    return nb


def test_static_widgets_show_the_default_figure_and_say_the_controls_work_in_jupyterlab():
    nb = book.static_widgets(_widget_notebook())

    assert "widgets" not in nb.metadata
    note, figure, bar = nb.cells[0].outputs
    assert "work when the chapter runs in JupyterLab" in note["data"]["text/html"]
    assert "height = 13, mode = paper" in note["data"]["text/plain"]
    assert figure["data"]["image/png"] == PNG
    assert bar["output_type"] == "stream" and bar["text"] == "pretraining: 100% 8/8 [00:01<00:00]\n"
    nbformat.validate(nb)


def test_readme_pages_are_the_introduction_and_the_results():
    readme = ("# sppnet-lite\n\nIntro.\n\n## Quick start\n\nmake\n\n## The chapters\n\n| 01 |\n\n"
              "## Results\n\nNumbers.\n\n### Speed\n\nFast.\n\n## Later\n\nNot here.\n")
    introduction, results = book.readme_pages(readme)
    assert introduction == "# sppnet-lite\n\nIntro.\n\n## The chapters\n\n| 01 |\n\n"
    assert results == "# Results\n\nNumbers.\n\n## Speed\n\nFast.\n\n"
