"""The detector at inference (sppnet_lite.detector): post-processing by hand, the public
stages against ``detect``, box refinement against an all-classes oracle, save / load."""

import json

import numpy as np
import pytest
import torch

from sppnet_lite.backbone import ZFLite
from sppnet_lite.bbox_regression import BoxRegressor
from sppnet_lite.boxes import clip_boxes, decode
from sppnet_lite.detector import (
    FORMAT_VERSION,
    TIMED_STAGES,
    DetectorConfig,
    SPPNetDetector,
    WindowScores,
    make_extractor,
    read_run_config,
    select_detections,
)
from sppnet_lite.features import SPPFeatureExtractor
from sppnet_lite.finetune import FCHead
from sppnet_lite.rcnn import RCNNFeatureExtractor
from sppnet_lite.svm import LinearSVMs


def tiny_detector(seed=0, num_classes=3, extractor="spp", svms=True, regressor=True):
    """A ZFLite detector with 8 channels, a {6, 3, 2, 1} pyramid (400-d) and random heads."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backbone = ZFLite((8, 8, 8, 8, 8)).eval()
    dim = 8 * 50
    head = FCHead(dim, num_classes, hidden=16).eval()
    svm = LinearSVMs(rng.normal(0, 1, (num_classes, 16)).astype(np.float32),
                     np.zeros(num_classes, np.float32), 1.0)
    reg = BoxRegressor(rng.normal(0, 1e-2, (num_classes, dim, 4)).astype(np.float32),
                       np.zeros((num_classes, 4), np.float32), np.zeros(4, np.float32),
                       np.ones(4, np.float32), 1.0, np.ones(num_classes, bool))
    return SPPNetDetector(backbone, head, ["a", "b", "c"][:num_classes], svm if svms else None,
                          reg if regressor else None,
                          DetectorConfig(scales=(96,), extractor=extractor, max_proposals=50))


def random_scene(seed=0, proposals=40):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    xy = rng.uniform(0, 80, (proposals, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (proposals, 2))], 1).astype(np.float32)
    return image, boxes


def assert_same_detections(a, b):
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.labels, b.labels)


# ----------------------------------------------------------------------------------------
# select_detections and the config
# ----------------------------------------------------------------------------------------

def test_select_detections_nms_refinement_and_limits():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 150, 150]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.95]], np.float32)
    dets = select_detections(boxes, scores, None, (200, 200), nms_iou=0.3)
    # class 0: box 1 suppressed by box 0; class 1: box 0 suppressed by box 1
    assert sorted(zip(dets.labels.tolist(), [round(float(s), 2) for s in dets.scores])) == [
        (0, 0.2), (0, 0.9), (1, 0.7), (1, 0.95)]
    assert np.all(np.diff(dets.scores) <= 0)
    top = select_detections(boxes, scores, None, (200, 200), max_detections=2,
                            score_threshold=0.5)
    assert len(top) == 2 and top.scores.min() >= 0.5
    deltas = np.zeros((3, 2, 4), np.float32)
    deltas[:, :, 0] = 0.5  # shift every box right by half its width, then clip to the image
    asked = []

    def refine(rows, k):  # the detector's form: one class's refined candidates only
        asked.append((k, rows.tolist()))
        return decode(boxes[rows], deltas[rows, k])

    moved = select_detections(boxes, scores, refine, (200, 140), nms_iou=0.3, pre_nms_top=2)
    assert [k for k, _ in asked] == [0, 1] and all(len(rows) == 2 for _, rows in asked)
    assert asked == [(0, [0, 1]), (1, [2, 1])]  # each class's two best windows, best first
    assert moved.boxes[:, 2].max() <= 140
    shifted = clip_boxes(decode(boxes, deltas[:, 0]), 140, 200)
    assert {tuple(b) for b in moved.boxes.tolist()} <= {tuple(b) for b in shifted.tolist()}
    assert len(select_detections(np.zeros((0, 4)), np.zeros((0, 2)), None, (10, 10))) == 0
    assert len(select_detections(boxes, scores, None, (200, 200), score_threshold=2.0)) == 0


def test_config_json_round_trip():
    cfg = DetectorConfig(scales=(320, 480), score="softmax")
    assert DetectorConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(json.dumps(cfg.to_json()))["score_threshold"] is None  # -inf as JSON
    with pytest.raises(ValueError, match="unknown"):
        DetectorConfig.from_json({**cfg.to_json(), "bogus": 1})
    with pytest.raises(ValueError, match="hidden"):  # the head's width lives with the head
        DetectorConfig.from_json({**cfg.to_json(), "hidden": 512})


def test_make_extractor_follows_the_config():
    trunk = ZFLite((8, 8, 8, 8, 8))
    spp = make_extractor(trunk, DetectorConfig(scales=(96, 128), levels=(2, 1), rule="round"))
    assert isinstance(spp, SPPFeatureExtractor)
    assert spp.scales == (96, 128) and spp.levels == (2, 1) and spp.rule == "round"
    rcnn = make_extractor(trunk, DetectorConfig(extractor="rcnn", levels=(2, 1)))
    assert isinstance(rcnn, RCNNFeatureExtractor) and rcnn.output_dim == spp.output_dim
    with pytest.raises(ValueError, match="extractor"):
        make_extractor(trunk, DetectorConfig(extractor="fast"))


# ----------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------

def test_detect_is_its_stages_composed():
    det = tiny_detector()
    image, proposals = random_scene()
    found = det.detect(image, proposals=proposals)
    assert len(found) > 0 and found.boxes.shape[1] == 4
    assert set(det.last_timing) == {"proposals", *TIMED_STAGES}
    assert (found.boxes[:, 2] <= 120).all() and (found.boxes[:, 3] <= 90).all()

    pooled = det.pool(image, proposals)
    assert pooled.shape == (40, 400) and set(det.last_timing) == {"conv", "pool"}
    scores = det.score(pooled)
    assert isinstance(scores, WindowScores)
    assert scores.fc7.shape == (40, 16) and scores.svm.shape == (40, 3)
    assert scores.softmax.shape == (40, 4)
    np.testing.assert_allclose(scores.softmax.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(scores.svm, det.svms.decision_function(scores.fc7), rtol=1e-5)
    staged = det.postprocess(scores, proposals, image.shape[:2])
    assert_same_detections(staged, found)
    assert set(det.last_timing) == set(TIMED_STAGES)


def test_at_scales_shares_the_weights_and_equals_a_detector_built_at_that_scale():
    det = tiny_detector()
    image, proposals = random_scene()
    other = det.at_scales([128])
    assert other.config.scales == (128,) and det.config.scales == (96,)
    assert other.head is det.head and other.backbone is det.backbone
    built = SPPNetDetector(det.backbone, det.head, det.class_names, det.svms, det.regressor,
                           DetectorConfig(scales=(128,), max_proposals=50))
    assert_same_detections(other.detect(image, proposals=proposals),
                           built.detect(image, proposals=proposals))
    assert not np.allclose(other.pool(image, proposals), det.pool(image, proposals))


def test_refining_only_the_candidates_equals_the_all_classes_oracle():
    det = tiny_detector()
    image, proposals = random_scene(2)
    found = det.detect(image, proposals=proposals)
    scores = det.score(det.pool(image, proposals))
    # oracle: refine every window with every class's regressor, then pick
    every = [decode(proposals, det.regressor.predict_deltas(scores.pooled, np.full(40, k)))
             for k in range(3)]
    assert np.abs(every[0] - proposals).max() > 0.1  # the regressor does move the boxes
    oracle = select_detections(proposals, scores.svm, lambda rows, k: every[k][rows],
                               image.shape[:2])
    assert_same_detections(found, oracle)
    rows = np.array([3, 1, 7])
    np.testing.assert_allclose(det.refine(scores, proposals, rows, 2), every[2][rows], rtol=1e-5)


def test_postprocess_overrides_and_other_scores():
    det = tiny_detector()
    image, proposals = random_scene(1)
    scores = det.score(det.pool(image, proposals))
    soft = det.postprocess(scores, proposals, image.shape[:2], score="softmax", regression=False)
    assert soft.scores.max() <= 1.0
    proposal_set = {tuple(b) for b in clip_boxes(proposals, 120, 90).tolist()}
    assert all(tuple(b) in proposal_set for b in soft.boxes.tolist())
    assert det.last_timing["regression"] == 0.0
    strict = det.postprocess(scores, proposals, image.shape[:2], score_threshold=1e9)
    assert len(strict) == 0
    given = np.zeros((40, 3), np.float32)
    given[5, 1] = 3.0
    mine = det.postprocess(scores, proposals, image.shape[:2], class_scores=given,
                           max_detections=1, regression=False)
    assert mine.labels.tolist() == [1] and mine.scores.tolist() == [3.0]
    np.testing.assert_array_equal(mine.boxes, clip_boxes(proposals[[5]], 120, 90))
    assert det.config.score == "svm" and det.config.regression  # overrides don't stick
    with pytest.raises(ValueError, match="score must be one of"):
        det.postprocess(scores, proposals, image.shape[:2], score="margin")
    bare = tiny_detector(svms=False, regressor=False)
    bare_scores = bare.score(bare.pool(image, proposals))
    assert bare_scores.svm is None
    with pytest.raises(ValueError, match="needs trained SVMs"):
        bare.postprocess(bare_scores, proposals, image.shape[:2])
    plain = bare.postprocess(bare_scores, proposals, image.shape[:2], score="softmax")
    assert all(tuple(b) in proposal_set for b in plain.boxes.tolist())  # nothing to refine with


def test_pool_counts_rcnn_warping_as_conv():
    det = tiny_detector(extractor="rcnn")
    image, proposals = random_scene(3, proposals=6)
    det.pool(image, proposals)
    t = det.extractor.last_timing
    assert det.last_timing == {"conv": t["warp"] + t["conv"], "pool": t["pool"]}
    assert len(det.detect(image, proposals=proposals, score="softmax")) > 0


def test_detect_without_proposals_or_with_none():
    det = tiny_detector()
    image, _ = random_scene(4)
    found = det.detect(image)  # runs selective search, at most config.max_proposals boxes
    assert "proposals" in det.last_timing and len(found) <= det.config.max_detections
    empty = det.detect(image, proposals=np.zeros((0, 4)))
    assert len(empty) == 0 and set(det.last_timing) == {"proposals"}
    with pytest.raises(ValueError, match="uint8"):
        det.detect(image.astype(np.float32), proposals=np.zeros((0, 4)))


# ----------------------------------------------------------------------------------------
# Save and load
# ----------------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    det = tiny_detector()
    det.backbone.checkpoint_hash = "f" * 64
    image, proposals = random_scene()
    before = det.detect(image, proposals=proposals)
    run = det.save(tmp_path / "run")
    assert sorted(p.name for p in run.iterdir()) == [
        "backbone.npz", "config.json", "head.npz", "regressor.npz", "svms.npz"]
    meta = read_run_config(run)
    assert meta["format"] == FORMAT_VERSION == 2 and meta["class_names"] == ["a", "b", "c"]
    assert meta["backbone"]["arch"] == "ZFLite" and meta["head"]["hidden"] == 16
    loaded = SPPNetDetector.load(run, backbone="zflite", weights_hash="f" * 64)
    assert loaded.config == det.config and loaded.class_names == det.class_names
    assert loaded.backbone.checkpoint_hash == "f" * 64
    assert_same_detections(loaded.detect(image, proposals=proposals), before)
    soft = loaded.detect(image, proposals=proposals, score="softmax", regression=False)
    assert soft.scores.max() <= 1.0


def test_save_load_without_svms_or_regressor(tmp_path):
    det = tiny_detector(svms=False, regressor=False)
    run = det.save(tmp_path / "bare")
    assert not (run / "svms.npz").exists() and not (run / "regressor.npz").exists()
    loaded = SPPNetDetector.load(run)
    assert loaded.svms is None and loaded.regressor is None
    image, proposals = random_scene()
    assert_same_detections(loaded.detect(image, proposals=proposals, score="softmax"),
                           det.detect(image, proposals=proposals, score="softmax"))


def test_load_refuses_another_backbone_or_other_weights(tmp_path):
    det = tiny_detector()
    det.backbone.checkpoint_hash = "a" * 64
    run = det.save(tmp_path / "run")
    with pytest.raises(ValueError, match="backbone 'zflite', not 'resnet18'"):
        SPPNetDetector.load(run, backbone="resnet18")
    with pytest.raises(ValueError, match="other trunk weights"):
        SPPNetDetector.load(run, weights_hash="b" * 64)


def test_load_refuses_other_versions_and_missing_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SPPNetDetector.load(tmp_path)
    tiny_detector().save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    meta["format"] = 0
    (tmp_path / "run" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 0"):
        SPPNetDetector.load(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_config(tmp_path / "run")
