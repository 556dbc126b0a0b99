"""Region proposals: selective search, a content-keyed proposal cache, recall.

SPP-net, like R-CNN, scores about 2 000 candidate windows per image that
selective search (Uijlings et al., IJCV 2013) proposes. We use OpenCV's
implementation (``cv2.ximgproc.segmentation``, from opencv-contrib) in its
"fast" mode, the mode the paper uses. Taught in chapter 05.

Boxes follow the book's convention: float32 ``(P, 4)`` ``[x1, y1, x2, y2]`` in
input-image pixels, with ``x2 - x1`` the width (OpenCV's rectangle
``(x, y, w, h)`` covers pixel columns ``x .. x + w - 1`` and becomes
``[x, y, x + w, y + h]``), the same convention as the dataset's ground truth and
``torchvision.ops.box_iou``.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from . import config
from .cache import array_hash, config_hash, load_npz, save_npz_atomic

SEARCH_MODES = ("fast", "quality")
MIN_SIDE = 16
"""Images smaller than this (in either side) are rejected: graph segmentation needs some pixels."""

DEFAULT_MIN_SIZE = 8
"""Default smallest proposal side kept, in input-image pixels (our smallest objects are ~16 px)."""

DEFAULT_MAX_SIDE = 400
"""The book runs selective search on images downscaled to a longer side of at most 400 px.

Our images are 240-480 px per side; at 400 px fast mode takes about 0.55 s instead of
0.7 s of CPU time per image and keeps recall at IoU 0.5 unchanged (chapter 05 measures it)."""

CACHE_VERSION = 1
"""Bump when the proposal code changes what it returns: every cached file becomes a miss."""


def selective_search(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000,
                     min_size: float = DEFAULT_MIN_SIZE, max_side: int | None = DEFAULT_MAX_SIDE,
                     seed: int = 0) -> np.ndarray:
    """Selective-search proposals for one image, best ranked first.

    ``image`` is RGB uint8 ``(H, W, 3)``; grayscale ``(H, W)`` / ``(H, W, 1)``,
    RGBA, other integer types in [0, 255] and float images in [0, 1] are
    converted; anything else, or a side under 16 px, raises ``ValueError``.
    ``mode`` is ``"fast"`` (the paper's setting) or ``"quality"`` (more boxes,
    slower). ``max_side``: when the longer image side exceeds it, selective
    search runs on a copy downscaled to that side and the boxes are mapped back
    to input pixels (faster; the segmentation sees fewer details).
    ``min_size``: boxes narrower or shorter than this (input pixels) are dropped.
    OpenCV ranks boxes with C's ``rand()``; we seed it with ``seed`` so the same
    image gives the same ranking.

    Returns float32 ``(P, 4)`` x1y1x2y2 boxes inside ``[0, W] x [0, H]``,
    duplicates removed, ``P <= max_proposals``, in OpenCV's ranking order.
    Taught in chapter 05.
    """
    image = as_rgb_uint8(image)
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    if int(max_proposals) < 1:
        raise ValueError(f"max_proposals must be >= 1, got {max_proposals!r}")
    if max_side is not None and int(max_side) < MIN_SIDE:
        raise ValueError(f"max_side must be None or >= {MIN_SIDE}, got {max_side!r}")
    height, width = image.shape[:2]
    factor = 1.0
    if max_side is not None and max(height, width) > max_side:
        factor = max_side / max(height, width)
        size = (max(MIN_SIDE, round(width * factor)), max(MIN_SIDE, round(height * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # OpenCV expects BGR
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    _seed_c_rand(seed)
    rects = np.asarray(search.process(), dtype=np.int64).reshape(-1, 4)

    _, first = np.unique(rects, axis=0, return_index=True)
    rects = rects[np.sort(first)]
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1).astype(np.float64)
    if factor != 1.0:
        scale = np.array([width / image.shape[1], height / image.shape[0]] * 2)
        boxes = boxes * scale
    boxes = np.clip(boxes, 0, [width, height, width, height])
    sides = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(sides >= min_size).all(axis=1)]
    return boxes[: int(max_proposals)].astype(np.float32)


def ensure_proposals(dataset, mode: str = "fast", max_proposals: int = 2000,
                     min_size: float = DEFAULT_MIN_SIZE, max_side: int | None = DEFAULT_MAX_SIDE,
                     workers: int = 2, progress: bool = True,
                     cache_dir: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Proposals for every image of ``dataset`` (in dataset order), computed once.

    ``dataset[i]`` must give a sample with ``.image`` (RGB uint8). Each image's
    boxes are cached in ``<cache_dir>/<params hash>/<image hash>.npz`` (written
    atomically), so a changed image or parameter is a miss, never stale, and an
    interrupted run resumes with the images it had finished. Misses are computed
    by ``workers`` processes with a progress bar. Returns a list of float32
    ``(P, 4)`` x1y1x2y2 arrays. Taught in chapter 05.
    """
    from tqdm.auto import tqdm

    folder = proposal_cache_dir(mode, max_proposals, min_size, max_side, cache_dir)
    params = {"mode": mode, "max_proposals": max_proposals, "min_size": min_size,
              "max_side": max_side}
    results: list[np.ndarray | None] = [None] * len(dataset)
    todo = []
    for i in range(len(dataset)):
        image = dataset[i].image
        path = folder / f"{array_hash(image)}.npz"
        if path.exists():
            results[i] = load_npz(path)["boxes"]
        else:
            todo.append((i, path))

    bar = tqdm(total=len(todo), desc=f"selective search ({mode})", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        context = get_context("spawn")  # fork after torch/OpenMP threads started is unsafe
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                 initializer=_worker_init) as pool:
            pending = {}
            queue = ((i, dataset[i].image, path) for i, path in todo)  # images loaded lazily
            for i, image, path in itertools.islice(queue, 4 * workers):
                pending[pool.submit(_compute_and_save, image, path, params)] = i
            while pending:  # a bounded window: never all images in flight at once
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[pending.pop(future)] = future.result()
                    bar.update()
                    for i, image, path in itertools.islice(queue, 1):
                        pending[pool.submit(_compute_and_save, image, path, params)] = i
    else:
        for i, path in todo:
            results[i] = _compute_and_save(dataset[i].image, path, params)
            bar.update()
    bar.close()
    return results


def proposal_cache_dir(mode: str = "fast", max_proposals: int = 2000,
                       min_size: float = DEFAULT_MIN_SIZE, max_side: int | None = DEFAULT_MAX_SIDE,
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding cached proposals for one parameter set (its name is their hash)."""
    key = config_hash({"mode": mode, "max_proposals": int(max_proposals),
                       "min_size": float(min_size),
                       "max_side": None if max_side is None else int(max_side),
                       "opencv": cv2.__version__, "version": CACHE_VERSION})
    root = Path(cache_dir) if cache_dir is not None else config.CACHE_DIR / "proposals"
    return root / key


def proposal_recall(proposals: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                    difficult: Sequence[np.ndarray] | None = None,
                    counts: Sequence[int] = (10, 20, 50, 100, 200, 500, 1000, 2000),
                    iou_thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """Recall of ground-truth objects by the top-k proposals of each image.

    An object counts as recalled at threshold t by the first k proposals when
    one of them has IoU >= t with it (``torchvision.ops.box_iou``). Objects
    flagged ``difficult`` are left out, as in VOC evaluation. Returns
    ``{"counts": [...], "recall": {t: [...]}, "num_objects": n,
    "best_iou": float array (n,) with all proposals}``. Taught in chapter 05.
    """
    from .boxes import box_iou

    counts = [int(k) for k in counts]
    best_per_count = []  # one (len(counts), G) array per image
    for i, (props, gts) in enumerate(zip(proposals, gt_boxes)):
        gts = np.asarray(gts, dtype=np.float32).reshape(-1, 4)
        if difficult is not None:
            gts = gts[~np.asarray(difficult[i], dtype=bool).reshape(-1)]
        if len(gts) == 0:
            continue
        props = np.asarray(props, dtype=np.float32).reshape(-1, 4)
        if len(props) == 0:
            best_per_count.append(np.zeros((len(counts) + 1, len(gts))))
            continue
        iou = box_iou(props, gts)
        running = np.maximum.accumulate(iou, axis=0)  # best IoU among the first p+1 boxes
        rows = [min(k, len(props)) - 1 for k in counts] + [len(props) - 1]
        best_per_count.append(running[rows])
    if not best_per_count:
        raise ValueError("proposal_recall got no (non-difficult) ground-truth boxes")
    best = np.concatenate(best_per_count, axis=1)
    recall = {float(t): [float((best[j] >= t).mean()) for j in range(len(counts))]
              for t in iou_thresholds}
    return {"counts": counts, "recall": recall, "num_objects": int(best.shape[1]),
            "best_iou": best[-1]}


SIZE_BINS = ((0, 32), (32, 64), (64, 128), (128, 10_000))
"""Object sizes, √(area) in original px, for :func:`recall_by_size` (chapters 05 and 12)."""


def recall_by_size(proposals: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                   bins: Sequence[tuple[float, float]] = SIZE_BINS,
                   iou_thresholds: Sequence[float] = (0.5, 0.7)) -> list[dict]:
    """:func:`proposal_recall` of all the proposals, for the objects of each size bin
    ``[lo, hi)`` (√(area), px): ``[{"bin": (lo, hi), "objects": n, "recall": {t: r}}]``,
    recall ``nan`` for an empty bin. Taught in chapter 12."""
    rows = []
    for lo, hi in bins:
        chosen = []
        for gts in gt_boxes:
            gts = np.asarray(gts, dtype=np.float32).reshape(-1, 4)
            side = np.sqrt(np.clip(gts[:, 2] - gts[:, 0], 0, None) * np.clip(gts[:, 3] - gts[:, 1], 0, None))
            chosen.append(gts[(side >= lo) & (side < hi)])
        objects = sum(len(g) for g in chosen)
        if objects == 0:
            rows.append({"bin": (lo, hi), "objects": 0,
                         "recall": {float(t): float("nan") for t in iou_thresholds}})
            continue
        everything = max(len(p) for p in proposals) if len(proposals) else 1
        r = proposal_recall(proposals, chosen, counts=(max(everything, 1),), iou_thresholds=iou_thresholds)
        rows.append({"bin": (lo, hi), "objects": objects,
                     "recall": {t: values[0] for t, values in r["recall"].items()}})
    return rows


def timed_selective_search(image: np.ndarray, **kwargs) -> tuple[np.ndarray, float]:
    """:func:`selective_search` and its wall-clock time in seconds."""
    start = time.perf_counter()
    boxes = selective_search(image, **kwargs)
    return boxes, time.perf_counter() - start


def as_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as a contiguous RGB uint8 ``(H, W, 3)`` array or raise ``ValueError``.

    Grayscale (``(H, W)`` or ``(H, W, 1)``) is repeated to three channels, RGBA
    loses its alpha, integer images must lie in [0, 255] and float images in
    [0, 1]. Both sides must be at least 16 px.
    """
    array = np.asarray(image)
    if array.dtype == object or array.dtype == bool:
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {array.shape}")
    if min(array.shape[:2]) < MIN_SIDE:
        raise ValueError(f"{name} must be at least {MIN_SIDE}x{MIN_SIDE} pixels, "
                         f"got {array.shape[1]}x{array.shape[0]} (W x H)")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ValueError(f"a float {name} must hold finite values in [0, 1], got NaN or inf")
            if array.min() < 0 or array.max() > 1:
                raise ValueError(f"a float {name} must hold values in [0, 1], got range "
                                 f"[{array.min()}, {array.max()}]")
            array = np.round(array * 255)
        elif not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be uint8, integer or float, got dtype {array.dtype}")
        elif array.min() < 0 or array.max() > 255:
            raise ValueError(f"an integer {name} must hold values in [0, 255], got range "
                             f"[{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def _seed_c_rand(seed: int) -> None:
    # OpenCV's selective search ranks regions with C's rand(); seeding it makes
    # the order reproducible. Without a C library to call, the order may vary.
    try:
        ctypes.CDLL(None).srand(int(seed))
    except (OSError, AttributeError, TypeError):
        pass


def _worker_init() -> None:
    cv2.setNumThreads(1)  # parallelism comes from one process per core


def _compute_and_save(image: np.ndarray, path: Path, params: dict) -> np.ndarray:
    boxes = selective_search(image, **params)
    save_npz_atomic(path, boxes=boxes)
    return boxes
