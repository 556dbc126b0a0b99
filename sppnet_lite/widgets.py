"""Callbacks behind the chapters' ipywidgets, as plain functions that tests call.

A widget cell in a notebook only wires sliders to one of these functions
(``ipywidgets.interact(fn, ...)``); everything that computes or draws lives
here, so pytest exercises it without a browser.
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


def pyramid_toggles(level_1: bool = True, level_2: bool = True, level_3: bool = False,
                    level_4: bool = True, level_5: bool = False, level_6: bool = False,
                    height: int = 13, width: int = 13, channels: int = 256,
                    mode: str = "adaptive"):
    """:func:`pyramid_explorer` with one on/off switch per level 1–6 (checkboxes in
    ``ipywidgets.interact``). Taught in chapter 02."""
    switches = (level_1, level_2, level_3, level_4, level_5, level_6)
    levels = [n for n, on in enumerate(switches, start=1) if on]
    return pyramid_explorer(levels, height, width, channels, mode)


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
