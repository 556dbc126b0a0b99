"""Content-keyed, atomic on-disk caches shared by proposals, features and checkpoints.

Two rules make every cache in the book safe to interrupt and impossible to read
stale: a file is written under a temporary name and renamed into place only
when complete (:func:`atomic_path`), and its name contains a hash of every input
that determines its content (:func:`config_hash`, :func:`array_hash`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

UMASK = os.umask(0)
"""The process umask, read once: files written here get the mode ``open`` would give."""
os.umask(UMASK)


def config_hash(config: object, length: int = 16) -> str:
    """Stable hex digest of a JSON-serialisable configuration (dict keys sorted)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def array_hash(array: np.ndarray, length: int = 16) -> str:
    """Hex digest of an array's dtype, shape and bytes (e.g. an image's content)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """Hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    An exception (or a killed process) leaves ``path`` untouched: readers see
    either the old complete file or the new complete file, never half of one.
    The temporary name keeps ``path``'s suffix so that libraries which append a
    suffix (``np.savez``) write where we expect.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give them the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` to ``path`` atomically (no pickled objects: plain arrays only)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load an ``.npz`` written by :func:`save_npz_atomic` without unpickling."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def save_arrays(path: str | os.PathLike, arrays: dict, meta: dict | None = None) -> Path:
    """Write named NumPy ``arrays`` and a JSON-able ``meta`` dict to ``path``, atomically.

    The book's one format for what training produces (checkpoints, training stages,
    saved detectors): an ``.npz`` of plain arrays with the metadata as a JSON string,
    read back by :func:`load_arrays` without unpickling anything.
    """
    reserved = [name for name in arrays if name.startswith("__")]
    if reserved:
        raise ValueError(f"array names may not start with '__', got {reserved}")
    return save_npz_atomic(path, __meta__=np.array(json.dumps(meta or {}, sort_keys=True)),
                           **arrays)


def load_arrays(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(arrays, meta)`` from a file written by :func:`save_arrays`.

    ``FileNotFoundError`` when missing; ``ValueError`` when the file is damaged or
    is not such a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {str(path)!r}")
    try:
        arrays = load_npz(path)
        meta = json.loads(str(arrays.pop("__meta__")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{str(path)!r} is not a sppnet-lite array file ({type(err).__name__}: "
                         f"{err}); delete it and rerun") from None
    return arrays, meta


def state_arrays(state_dict: dict) -> dict:
    """A module's ``state_dict`` (tensors) as NumPy arrays, for :func:`save_arrays`."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in state_dict.items()}


def state_tensors(arrays: dict) -> dict:
    """The inverse of :func:`state_arrays`: CPU tensors for ``load_state_dict``."""
    import torch

    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def save_weights(path: str | os.PathLike, state_dict: dict, meta: dict | None = None) -> Path:
    """:func:`save_arrays` for a module's ``state_dict`` (tensors)."""
    return save_arrays(path, state_arrays(state_dict), meta)


def load_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state_dict of CPU tensors, meta)`` from a file written by :func:`save_weights`."""
    arrays, meta = load_arrays(path)
    return state_tensors(arrays), meta


def save_training_state(path: str | os.PathLike, model, optimiser, iteration: int, history: dict,
                        meta: dict | None = None) -> Path:
    """A resumable training checkpoint: ``model``'s weights, ``optimiser``'s state (Adam's
    moments), the ``iteration`` reached and the ``history`` so far, atomically."""
    arrays = {f"model.{k}": v for k, v in state_arrays(model.state_dict()).items()}
    for index, state in optimiser.state_dict()["state"].items():
        for name, value in state.items():
            arrays[f"optimiser.{index}.{name}"] = value.detach().cpu().numpy()
    return save_arrays(path, arrays, {**(meta or {}), "iteration": iteration, "history": history})


def load_training_state(path: str | os.PathLike, model, optimiser) -> tuple[int, dict]:
    """Load :func:`save_training_state`'s checkpoint into ``model`` and ``optimiser``;
    return ``(iteration, history)``."""
    import torch

    arrays, meta = load_arrays(path)
    model.load_state_dict(state_tensors({k[len("model."):]: v for k, v in arrays.items()
                                         if k.startswith("model.")}))
    state = optimiser.state_dict()
    for key, value in arrays.items():
        if key.startswith("optimiser."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = torch.from_numpy(value)
    optimiser.load_state_dict(state)
    return int(meta["iteration"]), meta["history"]
