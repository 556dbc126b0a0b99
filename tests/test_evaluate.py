"""VOC AP: hand-computed cases and an independent devkit-style reference implementation;
the evaluation loop on a tiny detector."""

from types import SimpleNamespace

import numpy as np
import pytest

from sppnet_lite.boxes import Detections
from sppnet_lite.evaluate import (
    ABLATIONS,
    error_analysis,
    evaluate_detections,
    evaluate_detector,
    voc_ap,
)


def gt(boxes, labels, difficult=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return {"boxes": boxes, "labels": np.asarray(labels, np.int64), "difficult": difficult}


def dets(boxes, scores, labels):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


BOX_A, BOX_B, FAR = [0, 0, 10, 10], [20, 20, 40, 40], [60, 60, 70, 70]


def test_hand_computed_two_images():
    # ranked: TP (img0), FP (img1, far away), TP (img1) -> recall .5 .5 1, precision 1 .5 2/3
    ground = [gt([BOX_A], [0]), gt([BOX_B], [0])]
    found = [dets([BOX_A], [0.9], [0]), dets([FAR, BOX_B], [0.8, 0.7], [0, 0])]
    result = evaluate_detections(found, ground, ["thing"])
    assert result.ap["thing"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert result.ap_all_point["thing"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result.mAP == pytest.approx(result.ap["thing"])


def test_duplicates_are_false_positives_and_difficult_is_ignored():
    ground = [gt([BOX_A, BOX_B], [0, 0], difficult=[False, True])]
    # a hit on the difficult box counts as nothing; the duplicate of BOX_A is a false positive
    found = [dets([BOX_B, BOX_A, BOX_A], [0.95, 0.9, 0.8], [0, 0, 0])]
    result = evaluate_detections(found, ground, ["thing"])
    assert result.num_positives["thing"] == 1
    assert result.ap["thing"] == pytest.approx(1.0)
    recall, _ = result.curves["thing"]
    np.testing.assert_allclose(recall, [0, 1, 1])


def test_perfect_empty_and_wrong_class():
    ground = [gt([BOX_A, BOX_B], [0, 1])]
    perfect = evaluate_detections([dets([BOX_A, BOX_B], [0.9, 0.8], [0, 1])], ground, ["a", "b"])
    assert perfect.mAP == pytest.approx(1.0)
    none = evaluate_detections([Detections.empty()], ground, ["a", "b"])
    assert none.mAP == 0.0
    swapped = evaluate_detections([dets([BOX_A, BOX_B], [0.9, 0.8], [1, 0])], ground, ["a", "b"])
    assert swapped.mAP == 0.0
    absent = evaluate_detections([dets([BOX_A], [0.9], [0])], [gt([BOX_A], [0])], ["a", "b"])
    assert np.isnan(absent.ap["b"]) and absent.mAP == pytest.approx(1.0)


def test_iou_threshold_is_strict_half():
    # IoU exactly 0.5 is not a match (the devkit tests ovmax > 0.5)
    ground = [gt([[0, 0, 10, 10]], [0])]
    half = evaluate_detections([dets([[0, 0, 10, 20]], [1.0], [0])], ground, ["a"])
    assert half.ap["a"] == 0.0


def test_voc_ap_known_curve():
    assert voc_ap([0.2, 0.4], [1.0, 0.5], use_07_metric=True) == pytest.approx((3 * 1 + 2 * 0.5) / 11)
    assert voc_ap([0.2, 0.4], [1.0, 0.5], use_07_metric=False) == pytest.approx(0.2 + 0.2 * 0.5)


def reference_voc_eval(found, ground, cls, thr=0.5, use_07=True):
    """Independent port of the devkit logic (py-faster-rcnn voc_eval), written with dicts."""
    recs = {}
    npos = 0
    for i, g in enumerate(ground):
        m = g["labels"] == cls
        recs[i] = {"bbox": g["boxes"][m], "difficult": g["difficult"][m], "det": [False] * int(m.sum())}
        npos += int((~g["difficult"][m]).sum())
    ids, confs, bbs = [], [], []
    for i, d in enumerate(found):
        for b, s, l in zip(d.boxes, d.scores, d.labels):
            if l == cls:
                ids.append(i), confs.append(s), bbs.append(b)
    order = np.argsort(-np.array(confs), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, j in enumerate(order):
        r, bb = recs[ids[j]], bbs[j]
        ovmax, jmax = -np.inf, -1
        for q, g in enumerate(r["bbox"]):
            iw = max(min(g[2], bb[2]) - max(g[0], bb[0]), 0.0)
            ih = max(min(g[3], bb[3]) - max(g[1], bb[1]), 0.0)
            inter = iw * ih
            ov = inter / ((bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
            if ov > ovmax:
                ovmax, jmax = ov, q
        if ovmax > thr:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[rank], r["det"][jmax] = 1, True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0) / 11.0 for t in np.arange(0, 1.1, 0.1))
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    ground, found = [], []
    for _ in range(6):
        n = rng.integers(1, 5)
        xy = rng.uniform(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (n, 2))], 1).astype(np.float32)
        labels = rng.integers(0, 3, n)
        ground.append(gt(boxes, labels, rng.random(n) < 0.2))
        m = rng.integers(0, 8)
        pick = rng.integers(0, n, m)
        jitter = boxes[pick] + rng.normal(0, 4, (m, 4)).astype(np.float32)
        dl = np.where(rng.random(m) < 0.8, labels[pick], rng.integers(0, 3, m))
        found.append(dets(jitter, rng.random(m), dl))
    result = evaluate_detections(found, ground, ["a", "b", "c"])
    for k, name in enumerate(["a", "b", "c"]):
        if result.num_positives[name] == 0:
            continue
        assert result.ap[name] == pytest.approx(reference_voc_eval(found, ground, k, use_07=True))
        assert result.ap_all_point[name] == pytest.approx(reference_voc_eval(found, ground, k, use_07=False))


def test_error_analysis_categories():
    ground = [gt([BOX_A, BOX_B], [0, 1])]
    # class 0 has 1 positive, so only its top detection is analysed; class 1 likewise
    found = [dets([[0, 0, 10, 30], BOX_B], [0.9, 0.8], [0, 0])]
    counts = error_analysis(found, ground, num_classes=2)
    assert counts == {"correct": 0, "localisation": 1, "confusion": 0, "background": 0}
    counts = error_analysis([dets([BOX_B, FAR, BOX_A], [0.9, 0.8, 0.7], [0, 0, 0])], ground, 2, top_k=3)
    assert counts == {"correct": 1, "localisation": 0, "confusion": 1, "background": 1}


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="ground_truths"):
        evaluate_detections([Detections.empty()], [], ["a"])


# ----------------------------------------------------------------------------------------
# evaluate_detector: the loop over a dataset, on a tiny detector
# ----------------------------------------------------------------------------------------

class TwoImages:
    """A dataset of two random images whose objects are some of their proposals."""

    class_names = ("a", "b", "c")

    def __init__(self):
        from test_detector import random_scene

        self.samples, self.proposals = [], []
        for seed in (0, 1):
            image, proposals = random_scene(seed, proposals=20)
            self.samples.append(SimpleNamespace(
                image=image, boxes=proposals[[0, 1]], labels=np.array([0, 2]),
                difficult=np.array([False, True]), image_id=f"im{seed}"))
            self.proposals.append(proposals)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def test_evaluate_detector_runs_every_ablation_on_shared_scores():
    from test_detector import assert_same_detections, tiny_detector

    from sppnet_lite.detector import TIMED_STAGES
    from sppnet_lite.svm import LinearSVMs

    det, data = tiny_detector(), TwoImages()
    rng = np.random.default_rng(0)
    pool5 = LinearSVMs(rng.normal(0, 1, (3, 400)).astype(np.float32), np.zeros(3, np.float32),
                       0.1)
    report = evaluate_detector(det, data, proposals=data.proposals, variants=ABLATIONS,
                               pool5_svms=pool5, progress=False)
    assert set(report) == {"results", "detections", "images", "timing", "seconds_per_image"}
    assert set(report["results"]) == set(report["detections"]) == set(ABLATIONS)
    assert report["images"] == 2 and all(len(d) == 2 for d in report["detections"].values())
    assert set(report["timing"]) == set(TIMED_STAGES)
    assert report["seconds_per_image"] == pytest.approx(sum(report["timing"].values()))
    for i, sample in enumerate(data.samples):  # oracle: the detector run image by image
        found = {name: report["detections"][name][i] for name in ABLATIONS}
        assert_same_detections(found["+ box regression"],
                               det.detect(sample.image, proposals=data.proposals[i]))
        assert_same_detections(found["fine-tuned FC + SVMs"],
                               det.detect(sample.image, proposals=data.proposals[i],
                                          regression=False))
        assert_same_detections(found["fine-tuned FC, softmax"],
                               det.detect(sample.image, proposals=data.proposals[i],
                                          score="softmax", regression=False))
        scores = det.score(det.pool(sample.image, data.proposals[i]))
        assert_same_detections(found["no fine-tuning (SVMs on pool5)"],
                               det.postprocess(scores, data.proposals[i], sample.image.shape[:2],
                                               pool5.decision_function(scores.pooled),
                                               regression=False))
    for name, result in report["results"].items():
        expected = evaluate_detections(report["detections"][name], data.samples, data.class_names)
        assert result.ap == pytest.approx(expected.ap, nan_ok=True)
        assert result.mAP == pytest.approx(expected.mAP)
        assert result.num_positives == {"a": 2, "b": 0, "c": 0}  # "c" objects are difficult


def test_evaluate_detector_defaults_limits_and_errors():
    from test_detector import tiny_detector

    det, data = tiny_detector(), TwoImages()
    one = evaluate_detector(det, data, proposals=[data.proposals[0], np.zeros((0, 4))],
                            max_images=1, progress=False)
    assert list(one["results"]) == ["detector"] and one["images"] == 1
    empty = evaluate_detector(det, data, proposals=[data.proposals[0], np.zeros((0, 4))],
                              progress=False)
    assert len(empty["detections"]["detector"][1]) == 0  # an image without proposals
    with pytest.raises(ValueError, match="pool5_svms"):
        evaluate_detector(det, data, proposals=data.proposals, progress=False,
                          variants={"pool5": {"score": "pool5_svm"}})
    with pytest.raises(ValueError, match="no images"):
        evaluate_detector(det, data, proposals=data.proposals, max_images=0, progress=False)
