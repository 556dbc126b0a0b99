"""Fast R-CNN: SPP-net's detector trained in one stage, through the pooling layer.

SPP-net leaves three limitations (chapter 07), which Fast R-CNN (Girshick, 2015) lifts:

1. training is multi-stage — fine-tune fc6–fc8, then SVMs, then box regressors, with the
   pooled window vectors written to disk in between. Here one network is trained with one
   :func:`multitask_loss`: a (K + 1)-way softmax plus smooth-L1 box regression;
2. the classifiers are binary SVMs: here the softmax scores the windows (selective search
   still proposes them — removing it is the region proposal network of chapter 12);
3. fine-tuning cannot reach the conv layers. Gradients flow through ROI / pyramid pooling
   (to the cell each bin's maximum came from), so :class:`FastRCNN` trains conv3 and up,
   efficiently because a mini-batch takes 64 windows from each of only 2 images
   (:func:`sample_rois`): one conv pass serves 64 windows.

Shapes as in :mod:`sppnet_lite.detector`: ``R`` windows, ``K`` classes (index ``K`` of
the softmax is background), ``D = C·Σn²``. Box deltas are ``(R, 4K)``: 4 per object class,
in units of :data:`BBOX_STDS` (the targets of :func:`sppnet_lite.boxes.encode` divided by
them, so all four have a spread near 1). Taught in chapter 11.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .backbone import ZFLite, preprocess
from .boxes import as_boxes, decode, encode, match_boxes
from .detector import DetectorConfig, SPPNetDetector, WindowScores
from .features import resize_shorter_side
from .finetune import FG_FRACTION, FCHead, sample_minibatch
from .spp import project_boxes, roi_spp
from .windows import BG_IOU, FG_IOU

FINE_TUNE_FROM = ("none", "conv3", "all")
"""Which conv layers training updates: none (SPP-net), conv3 and above (Fast R-CNN's
choice for VGG-16: conv3_1), or every one."""

CONVS_BELOW_CONV3 = {"zflite": 2, "alexnet": 2, "vgg16": 4, "resnet18": 5}
"""How many of a trunk's first conv layers lie below "conv3": ZFLite and AlexNet have
conv1 and conv2, VGG-16 conv1_1–conv2_2, ResNet-18 its stem and ``layer1`` (the layers
Detectron freezes too)."""

BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
"""Box targets are divided by these (Fast R-CNN's normalisation of ``dx, dy, dw, dh``)."""

IMAGES_PER_BATCH = 2
ROIS_PER_IMAGE = 64
"""Fast R-CNN's hierarchical mini-batch: 2 images × 64 windows (128 in all)."""


# ----------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------

def smooth_l1(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Element-wise smooth L1: ``0.5·x²/β`` where ``|x| < β``, else ``|x| − 0.5·β``.

    Quadratic near zero, linear far away, so an outlier's gradient is at most 1 (an L2
    loss's grows with the error). Taught in chapter 11."""
    a = x.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def multitask_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor, box_weight: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast R-CNN's loss: ``cross-entropy + box_weight · smooth-L1`` (λ = 1 in the paper).

    ``logits`` (R, K + 1), ``deltas`` (R, 4K), ``labels`` (R,) in 0..K (K = background),
    ``targets`` (R, 4) normalised deltas. Only a foreground window's deltas for its own
    class enter the box term; background windows have no box. Both terms are averaged
    over all R windows. Returns ``(total, classification, box)``. Taught in chapter 11.
    """
    num_classes = logits.shape[1] - 1
    classification = nn.functional.cross_entropy(logits, labels)
    fg = (labels < num_classes).nonzero().squeeze(1)
    own = deltas.view(len(deltas), num_classes, 4)[fg, labels[fg]]
    box = smooth_l1(own - targets[fg]).sum() / max(len(labels), 1)
    return classification + box_weight * box, classification, box


# ----------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------

class FastRCNNHead(FCHead):
    """chapter 07's fc6/fc7/fc8 plus ``bbox_pred``: fc7 → class-specific deltas ``(R, 4K)``.

    ``forward(pooled)`` returns ``(logits (R, K + 1), deltas (R, 4K))``. Taught in chapter 11."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__(in_dim, num_classes, hidden, dropout)
        self.bbox_pred = nn.Linear(self.hidden, 4 * self.num_classes)
        nn.init.normal_(self.fc8.weight, std=0.01)  # Fast R-CNN's initialisation
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.fc8.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fc7 = self.dropout(self.fc7_activations(pooled))
        return self.fc8(fc7), self.bbox_pred(fc7)


class FastRCNN(nn.Module):
    """Trunk + ROI pyramid pooling + :class:`FastRCNNHead`, trainable end to end.

    ``fine_tune_from`` (one of :data:`FINE_TUNE_FROM`) sets which conv layers get
    gradients. Batch norm stays in eval mode — a fixed affine map — whatever
    ``train()`` says: with 2 images per mini-batch its statistics would be estimated
    from two pictures, and the running averages pretraining gave it would drift.
    ``forward(images, boxes, scales)``: lists of RGB uint8 ``(H, W, 3)`` images, their
    ``(R_i, 4)`` pixel boxes and shorter-side scales → ``(logits, deltas)`` for all
    windows, image by image. Taught in chapter 11.
    """

    def __init__(self, trunk: nn.Module, head: FastRCNNHead, levels: Sequence[int] = (6, 3, 2, 1),
                 rule: str = "paper", fine_tune_from: str = "conv3"):
        super().__init__()
        if fine_tune_from not in FINE_TUNE_FROM:
            raise ValueError(f"fine_tune_from must be one of {FINE_TUNE_FROM}, got {fine_tune_from!r}")
        self.trunk, self.head = trunk, head
        self.levels, self.rule, self.fine_tune_from = tuple(levels), rule, fine_tune_from
        convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
        frozen = {"none": len(convs), "all": 0}.get(fine_tune_from)
        if frozen is None:
            frozen = CONVS_BELOW_CONV3["zflite" if isinstance(trunk, ZFLite) else trunk.name]
        for p in trunk.parameters():
            p.requires_grad_(False)
        for conv in convs[frozen:]:
            for p in conv.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> FastRCNN:
        super().train(mode)
        for m in self.trunk.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        if self.fine_tune_from == "none":
            self.trunk.eval()
        return self

    def conv_features(self, image: np.ndarray, scale: int) -> tuple[torch.Tensor, float, float]:
        """conv5 ``(1, C, H', W')`` of ``image`` resized to shorter side ``scale``, and the
        resize factors ``(fx, fy)``. Without gradients when no conv layer trains."""
        resized, fx, fy = resize_shorter_side(image, scale)
        x = preprocess(resized).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.fine_tune_from != "none"):
            return self.trunk(x), fx, fy

    def pool(self, features: torch.Tensor, boxes: np.ndarray, fx: float, fy: float) -> torch.Tensor:
        """``(R, D)`` pyramid-pooled vectors of pixel ``boxes`` on one image's conv5 map
        (the projection and bins of chapters 03 and 06); differentiable."""
        scaled = torch.from_numpy(as_boxes(boxes) * np.array([fx, fy, fx, fy], np.float32))
        cells = project_boxes(scaled, self.trunk.stride, self.rule, feature_size=features.shape[-2:])
        rois = torch.cat([torch.zeros(len(cells), 1), cells], 1).to(features.device, features.dtype)
        return roi_spp(features, rois, 1.0, self.levels)

    def forward(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                scales: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = []
        for image, b, scale in zip(images, boxes, scales):
            features, fx, fy = self.conv_features(image, scale)
            pooled.append(self.pool(features, b, fx, fy))
        return self.head(torch.cat(pooled))

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device


# ----------------------------------------------------------------------------------------
# Hierarchical sampling
# ----------------------------------------------------------------------------------------

def jitter_boxes(gt_boxes, copies: int, rng: np.random.Generator, shift: float = 0.1,
                 scale: float = 0.1) -> np.ndarray:
    """``copies`` random variants of each ground-truth box ``(G, 4)`` → ``(G·copies, 4)``:
    centre moved by up to ``shift`` of the box's size, each side scaled by up to
    ``exp(±scale)``. Extra foreground windows where selective search finds few."""
    gt = as_boxes(gt_boxes, "gt_boxes")
    if copies <= 0 or len(gt) == 0:
        return np.zeros((0, 4), np.float32)
    deltas = np.concatenate([rng.uniform(-shift, shift, (len(gt) * copies, 2)),
                             rng.uniform(-scale, scale, (len(gt) * copies, 2))], 1)
    return decode(np.repeat(gt, copies, axis=0), deltas)


def label_rois(proposals, gt_boxes, gt_labels, num_classes: int) -> dict:
    """Every candidate window of one training image, labelled once (sampled each iteration).

    Candidates are the ground truths followed by ``proposals``. Returns ``boxes`` (N, 4),
    ``ious`` (N,) best IoU with a ground truth, ``labels`` (N,) that ground truth's class
    (the sampler turns low-IoU windows into background) and ``targets`` (N, 4): the
    normalised deltas onto it. Taught in chapter 11."""
    gt = as_boxes(gt_boxes, "gt_boxes")
    boxes = np.concatenate([gt, as_boxes(proposals, "proposals")])
    ious, index = match_boxes(boxes, gt)
    labels = np.full(len(boxes), num_classes, np.int64)
    targets = np.zeros((len(boxes), 4), np.float32)
    if len(gt):
        labels = np.asarray(gt_labels, np.int64)[index]
        targets = encode(boxes, gt[index]) / np.array(BBOX_STDS, np.float32)
    return {"boxes": boxes, "ious": ious, "labels": labels, "targets": targets}


def sample_rois(rois: dict, num_classes: int, rng: np.random.Generator,
                rois_per_image: int = ROIS_PER_IMAGE, fg_fraction: float = FG_FRACTION,
                fg_iou: float = FG_IOU, bg_iou: tuple[float, float] = BG_IOU
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's share of a mini-batch from :func:`label_rois`' candidates.

    At most ``fg_fraction`` of ``rois_per_image`` are foreground (IoU ≥ ``fg_iou``,
    labelled with their object's class), the rest background (IoU in ``bg_iou``,
    label ``K``; below ``bg_iou[0]`` when there are none). Returns ``(boxes (n, 4),
    labels (n,), targets (n, 4))``, foreground first. Taught in chapter 11."""
    rows = sample_minibatch(rois["labels"], rois["ious"], rois_per_image, rng, fg_fraction,
                            fg_iou, bg_iou)  # chapter 07's sampler, within one image
    labels = rois["labels"][rows].copy()
    labels[rois["ious"][rows] < fg_iou] = num_classes
    return rois["boxes"][rows], labels, rois["targets"][rows]


def hierarchical_minibatch(rois: Sequence[dict], num_classes: int, rng: np.random.Generator,
                           images_per_batch: int = IMAGES_PER_BATCH,
                           rois_per_image: int = ROIS_PER_IMAGE, fg_fraction: float = FG_FRACTION,
                           fg_iou: float = FG_IOU, bg_iou: tuple[float, float] = BG_IOU) -> list:
    """Fast R-CNN's mini-batch: ``images_per_batch`` different images drawn at random, then
    :func:`sample_rois` from each, so one conv pass per image serves ``rois_per_image``
    windows. ``rois``: :func:`label_rois` of every training image. Returns a list of
    ``(image_index, boxes, labels, targets)``. Taught in chapter 11."""
    images = rng.choice(len(rois), min(images_per_batch, len(rois)), replace=False)
    return [(int(i), *sample_rois(rois[i], num_classes, rng, rois_per_image, fg_fraction,
                                  fg_iou, bg_iou)) for i in images]


def flip_boxes(boxes, width: int) -> np.ndarray:
    """Mirror x1y1x2y2 pixel boxes in an image ``width`` pixels wide (horizontal flip)."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = width - b[:, [2, 0]]
    return b


# ----------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------

def truncated_svd(head: FastRCNNHead, rank_fc6: int | None, rank_fc7: int | None = None
                  ) -> FastRCNNHead:
    """A copy of ``head`` whose fc6 / fc7 are each replaced by two thinner layers.

    A ``(u × v)`` weight matrix ``W ≈ U_t Σ_t V_tᵀ`` (its top ``t`` singular values) becomes
    ``Σ_t V_tᵀ`` (``t × v``, no bias) followed by ``U_t`` (``u × t``, the bias): ``t(u + v)``
    multiply-adds per window instead of ``uv``. ``None`` keeps a layer whole. Fast R-CNN's
    trick for detection time, where the FC layers run once per window. Taught in chapter 11."""
    head = copy.deepcopy(head).eval()
    for name, rank in (("fc6", rank_fc6), ("fc7", rank_fc7)):
        layer = getattr(head, name)
        if rank is None or rank >= min(layer.weight.shape):
            continue
        u, s, vt = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features)
        first.weight.data = (s[:rank, None] * vt[:rank]).contiguous()
        second.weight.data = u[:, :rank].contiguous()
        second.bias.data = layer.bias.detach().clone()
        setattr(head, name, nn.Sequential(first, second))
    return head


class FastRCNNDetector(SPPNetDetector):
    """A trained Fast R-CNN: the same public stages as :class:`~sppnet_lite.detector.SPPNetDetector`
    (``pool`` → ``score`` → ``postprocess``, ``detect``, ``save``/``load``), with its own
    fine-tuned trunk, a :class:`FastRCNNHead`, softmax scores (``config.score``) and the
    network's class-specific box deltas in place of ridge regressors. SVMs trained on its
    fc7 may be attached for comparison. Taught in chapter 11."""

    METHOD = "fast-rcnn"
    HEAD = FastRCNNHead

    def __init__(self, backbone: nn.Module, head: FastRCNNHead, class_names: Sequence[str],
                 svms=None, regressor=None, config: DetectorConfig | None = None, device="cpu"):
        super().__init__(backbone, head, class_names, svms, regressor,
                         config or DetectorConfig(score="softmax"), device)

    @torch.no_grad()
    def score(self, pooled) -> WindowScores:
        """As :meth:`SPPNetDetector.score`, plus ``deltas`` (R, 4K): the network's
        :func:`~sppnet_lite.boxes.encode` offsets (de-normalised); ``fc`` times both."""
        tic = time.perf_counter()
        scores = super().score(pooled)
        deltas = self.head.bbox_pred(torch.from_numpy(scores.fc7)).numpy()
        scores.deltas = deltas * np.tile(np.array(BBOX_STDS, np.float32), self.head.num_classes)
        self.last_timing["fc"] = time.perf_counter() - tic - self.last_timing["svm"]
        return scores

    def can_refine(self, scores: WindowScores) -> bool:
        return scores.deltas is not None

    def refine(self, scores: WindowScores, proposals, rows: np.ndarray, k: int) -> np.ndarray:
        """Class ``k``'s deltas from the network applied to windows ``rows``."""
        return decode(as_boxes(proposals)[rows], scores.deltas[rows, 4 * k:4 * k + 4])
