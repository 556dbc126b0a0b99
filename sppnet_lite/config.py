"""One place for the book's switches: quick mode, paths, device and seeds.

Every chapter's first code cell prints :func:`banner`, so a reader always sees
whether the book runs in quick mode and on which device. Taught in chapter 01.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from .cache import save_json_atomic


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() not in {"0", "false", "no", "off"}


def _quick_from_env() -> bool:
    explicit = _env_flag("SPPNET_QUICK")
    if explicit is not None:
        return explicit
    return bool(_env_flag("CI"))


QUICK: bool = _quick_from_env()
"""True when ``SPPNET_QUICK=1`` or ``CI`` is set: smaller data, fewer epochs, same content."""

ROOT = Path(os.environ.get("SPPNET_ROOT", Path(__file__).resolve().parent.parent))
"""The repository root (where ``chapters/`` and ``data/`` live)."""

BUILD_DIR = Path(os.environ.get("SPPNET_BUILD", ROOT / "build"))
RESULTS_DIR = BUILD_DIR / "results"
CACHE_DIR = BUILD_DIR / "cache"
DATA_DIR = Path(os.environ.get("SPPNET_DATA", ROOT / "data"))


def get_device(name: str = "auto"):
    """``"auto"`` → CUDA when present, else CPU; ``"cpu"``/``"cuda"`` as given.

    ``SPPNET_DEVICE`` overrides ``"auto"``. Raises ``ValueError`` for an unknown
    name or for ``"cuda"`` on a machine without CUDA.
    """
    import torch

    if name == "auto":
        name = os.environ.get("SPPNET_DEVICE", "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in {"cpu", "cuda"}:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) in one call."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def banner() -> str:
    """One line for the first cell of every chapter: quick mode and device."""
    device = get_device()
    mode = "QUICK (small data, few epochs)" if QUICK else "FULL"
    return f"sppnet-lite: mode={mode}, device={device.type}  (set SPPNET_QUICK=1 for quick mode)"


def save_result(name: str, payload: dict) -> Path:
    """Write ``build/results/<name>.json`` atomically and return its path."""
    return save_json_atomic(RESULTS_DIR / f"{name}.json", payload)
