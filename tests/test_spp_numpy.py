"""The NumPy reference against hand-written formulas and explicit loops."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sppnet_lite.spp_numpy import BIN_RULES, POOLS, check_levels, output_length, pyramid_bins, spp

sizes = st.integers(1, 40)
levels_st = st.lists(st.integers(1, 8), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(size=sizes, n=st.integers(1, 8))
def test_adaptive_bins_follow_the_formula_and_cover_the_axis(size, n):
    bins = pyramid_bins(size, n, "adaptive")
    assert bins == [(math.floor(i * size / n), math.ceil((i + 1) * size / n)) for i in range(n)]
    assert all(start < end for start, end in bins)
    covered = set().union(*(range(s, e) for s, e in bins))
    assert covered == set(range(size))


@settings(max_examples=60, deadline=None)
@given(size=sizes, n=st.integers(1, 8))
def test_paper_bins_are_the_first_n_windows_of_a_pooling_layer(size, n):
    if size < n:
        with pytest.raises(ValueError, match="size >= n"):
            pyramid_bins(size, n, "paper")
        return
    window, stride = math.ceil(size / n), math.floor(size / n)
    bins = pyramid_bins(size, n, "paper")
    assert bins == [(i * stride, min(i * stride + window, size)) for i in range(n)]
    assert all(end - start == window for start, end in bins)  # no window is ever cut short


def test_paper_rule_leaves_rows_uncovered_for_a_10_by_10_map_and_6_bins():
    bins = pyramid_bins(10, 6, "paper")
    assert bins == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]
    assert max(end for _, end in bins) == 7  # rows 7, 8, 9 are never pooled
    assert pyramid_bins(10, 6, "adaptive")[-1] == (8, 10)


def test_bins_agree_when_n_divides_the_size():
    for size, n in [(12, 6), (12, 3), (64, 4), (13, 1)]:
        assert pyramid_bins(size, n, "paper") == pyramid_bins(size, n, "adaptive")


def _loop_spp(fmap, levels, mode, pool):
    """Explicit loops in the contract's order: level, channel, row bin, column bin."""
    out = []
    for n in levels:
        rows = pyramid_bins(fmap.shape[1], n, mode)
        cols = pyramid_bins(fmap.shape[2], n, mode)
        for c in range(fmap.shape[0]):
            for r0, r1 in rows:
                for c0, c1 in cols:
                    cell = fmap[c, r0:r1, c0:c1]
                    out.append(cell.max() if pool == "max" else cell.mean())
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(height=sizes, width=sizes, channels=st.integers(1, 3), levels=levels_st,
       mode=st.sampled_from(["adaptive", "paper"]), pool=st.sampled_from(["max", "avg"]),
       seed=st.integers(0, 2**16))
def test_spp_matches_explicit_loops(height, width, channels, levels, mode, pool, seed):
    fmap = np.random.default_rng(seed).standard_normal((channels, height, width))
    if mode == "paper" and min(height, width) < max(levels):
        with pytest.raises(ValueError):
            spp(fmap, levels, mode, pool)
        return
    out = spp(fmap, levels, mode, pool)
    assert out.shape == (channels * sum(n * n for n in levels),)
    np.testing.assert_allclose(out, _loop_spp(fmap, levels, mode, pool), rtol=0, atol=1e-12)


def test_ordering_contract_is_channel_major_per_level():
    # Each cell holds its own (c, row, col) code, so a 1x1-cell bin returns its address.
    channels, size = 3, 4
    c, r, w = np.meshgrid(range(channels), range(size), range(size), indexing="ij")
    fmap = (100 * c + 10 * r + w).astype(np.int64)
    out = spp(fmap, levels=(4, 1))
    assert out.dtype == np.int64
    for ch in range(channels):
        for i in range(4):
            for j in range(4):
                assert out[ch * 16 + i * 4 + j] == 100 * ch + 10 * i + j
    assert list(out[48:]) == [100 * ch + 33 for ch in range(channels)]  # the 1x1 block last


def test_the_textbook_and_detection_pyramids():
    fmap = np.random.default_rng(0).standard_normal((256, 64, 64)).astype(np.float32)
    out = spp(fmap, levels=(4, 2, 1))
    assert out.shape == (5376,) and out.dtype == np.float32  # 256 x (16 + 4 + 1)
    assert pyramid_bins(64, 4) == [(0, 16), (16, 32), (32, 48), (48, 64)]  # 16-cell bins
    assert out[-256:].tolist() == fmap.max(axis=(1, 2)).tolist()  # the 1x1 level = global max
    assert output_length(256, (6, 3, 2, 1)) == 12800
    assert output_length(256, (4, 3, 2, 1)) == 256 * 30


def test_maps_smaller_than_the_bin_count_still_pool_in_adaptive_mode():
    fmap = np.arange(6.0).reshape(1, 2, 3)
    out = spp(fmap, levels=(4,))
    assert out.shape == (16,)
    assert set(out.tolist()) <= set(fmap.ravel().tolist())


@pytest.mark.parametrize("call, message", [
    (lambda: spp(np.zeros((4, 4))), "3-D"),
    (lambda: spp(np.zeros((1, 4, 4)), levels=()), "at least one"),
    (lambda: spp(np.zeros((1, 4, 4)), levels=(2, 0)), "positive integer"),
    (lambda: spp(np.zeros((1, 4, 4)), levels=(2, -1)), "positive integer"),
    (lambda: spp(np.zeros((1, 4, 4)), levels=(2.5,)), "positive integer"),
    (lambda: spp(np.zeros((1, 4, 4)), levels=(True,)), "positive integer"),
    (lambda: spp(np.zeros((1, 4, 4)), mode="caffe"), "mode"),
    (lambda: spp(np.zeros((1, 4, 4)), pool="median"), "pool"),
    (lambda: spp(np.zeros((1, 3, 8)), levels=(4,), mode="paper"), "size=3 < n=4"),
    (lambda: pyramid_bins(0, 2), "size"),
    (lambda: pyramid_bins(5, 0), "n must"),
    (lambda: pyramid_bins(5, 2, "nearest"), "mode"),
    (lambda: output_length(0, (1,)), "channels"),
])
def test_errors_name_the_argument_and_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_check_levels_is_shared_and_names_the_bad_entry():
    assert BIN_RULES == ("adaptive", "paper") and POOLS == ("max", "avg")
    assert check_levels([6, 3, 2, 1]) == (6, 3, 2, 1)
    assert check_levels(np.array([2, 1])) == (2, 1)
    with pytest.raises(ValueError, match="at least one"):
        check_levels([])
    with pytest.raises(ValueError, match="positive integer"):
        check_levels((3, 0))
    with pytest.raises(ValueError, match=r"mode must be one of \('adaptive', 'paper'\)"):
        pyramid_bins(5, 2, "nearest")
