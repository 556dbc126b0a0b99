"""Detector pieces on synthetic features: mini-batch sampling, FC fine-tuning, post-processing."""

import numpy as np
import pytest
import torch

from sppnet_lite.detector import (
    DetectorConfig,
    FCHead,
    classification_metrics,
    feature_timing,
    postprocess,
    sample_minibatch,
    train_fc_head,
)


def synthetic_windows(seed=0, n=1500, dim=32, k=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (k + 1, dim))
    ious = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, k, n)
    labels = np.where(ious >= 0.5, classes, k)
    x = centres[labels] + rng.normal(0, 1, (n, dim))
    return x.astype(np.float16), labels, ious


def test_minibatch_has_quarter_foreground_and_background_band():
    _, labels, ious = synthetic_windows()
    rows = sample_minibatch(labels, ious, 128, np.random.default_rng(0))
    assert len(rows) == 128
    assert (ious[rows] >= 0.5).sum() == 32
    bg = ious[rows][ious[rows] < 0.5]
    assert bg.min() >= 0.1
    few = sample_minibatch(labels, np.where(ious >= 0.5, 0.2, ious), 64, np.random.default_rng(0))
    assert len(few) == 64  # no foreground at all: background fills the batch


def test_fine_tuning_learns_the_classes():
    x, labels, ious = synthetic_windows()
    head, history = train_fc_head(x, labels, ious, num_classes=3, hidden=64, iterations=80,
                                  batch_size=64, lr=3e-3, progress=False, val=(x[:300], labels[:300]),
                                  val_windows=200)
    assert history["loss"][-1] < history["loss"][0]
    metrics = classification_metrics(head, x, labels)
    assert metrics["fg_accuracy"] > 0.9
    assert len(history["val"]) >= 10
    assert head(torch.zeros(2, 32)).shape == (2, 4)
    assert head.fc7(torch.zeros(2, 32)).shape == (2, 64)


def test_feature_timing_counts_rcnn_warping_as_conv():
    from types import SimpleNamespace

    rcnn = SimpleNamespace(last_timing={"warp": 0.5, "conv": 2.0, "pool": 0.25, "total": 2.75})
    assert feature_timing(rcnn) == {"conv": 2.5, "pool": 0.25}


def test_postprocess_nms_regression_and_limits():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 150, 150]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.95]], np.float32)
    dets = postprocess(boxes, scores, None, (200, 200), nms_iou=0.3)
    # class 0: box 1 suppressed by box 0; class 1: box 0 suppressed by box 1
    assert sorted(zip(dets.labels.tolist(), [round(float(s), 2) for s in dets.scores])) == [
        (0, 0.2), (0, 0.9), (1, 0.7), (1, 0.95)]
    assert np.all(np.diff(dets.scores) <= 0)
    top = postprocess(boxes, scores, None, (200, 200), max_detections=2, score_threshold=0.5)
    assert len(top) == 2 and top.scores.min() >= 0.5
    deltas = np.zeros((3, 2, 4), np.float32)
    deltas[:, :, 0] = 0.5  # shift every box right by half its width, then clip to the image
    moved = postprocess(boxes, scores, deltas, (200, 140), nms_iou=0.3)
    assert moved.boxes[:, 2].max() <= 140
    asked = []

    def lazy(rows, k):  # the detector's form: deltas of one class for its candidates only
        asked.append((k, rows.tolist()))
        return deltas[rows, k]

    same = postprocess(boxes, scores, lazy, (200, 140), nms_iou=0.3, pre_nms_top=2)
    top2 = postprocess(boxes, scores, deltas, (200, 140), nms_iou=0.3, pre_nms_top=2)
    np.testing.assert_array_equal(same.boxes, top2.boxes)
    assert [k for k, _ in asked] == [0, 1] and all(len(rows) == 2 for _, rows in asked)
    assert len(postprocess(np.zeros((0, 4)), np.zeros((0, 2)), None, (10, 10))) == 0


def test_config_json_round_trip():
    cfg = DetectorConfig(scales=(320, 480), score="softmax")
    assert DetectorConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DetectorConfig.from_json({**cfg.to_json(), "bogus": 1})


def tiny_detector(seed=0, num_classes=3):
    from sppnet_lite.backbone import ZFLite
    from sppnet_lite.bbox_regression import BoxRegressor
    from sppnet_lite.detector import SPPNetDetector
    from sppnet_lite.svm import LinearSVMs

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backbone = ZFLite((8, 8, 8, 8, 8)).eval()
    dim = 8 * 50
    head = FCHead(dim, num_classes, hidden=16).eval()
    svms = LinearSVMs(rng.normal(0, 1, (num_classes, 16)).astype(np.float32),
                      np.zeros(num_classes, np.float32), 1.0)
    regressor = BoxRegressor(rng.normal(0, 1e-3, (num_classes, dim, 4)).astype(np.float32),
                             np.zeros((num_classes, 4), np.float32), np.zeros(4, np.float32),
                             np.ones(4, np.float32), 1.0, np.ones(num_classes, bool))
    return SPPNetDetector(backbone, head, ["a", "b", "c"][:num_classes], svms, regressor,
                          DetectorConfig(scales=(96,)))


def random_scene(seed=0, proposals=40):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    xy = rng.uniform(0, 80, (proposals, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (proposals, 2))], 1).astype(np.float32)
    return image, boxes


def test_detect_save_load_round_trip(tmp_path):
    from sppnet_lite.detector import SPPNetDetector

    det = tiny_detector()
    image, boxes = random_scene()
    before = det.detect(image, proposals=boxes)
    assert len(before) > 0 and before.boxes.shape[1] == 4
    assert {"conv", "pool", "fc", "svm", "regression", "nms"} <= set(det.last_timing)
    assert (before.boxes[:, 2] <= 120).all() and (before.boxes[:, 3] <= 90).all()
    det.save(tmp_path / "run")
    loaded = SPPNetDetector.load(tmp_path / "run")
    after = loaded.detect(image, proposals=boxes)
    np.testing.assert_allclose(after.boxes, before.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5, atol=1e-5)
    # the detector regresses only each class's candidates: same boxes as regressing every window
    pooled = det.extractor(image, boxes)
    every = postprocess(boxes, det.svms.decision_function(det.head.fc7(pooled).detach()),
                        det.regressor.predict_all(pooled), image.shape[:2])
    np.testing.assert_allclose(before.boxes, every.boxes, rtol=1e-5, atol=1e-4)
    soft = loaded.detect(image, proposals=boxes, score="softmax", regression=False)
    assert soft.scores.max() <= 1.0
    assert len(loaded.detect(image, proposals=np.zeros((0, 4)))) == 0


def test_load_refuses_other_versions_and_missing_dirs(tmp_path):
    import json

    from sppnet_lite.detector import SPPNetDetector

    with pytest.raises(FileNotFoundError, match="config.json"):
        SPPNetDetector.load(tmp_path)
    tiny_detector().save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    meta["format"] = 0
    (tmp_path / "run" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 0"):
        SPPNetDetector.load(tmp_path / "run")


def test_detection_explorer_draws_a_figure():
    from sppnet_lite.data import Sample
    from sppnet_lite.widgets import detection_explorer

    image, boxes = random_scene(1)
    sample = Sample(image, boxes[:2], np.array([0, 1]), np.zeros(2, bool), "img0")

    class OneImage:
        class_names = ("a", "b", "c")

        def __getitem__(self, i):
            return sample

    cache = {}
    fig = detection_explorer(tiny_detector(), OneImage(), [boxes], 0, score_threshold=-5.0,
                             nms_iou=0.5, cache=cache)
    assert 0 in cache and "detections" in fig.axes[0].get_title()
    fig2 = detection_explorer(tiny_detector(), OneImage(), [boxes], 0, score_threshold=100.0,
                              cache=cache)
    assert "0 detections" in fig2.axes[0].get_title()
