"""PASCAL VOC detection metrics and the loop that evaluates a detector on a dataset split.

Follows the VOC devkit (``VOCevaldet.m``) and its Python port in the R-CNN code:
detections of one class are sorted by score; each is matched to its
best-overlapping ground truth of that class: a true positive when that IoU exceeds
the threshold and that ground truth is not yet claimed, a false positive otherwise
(a second hit on a claimed object included, even if another object overlaps it
less); detections matched to a ``difficult`` ground truth count as neither, and
difficult objects are not in the recall denominator. AP is the VOC2007 11-point interpolated average (``use_07_metric``)
or the all-point area under the interpolated curve (VOC2010+).
Boxes are x1y1x2y2 pixels with continuous coordinates (the devkit adds 1 to
widths; our generated data uses continuous boxes). Taught in chapter 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .boxes import Detections, as_boxes, box_iou


@dataclass
class VOCResult:
    """Per-class AP (11-point and all-point), mAP, and the PR curve of each class."""

    class_names: tuple
    ap: dict
    ap_all_point: dict
    mAP: float
    mAP_all_point: float
    curves: dict = field(repr=False)
    num_positives: dict = field(repr=False)

    def table(self) -> list[dict]:
        """One row per class plus a final ``mean`` row, ready for a DataFrame or JSON."""
        rows = [{"class": c, "AP (VOC07 11-pt)": self.ap[c], "AP (all-point)": self.ap_all_point[c],
                 "positives": self.num_positives[c]} for c in self.class_names]
        rows.append({"class": "mean", "AP (VOC07 11-pt)": self.mAP,
                     "AP (all-point)": self.mAP_all_point, "positives": sum(self.num_positives.values())})
        return rows

    def to_json(self) -> dict:
        return {"mAP": self.mAP, "mAP_all_point": self.mAP_all_point,
                "ap": self.ap, "ap_all_point": self.ap_all_point, "num_positives": self.num_positives}


def voc_ap(recall, precision, use_07_metric: bool = True) -> float:
    """Average precision from a PR curve (``recall``, ``precision``: (D,) in detection order).

    ``use_07_metric=True``: mean over recall thresholds 0, 0.1, ..., 1 of the
    best precision at recall >= threshold (VOC2007). Otherwise the area under
    the monotone precision envelope (VOC2010+ "all-point"). Taught in chapter 10.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def match_detections(detections: Sequence[Detections], ground_truths: Sequence, class_index: int,
                     iou_threshold: float = 0.5):
    """Match one class's detections across images to ground truth, VOC style.

    Returns ``(scores (D,), tp (D,) bool, fp (D,) bool, num_positives)`` sorted by
    decreasing score; a detection on a difficult object has ``tp = fp = False``.
    ``ground_truths[i]`` has ``boxes``, ``labels`` and ``difficult`` (attributes or keys).
    """
    records = []
    num_positives = 0
    claimed = []
    for image, (dets, gt) in enumerate(zip(detections, ground_truths)):
        gt_boxes, gt_labels, gt_difficult = _ground_truth(gt)
        mine = gt_labels == class_index
        num_positives += int(np.sum(mine & ~gt_difficult))
        claimed.append(np.zeros(int(mine.sum()), bool))
        keep = np.asarray(dets.labels) == class_index
        for score, box in zip(np.asarray(dets.scores)[keep], as_boxes(dets.boxes)[keep]):
            records.append((float(score), image, box))
    # Stable sort so that ties keep image order, as the devkit's sort does.
    order = sorted(range(len(records)), key=lambda k: -records[k][0])
    scores = np.array([records[k][0] for k in order], np.float64)
    tp = np.zeros(len(order), bool)
    fp = np.zeros(len(order), bool)
    for rank, k in enumerate(order):
        _, image, box = records[k]
        gt_boxes, gt_labels, gt_difficult = _ground_truth(ground_truths[image])
        mine = gt_labels == class_index
        if not mine.any():
            fp[rank] = True
            continue
        iou = box_iou(box[None], gt_boxes[mine])[0]
        best = int(iou.argmax())
        if iou[best] > iou_threshold:
            if gt_difficult[mine][best]:
                continue
            if not claimed[image][best]:
                claimed[image][best] = True
                tp[rank] = True
            else:
                fp[rank] = True
        else:
            fp[rank] = True
    return scores, tp, fp, num_positives


def precision_recall(tp, fp, num_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative ``(recall, precision)`` (D,) arrays from match flags in score order."""
    ctp = np.cumsum(np.asarray(tp, np.float64))
    cfp = np.cumsum(np.asarray(fp, np.float64))
    recall = ctp / max(num_positives, 1)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return recall, precision


def evaluate_detections(detections: Sequence[Detections], ground_truths: Sequence,
                        class_names: Sequence[str], iou_threshold: float = 0.5) -> VOCResult:
    """VOC AP per class and mAP over ``class_names``, for both AP variants.

    ``detections[i]`` and ``ground_truths[i]`` describe the same image (e.g.
    ``VOCDataset`` samples). Classes without a non-difficult ground truth are left
    out of the mean (their AP is reported as NaN). Taught in chapter 10.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections has {len(detections)} images but ground_truths has "
                         f"{len(ground_truths)}; expected one entry per image for both")
    ap, ap_all, curves, positives = {}, {}, {}, {}
    for k, name in enumerate(class_names):
        _, tp, fp, npos = match_detections(detections, ground_truths, k, iou_threshold)
        recall, precision = precision_recall(tp, fp, npos)
        positives[name] = npos
        curves[name] = (recall, precision)
        if npos == 0:
            ap[name] = ap_all[name] = float("nan")
            continue
        ap[name] = voc_ap(recall, precision, use_07_metric=True)
        ap_all[name] = voc_ap(recall, precision, use_07_metric=False)
    valid = [n for n in class_names if positives[n] > 0]
    mean = float(np.mean([ap[n] for n in valid])) if valid else float("nan")
    mean_all = float(np.mean([ap_all[n] for n in valid])) if valid else float("nan")
    return VOCResult(tuple(class_names), ap, ap_all, mean, mean_all, curves, positives)


def error_analysis(detections: Sequence[Detections], ground_truths: Sequence, num_classes: int,
                   iou_threshold: float = 0.5, top_k: int | None = None) -> dict:
    """Sort each class's top-scoring false positives into Hoiem-style error types.

    For every class the ``top_k`` highest-scoring detections (default: as many
    as that class has positives) are matched as in :func:`match_detections`; a
    false positive is ``"localisation"`` if it overlaps a ground truth of its own
    class with IoU in [0.1, threshold] or duplicates a claimed one, ``"confusion"``
    if it overlaps an object of another class by IoU >= 0.1, else ``"background"``.
    Returns counts ``{"correct", "localisation", "confusion", "background"}``.
    Taught in chapter 10.
    """
    counts = {"correct": 0, "localisation": 0, "confusion": 0, "background": 0}
    for k in range(num_classes):
        _, tp, fp, npos = match_detections(detections, ground_truths, k, iou_threshold)
        limit = npos if top_k is None else top_k
        # Recover, per ranked detection, its image and box to classify the false positives.
        records = []
        for image, dets in enumerate(detections):
            keep = np.asarray(dets.labels) == k
            records += [(float(s), image, b) for s, b in zip(np.asarray(dets.scores)[keep],
                                                             as_boxes(dets.boxes)[keep])]
        records = [records[j] for j in sorted(range(len(records)), key=lambda j: -records[j][0])]
        for rank in range(min(limit, len(records))):
            if tp[rank]:
                counts["correct"] += 1
                continue
            if not fp[rank]:
                continue
            _, image, box = records[rank]
            gt_boxes, gt_labels, _ = _ground_truth(ground_truths[image])
            iou = box_iou(box[None], gt_boxes)[0] if len(gt_boxes) else np.zeros(0)
            same = iou[gt_labels == k]
            other = iou[gt_labels != k]
            if same.size and same.max() >= 0.1:
                counts["localisation"] += 1
            elif other.size and other.max() >= 0.1:
                counts["confusion"] += 1
            else:
                counts["background"] += 1
    return counts


def plot_pr_curves(ax, result: VOCResult, use_07_metric: bool = True) -> None:
    """Draw each class's precision-recall curve on ``ax`` with its AP in the legend."""
    for name in result.class_names:
        recall, precision = result.curves[name]
        ap = result.ap[name] if use_07_metric else result.ap_all_point[name]
        ax.plot(np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision]),
                label=f"{name} (AP {ap:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")


def _ground_truth(gt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    get = gt.get if isinstance(gt, dict) else lambda name: getattr(gt, name)
    boxes = as_boxes(get("boxes"), "ground-truth boxes")
    labels = np.asarray(get("labels"), np.int64).reshape(-1)
    difficult = get("difficult") if (not isinstance(gt, dict) or "difficult" in gt) else None
    difficult = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    return boxes, labels, difficult


ABLATIONS = {
    "no fine-tuning (SVMs on pool5)": {"score": "pool5_svm", "regression": False},
    "fine-tuned FC, softmax": {"score": "softmax", "regression": False},
    "fine-tuned FC + SVMs": {"score": "svm", "regression": False},
    "+ box regression": {"score": "svm", "regression": True},
}
"""The chapter-10 ablation table: each row adds one stage of the paper's pipeline."""


def evaluate_detector(detector, dataset, proposals=None, max_images: int | None = None,
                      variants: dict | None = None, pool5_svms=None, progress: bool = True) -> dict:
    """Run ``detector`` on the images of ``dataset`` and compute VOC AP for each variant.

    Uses only the detector's public stages: ``pool`` and ``score`` once per image,
    then ``postprocess`` once per variant. ``variants`` maps a name to config
    overrides (default ``{"detector": {}}``); ``score="pool5_svm"`` scores with
    ``pool5_svms`` (SVMs on the pooled vectors: the no-fine-tuning ablation).
    ``proposals``: a list of (P, 4) arrays (default: ``detector.dataset_proposals``,
    the cached selective-search boxes, or a Faster R-CNN's own). Returns ``{"results": {name: VOCResult}, "detections": {name:
    [Detections]}, "images": n, "timing": mean seconds per stage of the last variant
    (in :data:`ABLATIONS` the whole pipeline), "seconds_per_image": their sum}``.
    Taught in chapter 10.
    """
    from tqdm.auto import tqdm

    from .detector import TIMED_STAGES
    from .voc import Subset

    variants = variants or {"detector": {}}
    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    if n == 0:
        raise ValueError("dataset has no images to evaluate on")
    if proposals is None:
        proposals = detector.dataset_proposals(Subset(dataset, range(n)), progress=progress)
    found = {name: [] for name in variants}
    truths, timings = [], []
    for i in tqdm(range(n), desc="detect", disable=not progress, leave=False):
        sample = dataset[i]
        boxes = as_boxes(proposals[i], "proposals")
        truths.append(sample)
        if len(boxes) == 0:
            for name in variants:
                found[name].append(Detections.empty())
            continue
        scores = detector.score(detector.pool(sample.image, boxes))
        for name, overrides in variants.items():
            overrides = dict(overrides)
            class_scores = None
            if overrides.get("score") == "pool5_svm":
                if pool5_svms is None:
                    raise ValueError(f"variant {name!r} scores with pool5 SVMs: pass pool5_svms")
                class_scores = pool5_svms.decision_function(scores.pooled)
                del overrides["score"]
            found[name].append(detector.postprocess(scores, boxes, sample.image.shape[:2],
                                                    class_scores, **overrides))
        timings.append(dict(detector.last_timing))
    results = {name: evaluate_detections(found[name], truths, detector.class_names)
               for name in variants}
    mean_timing = {k: float(np.mean([t.get(k, 0.0) for t in timings])) if timings else 0.0
                   for k in TIMED_STAGES}
    return {"results": results, "detections": found, "images": n, "timing": mean_timing,
            "seconds_per_image": float(sum(mean_timing.values()))}
