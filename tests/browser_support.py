"""What the browser suite (``tests/test_browser.py``) drives: Chromium, JupyterLab, widgets, pages.

Chromium is the system's (Debian's ``chromium`` on ``PATH``, or ``SPPNET_CHROMIUM``),
launched by Playwright for Python through ``executable_path``; nothing is downloaded.
Widget chapters are found by a cell tag (``widget``) or by an ``interact(`` call, so a
chapter that gains a widget is covered without editing the tests. Cells tagged
``widget-setup`` are the ones the widget needs; a widget chapter without such tags
runs every cell up to its widget.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
ENABLE_HINT = ("no Chromium found: install it (Debian: apt-get install chromium) or set "
               "SPPNET_CHROMIUM=/path/to/chromium to run the browser tests")
WIDGET_TAG = "widget"
SETUP_TAG = "widget-setup"
ERROR_MARKERS = ("Traceback (most recent call last)", "Error displaying widget")
# True once the first code cell has been queued or run (the notebook may re-render its cells).
QUEUED = ("() => { const prompt ="
          " document.querySelector('.jp-Notebook .jp-CodeCell .jp-InputPrompt');"
          " return Boolean(prompt && /\\[(\\*|\\d+)\\]/.test(prompt.textContent)); }")
# How a control of each kind is found inside an ``interact`` box.
CONTROLS = {
    "checkbox": ".widget-checkbox input[type=checkbox]",
    "slider": ".widget-slider .noUi-handle",
    "dropdown": ".widget-dropdown select",
}


def find_chromium() -> str | None:
    """The Chromium to drive: ``SPPNET_CHROMIUM`` if set, else ``chromium`` on ``PATH``."""
    override = os.environ.get("SPPNET_CHROMIUM", "").strip()
    if override:
        return override if Path(override).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


# ----------------------------------------------------------------------- widget chapters
def is_widget_cell(cell) -> bool:
    """A code cell tagged ``widget`` or one that calls ``interact(``."""
    if cell.cell_type != "code":
        return False
    return WIDGET_TAG in cell.metadata.get("tags", []) or "interact(" in cell.source


def widget_chapters(chapters_dir: Path) -> list[Path]:
    """Every ``NN_*.ipynb`` in ``chapters_dir`` with at least one widget cell."""
    return [path for path in sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))
            if any(is_widget_cell(c) for c in nbformat.read(path, as_version=4).cells)]


def widget_notebook(path: Path):
    """The chapter cut down to what its widgets need: the ``widget-setup`` cells and the
    widget cells, in order; without setup tags, every cell up to the last widget."""
    notebook = nbformat.read(path, as_version=4)
    last = max(i for i, c in enumerate(notebook.cells) if is_widget_cell(c))
    tagged = any(SETUP_TAG in c.metadata.get("tags", []) for c in notebook.cells)
    notebook.cells = [c for c in notebook.cells[:last + 1]
                      if not tagged or is_widget_cell(c) or SETUP_TAG in c.metadata.get("tags", [])]
    return notebook


# ----------------------------------------------------------------------- JupyterLab
class JupyterLab:
    """JupyterLab serving ``root_dir`` on 127.0.0.1 (a free port, a random token), with
    its own settings, workspaces and runtime folders under ``state_dir``. Use as a
    context manager: the server and its kernels are killed on exit."""

    def __init__(self, root_dir: Path, state_dir: Path, env: dict[str, str]):
        self.root_dir, self.state_dir, self.env = Path(root_dir), Path(state_dir), env
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.log_path = self.state_dir / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        settings = self.state_dir / "settings"
        _write_settings(settings)
        env = dict(self.env, JUPYTER_RUNTIME_DIR=str(self.state_dir / "runtime"),
                   JUPYTER_CONFIG_DIR=str(self.state_dir / "config"),
                   IPYTHONDIR=str(self.state_dir / "ipython"))
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.state_dir / 'workspaces'}",
            "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        with open(self.log_path, "w") as log:
            # its own process group, so that teardown also ends the kernels it started
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_ready(timeout_s=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def url(self, notebook: str) -> str:
        """The JupyterLab address that opens ``notebook`` (relative to ``root_dir``) alone:
        ``reset`` empties the workspace, so notebooks opened before are not restored."""
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook}?reset&token={self.token}"

    def log_tail(self, lines: int = 20) -> str:
        """The server's last log lines, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self, timeout_s: float) -> None:
        status = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(status, timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on port {self.port} within {timeout_s} s:\n"
                           f"{self.log_tail()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_settings(settings: Path) -> None:
    """Start the notebook's kernel without asking, render every cell, fetch no news."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
            {"autoStartDefaultKernel": True, "windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    }
    for name, values in files.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))


# ----------------------------------------------------------------------- driving a notebook
def run_all_cells(page, url: str, timeout_s: float) -> None:
    """Open the notebook at ``url`` and choose Run → Run All Cells until the first code
    cell is queued (its prompt shows ``[*]`` or a number).

    JupyterLab silently drops a run asked for before the notebook's kernel is connected,
    so the command is repeated every few seconds until it takes; once it has taken, the
    prompt changes at once, so no cell runs twice.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_s
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=timeout_s * 1000)
    while True:
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator("li[data-command='runmenu:run-all']").click()
        try:
            page.wait_for_function(QUEUED, timeout=5_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Run All Cells did not start within {timeout_s} s") from None


def cell_errors(page) -> list[str]:
    """The text of every output that shows a traceback or a widget that failed to display."""
    texts = page.locator(".jp-OutputArea-output").all_inner_texts()
    return [t[:2000] for t in texts if any(marker in t for marker in ERROR_MARKERS)]


def wait_for_new_image(page, index: int, before: str, timeout_s: float) -> str | None:
    """Wait until ``interact`` box number ``index`` on the page shows a loaded figure whose
    bytes differ from ``before``; return its ``src`` (a data URL), or None on a timeout.
    The box is looked up afresh each time, so a re-rendered widget is still found."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(
            "([index, before]) => {"
            " const box = document.querySelectorAll('.widget-interact')[index];"
            " const img = box && box.querySelector('.widget-output img');"
            " return img && img.complete && img.naturalWidth > 0 && img.src !== before"
            " ? img.src : null; }",
            arg=[index, before], timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        return None
    return handle.json_value()


def change_control(widget, kind: str) -> str:
    """Change the first control of ``kind`` in the box once; return what was done."""
    control = widget.locator(CONTROLS[kind]).first
    if kind == "checkbox":
        control.click()
        return f"checkbox {'ticked' if control.is_checked() else 'cleared'}"
    if kind == "slider":
        control.focus()
        control.press("ArrowRight")  # noUiSlider moves one step and reports the change
        return "slider moved one step right"
    values = control.evaluate("select => Array.from(select.options).map(o => o.value)")
    current = control.input_value()
    other = next(v for v in values if v != current)
    control.select_option(other)
    return f"dropdown set to {other!r}"


# ----------------------------------------------------------------------- HTML pages
def page_problems(context, path: Path, root: Path) -> list[str]:
    """Open ``path`` (a page of the HTML book under ``root``) from ``file://`` in a new tab;
    return what is wrong: console errors, images that did not load, links that lead nowhere."""
    problems: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    try:
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.wait_for_load_state("networkidle")
        for src in page.evaluate("Array.from(document.images)"
                                 ".filter(i => !(i.complete && i.naturalWidth > 0))"
                                 ".map(i => i.currentSrc || i.src)"):
            problems.append(f"image did not load: {src[:120]}")
        for href in page.evaluate("Array.from(document.querySelectorAll('a[href]'), a => a.href)"):
            target = internal_target(href, path, root)
            if target is not None and not target.is_file():
                problems.append(f"broken link: {href}")
    finally:
        page.close()
    return [f"{path.name}: {p}" for p in problems]


def internal_target(href: str, page_path: Path, root: Path) -> Path | None:
    """The file a ``file://`` link points to, when it points inside ``root``; else None."""
    parts = urlsplit(href)
    if parts.scheme != "file":
        return None
    target = Path(unquote(parts.path))
    if target == page_path.resolve() or root.resolve() not in target.parents:
        return None
    return target
