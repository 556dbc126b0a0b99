"""The region proposal network (Faster R-CNN, Ren et al. 2015): proposals from conv5 itself.

Selective search costs seconds per image on the CPU and sits outside the network (chapter 05).
The RPN slides a small network over the conv5 map SPP-net already computes and, at every
cell, scores ``k`` reference boxes, the *anchors*, as object or not and regresses each onto
the object it covers: proposals for the price of one 3×3 conv and two 1×1 convs.

Naming, as in :mod:`sppnet_lite.detector`:

* ``k`` anchors per conv5 cell (``len(sizes)·len(ratios)``), ``A = H'·W'·k`` anchors of a
  ``(1, C, H', W')`` conv5 map, ordered row-major over cells ``(i, j)``, then anchor
  ``a``: anchor ``(i·W' + j)·k + a`` is centred on cell ``(i, j)``;
* ``objectness`` ``(A,)`` logits, ``deltas`` ``(A, 4)`` :func:`sppnet_lite.boxes.encode`
  offsets (not normalised, as py-faster-rcnn's RPN), ``labels`` ``(A,)`` int64: 1 object,
  0 background, -1 ignored;
* frames: anchors, labels and :func:`propose` live in the *input frame*, the image resized
  to shorter side ``scale`` (``input_size = (H, W)`` of that image), where conv5 cell
  ``(i, j)`` is centred on pixel ``(x = S·j, y = S·i)`` (chapter 06's projection, stride
  ``S = 16``). :meth:`RegionProposalNetwork.proposals` returns *original-image* pixels.

Boxes are float32 ``(K, 4)`` x1y1x2y2 (continuous: width = x2 − x1). Taught in chapter 12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import nms, remove_small_boxes

from .boxes import as_boxes, box_iou, clip_boxes, decode, encode
from .fast_rcnn import smooth_l1
from .features import resized_size
from .proposals import proposal_recall

ANCHOR_SIZES = (16, 32, 64, 128, 256)
"""Anchor sizes, √area in input-frame px. Chapter 12 chooses them by :func:`anchor_coverage`
on the validation split, as the fewest that give 90 % of the objects an anchor at IoU ≥ 0.5
(at 448 px: 91 %, against 89 % without the 16-px size and 37 % for the paper's 128, 256, 512,
which suit 600-px VOC images)."""

ANCHOR_RATIOS = (0.5, 1.0, 2.0)
"""Anchor aspect ratios h/w: the paper's three."""


# ----------------------------------------------------------------------------------------
# Anchors
# ----------------------------------------------------------------------------------------

def cell_anchors(sizes: Sequence[float] = ANCHOR_SIZES,
                 ratios: Sequence[float] = ANCHOR_RATIOS) -> np.ndarray:
    """The ``k = len(sizes)·len(ratios)`` anchors of one cell, centred on (0, 0): float32
    ``(k, 4)``, sizes-major (anchor ``s·len(ratios) + r``). Anchor ``(s, r)`` has area
    ``sizes[s]²`` px² and ``h/w = ratios[r]``: ``w = s/√r``, ``h = s·√r``. Taught in chapter 12."""
    if not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
        raise ValueError(f"sizes and ratios must be non-empty and positive, got {sizes!r}, {ratios!r}")
    s = np.repeat(np.asarray(sizes, np.float64), len(ratios))
    r = np.tile(np.asarray(ratios, np.float64), len(sizes))
    w, h = s / np.sqrt(r), s * np.sqrt(r)
    return np.stack([-w / 2, -h / 2, w / 2, h / 2], axis=1).astype(np.float32)


def grid_anchors(height: int, width: int, stride: int = 16, cell=None) -> np.ndarray:
    """Anchors at every cell of a ``height × width`` conv5 map: float32 ``(height·width·k, 4)``
    input-frame px, anchor ``(i·width + j)·k + a`` being ``cell[a]`` moved to pixel
    ``(S·j, S·i)`` (``S = stride``): the order of :class:`RPNHead`'s outputs. ``cell``
    defaults to :func:`cell_anchors`. Taught in chapter 12."""
    cell = cell_anchors() if cell is None else as_boxes(cell, "cell")
    ys, xs = np.meshgrid(np.arange(height) * stride, np.arange(width) * stride, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4).astype(np.float32)
    return (shifts + cell[None]).reshape(-1, 4)


def feature_size(input_size: tuple[int, int], stride: int = 16) -> tuple[int, int]:
    """conv5 ``(H', W') = (⌈H/S⌉, ⌈W/S⌉)`` of an ``input_size = (H, W)`` input.

    Exact for ZFLite (and ResNet-18 to ``layer3``): each of its four stride-2 layers has an
    odd kernel padded ``⌊k/2⌋`` and so maps ``n`` to ``⌈n/2⌉``, and nested halvings round up
    to ``⌈n/16⌉``. torchvision's VGG-16 pools without padding: ``⌊n/16⌋``. Taught in chapter 12."""
    return math.ceil(input_size[0] / stride), math.ceil(input_size[1] / stride)


def anchor_coverage(gt_boxes_list: Sequence[np.ndarray], image_sizes: Sequence[tuple[int, int]],
                    scale: int, sizes: Sequence[float] = ANCHOR_SIZES,
                    ratios: Sequence[float] = ANCHOR_RATIOS, stride: int = 16) -> np.ndarray:
    """How well an anchor set can cover the objects: float32 ``(G,)``, for each ground-truth
    box (original px, image by image in order) its best IoU with any anchor of its image.

    ``image_sizes`` are original ``(H, W)``. Each image is taken to shorter side ``scale``
    (the size :func:`sppnet_lite.features.resize_shorter_side` gives), anchors laid on its
    :func:`feature_size` grid, and boxes compared in that input frame. Uses
    :func:`sppnet_lite.proposals.proposal_recall` (anchors as proposals), so raises
    ``ValueError`` without any box. Taught in chapter 12."""
    cell = cell_anchors(sizes, ratios)
    anchors, gts = [], []
    for gt, image_size in zip(gt_boxes_list, image_sizes):
        input_size = resized_size(image_size, scale)
        fy, fx = input_size[0] / image_size[0], input_size[1] / image_size[1]
        anchors.append(grid_anchors(*feature_size(input_size, stride), stride, cell))
        gts.append(as_boxes(gt, "gt_boxes") * np.array([fx, fy, fx, fy], np.float32))
    return proposal_recall(anchors, gts, counts=(1,))["best_iou"].astype(np.float32)


# ----------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------

class RPNHead(nn.Module):
    """The RPN's layers: a 3×3 conv (the sliding window, ``mid_channels`` wide) + ReLU, then
    two sibling 1×1 convs, ``objectness`` (k channels) and ``deltas`` (4k, channel ``4a + c``
    = coordinate ``c`` of anchor ``a``). Weights ~ N(0, 0.01²), biases 0, as in the paper.

    ``forward(features (1, C, H', W'))`` → ``(objectness (A,), deltas (A, 4))`` in
    :func:`grid_anchors` order. Taught in chapter 12."""

    def __init__(self, in_channels: int, num_anchors: int, mid_channels: int = 128):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.objectness = nn.Conv2d(mid_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 4 or features.shape[0] != 1:
            raise ValueError(f"features must be one image's conv map (1, C, H, W), got "
                             f"{tuple(features.shape)}")
        hidden = torch.relu(self.conv(features))
        # channels last: (1, H, W, k) and (1, H, W, 4k) flatten to (i, j, a) order
        objectness = self.objectness(hidden).permute(0, 2, 3, 1).reshape(-1)
        deltas = self.deltas(hidden).permute(0, 2, 3, 1).reshape(-1, 4)
        return objectness, deltas


class RegionProposalNetwork(nn.Module):
    """An :class:`RPNHead` with its anchors (``sizes``, ``ratios``, ``stride``).

    ``forward(features)`` is the head's; :meth:`anchors` the matching grid;
    :meth:`proposals` one image's boxes in original pixels. Taught in chapter 12."""

    def __init__(self, in_channels: int, sizes: Sequence[float] = ANCHOR_SIZES,
                 ratios: Sequence[float] = ANCHOR_RATIOS, stride: int = 16, mid_channels: int = 128):
        super().__init__()
        self.sizes, self.ratios, self.stride = tuple(sizes), tuple(ratios), int(stride)
        self.cell = cell_anchors(self.sizes, self.ratios)
        self.head = RPNHead(in_channels, len(self.cell), mid_channels)
        self._grids: dict[tuple[int, int], np.ndarray] = {}

    @property
    def num_anchors(self) -> int:
        """``k``, the anchors per conv5 cell."""
        return len(self.cell)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)

    def anchors(self, height: int, width: int) -> np.ndarray:
        """:func:`grid_anchors` ``(A, 4)`` of a ``height × width`` conv5 map (kept per size)."""
        key = (int(height), int(width))
        if key not in self._grids:
            self._grids[key] = grid_anchors(*key, self.stride, self.cell)
        return self._grids[key]

    def proposals(self, features: torch.Tensor, image_size: tuple[int, int], fx: float, fy: float,
                  pre_nms_top_n: int = 2000, post_nms_top_n: int = 300, nms_iou: float = 0.7,
                  min_size: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
        """Proposals of one image from its conv5 ``features`` ``(1, C, H', W')``.

        ``image_size`` is the original ``(H, W)`` and ``fx``, ``fy`` the resize factors
        onto the input (as ``FastRCNN.conv_features`` returns). Runs :func:`propose` in the
        input frame ``(round(H·fy), round(W·fx))`` and returns ``(boxes (N, 4) float32
        original px, clipped to the image; scores (N,) float32)``, best first."""
        height, width = image_size
        with torch.no_grad():
            objectness, deltas = self.head(features)
        boxes, scores = propose(objectness, deltas, self.anchors(*features.shape[-2:]),
                                (round(height * fy), round(width * fx)), pre_nms_top_n,
                                post_nms_top_n, nms_iou, min_size)
        return clip_boxes(boxes / np.array([fx, fy, fx, fy], np.float32), width, height), scores


# ----------------------------------------------------------------------------------------
# Training: labels, sampling, targets, loss
# ----------------------------------------------------------------------------------------

def label_anchors(anchors, gt_boxes, input_size: tuple[int, int], pos_iou: float = 0.7,
                  neg_iou: float = 0.3, allowed_border: float = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The paper's training labels of ``anchors`` ``(A, 4)`` against ``gt_boxes`` ``(G, 4)``,
    both in the input frame of size ``input_size = (H, W)``.

    An anchor crossing the image border by more than ``allowed_border`` px is ignored (-1):
    the paper's training rule (at test time such anchors still propose, clipped). Among
    the others: 0 when its best IoU is below ``neg_iou``, 1 when at least ``pos_iou``, and,
    so that every object gets one, 1 for each anchor whose IoU with a ground truth equals
    that ground truth's largest (ties all positive, as py-faster-rcnn; none when it is 0);
    the rest -1. Returns ``(labels (A,) int64, matched (A,) int64)``, ``matched`` the
    index of each anchor's best ground truth, -1 for anchors across the border and for
    all when there is no ground truth. Taught in chapter 12."""
    anchors, gt = as_boxes(anchors, "anchors"), as_boxes(gt_boxes, "gt_boxes")
    height, width = input_size
    b = allowed_border
    inside = np.flatnonzero((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
                            & (anchors[:, 2] <= width + b) & (anchors[:, 3] <= height + b))
    labels = np.full(len(anchors), -1, np.int64)
    matched = np.full(len(anchors), -1, np.int64)
    if len(gt) == 0 or len(inside) == 0:
        labels[inside] = 0
        return labels, matched
    iou = box_iou(anchors[inside], gt)  # (inside, G)
    best = iou.max(axis=1)
    matched[inside] = iou.argmax(axis=1)
    labels[inside[best < neg_iou]] = 0
    gt_best = iou.max(axis=0)
    labels[inside[((iou == gt_best) & (gt_best > 0)).any(axis=1)]] = 1
    labels[inside[best >= pos_iou]] = 1
    return labels, matched


def sample_anchors(labels, rng: np.random.Generator, batch_size: int = 256,
                   positive_fraction: float = 0.5) -> np.ndarray:
    """One image's RPN mini-batch: a copy of ``labels`` ``(A,)`` (1, 0, -1) with every anchor
    not drawn set to -1. At most ``⌊batch_size·positive_fraction⌋`` positives, then negatives
    up to ``batch_size`` in all (more of them when positives are few), drawn by ``rng``
    without replacement. The paper: 256 anchors, up to 1:1. Taught in chapter 12."""
    labels = np.asarray(labels, np.int64)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    num_pos = min(len(positives), int(batch_size * positive_fraction))
    num_neg = min(len(negatives), batch_size - num_pos)
    sampled = np.full_like(labels, -1)
    sampled[rng.choice(positives, num_pos, replace=False)] = 1
    sampled[rng.choice(negatives, num_neg, replace=False)] = 0
    return sampled


def anchor_targets(anchors, gt_boxes, matched) -> np.ndarray:
    """Regression targets float32 ``(A, 4)``: :func:`~sppnet_lite.boxes.encode` from each
    anchor to its ``matched`` ground truth (from :func:`label_anchors`), zeros where
    ``matched < 0``. Not divided by ``BBOX_STDS`` (py-faster-rcnn's RPN). Taught in chapter 12."""
    anchors, gt = as_boxes(anchors, "anchors"), as_boxes(gt_boxes, "gt_boxes")
    matched = np.asarray(matched, np.int64)
    targets = np.zeros((len(anchors), 4), np.float32)
    rows = np.flatnonzero(matched >= 0)
    targets[rows] = encode(anchors[rows], gt[matched[rows]])
    return targets


def rpn_loss(objectness: torch.Tensor, deltas: torch.Tensor, labels, targets,
             box_weight: float = 1.0, beta: float = 1 / 9
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The RPN's loss ``classification + box_weight · box`` over the sampled anchors.

    ``objectness`` (A,) logits, ``deltas`` (A, 4), ``labels`` (A,) from
    :func:`sample_anchors` (-1 anchors take no part), ``targets`` (A, 4) from
    :func:`anchor_targets`. Classification: binary cross-entropy with logits, averaged over
    the ``N`` sampled anchors. Box: smooth L1 (``beta = 1/9``, py-faster-rcnn's σ = 3) summed
    over the positives' 4 coordinates, divided by ``N`` too (torchvision's choice). The
    paper writes ``1/N_cls Σ L_cls + λ/N_reg Σ p*·L_reg`` with ``N_cls = 256``,
    ``N_reg ≈ 2 400`` anchor locations and ``λ = 10``: ``λ/N_reg ≈ 1/240 ≈ 1/N_cls``, so
    ``box_weight = 1`` keeps its balance. Returns ``(total, classification, box)``, torch
    scalars. Taught in chapter 12."""
    labels = torch.as_tensor(labels, device=objectness.device)
    targets = torch.as_tensor(targets, dtype=deltas.dtype, device=deltas.device)
    sampled = labels >= 0
    count = max(int(sampled.sum()), 1)
    classification = nn.functional.binary_cross_entropy_with_logits(
        objectness[sampled], labels[sampled].to(objectness.dtype), reduction="sum") / count
    positive = labels == 1
    box = smooth_l1(deltas[positive] - targets[positive], beta).sum() / count
    return classification + box_weight * box, classification, box


# ----------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------

def propose(objectness, deltas, anchors, input_size: tuple[int, int], pre_nms_top_n: int = 2000,
            post_nms_top_n: int = 300, nms_iou: float = 0.7, min_size: float = 4.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """One image's proposals in the input frame from the RPN's outputs.

    ``objectness`` (A,) logits and ``deltas`` (A, 4) (torch or NumPy), ``anchors`` (A, 4),
    ``input_size = (H, W)``. Keeps the ``pre_nms_top_n`` best-scored anchors, moves them by
    their deltas (:func:`~sppnet_lite.boxes.decode`), clips them to the image, drops those
    narrower or shorter than ``min_size`` px, applies NMS at ``nms_iou`` and keeps
    ``post_nms_top_n``. Returns ``(boxes (N, 4) float32, scores (N,) float32 = sigmoid of
    objectness)``, best first. Taught in chapter 12."""
    logits, deltas = _numpy(objectness).reshape(-1), _numpy(deltas).reshape(-1, 4)
    anchors = as_boxes(anchors, "anchors")
    if not len(logits) == len(deltas) == len(anchors):
        raise ValueError(f"objectness, deltas and anchors must have one row per anchor, got "
                         f"{len(logits)}, {len(deltas)} and {len(anchors)}")
    top = np.argsort(-logits, kind="stable")[:pre_nms_top_n]
    boxes = torch.from_numpy(clip_boxes(decode(anchors[top], deltas[top]),
                                        input_size[1], input_size[0]))
    scores = torch.sigmoid(torch.from_numpy(logits[top]))
    large = remove_small_boxes(boxes, float(min_size))
    keep = large[nms(boxes[large], scores[large], float(nms_iou))][:post_nms_top_n]
    return boxes[keep].numpy(), scores[keep].numpy()


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------

def _numpy(x) -> np.ndarray:
    """float32 NumPy copy of a tensor (any device, detached) or array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, np.float32)
