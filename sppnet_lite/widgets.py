"""Callbacks behind the chapters' ipywidgets, as plain functions that tests call.

A widget cell in a notebook only wires sliders to one of these functions
(``ipywidgets.interact(fn, ...)``); everything that computes or draws lives
here, so pytest exercises it without a browser. Chapters 04, 05, 10 and 12 here; the
pooling widgets of chapters 02 and 06 are in :mod:`sppnet_lite.pooling_widgets`.
"""

from __future__ import annotations

# ----------------------------------------------------------------- chapter 04: one classifier, three feeds
FEEDS = {"full image": "spp", "centre crop": "crop", "warp": "warp"}
"""Chapter 04's three ways to feed an image to a classifier, each named by the
:func:`sppnet_lite.train.transform` method that does it."""


def classify_as_fed(net, image, size: int, feed: str = "full image") -> dict:
    """Feed the RGB uint8 ``image`` to the classifier ``net`` as ``feed`` (a key of
    :data:`FEEDS`) at ``size`` px, and read its answer.

    Returns ``{"fed": uint8 (h, w, 3), the image as the network receives it
    (:func:`sppnet_lite.train.transform`); "probabilities": float32 (K,), the softmax of
    the logits; "label": int, the most probable class; "confidence": its probability}``.
    Only a network that accepts any input size (an SPP head) takes every ``size`` and
    ``feed``. Taught in chapter 04.
    """
    import torch

    from .backbone import preprocess
    from .train import transform

    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {tuple(FEEDS)}, got {feed!r}")
    fed = transform(FEEDS[feed], image, int(size))
    net.eval()
    with torch.no_grad():
        logits = net(preprocess(fed, next(net.parameters()).device))
    probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    label = int(probabilities.argmax())
    return {"fed": fed, "probabilities": probabilities, "label": label,
            "confidence": float(probabilities[label])}


def classifier_explorer(net, dataset, index: int = 0, size: int = 96, feed: str = "full image"):
    """Classify image ``index`` of ``dataset`` (a :class:`sppnet_lite.data.ClassificationSet`:
    ``images``, ``labels``, ``boxes``, ``class_names``) fed as ``feed`` at ``size`` px
    (:func:`classify_as_fed`); return the Figure: the image with its object's box (and, for
    the centre crop, the square the crop keeps, dashed), the image as fed, and the class
    probabilities. The title gives prediction, confidence and the true class.
    Taught in chapter 04.
    """
    from matplotlib.figure import Figure

    from .viz import PALETTE, draw_boxes, show_image

    index = int(index)
    image, truth = dataset.images[index], int(dataset.labels[index])
    names = dataset.class_names
    answer = classify_as_fed(net, image, size, feed)
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=(1.3, 1.3, 1))
    height, width = image.shape[:2]
    show_image(axes[0], image, f"image {index}: {width}×{height} px")
    draw_boxes(axes[0], dataset.boxes[index:index + 1], labels=[truth], class_names=names)
    if FEEDS[feed] == "crop":
        side = min(height, width)
        x0, y0 = (width - side) / 2, (height - side) / 2
        draw_boxes(axes[0], [[x0, y0, x0 + side, y0 + side]], color="white", linestyle="--")
    fed = answer["fed"]
    show_image(axes[1], fed, f"as fed ({feed}): {fed.shape[1]}×{fed.shape[0]} px")
    colours = ["#bdbdbd"] * len(names)
    colours[answer["label"]] = PALETTE[answer["label"] % len(PALETTE)]
    axes[2].barh(range(len(names)), answer["probabilities"], color=colours)
    axes[2].set_yticks(range(len(names)), [f"{n} (true)" if k == truth else n
                                           for k, n in enumerate(names)], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("probability")
    verdict = "right" if answer["label"] == truth else "wrong"
    fig.suptitle(f"{feed} at {int(size)} px: {names[answer['label']]} "
                 f"({answer['confidence']:.0%}), {verdict}: the object is a {names[truth]}",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------- chapter 05: proposal browser
def proposal_numbers(boxes, gt_boxes, top_k: int = 100, min_size: float = 0) -> dict:
    """What the proposal browser shows: the top-``top_k`` proposals (in ranking order)
    whose sides are at least ``min_size`` px, and for each ground-truth box the best of
    them and its IoU. Returns ``{"shown": (k, 4) boxes, "best_index": (G,) into shown
    (-1 when none), "best_iou": (G,)}``. Taught in chapter 05."""
    import numpy as np

    from .boxes import match_boxes

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    keep = (boxes[:, 2:] - boxes[:, :2] >= min_size).all(axis=1)
    shown = boxes[keep][: max(int(top_k), 0)]
    iou, index = match_boxes(gt_boxes, shown)
    return {"shown": shown, "best_index": index, "best_iou": iou}


def proposal_browser(dataset, proposals, index: int = 0, top_k: int = 100, min_size: int = 0,
                     show_gt: bool = True, show_best: bool = True):
    """Draw image ``index`` of ``dataset`` with its top-``top_k`` proposals (thin grey),
    the ground truth (dashed, class colours) and, per object, the best-matching shown
    proposal (solid, captioned with its IoU); return the Figure. ``proposals[index]``
    are that image's ranked boxes. Taught in chapter 05."""
    from matplotlib.figure import Figure

    from .viz import draw_boxes, show_image

    sample = dataset[int(index)]
    numbers = proposal_numbers(proposals[int(index)], sample.boxes, top_k, min_size)
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.subplots()
    show_image(ax, sample.image)
    draw_boxes(ax, numbers["shown"], color="#9e9e9e", linewidth=0.5)
    names = getattr(dataset, "class_names", None)
    if show_gt:
        draw_boxes(ax, sample.boxes, labels=sample.labels, class_names=names, linewidth=1.5,
                   linestyle="--")
    found = numbers["best_index"] >= 0
    if show_best and found.any():
        draw_boxes(ax, numbers["shown"][numbers["best_index"][found]],
                   labels=sample.labels[found], scores=numbers["best_iou"][found],
                   class_names=names, linewidth=2.0)
    recalled = int((numbers["best_iou"] >= 0.5).sum())
    ax.set_title(f"{sample.image_id}: {len(numbers['shown'])} proposals (side ≥ {min_size} px), "
                 f"{recalled}/{len(sample.boxes)} objects at IoU ≥ 0.5", fontsize=9)
    return fig


# ----------------------------------------------------------------- chapter 10: detection explorer
def detection_explorer(detector, dataset, proposals, index: int = 0, score_threshold: float = 0.0,
                       nms_iou: float = 0.3, cache: dict | None = None):
    """Draw the detections of ``detector`` on image ``index`` of ``dataset``; return the Figure.

    Detections (solid, captioned with class and score) are those scoring at least
    ``score_threshold`` after per-class NMS at ``nms_iou``; the ground truth is dashed.
    ``proposals[index]`` are the image's (P, 4) boxes. ``cache`` (a dict) keeps each
    image's window scores so moving a slider only reruns the cheap stages.
    Taught in chapter 10.
    """
    from matplotlib.figure import Figure

    from .viz import draw_boxes, show_image

    index = int(index)
    sample = dataset[index]
    boxes = proposals[index]
    cache = {} if cache is None else cache
    if index not in cache:
        cache[index] = detector.score(detector.pool(sample.image, boxes))
    dets = detector.postprocess(cache[index], boxes, sample.image.shape[:2],
                                score_threshold=float(score_threshold), nms_iou=float(nms_iou))
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.subplots()
    show_image(ax, sample.image)
    names = detector.class_names
    draw_boxes(ax, sample.boxes, labels=sample.labels, class_names=None, linewidth=1.0,
               linestyle="--", color="white")
    draw_boxes(ax, dets.boxes, labels=dets.labels, scores=dets.scores, class_names=names)
    ax.set_title(f"{sample.image_id}: {len(dets)} detections (score ≥ {score_threshold:g}, "
                 f"NMS IoU {nms_iou:g}); ground truth dashed", fontsize=9)
    return fig


# ----------------------------------------------------------------- chapter 12: anchors and RPN proposals
def anchors_at_cell(rpn, feature_size: tuple[int, int], row: int, col: int, fx: float,
                    fy: float):
    """The ``k`` anchors of conv5 cell ``(row, col)`` of a ``feature_size = (H', W')`` map,
    in original-image px (the input frame divided by the resize factors ``fx``, ``fy``):
    float32 ``(k, 4)``, centred on pixel ``(S·col / fx, S·row / fy)``. Taught in chapter 12."""
    import numpy as np

    height, width = feature_size
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"cell ({row}, {col}) lies outside the {height}×{width} map")
    k = rpn.num_anchors
    first = (int(row) * width + int(col)) * k
    return rpn.anchors(height, width)[first:first + k] / np.array([fx, fy, fx, fy], np.float32)


def rpn_explorer(detector, dataset, index: int = 0, row: float = 0.5, col: float = 0.5,
                 top_n: int = 50, nms_iou: float = 0.7, cache: dict | None = None):
    """Draw image ``index`` of ``dataset`` twice: the anchors of one conv5 cell (``row``,
    ``col`` as fractions of the map's height and width), and the RPN's best ``top_n``
    proposals after NMS at ``nms_iou``, with the ground truth dashed; return the Figure.
    ``detector`` is a :class:`~sppnet_lite.faster_rcnn.FasterRCNNDetector`; ``cache``
    keeps each image's conv5 map, so moving a slider reruns only the RPN head and NMS.
    Taught in chapter 12."""
    from matplotlib.figure import Figure

    from .boxes import match_boxes
    from .viz import draw_boxes, show_image

    index = int(index)
    sample = dataset[index]
    cache = {} if cache is None else cache
    if index not in cache:
        cache[index] = detector.extractor.conv_map(sample.image, detector.config.scales[0])
    features, fx, fy = cache[index]
    settings = {**detector.proposal_settings, "post_nms_top_n": int(top_n), "nms_iou": float(nms_iou)}
    boxes, _ = detector.rpn.proposals(features, sample.image.shape[:2], fx, fy, **settings)
    height, width = features.shape[-2:]
    cell = (min(int(row * height), height - 1), min(int(col * width), width - 1))
    anchors = anchors_at_cell(detector.rpn, (height, width), *cell, fx, fy)
    stride = detector.rpn.stride
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax in (left, right):
        show_image(ax, sample.image)
        draw_boxes(ax, sample.boxes, linestyle="--", color="white", linewidth=1.0)
    draw_boxes(left, anchors, color="#ffb300", linewidth=1.0)
    left.plot([stride * cell[1] / fx], [stride * cell[0] / fy], "o", color="#ffb300")
    left.set_xlim(0, sample.image.shape[1])
    left.set_ylim(sample.image.shape[0], 0)
    left.set_title(f"the {len(anchors)} anchors of conv5 cell {cell} ({height}×{width} map)",
                   fontsize=9)
    draw_boxes(right, boxes, color="#00e5ff", linewidth=0.7)
    recalled = int((match_boxes(sample.boxes, boxes)[0] >= 0.5).sum()) if len(boxes) else 0
    right.set_title(f"top {len(boxes)} RPN proposals (NMS IoU {nms_iou:g}): "
                    f"{recalled}/{len(sample.boxes)} objects at IoU ≥ 0.5", fontsize=9)
    return fig
