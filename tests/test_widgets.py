"""Widget callbacks are plain functions: call them directly, headless (Agg canvas)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sppnet_lite.pooling_widgets import (
    bin_maxima,
    conv5_maps,
    pooling_explorer,
    pretrained_if_cached,
    projected_window,
    projection_explorer,
    pyramid_explorer,
    pyramid_numbers,
    vector_offset,
)
from sppnet_lite.widgets import (
    FEEDS,
    classifier_explorer,
    classify_as_fed,
    detection_explorer,
    proposal_browser,
    proposal_numbers,
)


def render(fig):
    FigureCanvasAgg(fig).draw()  # raises if anything on the figure cannot be drawn


def test_pyramid_numbers_for_the_papers_pyramids():
    assert pyramid_numbers((4, 2, 1), 256)["bins"] == 21
    assert pyramid_numbers((4, 2, 1), 256)["length"] == 5376
    numbers = pyramid_numbers((6, 3, 2, 1), 256)
    assert numbers["bins_per_level"] == [36, 9, 4, 1]
    assert numbers["length"] == 12800


def test_explorer_draws_one_panel_per_level_with_k_times_m_in_the_title():
    fig = pyramid_explorer((1, 2, 4), height=64, width=64, channels=256)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["4×4 = 16 bins", "2×2 = 4 bins",
                                                  "1×1 = 1 bins"]
    assert any("5376" in text.get_text() for text in fig.texts)  # the suptitle
    render(fig)


def test_explorer_shows_the_paper_rules_coverage_gap_and_small_maps():
    fig = pyramid_explorer((6,), height=10, width=10, mode="paper")
    assert "51 cells never pooled" in fig.axes[0].get_xlabel()  # rows/cols 7-9: 100 - 7*7
    fig = pyramid_explorer((6, 1), height=4, width=9, mode="paper")
    assert "needs H, W ≥ 6" in fig.axes[0].texts[0].get_text()
    render(fig)


def random_map(channels, height, width, seed=0):
    return np.random.default_rng(seed).standard_normal((channels, height, width)).astype(np.float32)


def tiny_trunk():
    from sppnet_lite.backbone import ZFLite

    torch.manual_seed(0)
    return ZFLite((4, 4, 4, 4, 6)).eval()


@pytest.mark.parametrize("levels", [(4, 2, 1), (6, 3, 2, 1), (5, 3)])
@pytest.mark.parametrize("mode", ["adaptive", "paper"])
def test_bin_maxima_are_the_reference_vectors_segments(levels, mode):
    """Each bin's marked cell holds the number spp_numpy.spp puts at vector_offset + bin."""
    from sppnet_lite.spp_numpy import spp

    fmap = random_map(3, 11, 9)
    fmap[1, :6, :6] = 0.5  # ties: the first cell in row-major order wins, as np.argmax
    vector = spp(fmap, levels, mode)
    for k, n in enumerate(levels):
        for c in range(3):
            pooled = bin_maxima(fmap[c], n, mode)
            start = vector_offset(levels, 3, k, c)
            np.testing.assert_array_equal(pooled["maxima"], vector[start:start + n * n])
            rows, cols = pooled["cells"].T
            np.testing.assert_array_equal(fmap[c, rows, cols], pooled["maxima"])
            bins = [(r, q) for r in pooled["rows"] for q in pooled["cols"]]
            for (row, col), ((r0, r1), (c0, c1)) in zip(pooled["cells"], bins):
                assert r0 <= row < r1 and c0 <= col < c1
                first = np.argmax(fmap[c, r0:r1, c0:c1])
                assert (row - r0) * (c1 - c0) + (col - c0) == first
    assert vector_offset((4, 2, 1), 256, 1, 3) == 256 * 16 + 3 * 4
    with pytest.raises(ValueError, match="size >= n"):
        bin_maxima(fmap[0, :4], 6, "paper")


def fake_features(channels=5):
    """What conv5_maps gives, without a trunk: an image and a (C, h, w) map."""
    return lambda h, w: (np.zeros((16 * h, 16 * w, 3), np.uint8), random_map(channels, h, w, h * w))


def test_pooling_explorer_marks_each_bins_maximum_and_labels_the_vector_segments():
    features = fake_features()
    fig = pooling_explorer(features, level_3=True, height=9, width=14, channel=2)
    levels = (4, 3, 2, 1)  # switched on: 1, 2, 3, 4; finest first
    assert len(fig.axes) == 2 + 2 * len(levels)  # image and k·M note, then map and strip per level
    fmap = features(9, 14)[1]
    maps = [ax for ax in fig.axes if ax.get_title().endswith("bins")]
    strips = [ax for ax in fig.axes if ax.get_title().startswith("vector[")]
    for k, (n, ax, strip) in enumerate(zip(levels, maps, strips)):
        pooled = bin_maxima(fmap[2], n)
        dots = ax.collections[-1].get_offsets()  # after the cell lines
        np.testing.assert_array_equal(dots, pooled["cells"][:, ::-1] + 0.5)
        start = vector_offset(levels, 5, k, 2)
        assert strip.get_title() == f"vector[{start}:{start + n * n}]"
        np.testing.assert_array_equal(strip.images[0].get_array()[0], pooled["maxima"])
    assert any("k·M = 5 × 30 = 150" in text.get_text() for text in fig.texts)
    render(fig)


def test_pooling_explorer_reaches_64_by_64_and_says_what_the_paper_rule_cannot_cut():
    fig = pooling_explorer(fake_features(), height=64, width=64, channel=4)  # levels 4, 2, 1
    assert any("(ZF-5's 256 channels: 5376)" in text.get_text() for text in fig.texts)
    fig = pooling_explorer(fake_features(), level_6=True, height=4, width=10, mode="paper")
    assert "needs H, W ≥ 6" in fig.axes[2].texts[0].get_text()
    assert "cells never pooled" in fig.axes[4].get_xlabel()  # 4×4 on 10 columns: 2 left out
    render(fig)
    fig = pooling_explorer(fake_features(), level_1=False, level_2=False, level_4=False)
    assert "choose at least one level" in fig.axes[1].texts[0].get_text()
    with pytest.raises(ValueError, match="channel must be in"):
        pooling_explorer(fake_features(), channel=5)


def test_conv5_maps_resizes_the_image_to_the_asked_map_size():
    from sppnet_lite.backbone import preprocess

    trunk = tiny_trunk()
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    features = conv5_maps(trunk, image)
    resized, fmap = features(3, 5)
    assert resized.shape == (48, 80, 3) and fmap.shape == (6, 3, 5) and fmap.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(fmap, trunk(preprocess(resized))[0].numpy())
    assert features(3, 5)[1] is fmap  # computed once


def test_pretrained_if_cached_reads_the_checkpoint_and_never_trains(tmp_path, monkeypatch):
    from sppnet_lite import config, pretrain
    from sppnet_lite.backbone import ZFLite

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(pretrain, "pretrain", None)  # any training attempt would fail
    fresh = pretrained_if_cached(quick=True)
    assert fresh.checkpoint_hash is None and not fresh.training
    torch.testing.assert_close(fresh.state_dict(), pretrained_if_cached(quick=True).state_dict())
    torch.manual_seed(1)
    trained = ZFLite()
    key = pretrain.trunk_key(quick=True)
    pretrain.save_checkpoint(trained, tmp_path / "checkpoints" / f"{key}.npz",
                             pretrain.pretrain_config(quick=True))
    cached = pretrained_if_cached(quick=True)
    assert cached.checkpoint_hash == key
    torch.testing.assert_close(cached.state_dict(), trained.state_dict())


def tiny_classifier():
    from sppnet_lite.backbone import Classifier

    torch.manual_seed(0)
    return Classifier(tiny_trunk(), 3, head="spp").eval()


@pytest.mark.parametrize("feed", list(FEEDS))
@pytest.mark.parametrize("size", [32, 96])
def test_classify_as_fed_agrees_with_chapter_04s_predict(feed, size):
    from sppnet_lite import train
    from sppnet_lite.backbone import preprocess

    net = tiny_classifier()
    image = np.random.default_rng(size).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    answer = classify_as_fed(net, image, size, feed)
    method = FEEDS[feed]
    np.testing.assert_array_equal(answer["fed"], train.transform(method, image, size))
    assert answer["label"] == train.predict(net, method, [image], size)[0]
    with torch.no_grad():
        expected = torch.softmax(net(preprocess(answer["fed"])), 1)[0].numpy()
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5)
    assert answer["confidence"] == pytest.approx(expected.max())
    with pytest.raises(ValueError, match="feed must be one of"):
        classify_as_fed(net, image, size, "squash")


def test_classifier_explorer_shows_the_image_as_fed():
    images = [np.random.default_rng(k).integers(0, 256, (40, 100, 3), dtype=np.uint8)
              for k in range(2)]
    dataset = SimpleNamespace(images=images, labels=np.array([0, 2]), class_names=("a", "b", "c"),
                              boxes=np.array([[5, 5, 30, 30], [60, 4, 95, 36]], np.float32))
    net = tiny_classifier()
    fig = classifier_explorer(net, dataset, index=1, size=48, feed="centre crop")
    answer = classify_as_fed(net, images[1], 48, "centre crop")
    assert fig.axes[1].get_title() == "as fed (centre crop): 48×48 px"
    assert f"({answer['confidence']:.0%})" in fig.texts[0].get_text()
    assert len(fig.axes[0].patches) == 2  # the object's box and the square the crop keeps
    fig = classifier_explorer(net, dataset, index=1, size=48, feed="full image")
    assert fig.axes[1].get_title() == "as fed (full image): 128×48 px"  # 100/40·48 = 120 → ×16
    render(fig)


def test_chapter_04s_widget_setup_classifies_with_the_cached_spp_network(tmp_path, monkeypatch):
    """The widget-setup cell: train.ensure_classifier("spp") (toy-sized here) feeds the
    explorer; a second call, as from a fresh kernel, loads the same network."""
    from test_train import use_tiny_experiment

    from sppnet_lite import train

    use_tiny_experiment(monkeypatch, tmp_path)
    classifier, _ = train.ensure_classifier("spp", progress=False)
    examples = train.experiment_images("test")
    answer = classify_as_fed(classifier, examples.images[0], 96, "full image")
    assert answer["label"] == train.predict(classifier, "spp", examples.images[:1], 96)[0]
    render(classifier_explorer(classifier, examples, index=1, size=64, feed="warp"))
    reloaded, _ = train.ensure_classifier("spp", progress=False)
    torch.testing.assert_close(reloaded.state_dict(), classifier.state_dict(), rtol=0, atol=0)


def test_projected_window_is_project_boxes_and_the_bins_roi_spp_pools():
    from sppnet_lite.spp import project_boxes, roi_spp

    box = [37.0, 50.0, 203.0, 170.0]  # chapter 06's worked example
    assert projected_window(box, 1, 1, 16, (40, 40))["cells"].tolist() == [3, 4, 12, 10]
    assert projected_window(box, 1, 1, 16, (40, 40), "round")["cells"].tolist() == [2, 3, 13, 11]
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.standard_normal((1, 4, 23, 31)))
    levels = (6, 3, 2, 1)
    for box in [[37.0, 50.0, 203.0, 170.0], [10, 300, 30, 330], [0, 0, 600, 400],
                [100, 60, 118, 250]]:
        for rule in ("paper", "round"):
            window = projected_window(box, 0.9, 1.1, 16, (23, 31), rule, levels)
            scaled = np.float32(box) * np.float32([0.9, 1.1, 0.9, 1.1])
            assert window["cells"].tolist() == project_boxes(
                scaled[None], 16, rule, feature_size=(23, 31))[0].tolist()
            rois = torch.tensor([[0.0, *window["cells"].tolist()]], dtype=torch.float64)
            pooled = roi_spp(features, rois, 1.0, levels)[0]
            by_bins = torch.cat([torch.stack([features[0, :, r0:r1, c0:c1].amax(dim=(1, 2))
                                              for r0, r1 in rows for c0, c1 in cols], 1).flatten()
                                 for rows, cols in window["bins"]])
            torch.testing.assert_close(pooled, by_bins)
    assert projected_window(box, 1, 1, 16, (40, 40), levels=())["bins"] == []


def test_projection_explorer_draws_the_window_its_cells_and_k_times_m():
    trunk = tiny_trunk()
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 90, 100], [100, 30, 112, 44]], np.float32)
    cache = {}
    fig = projection_explorer(trunk, image, boxes, proposal=0, scale=240, cache=cache)
    resized, fx, fy, fmap = cache[240]
    assert resized.shape[0] == 240 and fmap.shape == (6, 15, 20)
    window = projected_window(boxes[0], fx, fy, 16, fmap.shape[1:], "paper")
    x1, y1, x2, y2 = window["cells"].tolist()
    assert f"cells x {x1}–{x2}, y {y1}–{y2}" in fig.axes[1].get_title()
    assert any("k·M = 6 × 50 = 300" in text.get_text() for text in fig.texts)
    assert len(fig.axes) == 2 + 4  # image, map, one panel per level
    fig = projection_explorer(trunk, image, boxes, proposal=1, level_1=False, level_2=False,
                              level_3=False, level_6=False, scale=240, rule="round", cache=cache)
    assert len(cache) == 1 and any("round rule" in text.get_text() for text in fig.texts)
    render(fig)


def test_proposal_numbers_and_browser():
    """The chapter 05 widget's callback, called directly (no browser)."""
    image = np.random.default_rng(0).integers(0, 256, (107, 160, 3), dtype=np.uint8)
    gt = np.array([[10, 10, 60, 50]], np.float32)
    sample = SimpleNamespace(image=image, boxes=gt, labels=np.array([0]), image_id="photo",
                             difficult=np.array([False]))
    boxes = np.array([[0, 0, 4, 4], [10, 10, 60, 50], [12, 12, 58, 48]], np.float32)
    numbers = proposal_numbers(boxes, gt, top_k=2, min_size=5)
    assert numbers["shown"].tolist() == boxes[1:].tolist()  # the 4-px box is filtered
    assert numbers["best_index"].tolist() == [0] and numbers["best_iou"].tolist() == [1.0]
    nothing = proposal_numbers(boxes, gt, top_k=0)
    assert len(nothing["shown"]) == 0
    assert nothing["best_index"].tolist() == [-1] and nothing["best_iou"].tolist() == [0.0]
    fig = proposal_browser([sample], [boxes], index=0, top_k=3, min_size=0)
    assert isinstance(fig, Figure) and "1/1 objects" in fig.axes[0].get_title()
    fig = proposal_browser([sample], [boxes[:1]], top_k=1, show_gt=False, show_best=False)
    assert "0/1 objects" in fig.axes[0].get_title()
    render(fig)


def test_detection_explorer_draws_a_figure():
    from test_detector import random_scene, tiny_detector

    from sppnet_lite.voc import Sample

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
    render(fig)
