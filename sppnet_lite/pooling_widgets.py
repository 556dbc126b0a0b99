"""The pooling widgets' callbacks, as plain functions that tests call: pyramid bins over a
map and a real conv5 channel pooled bin by bin (chapter 02), a proposal projected onto conv5
(chapter 06).

As in :mod:`sppnet_lite.widgets`, a widget cell only wires sliders to one of these
functions; beside the callbacks are the numbers they draw, as functions of their own (what
the tests check against the package's reference code), and a memoised conv5 map.
"""

from __future__ import annotations


# ----------------------------------------------------------------- chapter 02: pyramid explorer
def pyramid_numbers(levels, channels: int) -> dict:
    """The numbers the pyramid explorer prints: bins per level, ``M = Σ n²`` and ``k · M``.

    ``pyramid_numbers((4, 2, 1), 256)`` → ``bins == 21``, ``length == 5376``.
    Taught in chapter 02.
    """
    from .spp_numpy import output_length

    levels = tuple(levels)
    per_level = [n * n for n in levels]
    return {"levels": levels, "bins_per_level": per_level, "bins": sum(per_level),
            "channels": int(channels), "length": output_length(channels, levels)}


def pyramid_explorer(levels=(4, 2, 1), height: int = 13, width: int = 13, channels: int = 256,
                     mode: str = "adaptive"):
    """Draw the bins of every pyramid level over a ``height × width`` map; return the Figure.

    One panel per level (finest first); the title carries ``k · M``. A level the
    ``mode="paper"`` rule cannot cut (map side < n) gets a panel saying so instead of an
    error, and cells the paper rule leaves out are shaded red. Taught in chapter 02.
    """
    from matplotlib.figure import Figure

    from .spp_numpy import pyramid_bins
    from .viz import draw_bins

    levels = tuple(sorted({int(n) for n in levels}, reverse=True))
    fig = Figure(figsize=(2.6 * max(len(levels), 1) + 0.4, 3.2), layout="constrained")
    axes = fig.subplots(1, max(len(levels), 1), squeeze=False)[0]
    if not levels:
        axes[0].text(0.5, 0.5, "choose at least one level", ha="center", va="center")
        axes[0].set_axis_off()
        return fig
    for ax, n in zip(axes, levels):
        try:
            rows, cols = pyramid_bins(height, n, mode), pyramid_bins(width, n, mode)
        except ValueError:
            ax.text(0.5, 0.5, f"{n}×{n}: the paper rule\nneeds H, W ≥ {n}", ha="center",
                    va="center", fontsize=9)
            ax.set_axis_off()
            continue
        missed = draw_bins(ax, height, width, rows, cols, title=f"{n}×{n} = {n * n} bins")
        if missed:
            ax.set_xlabel(f"{missed} cells never pooled", color="#c0392b", fontsize=8)
    numbers = pyramid_numbers(levels, channels)
    fig.suptitle(f"{height}×{width}×{channels} map, {mode} bins: k·M = {channels} × "
                 f"{numbers['bins']} = {numbers['length']}", fontsize=10)
    return fig


# ----------------------------------------------------------------- chapter 02: pooling a real map
def vector_offset(levels, channels: int, level_index: int, channel: int) -> int:
    """Where channel ``channel``'s ``n²`` numbers of level ``n = levels[level_index]`` start
    in the vector :func:`sppnet_lite.spp_numpy.spp` returns for a ``channels``-channel map:
    ``channels · Σ m²`` over the levels before it, plus ``channel · n²`` (the order
    contract). ``vector_offset((4, 2, 1), 256, 1, 3) == 256·16 + 3·4 == 4108``.
    Taught in chapter 02."""
    from .spp_numpy import check_levels

    levels = check_levels(levels)
    n = levels[level_index]
    return int(channels) * sum(m * m for m in levels[:level_index]) + int(channel) * n * n


def bin_maxima(values, n: int, mode: str = "adaptive") -> dict:
    """Max-pool one channel ``values`` ``(H, W)`` at pyramid level ``n`` and say where each
    maximum sits.

    Returns ``{"rows", "cols"}``: the half-open bins of
    :func:`sppnet_lite.spp_numpy.pyramid_bins` on each axis; ``"cells"``: int64
    ``(n·n, 2)``, the ``(row, col)`` of every bin's maximum, bins in row-major order
    (on ties the first such cell in row-major order, as ``np.argmax``); ``"maxima"``:
    ``(n·n,)`` the values there, i.e. this channel's ``n²`` numbers of the level in
    :func:`~sppnet_lite.spp_numpy.spp`'s vector (at :func:`vector_offset`). Raises
    ``ValueError`` where ``pyramid_bins`` does (``mode="paper"`` with a side < n).
    Taught in chapter 02.
    """
    import numpy as np

    from .spp_numpy import pyramid_bins

    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be one channel, a 2-D (H, W) array, got shape "
                         f"{values.shape}")
    rows, cols = pyramid_bins(values.shape[0], n, mode), pyramid_bins(values.shape[1], n, mode)
    cells = []
    for r0, r1 in rows:
        for c0, c1 in cols:
            r, c = np.unravel_index(np.argmax(values[r0:r1, c0:c1]), (r1 - r0, c1 - c0))
            cells.append((r0 + r, c0 + c))
    cells = np.asarray(cells, dtype=np.int64)
    return {"rows": rows, "cols": cols, "cells": cells, "maxima": values[cells[:, 0], cells[:, 1]]}


def pooling_explorer(features, level_1: bool = True, level_2: bool = True,
                     level_3: bool = False, level_4: bool = True, level_5: bool = False,
                     level_6: bool = False, height: int = 13, width: int = 13, channel: int = 0,
                     mode: str = "adaptive"):
    """Pool one channel of a real feature map and show where each number of the vector comes
    from; return the Figure.

    ``features(height, width)`` returns ``(image, fmap)``: the RGB uint8 image the trunk was
    fed and its ``(C, height, width)`` map (see :func:`conv5_maps`). The switched-on levels
    form the pyramid, finest first. Top row: the image, then per level channel ``channel``
    with the level's bins outlined (:func:`sppnet_lite.viz.draw_bins`; cells the paper rule
    leaves out shaded red) and each bin's maximum marked by a dot in the bin's colour.
    Bottom row: per level, the ``n²`` numbers this channel puts into the vector, in the same
    colour scale, framed in the bins' colours and labelled with their offsets
    (:func:`bin_maxima`, :func:`vector_offset`). The title carries ``k · M``. A level the
    paper rule cannot cut (side < n) gets a panel saying so. Taught in chapter 02.
    """
    from matplotlib.figure import Figure

    from .spp_numpy import output_length
    from .viz import PALETTE, draw_bins, show_image

    levels = _switched_levels(level_1, level_2, level_3, level_4, level_5, level_6)
    height, width, channel = int(height), int(width), int(channel)
    image, fmap = features(height, width)
    channels = fmap.shape[0]
    if not 0 <= channel < channels:
        raise ValueError(f"channel must be in [0, {channels}) for this {channels}-channel map, "
                         f"got {channel}")
    values, cmap = fmap[channel], "viridis"
    columns = 1 + max(len(levels), 1)
    fig = Figure(figsize=(2.5 * columns + 0.3, 4.0), layout="constrained")
    grid = fig.add_gridspec(2, columns, height_ratios=(5, 1))
    show_image(fig.add_subplot(grid[0, 0]), image,
               f"input {image.shape[1]}×{image.shape[0]} px")
    note = fig.add_subplot(grid[1, 0])
    note.set_axis_off()
    if not levels:
        note.text(0, 0.5, "choose at least one level", fontsize=9, va="center")
        return fig
    numbers = pyramid_numbers(levels, channels)
    note.text(0, 0.5, f"k·M = {channels} × {numbers['bins']}\n= {numbers['length']} numbers",
              fontsize=9, va="center")
    for k, n in enumerate(levels):
        top, bottom = fig.add_subplot(grid[0, k + 1]), fig.add_subplot(grid[1, k + 1])
        try:
            pooled = bin_maxima(values, n, mode)
        except ValueError:
            top.text(0.5, 0.5, f"{n}×{n}: the paper rule\nneeds H, W ≥ {n}", ha="center",
                     va="center", fontsize=9)
            top.set_axis_off()
            bottom.set_axis_off()
            continue
        colours = [PALETTE[b % len(PALETTE)] for b in range(n * n)]
        missed = draw_bins(top, height, width, pooled["rows"], pooled["cols"],
                           title=f"{n}×{n} = {n * n} bins", values=values, cmap=cmap)
        top.scatter(pooled["cells"][:, 1] + 0.5, pooled["cells"][:, 0] + 0.5, s=24, c=colours,
                    edgecolors="white", linewidths=0.8, zorder=3)
        if missed:
            top.set_xlabel(f"{missed} cells never pooled", color="#c0392b", fontsize=8)
        _draw_segment(bottom, pooled["maxima"], vector_offset(levels, channels, k, channel),
                      colours, cmap, float(values.min()), float(values.max()))
    fig.suptitle(f"{height}×{width} map, channel {channel} of {channels}, {mode} bins: "
                 f"k·M = {channels} × {numbers['bins']} = {numbers['length']} "
                 f"(ZF-5's 256 channels: {output_length(256, levels)})", fontsize=10)
    return fig


def conv5_maps(trunk, image):
    """The feature maps :func:`pooling_explorer` shows: a function ``(height, width) →
    (resized, fmap)``.

    ``resized`` is the RGB uint8 ``image`` resized to ``stride·width × stride·height`` px,
    so that ``trunk`` (eval mode; stride-16 ZFLite with "same" padding) turns it into a
    float32 conv5 map ``fmap`` of exactly ``(C, height, width)`` cells (``ValueError``
    otherwise). Sizes asked for before are not computed again. Taught in chapter 02.
    """
    import functools

    import cv2
    import torch

    from .backbone import preprocess

    device = next(trunk.parameters()).device

    @functools.lru_cache(maxsize=16)
    def features(height: int, width: int):
        size = (trunk.stride * int(width), trunk.stride * int(height))
        shrink = size[0] < image.shape[1] and size[1] < image.shape[0]
        resized = cv2.resize(image, size,
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        with torch.no_grad():
            fmap = trunk(preprocess(resized, device))[0].float().cpu().numpy()
        if fmap.shape[1:] != (height, width):
            raise ValueError(f"trunk: a {size[0]}×{size[1]}-px input gave a "
                             f"{fmap.shape[2]}×{fmap.shape[1]} map, expected {width}×{height}; "
                             "conv5_maps needs a trunk whose map is the input size / stride")
        return resized, fmap

    return features


def pretrained_if_cached(quick: bool | None = None):
    """ZFLite without training anything, on the CPU in eval mode: the weights chapter 04's
    :func:`sppnet_lite.pretrain.ensure_pretrained` cached, when that checkpoint exists
    (``.checkpoint_hash`` set), else a freshly initialised ZFLite (seed 0,
    ``.checkpoint_hash`` None). Chapter 02 shows real conv5 maps with it."""
    import torch

    from .backbone import ZFLite
    from .pretrain import checkpoint_path, load_checkpoint

    path = checkpoint_path(quick)
    try:
        return load_checkpoint(path, expected_hash=path.stem)
    except (FileNotFoundError, ValueError):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ZFLite().eval()


# ----------------------------------------------------------------- chapter 06: projecting a window
def projected_window(box, fx: float, fy: float, stride: float, feature_size, rule: str = "paper",
                     levels=(6, 3, 2, 1)) -> dict:
    """One window of an image resized by ``(fx, fy)``, projected onto the resized image's
    conv map and cut into pyramid bins.

    ``box`` is ``[x1, y1, x2, y2]`` in the original image's pixels; ``feature_size`` the
    map's ``(H', W')``. Returns ``{"box": float32 (4,) on the resized image, "cells": int64
    (4,) the inclusive cells [x1', y1', x2', y2'] (:func:`sppnet_lite.spp.project_boxes`
    with ``rule``, clamped into the map), "bins": one (rows, cols) per level of ``levels``
    (may be empty): half-open ranges of map cells}``. The bins are chapter 02's adaptive
    rule over the window's cells, which is what :func:`sppnet_lite.spp.roi_spp` (through
    ``roi_pool``) pools for a whole-cell window. Taught in chapter 06.
    """
    import numpy as np

    from .spp import project_boxes
    from .spp_numpy import check_levels, pyramid_bins

    scaled = np.asarray(box, dtype=np.float32).reshape(4) * np.float32([fx, fy, fx, fy])
    cells = project_boxes(scaled[None], stride, rule, feature_size=tuple(feature_size))
    x1, y1, x2, y2 = (int(v) for v in cells[0].tolist())
    bins = [([(y1 + a, y1 + b) for a, b in pyramid_bins(y2 - y1 + 1, n)],
             [(x1 + a, x1 + b) for a, b in pyramid_bins(x2 - x1 + 1, n)])
            for n in (check_levels(levels) if len(levels) else ())]
    return {"box": scaled, "cells": np.array([x1, y1, x2, y2], np.int64), "bins": bins}


def projection_explorer(backbone, image, boxes, proposal: int = 0, level_1: bool = True,
                        level_2: bool = True, level_3: bool = True, level_4: bool = False,
                        level_5: bool = False, level_6: bool = True, scale: int = 296,
                        rule: str = "paper", cache: dict | None = None):
    """Project window ``boxes[proposal]`` of ``image`` onto ``backbone``'s conv5 map and
    pool it; return the Figure.

    The RGB uint8 ``image`` is resized so its shorter side is ``scale`` px
    (:func:`sppnet_lite.features.resize_shorter_side`) and run through ``backbone`` once;
    ``boxes`` are ``(P, 4)`` x1y1x2y2 pixels of ``image``. Top: the resized image with the
    window (white) and the conv5 cells ``rule`` projects it to (each cell drawn as the
    ``stride``-px square around its centre), then the conv5 map (mean over channels) with
    those cells outlined. Bottom: the window's cells with the bins of every switched-on level
    (:func:`projected_window`). The title carries ``k · M``. ``cache`` (a dict, for this one
    image) keeps each scale's conv5 map. Taught in chapter 06.
    """
    import numpy as np
    import torch
    from matplotlib import patches
    from matplotlib.figure import Figure

    from .backbone import preprocess
    from .features import resize_shorter_side
    from .viz import PALETTE, draw_bins, show_image

    levels = _switched_levels(level_1, level_2, level_3, level_4, level_5, level_6)
    scale = int(scale)
    cache = {} if cache is None else cache
    if scale not in cache:
        resized, fx, fy = resize_shorter_side(image, scale)
        with torch.no_grad():
            fmap = backbone(preprocess(resized, next(backbone.parameters()).device))[0]
        cache[scale] = (resized, fx, fy, fmap.float().cpu().numpy())
    resized, fx, fy, fmap = cache[scale]
    channels, map_height, map_width = fmap.shape
    stride = backbone.stride
    box = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[int(proposal)]
    window = projected_window(box, fx, fy, stride, (map_height, map_width), rule, levels)
    x1, y1, x2, y2 = window["cells"].tolist()

    fig = Figure(figsize=(max(2.2 * len(levels), 10.0), 6.6), layout="constrained")
    upper, lower = fig.subfigures(2, 1, height_ratios=(3, 2))
    image_ax, map_ax = upper.subplots(1, 2)
    show_image(image_ax, resized, f"shorter side {scale} px: {resized.shape[1]}×"
                                  f"{resized.shape[0]}, window {int(proposal)}")
    colour = PALETTE[3]
    image_ax.add_patch(patches.Rectangle((stride * (x1 - 0.5), stride * (y1 - 0.5)),
                                         stride * (x2 - x1 + 1), stride * (y2 - y1 + 1),
                                         fill=False, edgecolor=colour, linewidth=1.5))
    rows, cols = np.mgrid[y1:y2 + 1, x1:x2 + 1]
    image_ax.scatter(stride * cols.ravel(), stride * rows.ravel(), s=6, color=colour)
    wx1, wy1, wx2, wy2 = window["box"].tolist()
    image_ax.add_patch(patches.Rectangle((wx1, wy1), wx2 - wx1, wy2 - wy1, fill=False,
                                         edgecolor="white", linewidth=2))
    image_ax.set_xlim(-0.5, resized.shape[1] - 0.5)
    image_ax.set_ylim(resized.shape[0] - 0.5, -0.5)
    mean = fmap.mean(axis=0)
    map_ax.imshow(mean, cmap="magma", extent=(0, map_width, map_height, 0),
                  interpolation="nearest")
    map_ax.add_patch(patches.Rectangle((x1, y1), x2 - x1 + 1, y2 - y1 + 1, fill=False,
                                       edgecolor=colour, linewidth=2))
    map_ax.set_axis_off()
    map_ax.set_title(f"conv5 {channels}×{map_height}×{map_width} (mean of the channels): "
                     f"cells x {x1}–{x2}, y {y1}–{y2}", fontsize=9)

    zoom_axes = lower.subplots(1, max(len(levels), 1), squeeze=False)[0]
    if not levels:
        zoom_axes[0].text(0.5, 0.5, "choose at least one level", ha="center", va="center")
        zoom_axes[0].set_axis_off()
        fig.suptitle(f"{rule} rule: {x2 - x1 + 1}×{y2 - y1 + 1} cells", fontsize=10)
        return fig
    region = mean[y1:y2 + 1, x1:x2 + 1]
    for ax, n, (bin_rows, bin_cols) in zip(zoom_axes, levels, window["bins"]):
        draw_bins(ax, y2 - y1 + 1, x2 - x1 + 1, [(a - y1, b - y1) for a, b in bin_rows],
                  [(a - x1, b - x1) for a, b in bin_cols], title=f"{n}×{n} bins", values=region,
                  cmap="magma")
    numbers = pyramid_numbers(levels, channels)
    fig.suptitle(f"{rule} rule: the window covers {x2 - x1 + 1}×{y2 - y1 + 1} conv5 cells; "
                 f"levels {levels}: k·M = {channels} × {numbers['bins']} = {numbers['length']} "
                 "numbers, whatever the window's size", fontsize=10)
    return fig


def _switched_levels(*switches: bool) -> tuple[int, ...]:
    """The pyramid levels whose switch (level 1, 2, ...) is on, finest first."""
    return tuple(n for n in range(len(switches), 0, -1) if switches[n - 1])


def _draw_segment(ax, maxima, start: int, colours, cmap: str, vmin: float, vmax: float) -> None:
    """A strip of the ``n²`` pooled numbers at ``start`` in the vector, framed in the bins'
    colours, coloured by ``cmap`` from ``vmin`` to ``vmax``."""
    from matplotlib import patches

    count = len(maxima)
    ax.imshow(maxima[None, :], cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
              extent=(0, count, 1, 0), interpolation="nearest")
    for b, colour in enumerate(colours):
        ax.add_patch(patches.Rectangle((b + 0.06, 0.06), 0.88, 0.88, fill=False,
                                       edgecolor=colour, linewidth=1.2))
    ax.set_yticks([])
    ax.set_xticks([0.5, count - 0.5], [str(start), str(start + count - 1)], fontsize=7)
    ax.set_title(f"vector[{start}:{start + count}]", fontsize=8)
