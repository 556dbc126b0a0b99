"""Spatial pyramid pooling in plain NumPy: the reference every faster version is checked against.

A feature map ``fmap`` is a ``(C, H, W)`` array (channels first). A pyramid level
``n`` cuts each spatial axis into ``n`` bins and max-pools (or averages) every one
of the ``n × n`` cells, so a pyramid with levels ``(n1, n2, ...)`` turns a map of
*any* size into ``C · Σ n²`` numbers. Taught in chapter 02.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BIN_RULES = ("adaptive", "paper")
POOLS = ("max", "avg")


def pyramid_bins(size: int, n: int, mode: str = "adaptive") -> list[tuple[int, int]]:
    """The ``n`` half-open bins ``[(start, end), ...]`` that cut one axis of length ``size``.

    ``mode="adaptive"``: bin ``i = [⌊i·a/n⌋, ⌈(i+1)·a/n⌉)`` with ``a = size``; the rule of
    ``torch.nn.functional.adaptive_max_pool2d`` and of the SPP-net authors' released
    pooling code. Bins may overlap by one cell and always cover the whole axis, for any
    ``size ≥ 1`` (when ``size < n`` some cells fall into several bins).

    ``mode="paper"``: the training-time rule of the SPP-net paper (Sec. 2.3), a pooling
    layer with window ``⌈a/n⌉`` and stride ``⌊a/n⌋`` of which the first ``n`` windows are
    kept: bin ``i = [i·stride, min(i·stride + window, a))``. It needs ``a ≥ n`` (raises
    ``ValueError`` otherwise) and may leave the last cells uncovered, e.g. ``a = 10,
    n = 6`` covers cells 0–6 only.

    Taught in chapter 02.
    """
    size = _positive_int("size", size)
    n = _positive_int("n", n)
    if mode == "adaptive":
        return [((i * size) // n, -((-(i + 1) * size) // n)) for i in range(n)]
    if mode == "paper":
        if size < n:
            raise ValueError(f"mode='paper' needs size >= n (a pooling window per bin), "
                             f"got size={size} < n={n}; use mode='adaptive' for small maps")
        window, stride = -(-size // n), size // n
        return [(i * stride, min(i * stride + window, size)) for i in range(n)]
    raise ValueError(f"mode must be one of {BIN_RULES}, got {mode!r}")


def spp(fmap: np.ndarray, levels: Sequence[int] = (4, 2, 1), mode: str = "adaptive",
        pool: str = "max") -> np.ndarray:
    """Pool a ``(C, H, W)`` feature map into a fixed-length 1-D vector of ``C · Σ n²`` values.

    Output order (a contract the torch version and the tests share): levels in the order
    given; each level's ``(C, n, n)`` block flattened channel-major, i.e. bin ``(i, j)``
    of channel ``c`` at offset ``c·n² + i·n + j`` inside the block; blocks concatenated.
    ``pool="max"`` keeps the dtype of ``fmap``; ``pool="avg"`` returns floats.
    Bins follow :func:`pyramid_bins` with the given ``mode`` on each axis.

    Taught in chapter 02.
    """
    fmap = np.asarray(fmap)
    if fmap.ndim != 3:
        raise ValueError(f"fmap must be a 3-D (C, H, W) array, got shape {fmap.shape}")
    levels = check_levels(levels)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    reduce = np.max if pool == "max" else np.mean
    channels, height, width = fmap.shape
    blocks = []
    for n in levels:
        rows, cols = pyramid_bins(height, n, mode), pyramid_bins(width, n, mode)
        block = np.stack([reduce(fmap[:, r0:r1, c0:c1], axis=(1, 2))
                          for r0, r1 in rows for c0, c1 in cols], axis=1)  # (C, n·n)
        blocks.append(block.reshape(channels * n * n))
    return np.concatenate(blocks)


def output_length(channels: int, levels: Sequence[int]) -> int:
    """``k · M``: the length of the pooled vector for ``channels`` maps and pyramid ``levels``.

    ``M = Σ n²`` is the number of bins, e.g. ``output_length(256, (6, 3, 2, 1)) == 12800``.
    Taught in chapter 02.
    """
    return _positive_int("channels", channels) * sum(n * n for n in check_levels(levels))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_levels(levels) -> tuple[int, ...]:
    """``levels`` as a tuple of positive ints (e.g. ``(6, 3, 2, 1)``), or a ``ValueError``
    naming the bad entry. Shared with :mod:`sppnet_lite.spp`."""
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must name at least one pyramid level, got an empty sequence")
    for n in levels:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"every pyramid level must be a positive integer, "
                             f"got {n!r} in levels={levels}")
    return tuple(int(n) for n in levels)
