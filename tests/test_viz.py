"""The drawing helpers: what they put on the axes, checked against the inputs."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from sppnet_lite import viz
from sppnet_lite.spp_numpy import pyramid_bins


def axes():
    return Figure().subplots()


def test_draw_boxes_one_rectangle_and_caption_per_box():
    ax = axes()
    boxes = np.array([[10, 20, 50, 60], [0, 0, 5, 5]], np.float32)
    viz.draw_boxes(ax, boxes, labels=[1, 0], scores=[0.9, 0.25], class_names=("cat", "dog"))
    rects = ax.patches
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rects] == [
        (10, 20, 40, 40), (0, 0, 5, 5)]
    assert [t.get_text() for t in ax.texts] == ["dog 0.90", "cat 0.25"]
    ax = axes()
    viz.draw_boxes(ax, boxes, labels=[1, 0], class_names=("cat", "dog"), captions=False)
    assert len(ax.patches) == len(boxes) and not ax.texts
    assert ax.patches[0].get_edgecolor() != ax.patches[1].get_edgecolor()  # still coloured by class
    ax = axes()
    viz.draw_boxes(ax, np.zeros((0, 4)))
    assert not ax.patches and not ax.texts


def test_draw_bins_counts_the_cells_no_bin_covers():
    # a = 10, n = 6 with the paper's training rule leaves cells out; the adaptive rule never does
    for mode, missed in (("adaptive", 0), ("paper", None)):
        rows = cols = pyramid_bins(10, 6, mode)
        covered = np.zeros((10, 10), bool)
        for r0, r1 in rows:
            for c0, c1 in cols:
                covered[r0:r1, c0:c1] = True
        expected = int((~covered).sum()) if missed is None else missed
        assert viz.draw_bins(axes(), 10, 10, rows, cols, title=mode) == expected
    assert viz.draw_bins(axes(), 10, 10, [(0, 5)], [(0, 10)]) == 50


def test_dataset_statistics_figure_and_accuracy_curves():
    stats = {"side": np.array([20.0, 80.0]), "aspect": np.array([1.0, 2.0]),
             "objects_per_image": np.array([1, 1]), "label": np.array([0, 1]),
             "difficult": np.array([False, True])}
    fig = viz.plot_dataset_statistics(stats, ("a", "b"))
    assert len(fig.axes) == 4
    ax = axes()
    results = {"methods": {"spp": {"accuracy": 0.9, "by_scale": {"centers": [0.2, 0.5],
                                                                  "accuracy": [0.8, 1.0]}}}}
    viz.plot_accuracy_by_bin(ax, results, xlabel="scale")
    assert ax.lines[0].get_ydata().tolist() == [0.8, 1.0] and "90.0%" in ax.get_legend_handles_labels()[1][0]


def test_plot_stage_times_stacks_one_bar_per_stage_and_row():
    ax = axes()
    rows = {"R-CNN": {"conv": 0.6, "pool": 0.01, "fc": 0.03, "proposals": 0.5},
            "SPP-net": {"conv": 0.05, "pool": 0.04, "fc": 0.03, "proposals": 0.5}}
    totals = viz.plot_stage_times(ax, rows, ("conv", "pool", "fc"))
    assert list(totals) == ["R-CNN", "SPP-net"] and np.allclose(list(totals.values()), [0.64, 0.12])
    bars = ax.patches
    assert len(bars) == len(rows) * 3  # "proposals" is not among the stages drawn
    # stage by stage, each row's segment starts where the previous stage ended
    lefts = [b.get_x() for b in bars]
    assert np.allclose(lefts, [0, 0, 0.6, 0.05, 0.61, 0.09])
    assert len({b.get_facecolor() for b in bars}) == 3  # one colour per stage, shared by the rows
    assert ax.get_legend_handles_labels()[1] == ["conv", "pool", "fc"]
    assert [t.get_text() for t in ax.texts] == [" 0.64 s", " 0.12 s"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["R-CNN", "SPP-net"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first row is drawn on top
    # default stages: the first row's keys
    ax = axes()
    assert viz.plot_stage_times(ax, {"a": {"x": 1.0, "y": 2.0}}) == {"a": 3.0}
    assert ax.get_legend_handles_labels()[1] == ["x", "y"]


def test_plot_stage_times_names_a_missing_stage():
    with pytest.raises(ValueError, match="'SPP-net'.*'nms'"):
        viz.plot_stage_times(axes(), {"SPP-net": {"conv": 0.1}}, ("conv", "nms"))
