"""Widget callbacks are plain functions: call them directly, headless (Agg canvas)."""

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sppnet_lite.widgets import (
    detection_explorer,
    proposal_browser,
    proposal_numbers,
    pyramid_explorer,
    pyramid_numbers,
    pyramid_toggles,
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


@pytest.mark.parametrize("switches, panels", [({}, 3), ({"level_3": True, "level_6": True}, 5),
                                              ({"level_1": False, "level_2": False,
                                                "level_4": False}, 1)])
def test_toggles_pick_the_levels(switches, panels):
    fig = pyramid_toggles(**switches, height=13, width=20, channels=8)
    assert len(fig.axes) == panels
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
