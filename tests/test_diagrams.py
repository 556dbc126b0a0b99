"""The teaching drawings: what they put on the axes, and the numbers they print, checked
against independent oracles (torchvision's IoU, the box-coding formulas, k · Σ n²)."""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torchvision.ops import box_iou as tv_box_iou

from sppnet_lite import diagrams
from sppnet_lite.boxes import decode


def axes():
    return Figure().subplots()


def texts(ax):
    return "\n".join(t.get_text() for t in ax.texts) + "\n" + ax.get_title()


def with_gid(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


@pytest.mark.parametrize("levels, channels, size", [((4, 2, 1), 256, (13, 13)),
                                                    ((6, 3, 2, 1), 256, (10, 17)),
                                                    ((3,), 128, (64, 40))])
def test_spp_layer_draws_one_patch_per_bin_and_prints_k_times_m(levels, channels, size):
    ax = axes()
    drawn = diagrams.draw_spp_layer(ax, levels, channels, size)
    bins = sum(n * n for n in levels)
    assert drawn == {"bins": bins, "length": channels * bins}
    assert len(with_gid(ax, "spp-bin")) == bins
    label = texts(ax)
    assert f"{size[0]} × {size[1]} × {channels}" in label
    assert f"k · M = {channels} · {bins}" in label
    assert f"{channels * bins:,}".replace(",", " ") + " numbers" in label
    for n in levels:
        assert f"{n * n} · {channels} = " + f"{n * n * channels:,}".replace(",", " ") in label


def test_spp_layer_checks_its_levels():
    with pytest.raises(ValueError, match="positive integer"):
        diagrams.draw_spp_layer(axes(), (4, 0))


@pytest.mark.parametrize("a, b", [([40, 30, 120, 90], [50, 20, 150, 100]),
                                  ([0, 0, 10, 10], [0, 0, 10, 10]),
                                  ([0, 0, 10, 10], [5, 5, 7.5, 30]),
                                  ([0, 0, 10, 10], [20, 20, 30, 30])])
def test_iou_matches_torchvision_and_shades_the_intersection(a, b):
    ax = axes()
    iou = diagrams.draw_iou(ax, np.array(a, np.float32), b)
    expected = float(tv_box_iou(torch.tensor([a], dtype=torch.float32),
                                torch.tensor([b], dtype=torch.float32))[0, 0])
    assert iou == pytest.approx(expected, abs=1e-6)
    assert ax.get_title().endswith(f"= {expected:.2f}")
    shaded = with_gid(ax, "intersection")
    if expected > 0:
        (patch,) = shaded
        x1, y1 = max(a[0], b[0]), max(a[1], b[1])
        x2, y2 = min(a[2], b[2]), min(a[3], b[3])
        drawn = (patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height())
        assert drawn == pytest.approx((x1, y1, x2 - x1, y2 - y1))
    else:
        assert not shaded
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # y points down, as in an image


def test_iou_draws_over_an_image():
    ax = axes()
    image = np.zeros((50, 60, 3), np.uint8)
    diagrams.draw_iou(ax, [5, 5, 30, 30], [10, 10, 40, 40], image=image, names=("gt", "proposal"))
    assert len(ax.images) == 1 and "area(gt ∩ proposal)" in ax.get_title()
    assert ax.get_xlim() == (0, 48.75) and ax.get_ylim() == (48.75, 0)  # clipped at the top left
    ax = axes()
    diagrams.draw_iou(ax, [0, 0, 60, 50], [10, 10, 40, 40], image=image)
    assert ax.get_xlim() == (0, 60) and ax.get_ylim() == (50, 0)  # the view stays on the picture


def test_one_box_per_argument():
    with pytest.raises(ValueError, match=r"box_b must be one x1y1x2y2 box .*got shape \(3,\)"):
        diagrams.draw_iou(axes(), [0, 0, 1, 1], [0, 0, 1])
    with pytest.raises(ValueError, match="truth must be one x1y1x2y2 box"):
        diagrams.draw_box_offsets(axes(), [0, 0, 1, 1], [[0, 0, 1, 1], [0, 0, 2, 2]])


def test_box_offsets_are_the_r_cnn_formulas_and_decode_back():
    ax = axes()
    p, g = np.array([40, 30, 120, 90], np.float32), np.array([50, 12, 150, 100], np.float32)
    deltas = diagrams.draw_box_offsets(ax, p, g)
    pw, ph, gw, gh = 80.0, 60.0, 100.0, 88.0
    expected = [(100 - 80) / pw, (56 - 60) / ph, np.log(gw / pw), np.log(gh / ph)]
    np.testing.assert_allclose(deltas, expected, rtol=1e-6)
    np.testing.assert_allclose(decode(p[None], deltas[None])[0], g, atol=1e-4)
    label = texts(ax)
    for name, value in zip(("dx", "dy", "dw", "dh"), expected):
        assert f"{value:+.3f}" in label.split(f"{name} = ", 1)[1].split("\n", 1)[0]
    assert "pw = 80" in label and "gh = 88" in label
    assert len(ax.patches) == 2  # the two boxes; arrows are annotations


def test_timings_one_bar_per_value_with_its_label():
    ax = axes()
    table = {"batch 16": {"NumPy": 150.0, "cpu": 3.21, "cuda": 0.0123},
             "batch 128": {"NumPy": 1234.6, "cpu": 25.0}}
    diagrams.draw_timings(ax, table, title="SPP")
    bars = with_gid(ax, "timing-bar")
    assert [b.get_width() for b in bars] == [150.0, 3.21, 0.0123, 1234.6, 25.0]
    assert [t.get_text() for t in ax.texts] == [" 150 ms", " 3.2 ms", " 0.012 ms", " 1 235 ms",
                                                 " 25.0 ms"]
    assert ax.get_legend_handles_labels()[1] == ["NumPy", "cpu", "cuda"]
    assert ax.get_xscale() == "log" and ax.get_title() == "SPP"
    # one colour per implementation, kept across groups
    assert bars[0].get_facecolor() == bars[3].get_facecolor()
    ax = axes()
    diagrams.draw_timings(ax, {"cpu": {"a": 1.0}}, log=False)
    assert ax.get_xscale() == "linear"


def test_importing_the_drawings_does_not_load_torch():
    # chapter 02 draws the SPP layer before it needs torch; torchvision alone takes seconds to load
    code = "import sys, sppnet_lite.diagrams; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
