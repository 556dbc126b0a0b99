"""Execute the whole book: every chapter in order into ``build/chapters/``.

What ``make book`` and ``sppnet-lite book`` run. Each chapter is executed in a
fresh kernel (so no chapter leans on another's memory, only on the caches the
package writes), saved as an executed ``.ipynb`` and as HTML, and timed. Then
``build/index.html`` lists the chapters and the headline tables found in
``build/results/*.json``.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

from . import config
from .cache import atomic_path, save_json_atomic

CHAPTERS_DIR = config.ROOT / "chapters"


def run_book(quick: bool | None = None, chapters_dir: Path = CHAPTERS_DIR,
             out_dir: Path | None = None, timeout_s: int = 3600) -> int:
    """Execute every ``NN_*.ipynb`` in ``chapters_dir``; return 0 if all ran, else 1.

    ``quick=None`` keeps the environment's mode (``config.QUICK``). Timings go
    to ``build/results/book.json``; a failing chapter is reported and the rest
    still run, so one error does not hide the others.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    quick = config.QUICK if quick is None else quick
    os.environ["SPPNET_QUICK"] = "1" if quick else "0"
    out_dir = Path(out_dir or config.BUILD_DIR / "chapters")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print(f"no chapters found in {chapters_dir}")
        return 1

    runs = []
    for path in paths:
        print(f"[book] {path.name} ...", flush=True)
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        error = None
        try:
            client.execute()
        except CellExecutionError as exc:
            error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        seconds = time.perf_counter() - start
        with atomic_path(out_dir / path.name) as tmp:
            nbformat.write(notebook, str(tmp))
        body, _ = HTMLExporter().from_notebook_node(notebook)
        with atomic_path(out_dir / path.with_suffix(".html").name) as tmp:
            tmp.write_text(body)
        status = "ok" if error is None else "FAILED"
        print(f"[book] {path.name}: {status} in {seconds:.1f} s" + (f" — {error}" if error else ""),
              flush=True)
        runs.append({"chapter": path.stem, "seconds": round(seconds, 1), "ok": error is None,
                     "error": error})

    total = sum(r["seconds"] for r in runs)
    save_json_atomic(config.RESULTS_DIR / "book.json",
                     {"quick": quick, "total_seconds": round(total, 1), "chapters": runs})
    write_index(runs, quick)
    failed = [r["chapter"] for r in runs if not r["ok"]]
    print(f"[book] {len(runs) - len(failed)}/{len(runs)} chapters ran in {total / 60:.1f} min; "
          f"open {config.BUILD_DIR / 'index.html'}")
    if failed:
        print(f"[book] failed: {', '.join(failed)}")
    return 1 if failed else 0


def write_index(runs: list[dict], quick: bool) -> Path:
    """Write ``build/index.html``: chapter links with times, then every results table."""
    rows = "".join(
        f"<tr><td><a href='chapters/{r['chapter']}.html'>{r['chapter']}</a></td>"
        f"<td>{'ok' if r['ok'] else 'FAILED'}</td><td>{r['seconds']:.1f} s</td></tr>"
        for r in runs)
    tables = []
    for path in sorted(config.RESULTS_DIR.glob("*.json")):
        if path.name == "book.json":
            continue
        flat = _flatten(json.loads(path.read_text()))
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in flat.items())
        tables.append(f"<h2>{html.escape(path.stem)}</h2><table>{body}</table>")
    page = (
        "<!doctype html><meta charset='utf-8'><title>sppnet-lite book</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>sppnet-lite — the executed book ({'quick' if quick else 'full'} mode)</h1>"
        f"<table><tr><th>chapter</th><th>status</th><th>time</th></tr>{rows}</table>"
        + "".join(tables))
    path = config.BUILD_DIR / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 12:
        return f"[{len(value)} values]"
    return str(value)
