"""Windows: proposals labelled against the ground truth, the training data of every head.

A *proposal* is a box selective search returned; a *window* is a box we train on,
with its labels: the best IoU with a ground-truth box, that box, its class (or
background), and its IoU with each class's objects. Each training stage reads the
windows its own way, with its own IoU threshold, named once here and owned by the
pipeline's config:

* fine-tuning (chapter 07): foreground IoU ≥ ``fg_iou`` (0.5), background IoU in
  ``bg_iou`` ([0.1, 0.5));
* SVMs (chapter 08): positives are ground-truth boxes only, negatives have IoU <
  ``svm_negative_iou`` (0.3) with every object of the class;
* box regression (chapter 09): windows with IoU ≥ ``regression_iou`` (0.6, R-CNN's;
  the SPP-net paper's text says 0.5).

Boxes are float32 x1y1x2y2 pixels. Taught in chapters 07–09.
"""

from __future__ import annotations

import numpy as np

from .boxes import as_boxes, box_iou, encode, match_boxes

FG_IOU = 0.5
BG_IOU = (0.1, 0.5)
SVM_NEGATIVE_IOU = 0.3
REGRESSION_IOU = 0.6


def select_windows(proposals, gt_boxes, gt_labels, gt_difficult, num_classes: int,
                   caps: tuple[int, int, int], rng: np.random.Generator,
                   fg_iou: float = FG_IOU, bg_iou: tuple[float, float] = BG_IOU) -> dict:
    """Choose the windows of one training image to store, and label them.

    Keeps every ground-truth box, then at most ``caps = (fg, near, far)`` proposals
    with best IoU ≥ ``fg_iou``, in ``bg_iou`` and below ``bg_iou[0]`` (random,
    seeded by ``rng``). Returns ``boxes`` (N, 4), ``labels`` (N,) in 0..K (``K`` =
    background: best IoU < ``fg_iou``), ``ious`` (N,) best IoU, ``class_ious`` (N, K)
    float16 (best IoU with an object of each class), ``gt_boxes`` (N, 4) (the
    best-overlapping ground truth), ``is_gt`` and ``difficult`` (N,) bool.
    Taught in chapter 07.
    """
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_labels = np.asarray(gt_labels, np.int64)
    boxes = np.concatenate([gt_boxes, as_boxes(proposals, "proposals")])
    best, index = match_boxes(boxes, gt_boxes)
    g = len(gt_boxes)
    chosen = [np.arange(g)]
    for (lo, hi), cap in zip(((fg_iou, np.inf), bg_iou, (-np.inf, bg_iou[0])), caps):
        rows = np.flatnonzero((best[g:] >= lo) & (best[g:] < hi)) + g
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, cap, replace=False))
        chosen.append(rows)
    rows = np.concatenate(chosen).astype(np.int64)
    iou = box_iou(boxes[rows], gt_boxes)
    class_ious = np.zeros((len(rows), num_classes), np.float32)
    for k in range(num_classes):
        mine = gt_labels == k
        if mine.any():
            class_ious[:, k] = iou[:, mine].max(1)
    foreground = best[rows] >= fg_iou
    labels = np.full(len(rows), num_classes, np.int64)
    labels[foreground] = gt_labels[index[rows][foreground]]
    is_gt = rows < g
    difficult = np.zeros(len(rows), bool)
    difficult[is_gt] = np.asarray(gt_difficult, bool)[rows[is_gt]]
    return {"boxes": boxes[rows], "labels": labels, "ious": best[rows].astype(np.float32),
            "class_ious": class_ious.astype(np.float16),
            "gt_boxes": gt_boxes[index[rows]] if g else np.zeros((len(rows), 4), np.float32),
            "is_gt": is_gt, "difficult": difficult}


def svm_labels(windows: dict, num_classes: int,
               negative_iou: float = SVM_NEGATIVE_IOU) -> tuple[np.ndarray, np.ndarray]:
    """SVM positives (ground-truth boxes, not difficult) and negatives (IoU <
    ``negative_iou`` with every ground truth of the class), both (N, K) bool, from the
    ``windows`` dict of :func:`select_windows`. Taught in chapter 08."""
    labels = windows["labels"]
    positives = np.zeros((len(labels), num_classes), bool)
    negatives = np.asarray(windows["class_ious"], np.float32) < negative_iou
    good_gt = windows["is_gt"] & ~windows["difficult"]
    for k in range(num_classes):
        positives[:, k] = good_gt & (labels == k)
    return positives, negatives


def regression_targets(windows: dict, min_iou: float = REGRESSION_IOU
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The box-regression examples among ``windows``: ``(rows (M,) int64, targets (M, 4))``
    for the windows whose best IoU is ≥ ``min_iou``, each target the offsets
    ``(dx, dy, dw, dh)`` onto its ground truth (:func:`sppnet_lite.boxes.encode`).
    Taught in chapter 09."""
    rows = np.flatnonzero(np.asarray(windows["ious"]) >= min_iou)
    return rows, encode(windows["boxes"][rows], windows["gt_boxes"][rows])
