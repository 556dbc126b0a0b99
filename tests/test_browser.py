"""Widgets in JupyterLab and the HTML book's pages, in headless Chromium (marker ``browser``).

``make test`` runs this suite after the notebooks, so each widget's setup cells read the
caches that run filled (dataset, proposals, detectors under ``build/cache``). Every
chapter with a widget is opened in JupyterLab, the cells its widget needs are run, and
each kind of control it has is changed once: the figure must change and no cell may
show an error. A screenshot of every widget goes to ``build/screenshots/``.

The HTML book is checked from ``file://`` with the network off: every image loads, every
internal link resolves, no page logs a console error. ``make test`` builds the book for
chapters 01 and 02; ``SPPNET_BOOK_HTML=build/html`` (what ``make book`` sets) checks the
whole book instead. Without Chromium every test here skips, saying how to enable it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from browser_support import (
    CHROMIUM_ARGS,
    CONTROLS,
    ENABLE_HINT,
    JupyterLab,
    cell_errors,
    change_control,
    find_chromium,
    page_problems,
    run_all_cells,
    wait_for_new_image,
    widget_chapters,
    widget_notebook,
)

from sppnet_lite import config

pytestmark = pytest.mark.browser
CHROMIUM = find_chromium()
if CHROMIUM is None:  # one line for the whole suite, saying how to enable it
    pytest.skip(ENABLE_HINT, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright is missing: pip install -e '.[dev]'")

CHAPTERS = config.ROOT / "chapters"
WIDGET_CHAPTERS = widget_chapters(CHAPTERS)
SCREENSHOTS = config.BUILD_DIR / "screenshots"
BOOK_CHAPTERS = ("01_why_fixed_size", "02_spp_numpy")  # quick enough to execute here
SETUP_TIMEOUT_S = 240  # the widget's setup cells, from opening the notebook to its figure
REDRAW_TIMEOUT_S = 60  # one control change to the new figure


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium, driven by Playwright."""
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """JupyterLab in quick mode on a temporary copy of ``chapters/``, in which each widget
    chapter is cut down to the cells its widget needs; the kernel finds the repo's caches."""
    root = tmp_path_factory.mktemp("chapters")
    shutil.copytree(CHAPTERS, root, dirs_exist_ok=True)
    for path in WIDGET_CHAPTERS:
        nbformat.write(widget_notebook(path), str(root / path.name))
    env = dict(os.environ, SPPNET_QUICK="1", SPPNET_ROOT=str(config.ROOT),
               SPPNET_BUILD=str(config.BUILD_DIR))
    with JupyterLab(root, tmp_path_factory.mktemp("jupyterlab"), env) as server:
        yield server


@pytest.mark.parametrize("chapter", WIDGET_CHAPTERS, ids=lambda p: p.stem)
def test_widget_redraws_when_each_kind_of_control_changes(chapter, browser, lab):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        run_all_cells(page, lab.url(chapter.name), timeout_s=60)
        boxes = page.locator(".widget-interact")
        if wait_for_new_image(page, 0, "", SETUP_TIMEOUT_S) is None:
            pytest.fail(f"{chapter.name}: no widget with a figure within {SETUP_TIMEOUT_S} s; "
                        f"cell errors: {cell_errors(page) or 'none'}\n"
                        f"JupyterLab log:\n{lab.log_tail()}")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for i in range(boxes.count()):
            image = wait_for_new_image(page, i, "", REDRAW_TIMEOUT_S)
            kinds = [kind for kind, selector in CONTROLS.items()
                     if boxes.nth(i).locator(selector).count()]
            assert image and kinds, f"{chapter.name}: widget {i} shows no figure or no control"
            for kind in kinds:
                action = change_control(boxes.nth(i), kind)
                image = wait_for_new_image(page, i, image, REDRAW_TIMEOUT_S)
                assert image, (f"{chapter.name}: widget {i}'s figure did not change within "
                               f"{REDRAW_TIMEOUT_S} s after the {action}; cell errors: "
                               f"{cell_errors(page) or 'none'}")
            suffix = f"-{i}" if boxes.count() > 1 else ""
            boxes.nth(i).screenshot(path=str(SCREENSHOTS / f"{chapter.stem}{suffix}.png"))
        assert not cell_errors(page), f"{chapter.name}: a cell shows an error"
    finally:
        page.close()


def test_html_book_pages_work_offline(browser, tmp_path):
    html_dir = os.environ.get("SPPNET_BOOK_HTML")
    if html_dir:
        html_dir = Path(html_dir)
        assert (html_dir / "index.html").is_file(), f"no book in {html_dir}: run `make book`"
    else:
        html_dir = _build_quick_book(tmp_path)
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts)
    assert len(pages) > 2, f"{html_dir} holds {len(pages)} pages"
    context = browser.new_context(offline=True)
    try:
        problems = [p for path in pages for p in page_problems(context, path, html_dir)]
        widget_pages = [html_dir / "chapters" / f"{p.stem}.html" for p in WIDGET_CHAPTERS
                        if (html_dir / "chapters" / f"{p.stem}.html").is_file()]
        for path in widget_pages:
            page = context.new_page()
            page.goto(path.resolve().as_uri())
            shown = page.evaluate(
                "Array.from(document.querySelectorAll('.sppnet-widget')).map(note => {"
                " const cell = note.closest('.cell');"
                " const img = cell && cell.querySelector('img');"
                " return Boolean(img && img.naturalWidth > 0); })")
            page.close()
            if not shown or not all(shown):
                problems.append(f"{path.name}: a widget cell shows no figure ({shown})")
    finally:
        context.close()
    assert not problems, "\n".join(problems)


def _build_quick_book(tmp_path: Path) -> Path:
    """Execute chapters 01 and 02 in quick mode and build their HTML book under tmp_path.

    The book runs in a child process, as ``make book`` runs it: under pytest's plugins
    (Hypothesis's) nbclient sees the reply to chapter 02's widget cell only when the
    cell's time limit expires, two minutes later."""
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    for stem in BOOK_CHAPTERS:
        shutil.copy(CHAPTERS / f"{stem}.ipynb", chapters)
    build = tmp_path / "build"
    run = ("import sys; from pathlib import Path; from sppnet_lite.book import run_book; "
           "sys.exit(run_book(quick=True, chapters_dir=Path(sys.argv[1]), build_dir=Path(sys.argv[2])))")
    env = dict(os.environ, SPPNET_BUILD=str(build), SPPNET_QUICK="1")  # the kernels' results
    done = subprocess.run([sys.executable, "-c", run, str(chapters), str(build)], env=env, check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the quick book failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return build / "html"
