"""Execute the whole book into ``build/chapters/``, then build the HTML book in ``build/html/``.

What ``make book`` and ``sppnet-lite book`` run. Each chapter is executed once, in a
fresh kernel (so no chapter leans on another's memory, only on the caches the package
writes), saved as an executed ``.ipynb`` with its widget state, and timed. The HTML book
is then built from those notebooks with Jupyter Book 1 (configured in ``book/``): a table
of contents, previous/next links, the README's introduction and results. A widget cell
shows the figure its default values draw, with a line saying that the controls work when
the chapter runs in JupyterLab; equations become MathML, so the pages need no network.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from . import config
from .cache import atomic_path, save_json_atomic

CHAPTERS_DIR = config.ROOT / "chapters"
BOOK_DIR = config.ROOT / "book"
README = config.ROOT / "README.md"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# nbclient now and then misses the reply to a cell that draws through an ipywidgets Output
# (as `interact` does; jupyter/nbclient#312) and only sees it when the cell's timeout expires:
# seen three times on chapter 10's widget. Such a cell draws one figure, so a short timeout
# bounds the stall.
WIDGET_CELL_TIMEOUT_S = 120
WIDGET_NOTE = ("The controls of this widget work when the chapter runs in JupyterLab; "
               "here, the figure their default values draw")


def run_book(quick: bool | None = None, chapters_dir: Path = CHAPTERS_DIR,
             build_dir: Path | None = None, timeout_s: int = 3600) -> int:
    """Execute every ``NN_*.ipynb`` in ``chapters_dir`` into ``build_dir/chapters``, then
    build ``build_dir/html``; return 0 if every chapter ran, else 1.

    ``quick=None`` keeps the environment's mode (``config.QUICK``); ``build_dir`` defaults
    to ``config.BUILD_DIR``. Timings go to ``build_dir/results/book.json``; a failing
    chapter is reported and the rest still run, so one error does not hide the others.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    quick = config.QUICK if quick is None else quick
    os.environ["SPPNET_QUICK"] = "1" if quick else "0"
    build_dir = Path(build_dir or config.BUILD_DIR)
    out_dir = build_dir / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print(f"no chapters found in {chapters_dir}")
        return 1

    runs = []
    for path in paths:
        print(f"[book] {path.name} ...", flush=True)
        notebook = nbformat.read(path, as_version=4)
        # store_widget_state keeps what the HTML book shows in place of each widget
        client = NotebookClient(notebook, timeout_func=lambda cell: _cell_timeout(cell, timeout_s),
                                kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        error = None
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError) as exc:
            error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            client.set_widgets_metadata()  # nbclient stores it only after the last cell
        seconds = time.perf_counter() - start
        with atomic_path(out_dir / path.name) as tmp:
            nbformat.write(notebook, str(tmp))
        status = "ok" if error is None else "FAILED"
        print(f"[book] {path.name}: {status} in {seconds:.1f} s" + (f" — {error}" if error else ""),
              flush=True)
        runs.append({"chapter": path.stem, "seconds": round(seconds, 1), "ok": error is None,
                     "error": error})

    total = sum(r["seconds"] for r in runs)
    save_json_atomic(build_dir / "results" / "book.json",
                     {"quick": quick, "total_seconds": round(total, 1), "chapters": runs})
    start = time.perf_counter()
    index = build_html([out_dir / f"{r['chapter']}.ipynb" for r in runs], build_dir / "html",
                       runs=runs, quick=quick)
    failed = [r["chapter"] for r in runs if not r["ok"]]
    print(f"[book] {len(runs) - len(failed)}/{len(runs)} chapters ran in {total / 60:.1f} min; "
          f"HTML built in {time.perf_counter() - start:.1f} s; open {index}")
    if failed:
        print(f"[book] failed: {', '.join(failed)}")
    return 1 if failed else 0


def build_html(notebooks: list[Path], out_dir: Path, runs: list[dict] | None = None,
               quick: bool | None = None) -> Path:
    """Build the HTML book from executed ``notebooks`` into ``out_dir``; return its index page.

    The pages are, in order: the README's introduction (``index.html``), the chapters
    (``chapters/NN_*.html``) and the README's results (``results.html``), ending with a
    table of this build's chapter times when ``runs`` (from :func:`run_book`) is given.
    ``out_dir`` is replaced. Raises ``RuntimeError`` when Sphinx fails.
    """
    import nbformat
    from jupyter_book.sphinx import build_sphinx

    out_dir = Path(out_dir)
    introduction, results = readme_pages(README.read_text(encoding="utf-8"))
    if runs:
        results += build_times(runs, quick)
    with tempfile.TemporaryDirectory(prefix="sppnet-book-") as tmp:
        source = Path(tmp) / "book"
        shutil.copytree(BOOK_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
        (source / "chapters").mkdir()
        for path in notebooks:
            notebook = static_widgets(nbformat.read(path, as_version=4))
            nbformat.write(notebook, str(source / "chapters" / Path(path).name))
        (source / "index.md").write_text(introduction, encoding="utf-8")
        (source / "results.md").write_text(results, encoding="utf-8")
        entries = [f"chapters/{Path(p).stem}" for p in notebooks] + ["results"]
        (source / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n"
                                         + "".join(f"  - file: {e}\n" for e in entries))
        shutil.rmtree(out_dir, ignore_errors=True)
        # what `jupyter-book build` passes, with the output folder ours
        status = build_sphinx(source, out_dir, noconfig=True,
                              path_config=str(source / "_config.yml"),
                              confoverrides={"external_toc_path": str(source / "_toc.yml"),
                                             "latex_individualpages": False},
                              doctreedir=Path(tmp) / "doctrees", freshenv=True, quiet=True)
    if status != 0:
        raise RuntimeError(f"the HTML book did not build (Sphinx returned {status!r})")
    return out_dir / "index.html"


def static_widgets(notebook):
    """``notebook`` with every widget replaced by what a static page can show, and its
    widget state dropped (rendering it would need scripts from other hosts).

    A widget holding an ``Output`` (an ``interact`` box) becomes a line naming its
    controls' values, saying they work in JupyterLab, then the outputs (the figure) its
    default values drew; any other widget (a progress bar) becomes its text, or nothing.
    """
    import nbformat

    state = notebook.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
            else:
                outputs.extend(nbformat.from_dict(o) for o in _static_view(view["model_id"], state))
        cell.outputs = outputs
    return notebook


def readme_pages(readme: str) -> tuple[str, str]:
    """The README as two MyST pages: the introduction (its text before the first ``##``
    section, plus "The chapters") and "Results" (that section, headings one level up)."""
    sections = re.split(r"^(?=## )", readme, flags=re.MULTILINE)
    chapters = next((s for s in sections if s.startswith("## The chapters")), "")
    results = next((s for s in sections if s.startswith("## Results")), "## Results\n")
    return sections[0] + chapters, re.sub(r"^#(#+ )", r"\1", results, flags=re.MULTILINE)


def build_times(runs: list[dict], quick: bool | None) -> str:
    """A Markdown table of one :func:`run_book` run: chapter, status and seconds."""
    mode = "quick" if quick else "full"
    rows = "".join(f"| {r['chapter']} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']:.1f} |\n"
                   for r in runs)
    return (f"\n## This build\n\nThe chapters of this HTML book ran in {mode} mode:\n\n"
            f"| chapter | status | seconds |\n|---|---|---|\n{rows}")


def _cell_timeout(cell, timeout_s: int) -> int:
    """The cell's timeout: ``timeout_s``, or at most WIDGET_CELL_TIMEOUT_S for a widget."""
    widget = "interact(" in cell.source or "widget" in cell.metadata.get("tags", [])
    return min(timeout_s, WIDGET_CELL_TIMEOUT_S) if widget else timeout_s


def _static_view(model_id: str, state: dict) -> list[dict]:
    models = _widget_tree(model_id, state)
    figures = [o for m in models if m["model_name"] == "OutputModel"
               for o in m["state"].get("outputs", [])]
    if figures:
        values = [_control_value(m["state"]) for m in models]
        values = [v for v in values if v]
        note = WIDGET_NOTE + (f" ({', '.join(values)})" if values else "") + "."
        return [{"output_type": "display_data", "metadata": {},
                 "data": {"text/html": f'<p class="sppnet-widget"><em>{html.escape(note)}</em></p>',
                          "text/plain": note}}, *figures]
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", m["state"]["value"])).strip()
                    for m in models if m["model_name"] in ("HTMLModel", "LabelModel")
                    and isinstance(m["state"].get("value"), str))
    if not text.strip():
        return []
    return [{"output_type": "stream", "name": "stdout", "text": text + "\n"}]


def _widget_tree(model_id: str, state: dict) -> list[dict]:
    """The model and, depth first, every model its ``children`` name."""
    model = state.get(model_id)
    if model is None:
        return []
    tree = [model]
    for child in model["state"].get("children", []):
        tree += _widget_tree(child.removeprefix("IPY_MODEL_"), state)
    return tree


def _control_value(widget: dict) -> str:
    """``"description = value"`` for a control with a description, else ''."""
    label = widget.get("description")
    if not label:
        return ""
    if "_options_labels" in widget and widget.get("index") is not None:
        return f"{label} = {widget['_options_labels'][widget['index']]}"
    if "value" in widget:
        return f"{label} = {widget['value']}"
    return ""
