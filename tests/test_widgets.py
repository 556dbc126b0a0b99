"""Widget callbacks are plain functions: call them directly, headless (Agg canvas)."""

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sppnet_lite.widgets import pyramid_explorer, pyramid_numbers, pyramid_toggles


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
