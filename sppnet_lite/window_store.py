"""The window store: pooled window vectors on disk, per image, memory-mapped, never stale.

SPP-net's training stages (chapters 07–09) read the pooled vectors of the same
windows many times; the paper wrote them to disk once, and so do we. One file pair
per image, written atomically and keyed by the trunk's weights and the extractor's
config, so an interrupted build resumes and a changed setting never reads stale
vectors. Fast R-CNN (chapter 11) needs no such store: that is one of its points.
Taught in chapter 06 (used in chapters 07–10).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import config
from .cache import array_hash, atomic_path, config_hash, save_json_atomic, save_npz_atomic


class WindowStore:
    """Per-image pooled window vectors on disk: float16, memory-mapped, never stale.

    The store lives in ``<root>/<name>-<hash>/`` where the hash covers ``key`` (the
    backbone's checkpoint hash and the extractor's config: see :meth:`for_extractor`).
    Each image has two files written atomically: ``<id>.pooled.npy`` (float16
    ``(K, D)``, opened with ``mmap_mode="r"``) and, written last, ``<id>.meta.npz``
    (``boxes`` float32 ``(K, 4)``, the image's content hash, your extra arrays).
    An entry counts only when its meta file exists and matches the boxes / image
    hash asked for, so an interrupted build or a changed box set is recomputed,
    never read. Taught in chapter 06 (used in chapters 07–10).
    """

    VERSION = 2

    def __init__(self, key: dict, root: str | os.PathLike | None = None, name: str = "windows"):
        self.key = {"store_version": self.VERSION, **key}
        self.hash = config_hash(self.key)
        base = Path(root) if root is not None else config.CACHE_DIR / "windows"
        self.dir = base / f"{name}-{self.hash}"
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            save_json_atomic(key_file, self.key)
        elif json.loads(key_file.read_text()) != json.loads(json.dumps(self.key, default=str)):
            raise ValueError(f"window store {str(self.dir)!r}: key.json does not match the key "
                             f"{self.key}; delete the folder")

    @classmethod
    def for_extractor(cls, extractor, name: str = "windows", root: str | os.PathLike | None = None,
                      checkpoint_hash: str | None = None) -> WindowStore:
        """The store for ``extractor``'s config and its backbone's weights.

        The weights are identified by ``checkpoint_hash``, else the backbone's
        ``.checkpoint_hash``, else a hash of its ``state_dict`` (so an untrained or
        edited backbone never shares a store with another).
        """
        backbone = extractor.backbone
        digest = checkpoint_hash or getattr(backbone, "checkpoint_hash", None) or state_dict_hash(backbone)
        return cls({"checkpoint": digest, "extractor": extractor.config}, root=root, name=name)

    def has(self, image_id: str, boxes=None, image_hash: str | None = None,
            extra: dict | None = None) -> bool:
        """True when ``image_id`` is stored (with these ``boxes`` / ``image_hash`` / ``extra``
        arrays, for each one given)."""
        meta = self._meta_path(image_id)
        if not meta.exists() or not self._pooled_path(image_id).exists():
            return False
        with np.load(meta, allow_pickle=False) as data:
            if boxes is not None and not np.array_equal(
                    data["boxes"], np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
                return False
            if image_hash is not None and str(data["image_hash"]) != image_hash:
                return False
            if extra is not None and ("extra_key" not in data.files
                                      or str(data["extra_key"]) != _extra_key(extra)):
                return False
        return True

    def put(self, image_id: str, pooled, boxes, image_hash: str = "", **extra) -> None:
        """Store ``pooled`` ``(K, D)`` (any float; kept as float16) for ``boxes`` ``(K, 4)``.

        ``extra`` arrays (e.g. labels, IoUs) are stored beside the boxes.
        """
        pooled = torch.as_tensor(pooled).detach().cpu().float().numpy()
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if pooled.ndim != 2 or len(pooled) != len(boxes):
            raise ValueError(f"pooled must be (K, D) with K = len(boxes) = {len(boxes)}, "
                             f"got shape {pooled.shape}")
        reserved = {"boxes", "image_hash", "rows", "extra_key", "pooled"} & set(extra)
        if reserved:
            raise ValueError(f"extra arrays may not be named {sorted(reserved)}")
        self._meta_path(image_id).unlink(missing_ok=True)  # old meta must not describe new vectors
        half = np.clip(pooled, -65504, 65504).astype(np.float16)  # float16's finite range
        with atomic_path(self._pooled_path(image_id)) as tmp, open(tmp, "wb") as f:
            np.save(f, half)
        save_npz_atomic(self._meta_path(image_id), boxes=boxes, image_hash=np.array(image_hash),
                        rows=np.array(len(boxes)), extra_key=np.array(_extra_key(extra)),
                        **{k: np.asarray(v) for k, v in extra.items()})

    def get(self, image_id: str, boxes=None, image_hash: str | None = None,
            mmap: bool = True) -> dict:
        """``{"pooled": float16 (K, D) (memory-mapped), "boxes": float32 (K, 4),
        "image_hash": str, **extra}``; ``KeyError`` when absent or stale."""
        if not self.has(image_id, boxes, image_hash):
            raise KeyError(f"window store {self.dir.name}: no up-to-date entry for image "
                           f"{image_id!r}")
        with np.load(self._meta_path(image_id), allow_pickle=False) as data:
            entry = {k: data[k] for k in data.files if k not in ("rows", "extra_key")}
        entry["image_hash"] = str(entry["image_hash"])
        entry["pooled"] = np.load(self._pooled_path(image_id), mmap_mode="r" if mmap else None,
                                    allow_pickle=False)
        return entry

    def image_ids(self) -> list[str]:
        """Ids with a complete entry, sorted."""
        suffix = ".meta.npz"
        return sorted(p.name[: -len(suffix)] for p in self.dir.glob(f"*{suffix}")
                      if self._pooled_path(p.name[: -len(suffix)]).exists())

    def load(self, image_ids: Sequence[str]) -> dict:
        """Concatenate the entries of ``image_ids``: ``pooled`` float16 ``(N, D)``,
        ``boxes`` ``(N, 4)``, ``image_index`` int64 ``(N,)`` (position in
        ``image_ids``) and every extra array present in all entries."""
        entries = [self.get(i) for i in image_ids]
        if not entries:
            raise ValueError("image_ids is empty; expected at least one stored image id")
        shared = set.intersection(*(set(e) for e in entries)) - {"image_hash"}
        out = {k: np.concatenate([np.asarray(e[k]) for e in entries]) for k in shared}
        out["image_index"] = np.concatenate([np.full(len(e["boxes"]), j, dtype=np.int64)
                                             for j, e in enumerate(entries)])
        return out

    def build(self, dataset, extractor, boxes_fn: Callable, progress: bool = True) -> WindowStore:
        """Compute and store the pooled vectors of every image of ``dataset`` not stored yet.

        ``boxes_fn(index, sample)`` returns the boxes to store for that image
        (float ``(K, 4)``) or a dict with ``"boxes"`` and extra arrays. Entries whose
        boxes, extra arrays or image content changed are recomputed; an interrupted
        build resumes.
        Writes ``index.json`` (image id → number of boxes) and ``seconds.json`` (image id →
        seconds its entry took to compute, kept from earlier builds) at the end.
        """
        import time

        from tqdm.auto import tqdm

        index, seconds = {}, self._seconds()
        for i in tqdm(range(len(dataset)), desc="pool windows", disable=not progress):
            tic = time.perf_counter()
            sample = dataset[i]
            chosen = boxes_fn(i, sample)
            extra = dict(chosen) if isinstance(chosen, dict) else {"boxes": chosen}
            boxes = np.asarray(extra.pop("boxes"), dtype=np.float32).reshape(-1, 4)
            image_hash = array_hash(sample.image)
            if not self.has(sample.image_id, boxes, image_hash, extra):
                self.put(sample.image_id, extractor(sample.image, boxes), boxes, image_hash, **extra)
                seconds[sample.image_id] = time.perf_counter() - tic
            index[sample.image_id] = len(boxes)
        save_json_atomic(self.dir / "seconds.json", seconds)
        save_json_atomic(self.dir / "index.json", index)
        return self

    def build_seconds(self, image_ids: Sequence[str]) -> float | None:
        """Seconds it took to compute the entries of ``image_ids`` (choosing the windows,
        the conv passes, pooling and writing), as recorded when they were built; ``None``
        when some entry's time was not recorded (e.g. its build was interrupted)."""
        seconds = self._seconds()
        return float(sum(seconds[i] for i in image_ids)) if all(i in seconds for i in image_ids) else None

    def disk_bytes(self) -> int:
        """Bytes the store's files take on disk."""
        return sum(path.stat().st_size for path in self.dir.iterdir() if path.is_file())

    def _seconds(self) -> dict:
        import json

        path = self.dir / "seconds.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _safe(self, image_id: str) -> str:
        image_id = str(image_id)
        if re.fullmatch(r"[A-Za-z0-9_.-]+", image_id) and not image_id.startswith("."):
            return image_id
        return "id-" + config_hash(image_id)

    def _pooled_path(self, image_id: str) -> Path:
        return self.dir / f"{self._safe(image_id)}.pooled.npy"

    def _meta_path(self, image_id: str) -> Path:
        return self.dir / f"{self._safe(image_id)}.meta.npz"


def _extra_key(extra: dict) -> str:
    return config_hash({name: array_hash(np.asarray(value)) for name, value in extra.items()})


def state_dict_hash(module: torch.nn.Module, length: int = 16) -> str:
    """Hash of a module's parameters and buffers (names, shapes, values)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(array_hash(tensor.detach().cpu().numpy()).encode())
    return digest.hexdigest()[:length]
