"""The drawing helpers: what they put on the axes, checked against the inputs."""

import numpy as np
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
