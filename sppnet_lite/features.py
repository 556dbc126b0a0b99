"""Shared conv features: SPP-net's one conv pass per image, and a feature store.

R-CNN warps each of ~2 000 windows to the network's input size and runs the
whole conv trunk on every one of them. SPP-net runs the conv trunk once on the
whole image (once per scale), projects every window onto the conv5 map and
pools it with a spatial pyramid into a fixed-length vector. Both produce the
same ``C·Σn²`` features, so the same heads sit on top. Taught in chapter 06.

Boxes are float32 ``(R, 4)`` ``[x1, y1, x2, y2]`` in input-image pixels (pixel
edges: ``x2 - x1`` is the width), as everywhere in the book.

Scales. The paper resizes the image so that its shorter side is
``s ∈ {480, 576, 688, 864, 1200}`` (single scale: 688) for a network whose
canonical input is 224 px. What matters is the ratio ``s / canonical``: it sets
how large an object of a given image fraction is relative to the inputs the
network learned from. We keep the ratios and scale them to the backbone's own
canonical size (:func:`default_scales`): for ZFLite (96 px) that is
``{208, 248, 296, 368, 512}`` and ``296`` for one scale.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from . import config
from .cache import array_hash, atomic_path, config_hash, save_json_atomic, save_npz_atomic

PAPER_SCALES = (480, 576, 688, 864, 1200)
PAPER_SINGLE_SCALE = 688
PAPER_CANONICAL_SIZE = 224
"""The paper's detection scales, its one-scale setting and ZF-5's input side (px)."""

DEFAULT_LEVELS = (6, 3, 2, 1)


def default_scales(canonical_size: int, multi_scale: bool = False) -> tuple[int, ...]:
    """The paper's scales (shorter image side, px) rescaled to a backbone's canonical size.

    ``s · canonical_size / 224``, rounded to a multiple of 8. For 224 this returns
    the paper's ``(688,)`` or ``(480, 576, 688, 864, 1200)``; for ZFLite's 96,
    ``(296,)`` or ``(208, 248, 296, 368, 512)``. Taught in chapter 06.
    """
    if int(canonical_size) < 1:
        raise ValueError(f"canonical_size must be a positive number of pixels, "
                         f"got {canonical_size!r}")
    scales = PAPER_SCALES if multi_scale else (PAPER_SINGLE_SCALE,)
    factor = int(canonical_size) / PAPER_CANONICAL_SIZE
    return tuple(int(round(s * factor / 8) * 8) for s in scales)


def select_scales(boxes, image_size: tuple[int, int], scales: Sequence[int],
                  canonical_size: int) -> np.ndarray:
    """For each box, the index of the scale at which its area is closest to ``canonical_size²``.

    ``boxes`` float ``(R, 4)`` x1y1x2y2 in input pixels; ``image_size`` ``(H, W)``.
    At scale ``s`` the image is resized by ``f = s / min(H, W)``, so a ``w × h``
    box covers ``w·h·f²`` pixels; we pick ``argmin |w·h·f² − canonical_size²|``
    (the paper's rule, Sec. 4.2; ties go to the smaller scale).
    Returns int64 ``(R,)``. Taught in chapter 06.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales.size == 0:
        raise ValueError("scales must hold at least one shorter-side length in pixels, got none")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    factors = scales / min(image_size)
    distance = np.abs(areas[:, None] * factors[None, :] ** 2 - float(canonical_size) ** 2)
    return distance.argmin(axis=1).astype(np.int64)


def resize_shorter_side(image: np.ndarray, scale: int) -> tuple[np.ndarray, float, float]:
    """Resize RGB uint8 ``image`` so its shorter side is ``scale`` px.

    Returns ``(resized, fx, fy)`` with the exact per-axis factors (after rounding
    the new size) that map input-pixel x / y coordinates onto the resized image.
    """
    height, width = image.shape[:2]
    factor = scale / min(height, width)
    new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized, new_w / width, new_h / height


class SPPFeatureExtractor:
    """SPP-net features: one conv pass per scale, every window pooled from the shared map.

    ``backbone``: an ``nn.Module`` mapping a normalised ``(1, 3, H, W)`` batch to conv
    features ``(1, C, H', W')`` and exposing ``stride``, ``out_channels`` and
    ``canonical_size``. ``levels``: the pyramid. ``scales``: shorter-side lengths
    (default: :func:`default_scales` one-scale). ``rule``: the box projection rule
    of :func:`sppnet_lite.spp.project_boxes`. ``preprocess``: uint8 image →
    normalised tensor (default :func:`sppnet_lite.backbone.preprocess`).

    ``extractor(image, boxes)`` with RGB uint8 ``(H, W, 3)`` and float ``(R, 4)``
    x1y1x2y2 pixel boxes returns float32 ``(R, output_dim)`` on the CPU, rows in the
    order of ``boxes``. Each box uses the scale chosen by :func:`select_scales`; a
    scale no box chooses is not computed. ``last_timing`` holds the seconds of the
    last call: ``conv`` (trunk passes), ``pool`` (projection + ROI pooling),
    ``total``, and ``scales_run``. Runs on the backbone's device, with channels-last
    tensors (oneDNN's fast layout on CPU; R-CNN's crops get the same). Taught in chapter 06.
    """

    def __init__(self, backbone: torch.nn.Module, levels: Sequence[int] = DEFAULT_LEVELS,
                 scales: Sequence[int] | None = None, rule: str = "paper",
                 preprocess: Callable | None = None, roi_batch: int = 2048):
        from .spp import RULES

        _check_backbone(backbone)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if scales is None:
            scales = default_scales(backbone.canonical_size)
        scales = tuple(int(s) for s in scales)
        if not scales or min(scales) < 16:
            raise ValueError(f"scales must be shorter-side lengths >= 16 px, got {scales!r}")
        self.backbone = backbone
        self.levels = tuple(int(n) for n in levels)
        self.scales = scales
        self.rule = rule
        self.preprocess = preprocess or _default_preprocess()
        self.roi_batch = int(roi_batch)
        self.output_dim = int(backbone.out_channels) * sum(n * n for n in self.levels)
        self.last_timing: dict = {}

    @property
    def config(self) -> dict:
        """Everything besides the weights that determines the features (for cache keys)."""
        return {"kind": "spp", "levels": list(self.levels), "scales": list(self.scales),
                "rule": self.rule, "stride": float(self.backbone.stride),
                "canonical_size": int(self.backbone.canonical_size),
                "out_channels": int(self.backbone.out_channels),
                "preprocess": _qualified_name(self.preprocess)}

    def __call__(self, image: np.ndarray, boxes) -> torch.Tensor:
        from .spp import project_boxes

        image = _check_image(image)
        boxes = _check_boxes(boxes)
        device = _module_device(self.backbone)
        start = time.perf_counter()
        choice = select_scales(boxes, image.shape[:2], self.scales, self.backbone.canonical_size)
        out = torch.zeros((len(boxes), self.output_dim), dtype=torch.float32)
        conv_s = pool_s = 0.0
        scales_run = []
        with _eval_mode(self.backbone), torch.no_grad():
            for k in np.unique(choice):
                tic = time.perf_counter()
                resized, fx, fy = resize_shorter_side(image, self.scales[k])
                batch = self.preprocess(resized).to(device)
                features = self.backbone(batch.contiguous(memory_format=torch.channels_last))
                _synchronize(device)
                conv_s += time.perf_counter() - tic
                scales_run.append(self.scales[k])

                tic = time.perf_counter()
                rows = np.flatnonzero(choice == k)
                scaled = torch.from_numpy(boxes[rows] * np.array([fx, fy, fx, fy], np.float32))
                cells = project_boxes(scaled, self.backbone.stride, self.rule,
                                      feature_size=features.shape[-2:])
                rois = torch.cat([torch.zeros(len(rows), 1), cells], dim=1).to(device, features.dtype)
                self._pool(features, rois, rows, out)
                _synchronize(device)
                pool_s += time.perf_counter() - tic
        self.last_timing = {"conv": conv_s, "pool": pool_s, "total": time.perf_counter() - start,
                            "scales_run": scales_run, "num_boxes": len(boxes)}
        return out

    def _pool(self, features: torch.Tensor, rois: torch.Tensor, rows: np.ndarray, out: torch.Tensor):
        """``roi_spp`` of ``rois`` (K, 5) into ``out[rows]``, at most ``roi_batch`` windows a call.

        On the CPU the windows are split over torch's threads, one chunk each:
        torchvision's CPU ``roi_pool`` runs on a single core."""
        from .spp import roi_spp

        threads = torch.get_num_threads() if features.device.type == "cpu" else 1
        size = max(1, min(self.roi_batch, -(-len(rows) // threads)))
        chunks = [slice(lo, lo + size) for lo in range(0, len(rows), size)]

        def pool(chunk: slice) -> None:  # chunks write disjoint rows of ``out``
            pooled = roi_spp(features, rois[chunk], 1.0, self.levels)
            out[torch.from_numpy(rows[chunk])] = pooled.float().cpu()

        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(threads, len(chunks))) as executor:
                list(executor.map(pool, chunks))
        else:
            for chunk in chunks:
                pool(chunk)


class FeatureStore:
    """Per-image pooled features on disk: float16, memory-mapped, never stale.

    The store lives in ``<root>/<name>-<hash>/`` where the hash covers ``key`` (the
    backbone's checkpoint hash and the extractor's config: see :meth:`for_extractor`).
    Each image has two files written atomically: ``<id>.features.npy`` (float16
    ``(K, D)``, opened with ``mmap_mode="r"``) and, written last, ``<id>.meta.npz``
    (``boxes`` float32 ``(K, 4)``, the image's content hash, your extra arrays).
    An entry counts only when its meta file exists and matches the boxes / image
    hash asked for, so an interrupted build or a changed box set is recomputed,
    never read. Taught in chapter 06 (used in chapters 07–10).
    """

    VERSION = 1

    def __init__(self, key: dict, root: str | os.PathLike | None = None, name: str = "features"):
        self.key = {"store_version": self.VERSION, **key}
        self.hash = config_hash(self.key)
        base = Path(root) if root is not None else config.CACHE_DIR / "features"
        self.dir = base / f"{name}-{self.hash}"
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            save_json_atomic(key_file, self.key)
        elif json.loads(key_file.read_text()) != json.loads(json.dumps(self.key, default=str)):
            raise ValueError(f"feature store {str(self.dir)!r}: key.json does not match the key "
                             f"{self.key}; delete the folder")

    @classmethod
    def for_extractor(cls, extractor, name: str = "features", root: str | os.PathLike | None = None,
                      checkpoint_hash: str | None = None) -> FeatureStore:
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
        if not meta.exists() or not self._features_path(image_id).exists():
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

    def put(self, image_id: str, features, boxes, image_hash: str = "", **extra) -> None:
        """Store ``features`` ``(K, D)`` (any float; kept as float16) for ``boxes`` ``(K, 4)``.

        ``extra`` arrays (e.g. labels, IoUs) are stored beside the boxes.
        """
        features = torch.as_tensor(features).detach().cpu().float().numpy()
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if features.ndim != 2 or len(features) != len(boxes):
            raise ValueError(f"features must be (K, D) with K = len(boxes) = {len(boxes)}, "
                             f"got shape {features.shape}")
        reserved = {"boxes", "image_hash", "rows", "extra_key", "features"} & set(extra)
        if reserved:
            raise ValueError(f"extra arrays may not be named {sorted(reserved)}")
        self._meta_path(image_id).unlink(missing_ok=True)  # old meta must not describe new features
        half = np.clip(features, -65504, 65504).astype(np.float16)  # float16's finite range
        with atomic_path(self._features_path(image_id)) as tmp, open(tmp, "wb") as f:
            np.save(f, half)
        save_npz_atomic(self._meta_path(image_id), boxes=boxes, image_hash=np.array(image_hash),
                        rows=np.array(len(boxes)), extra_key=np.array(_extra_key(extra)),
                        **{k: np.asarray(v) for k, v in extra.items()})

    def get(self, image_id: str, boxes=None, image_hash: str | None = None,
            mmap: bool = True) -> dict:
        """``{"features": float16 (K, D) (memory-mapped), "boxes": float32 (K, 4),
        "image_hash": str, **extra}``; ``KeyError`` when absent or stale."""
        if not self.has(image_id, boxes, image_hash):
            raise KeyError(f"feature store {self.dir.name}: no up-to-date entry for image "
                           f"{image_id!r}")
        with np.load(self._meta_path(image_id), allow_pickle=False) as data:
            entry = {k: data[k] for k in data.files if k not in ("rows", "extra_key")}
        entry["image_hash"] = str(entry["image_hash"])
        entry["features"] = np.load(self._features_path(image_id), mmap_mode="r" if mmap else None,
                                    allow_pickle=False)
        return entry

    def image_ids(self) -> list[str]:
        """Ids with a complete entry, sorted."""
        suffix = ".meta.npz"
        return sorted(p.name[: -len(suffix)] for p in self.dir.glob(f"*{suffix}")
                      if self._features_path(p.name[: -len(suffix)]).exists())

    def load(self, image_ids: Sequence[str]) -> dict:
        """Concatenate the entries of ``image_ids``: ``features`` float16 ``(N, D)``,
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

    def build(self, dataset, extractor, boxes_fn: Callable, progress: bool = True) -> FeatureStore:
        """Compute and store features for every image of ``dataset`` not stored yet.

        ``boxes_fn(index, sample)`` returns the boxes to store for that image
        (float ``(K, 4)``) or a dict with ``"boxes"`` and extra arrays. Entries whose
        boxes, extra arrays or image content changed are recomputed; an interrupted
        build resumes.
        Writes ``index.json`` (image id → number of boxes) at the end.
        """
        from tqdm.auto import tqdm

        index = {}
        for i in tqdm(range(len(dataset)), desc="features", disable=not progress):
            sample = dataset[i]
            chosen = boxes_fn(i, sample)
            extra = dict(chosen) if isinstance(chosen, dict) else {"boxes": chosen}
            boxes = np.asarray(extra.pop("boxes"), dtype=np.float32).reshape(-1, 4)
            image_hash = array_hash(sample.image)
            if not self.has(sample.image_id, boxes, image_hash, extra):
                self.put(sample.image_id, extractor(sample.image, boxes), boxes, image_hash, **extra)
            index[sample.image_id] = len(boxes)
        save_json_atomic(self.dir / "index.json", index)
        return self

    def _safe(self, image_id: str) -> str:
        image_id = str(image_id)
        if re.fullmatch(r"[A-Za-z0-9_.-]+", image_id) and not image_id.startswith("."):
            return image_id
        return "id-" + config_hash(image_id)

    def _features_path(self, image_id: str) -> Path:
        return self.dir / f"{self._safe(image_id)}.features.npy"

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


# ----------------------------------------------------------------------------------------
# Helpers shared with rcnn.py
# ----------------------------------------------------------------------------------------

def _check_backbone(backbone) -> None:
    missing = [a for a in ("stride", "out_channels", "canonical_size") if not hasattr(backbone, a)]
    if missing or not isinstance(backbone, torch.nn.Module):
        raise ValueError(f"backbone must be an nn.Module with stride, out_channels and "
                         f"canonical_size attributes; got {type(backbone).__name__} "
                         f"missing {missing}")


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got dtype {image.dtype} and "
                         f"shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_boxes(boxes) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (R, 4) x1y1x2y2 pixels, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes must be finite, got NaN or inf")
    return boxes


def _default_preprocess() -> Callable:
    from .backbone import preprocess

    return preprocess


def _qualified_name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _eval_mode:
    """Run a module in eval mode, restoring its previous mode afterwards."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)
