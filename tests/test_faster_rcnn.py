"""Faster R-CNN: the RPN trained on a frozen trunk, its proposals against random boxes, one
trunk pass feeding both heads, save/load, and an interrupted RPN training resumed."""

import numpy as np
import pytest
import torch

from sppnet_lite.boxes import box_iou
from sppnet_lite.faster_rcnn import FasterRCNNDetector
from sppnet_lite.faster_rcnn_training import FasterRCNNConfig, FasterRCNNPipeline


def _pipeline(data, run, **changes):
    from sppnet_lite.fast_rcnn_training import FastRCNNConfig, FastRCNNPipeline

    fast_cfg = FastRCNNConfig.default(True, scales=(160,), test_scales=(160,), iterations=60,
                                      hidden=64, rois_per_image=32, jittered_per_gt=2)
    fast = FastRCNNPipeline(data, run / "fast", quick=True, device="cpu", config=fast_cfg,
                            progress=False)
    settings = {"sizes": (32, 64, 128), "rpn_iterations": 200, "rpn_lr": 1e-2, "head_iterations": 20,
                "train_proposals": 300, "test_proposals": 50, **changes}
    cfg = FasterRCNNConfig.default(True, **settings)
    return FasterRCNNPipeline(fast, run / "faster", cfg, progress=False)


def test_train_propose_detect_with_one_trunk_pass_save_load(tiny_voc, tmp_path, fast, monkeypatch):
    pipe = _pipeline(tiny_voc, tmp_path)
    detector = pipe.run()
    train = pipe.dataset("train")
    history = pipe.rpn()[1]
    assert np.mean(history["loss"][-20:]) < 0.7 * np.mean(history["loss"][:20])

    proposals = [detector.propose(s.image)[0] for s in train]
    assert all(len(p) <= 50 for p in proposals)
    for sample, boxes in zip(train, proposals):
        h, w = sample.image.shape[:2]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()

    # detect() needs no selective search and runs the trunk once for both heads
    from sppnet_lite import proposals as selective

    monkeypatch.setattr(selective, "selective_search",
                        lambda *a, **k: pytest.fail("Faster R-CNN ran selective search"))
    calls = []
    hook = detector.backbone.register_forward_hook(lambda *args: calls.append(1))
    dets = detector.detect(train[0].image)
    hook.remove()
    assert len(calls) == 1 and len(dets) > 0
    assert set(detector.last_timing) >= {"proposals", "conv", "pool", "fc", "nms"}

    loaded = FasterRCNNDetector.load(pipe.run_dir)
    again = loaded.detect(train[0].image)
    np.testing.assert_allclose(again.boxes, dets.boxes, atol=1e-4)
    np.testing.assert_allclose(again.scores, dets.scores, atol=1e-5)
    assert box_iou(dets.boxes, train[0].boxes).max() > 0.5
    _check_widget(detector, train)


def _check_widget(detector, dataset):
    """Chapter 12's widget: the anchors it draws for a cell, and its figure."""
    from matplotlib.figure import Figure

    from sppnet_lite.widgets import anchors_at_cell, rpn_explorer

    features, fx, fy = detector.extractor.conv_map(dataset[0].image, detector.config.scales[0])
    height, width = features.shape[-2:]
    anchors = anchors_at_cell(detector.rpn, (height, width), 2, 3, fx, fy)
    assert len(anchors) == detector.rpn.num_anchors == 3 * 3
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(centres, np.tile([16 * 3 / fx, 16 * 2 / fy], (9, 1)), atol=1e-3)
    with pytest.raises(ValueError, match="outside"):
        anchors_at_cell(detector.rpn, (height, width), height, 0, fx, fy)
    cache = {}
    figure = rpn_explorer(detector, dataset, 0, 0.5, 0.5, top_n=7, nms_iou=0.5, cache=cache)
    assert isinstance(figure, Figure) and 0 in cache
    assert "top 7 RPN proposals" in figure.axes[1].get_title()


def test_an_rpn_trained_on_one_image_ranks_its_objects_anchors_first(tiny_voc, tmp_path):
    """Learning works: on one image (a tiny random trunk, 200 steps) the RPN scores the
    anchors that overlap an object (IoU ≥ 0.5) above the others. (Recall against random
    boxes, on real data, is asserted by chapter 12 in quick mode.)"""
    from sklearn.metrics import roc_auc_score

    from sppnet_lite.backbone import ZFLite
    from sppnet_lite.faster_rcnn_training import conv_map, train_rpn
    from sppnet_lite.voc import Subset, VOCDataset

    torch.manual_seed(0)
    trunk = ZFLite((8, 8, 8, 8, 8)).eval()
    one = Subset(VOCDataset(tiny_voc, "train"), [0])
    cfg = FasterRCNNConfig(sizes=(32, 64, 128), rpn_iterations=200, rpn_lr=1e-2)
    rpn, history = train_rpn(trunk, one, cfg, 160, tmp_path / "rpn.npz", "cpu", flip=False,
                             progress=False)
    assert np.mean(history["loss"][-20:]) < 0.3 * np.mean(history["loss"][:20])
    sample = one[0]
    features, fx, fy = conv_map(trunk, sample.image, 160, "cpu")
    with torch.no_grad():
        objectness = rpn(features)[0].numpy()
    anchors = rpn.anchors(*features.shape[-2:])
    overlaps = box_iou(anchors, sample.boxes * np.array([fx, fy, fx, fy], np.float32)).max(1) >= 0.5
    assert roc_auc_score(overlaps, objectness) > 0.7  # 0.5 before training

    boxes, scores = rpn.proposals(features, sample.image.shape[:2], fx, fy, post_nms_top_n=10)
    assert len(boxes) == 10 and (np.diff(scores) <= 0).all()


def test_an_interrupted_rpn_training_resumes_where_it_stopped(tiny_voc, tmp_path, fast, monkeypatch):
    from sppnet_lite import faster_rcnn_training as faster_rcnn

    whole = _pipeline(tiny_voc, tmp_path / "whole", rpn_iterations=12).rpn()[0]
    calls = {"n": 0}
    real = faster_rcnn.rpn_loss

    def dies_at_the_eighth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(faster_rcnn, "rpn_loss", dies_at_the_eighth_batch)
    with pytest.raises(KeyboardInterrupt):
        _pipeline(tiny_voc, tmp_path / "cut", rpn_iterations=12, checkpoint_seconds=0).rpn()
    monkeypatch.setattr(faster_rcnn, "rpn_loss", real)
    resumed, history = _pipeline(tiny_voc, tmp_path / "cut", rpn_iterations=12).rpn()
    assert len(history["loss"]) == 12
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)


def test_the_command_line_trains_faster_rcnn_and_detects_without_selective_search(
        tiny_voc, tmp_path, fast, monkeypatch):
    import json

    from sppnet_lite import cli
    from sppnet_lite import proposals as selective

    run = tmp_path / "run"
    monkeypatch.setenv("SPPNET_DEVICE", "cpu")
    assert cli.main(["train", "--method", "faster-rcnn", "--data", str(tiny_voc), "--out", str(run),
                     "--quick", "--scales", "160", "--iterations", "20"]) == 0
    assert json.loads((run / "config.json").read_text())["method"] == "faster-rcnn"
    monkeypatch.setattr(selective, "selective_search",
                        lambda *a, **k: pytest.fail("Faster R-CNN ran selective search"))
    images = sorted((tiny_voc / "JPEGImages").glob("test_*.jpg"))[:2]
    out = tmp_path / "found.json"
    assert cli.main(["detect", "--run", str(run), *map(str, images), "--out", str(out),
                     "--score-threshold", "0"]) == 0
    assert json.loads(out.read_text())
    assert cli.main(["evaluate", "--run", str(run), "--data", str(tiny_voc), "--split", "test"]) == 0
    assert json.loads((run / "evaluation_test.json").read_text())["images"] == 8
