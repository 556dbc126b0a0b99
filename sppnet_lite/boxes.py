"""Boxes for every detector in the book: IoU, one matcher, the R-CNN box coding, NMS, and
the detector's output type :class:`Detections`.

Boxes are float32 ``(K, 4)`` arrays ``[x1, y1, x2, y2]`` in input-image pixels
(continuous coordinates: width = x2 - x1). IoU and NMS are thin wrappers over
``torchvision.ops`` so the book and the tests share one definition.
Taught in chapters 05 (IoU, matching), 09 (box coding) and 10 (NMS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms
from torchvision.ops import box_iou as _tv_box_iou

BBOX_CLIP = float(np.log(1000.0 / 16.0))
"""Largest allowed ``dw``/``dh`` when decoding, so ``exp`` cannot overflow."""


def as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """Return ``boxes`` as a float32 ``(K, 4)`` array, or raise naming ``name``."""
    array = np.asarray(boxes, dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (K, 4) x1y1x2y2, got {array.shape}")
    return array


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU matrix ``(A, B)`` float32 between two sets of x1y1x2y2 pixel boxes.

    Uses ``torchvision.ops.box_iou``. Taught in chapter 05.
    """
    a, b = as_boxes(boxes_a, "boxes_a"), as_boxes(boxes_b, "boxes_b")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return _tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def match_boxes(boxes, targets) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``boxes`` (K, 4), its best IoU with any of ``targets`` (T, 4) and that
    target's index: ``(iou (K,) float32, index (K,) int64)``.

    With no targets the IoU is 0 and the index -1. The book's one matcher: windows
    against ground truth (``match_boxes(windows, gt_boxes)``, chapter 07) and, the
    other way round, each object's best proposal (``match_boxes(gt_boxes, proposals)``,
    chapter 05). Taught in chapter 05.
    """
    boxes = as_boxes(boxes)
    targets = as_boxes(targets, "targets")
    if len(targets) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), np.float32), np.full(len(boxes), -1, np.int64)
    iou = box_iou(boxes, targets)
    return iou.max(axis=1), iou.argmax(axis=1).astype(np.int64)


def encode(boxes, gt_boxes) -> np.ndarray:
    """R-CNN regression targets ``(K, 4)`` ``(dx, dy, dw, dh)`` from ``boxes`` to ``gt_boxes``.

    With proposal centre ``(px, py)``, size ``(pw, ph)`` and target ``(gx, gy, gw, gh)``:
    ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``,
    ``dh = log(gh / ph)`` (Girshick et al., R-CNN appendix C). Both inputs are
    paired row by row. Taught in chapter 09.
    """
    p, g = as_boxes(boxes), as_boxes(gt_boxes, "gt_boxes")
    if p.shape != g.shape:
        raise ValueError(f"boxes and gt_boxes must pair up, got {p.shape} and {g.shape}")
    pw, ph = np.maximum(p[:, 2] - p[:, 0], 1e-3), np.maximum(p[:, 3] - p[:, 1], 1e-3)
    gw, gh = np.maximum(g[:, 2] - g[:, 0], 1e-3), np.maximum(g[:, 3] - g[:, 1], 1e-3)
    px, py = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
    gx, gy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)],
                    axis=1).astype(np.float32)


def decode(boxes, deltas) -> np.ndarray:
    """Apply ``(K, 4)`` deltas ``(dx, dy, dw, dh)`` to ``boxes``; the inverse of :func:`encode`.

    ``dw``/``dh`` are clipped at ``log(1000/16)`` as in the R-CNN code. Returns
    float32 ``(K, 4)`` x1y1x2y2. Taught in chapter 09.
    """
    p = as_boxes(boxes)
    d = np.asarray(deltas, dtype=np.float32).reshape(-1, 4)
    if len(d) != len(p):
        raise ValueError(f"deltas must have one row per box ({len(p)}), got {len(d)}")
    pw, ph = np.maximum(p[:, 2] - p[:, 0], 1e-3), np.maximum(p[:, 3] - p[:, 1], 1e-3)
    px, py = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
    cx, cy = px + d[:, 0] * pw, py + d[:, 1] * ph
    w = pw * np.exp(np.minimum(d[:, 2], BBOX_CLIP))
    h = ph * np.exp(np.minimum(d[:, 3], BBOX_CLIP))
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1).astype(np.float32)


def clip_boxes(boxes, width: int, height: int) -> np.ndarray:
    """Clip x1y1x2y2 boxes to the image ``[0, width] x [0, height]``."""
    b = as_boxes(boxes).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    return b


def nms_per_class(boxes, scores, labels, iou_threshold: float = 0.3) -> np.ndarray:
    """Indices kept by per-class greedy NMS, in decreasing score order.

    ``boxes`` (K, 4) pixels, ``scores`` (K,), ``labels`` (K,) ints: a box only
    suppresses boxes of its own label (``torchvision.ops.batched_nms``). The
    paper uses ``iou_threshold=0.3``. Taught in chapter 10.
    """
    b = as_boxes(boxes)
    if len(b) == 0:
        return np.zeros(0, np.int64)
    keep = batched_nms(torch.from_numpy(b), torch.as_tensor(np.asarray(scores), dtype=torch.float32),
                       torch.as_tensor(np.asarray(labels), dtype=torch.int64), float(iou_threshold))
    return keep.numpy().astype(np.int64)


@dataclass
class Detections:
    """The detections in one image: ``boxes`` (D, 4) float32 x1y1x2y2 pixels, ``scores`` (D,)
    float32, ``labels`` (D,) int64 indexing the detector's ``class_names``, best first.
    What every detector's ``detect`` returns. Taught in chapter 10."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def paired_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU ``(K,)`` of row ``i`` of ``boxes_a`` with row ``i`` of ``boxes_b`` (same shape ``(K, 4)``)."""
    a, b = as_boxes(boxes_a, "boxes_a"), as_boxes(boxes_b, "boxes_b")
    if a.shape != b.shape:
        raise ValueError(f"boxes_a and boxes_b must pair up, got {a.shape} and {b.shape}")
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return (inter / np.maximum(area(a) + area(b) - inter, 1e-9)).astype(np.float32)
