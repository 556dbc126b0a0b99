"""Spatial pyramid pooling in PyTorch: batched, differentiable, on any device.

Three public pieces, all taught in chapter 03 (the bin rules in chapter 02):

* :func:`spatial_pyramid_pool` / :class:`SpatialPyramidPooling` pool a whole
  ``(N, C, H, W)`` batch into ``(N, C·Σn²)`` — the layer that replaces the last
  pooling layer of a CNN so that its FC layers accept any input size.
* :func:`roi_spp` pools many regions of interest of one conv pass — SPP-net's
  detection step, ``R`` windows → ``(R, C·Σn²)``; each level is exactly
  ``torchvision.ops.roi_pool``.
* :func:`project_boxes` maps image-pixel boxes onto conv-map cells.

Output order everywhere (same as :func:`sppnet_lite.spp_numpy.spp`): levels in the
order given, each level's ``(C, n, n)`` block flattened channel-major
(``c·n² + i·n + j``), blocks concatenated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .spp_numpy import BIN_RULES, POOLS, check_levels, pyramid_bins

PROJECTION_RULES = ("paper", "round")


def spatial_pyramid_pool(x: torch.Tensor, levels: Sequence[int] = (4, 2, 1),
                         mode: str = "adaptive", pool: str = "max") -> torch.Tensor:
    """Pool ``x`` ``(N, C, H, W)`` into ``(N, C·Σn²)``, same dtype and device as ``x``.

    ``mode="adaptive"`` uses ``adaptive_{max,avg}_pool2d`` (bin ``i = [⌊i·a/n⌋,
    ⌈(i+1)·a/n⌉)``, every cell covered); ``mode="paper"`` one ``{max,avg}_pool2d`` per
    level with window ``⌈a/n⌉`` and stride ``⌊a/n⌋``, keeping the first ``n`` windows
    (needs ``H, W ≥ n``). One pooling call per level, no Python loop over bins; equal
    to :func:`sppnet_lite.spp_numpy.spp` applied to every map. Taught in chapter 03.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    levels = check_levels(levels)
    if mode not in BIN_RULES:
        raise ValueError(f"mode must be one of {BIN_RULES}, got {mode!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    height, width = x.shape[-2:]
    if x.device.type == "cpu":  # CPU pooling kernels vectorise over channels in this layout
        x = x.contiguous(memory_format=torch.channels_last)
    blocks = []
    for n in levels:
        if mode == "adaptive":
            pooled = (F.adaptive_max_pool2d if pool == "max" else F.adaptive_avg_pool2d)(x, n)
        else:
            for side in (height, width):
                pyramid_bins(side, n, "paper")  # raises ValueError when side < n
            window = (-(-height // n), -(-width // n))
            stride = (height // n, width // n)
            # a >= n guarantees at least n windows fit; the paper keeps the first n.
            pooled = (F.max_pool2d if pool == "max" else F.avg_pool2d)(x, window, stride)
            pooled = pooled[:, :, :n, :n]
        blocks.append(pooled.flatten(1))
    return torch.cat(blocks, dim=1)


class SpatialPyramidPooling(nn.Module):
    """:func:`spatial_pyramid_pool` as a layer: ``(N, C, H, W)`` → ``(N, C·Σn²)``.

    ``output_dim(channels)`` gives the length the next ``nn.Linear`` must accept.
    Taught in chapter 03.
    """

    def __init__(self, levels: Sequence[int] = (4, 2, 1), mode: str = "adaptive",
                 pool: str = "max"):
        super().__init__()
        self.levels = check_levels(levels)
        if mode not in BIN_RULES:
            raise ValueError(f"mode must be one of {BIN_RULES}, got {mode!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.mode, self.pool = mode, pool

    def output_dim(self, channels: int) -> int:
        return int(channels) * sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_pyramid_pool(x, self.levels, self.mode, self.pool)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, mode={self.mode!r}, pool={self.pool!r}"


def roi_spp(features: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
            levels: Sequence[int] = (6, 3, 2, 1)) -> torch.Tensor:
    """Pyramid-pool every region of interest: ``(N, C, H, W)`` × ``(R, 5)`` → ``(R, C·Σn²)``.

    ``rois`` rows are ``[batch_index, x1, y1, x2, y2]`` in input-image pixels;
    ``spatial_scale`` maps pixels to cells (``1/16`` for a stride-16 trunk; use ``1.0``
    with the inclusive cells of :func:`project_boxes`). Level ``n``'s block equals
    ``torchvision.ops.roi_pool(features, rois, (n, n), spatial_scale)`` flattened
    (bins outside the map are 0, as there), for finite features.

    Speed: on the CPU ``roi_pool`` visits every cell of a window once per level. When
    a level ``m`` divides the finest level ``n`` each of its bins is exactly the union
    of ``(n/m)²`` finest bins, so we call ``roi_pool`` once at ``n × n`` and max-reduce
    blocks of it; other levels get their own ``roi_pool`` call. On a GPU every level is
    one ``roi_pool`` call, and batch indices are not checked there (``roi_pool``'s
    contract: in ``[0, N)``). Differentiable.
    Taught in chapter 03.
    """
    from torchvision.ops import roi_pool

    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"features must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    rois = torch.as_tensor(rois)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be an (R, 5) tensor of [batch_index, x1, y1, x2, y2], "
                         f"got shape {tuple(rois.shape)}")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be > 0, got {spatial_scale!r}")
    levels = check_levels(levels)
    spatial_scale = float(spatial_scale)
    rois = rois.to(device=features.device, dtype=features.dtype)
    if features.device.type != "cpu":
        # A GPU runs all bins of a roi_pool call in parallel: there the block maxima below
        # cost more than the calls they save, and checking the batch indices would cost a
        # host sync about as long as the pooling itself (both measured on an H200).
        return torch.cat([roi_pool(features, rois, (n, n), spatial_scale).flatten(1)
                          for n in levels], dim=1)
    finest = max(levels)
    plan = []  # (m, k): level m is max-reduced from the already pooled level k
    if len(rois):
        index = rois[:, 0]
        if not ((index >= 0) & (index < len(features)) & (index == index.round())).all():
            raise ValueError(f"rois[:, 0] must be integer batch indices in [0, {len(features)}), "
                             f"got values in [{index.min().item()}, {index.max().item()}]")
        if features.dtype in (torch.float32, torch.float64):
            # Largest ROI side roi_pool can see: |round(x2·s) − round(x1·s)| + 1.
            largest = rois[:, 1:].abs().max().item()
            extent = _next_power_of_two(int(np.ceil(largest * spatial_scale)) * 2 + 2)
            done = [finest]
            for m in sorted(set(levels) - {finest}, reverse=True):
                sources = [k for k in done
                           if k % m == 0 and _nests(k, m, extent, str(features.dtype))]
                if sources:
                    plan.append((m, min(sources)))
                    done.append(m)

    pooled: dict[int, torch.Tensor] = {}
    if plan:
        fine, argmax = torch.ops.torchvision.roi_pool(features, rois, spatial_scale, finest, finest)
        # roi_pool writes 0 into bins outside the map. With negative features such a bin
        # must not take part in the max of a coarser bin that still has cells inside.
        # Post-ReLU features (as in SPP-net) never need care — a max over values >= 0 is
        # >= 0 — otherwise the ROIs with an empty bin are reduced again with those bins
        # at -inf (and coarse bins that stay empty go back to 0).
        pooled = _reduce_levels(fine, finest, plan)
        empty = argmax[:, :1] < 0
        rows = empty.flatten(1).any(1).nonzero().squeeze(1) if features.min() < 0 else []
        if len(rows):
            fixed = _reduce_levels(fine[rows].masked_fill(empty[rows], float("-inf")),
                                   finest, plan)
            for m, _ in plan:
                value = fixed[m].masked_fill(fixed[m] == float("-inf"), 0.0)
                pooled[m] = pooled[m].index_copy(0, rows, value)
    for n in levels:
        if n not in pooled:
            pooled[n] = roi_pool(features, rois, (n, n), spatial_scale)
    return torch.cat([pooled[n].flatten(1) for n in levels], dim=1)


def project_boxes(boxes, stride: float, rule: str = "paper",
                  feature_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Map image-pixel boxes ``(K, 4)`` x1y1x2y2 to INCLUSIVE conv-map cells ``(K, 4)``.

    Returns a float tensor with integer values ``[x1', y1', x2', y2']`` (0-based cell
    indices, both ends included), so ``roi_spp(features, cat([batch_index, cells], 1),
    spatial_scale=1.0)`` pools exactly those cells.

    ``rule="paper"`` — the SPP-net appendix rule. The paper places the receptive-field
    centre of cell ``x'`` at pixel ``S·x'`` (``S`` = total stride, "same" padding in
    every layer), which holds in 0-based coordinates: cell 0 is centred on pixel 0.
    In that frame its formulas need no index shift:

        left/top     x' = ⌊x1/S⌋ + 1   (first cell whose centre lies right of x1)
        right/bottom x' = ⌈x2/S⌉ − 1   (last cell whose centre lies left of x2)

    i.e. the cells whose centres lie strictly inside the box (1-based code adds 1 to
    both). A box narrower than about two strides gives right < left; like the authors'
    ``spm_pool`` we then collapse both to the middle cell ``⌊(left + right)/2⌋``. (Their
    released code itself rounds to the nearest centre instead, ``⌊x/S + ½⌋`` and
    ``⌈x/S − ½⌉`` up to configurable offsets, which is close to ``rule="round"``.)

    ``rule="round"`` — ``roi_pool``'s rule with ``spatial_scale = 1/S``: ``x' = round(x/S)``
    (halves away from zero, as C's ``round``), right/bottom at least left/top.

    ``feature_size=(H', W')`` clamps the cells into the map. Taught in chapter 06
    (defined with the pooling code of chapter 03).
    """
    if rule not in PROJECTION_RULES:
        raise ValueError(f"rule must be one of {PROJECTION_RULES}, got {rule!r}")
    if not stride > 0:
        raise ValueError(f"stride must be > 0, got {stride!r}")
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a (K, 4) array of x1y1x2y2 pixels, got shape "
                         f"{tuple(boxes.shape)}")
    scaled = boxes.to(torch.float64) / float(stride)
    if rule == "paper":
        lo = torch.floor(scaled[:, :2]) + 1
        hi = torch.ceil(scaled[:, 2:]) - 1
        middle = torch.floor((lo + hi) / 2)
        bad = hi < lo
        lo, hi = torch.where(bad, middle, lo), torch.where(bad, middle, hi)
    else:
        rounded = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
        lo, hi = rounded[:, :2], torch.maximum(rounded[:, 2:], rounded[:, :2])
    cells = torch.cat([lo, hi], dim=1)
    if feature_size is not None:
        height, width = (int(v) for v in feature_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"feature_size must be (H', W') with positive sides, "
                             f"got {feature_size!r}")
        upper = torch.tensor([width - 1, height - 1] * 2, dtype=cells.dtype, device=cells.device)
        cells = torch.minimum(torch.clamp(cells, min=0), upper)
    dtype = boxes.dtype if boxes.dtype.is_floating_point else torch.float32
    return cells.to(dtype)


@functools.cache
def _nests(finest: int, m: int, max_extent: int, dtype: str) -> bool:
    """True when roi_pool's level-``m`` bins are unions of its ``finest`` bins for every
    ROI side 1..max_extent, in roi_pool's own floating-point arithmetic.

    Exact arithmetic always nests (``m | finest``); rounding of ``side/finest`` can push a
    boundary by one cell (e.g. 7 → 1 at side 57 in float32), so we check every side."""
    np_dtype = np.float32 if dtype == "torch.float32" else np.float64
    side = np.arange(1, max_extent + 1).astype(np_dtype)
    fine_bin, coarse_bin = side / np_dtype(finest), side / np_dtype(m)
    d = finest // m
    for p in range(m + 1):  # boundary p of level m is boundary p·d of the finest level
        fine_edge = np_dtype(p * d) * fine_bin
        coarse_edge = np_dtype(p) * coarse_bin
        if p < m and (np.floor(fine_edge) != np.floor(coarse_edge)).any():
            return False
        if p > 0 and (np.ceil(fine_edge) != np.ceil(coarse_edge)).any():
            return False
    return True


def _reduce_levels(fine: torch.Tensor, finest: int, plan) -> dict[int, torch.Tensor]:
    """Max-reduce ``(R, C, finest, finest)`` bins level by level as ``plan`` says."""
    pooled = {finest: fine}
    for m, k in plan:
        source, d = pooled[k], k // m
        if m == 1:
            pooled[m] = source.amax(dim=(2, 3), keepdim=True)
        else:  # rows then columns: strided element-wise maxima beat amax over small dims
            rows = functools.reduce(torch.maximum, [source[:, :, i::d, :] for i in range(d)])
            pooled[m] = functools.reduce(torch.maximum, [rows[..., j::d] for j in range(d)])
    return pooled


def _next_power_of_two(value: int) -> int:
    return 1 << max(int(value) - 1, 1023).bit_length()
