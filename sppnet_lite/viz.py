"""Small matplotlib helpers shared by every chapter: images, boxes, labels.

Boxes are float ``(K, 4)`` arrays ``[x1, y1, x2, y2]`` in image pixels
(the book's convention, chapter 01 onwards).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
           "#f032e6", "#bfef45", "#469990", "#9A6324")


def show_image(ax, image: np.ndarray, title: str | None = None) -> None:
    """Draw an RGB uint8 ``(H, W, 3)`` image without axes ticks."""
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def draw_boxes(ax, boxes, labels: Sequence[int] | None = None, scores: Sequence[float] | None = None,
               class_names: Sequence[str] | None = None, color: str | None = None,
               linewidth: float = 1.5, linestyle: str = "-", captions: bool = True) -> None:
    """Draw ``(K, 4)`` x1y1x2y2 pixel boxes on ``ax``, optionally captioned.

    ``labels`` index ``class_names`` (and pick the colour unless ``color`` is
    given); ``scores`` are appended to the caption. ``captions=False`` draws the
    rectangles only (many overlapping boxes, e.g. chapter 10's before-NMS panel).
    """
    from matplotlib import patches

    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        label = None if labels is None else int(labels[k])
        edge = color or PALETTE[(label or 0) % len(PALETTE)]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=edge, linewidth=linewidth, linestyle=linestyle))
        caption = []
        if label is not None:
            caption.append(class_names[label] if class_names is not None else str(label))
        if scores is not None:
            caption.append(f"{float(scores[k]):.2f}")
        if caption and captions:
            ax.text(x1, y1, " ".join(caption), fontsize=7, color="white", va="bottom",
                    bbox={"facecolor": edge, "alpha": 0.8, "pad": 1, "edgecolor": "none"})


def draw_bins(ax, height: int, width: int, row_bins, col_bins, title: str | None = None,
              values: np.ndarray | None = None, cmap: str = "viridis") -> int:
    """Draw a ``height × width`` feature map as a grid of cells with pyramid bins on top.

    ``row_bins``/``col_bins`` are half-open ``(start, end)`` cell ranges, e.g. from
    :func:`sppnet_lite.spp_numpy.pyramid_bins`. Each bin is outlined in its own colour,
    ``PALETTE[(i · len(col_bins) + j) % len(PALETTE)]`` for bin ``(i, j)`` (slightly inset,
    so overlapping bins stay visible); cells that no bin covers are shaded red. The cells
    are plain grey, or show ``values`` (one channel, ``(height, width)``) in ``cmap``
    scaled from its minimum to its maximum. Cell ``(r, c)`` spans ``[c, c + 1] × [r, r + 1]``
    in the axes' coordinates. Returns the number of uncovered cells. Taught in chapter 02.
    """
    from matplotlib import patches
    from matplotlib.colors import ListedColormap

    covered = np.zeros((height, width), dtype=bool)
    for r0, r1 in row_bins:
        for c0, c1 in col_bins:
            covered[r0:r1, c0:c1] = True
    extent = (0, width, height, 0)
    if values is None:
        ax.imshow(~covered, cmap=ListedColormap(["#f2f2f2", "#f8b4b4"]), vmin=0, vmax=1,
                  extent=extent, interpolation="nearest")
    else:
        ax.imshow(np.asarray(values, dtype=float), cmap=cmap, extent=extent,
                  interpolation="nearest")
        ax.imshow(np.ma.masked_where(covered, np.ones_like(covered, dtype=float)),
                  cmap=ListedColormap(["#e74c3c"]), alpha=0.6, extent=extent,
                  interpolation="nearest")
    # cell lines only while a reader can still see them, and not over the values they would hide
    if max(height, width) <= (64 if values is None else 24):
        ax.vlines(np.arange(width + 1), 0, height, color="#c8c8c8", linewidth=0.4)
        ax.hlines(np.arange(height + 1), 0, width, color="#c8c8c8", linewidth=0.4)
    inset = 0.08 * min(1.0, 20 / max(height, width))
    for i, (r0, r1) in enumerate(row_bins):
        for j, (c0, c1) in enumerate(col_bins):
            edge = PALETTE[(i * len(col_bins) + j) % len(PALETTE)]
            ax.add_patch(patches.Rectangle((c0 + inset, r0 + inset), c1 - c0 - 2 * inset,
                                           r1 - r0 - 2 * inset, fill=False, edgecolor=edge,
                                           linewidth=1.5))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return int((~covered).sum())


def plot_dataset_statistics(stats: dict, class_names: Sequence[str], samples: Sequence = ()):
    """Object size and aspect histograms, objects per image, class counts, sample images.

    ``stats`` is :func:`sppnet_lite.voc.dataset_statistics`'s dict; ``samples`` are
    :class:`sppnet_lite.voc.Sample` tuples (boxes drawn, difficult ones dashed).
    Returns the figure. Taught in chapter 04.
    """
    import matplotlib.pyplot as plt

    n_rows = 2 if len(samples) else 1
    fig = plt.figure(figsize=(13, 3.2 * n_rows))
    axes = [fig.add_subplot(n_rows, 4, k + 1) for k in range(4)]
    side_bins = np.geomspace(8, 256, 16)
    axes[0].hist(stats["side"], bins=side_bins, color=PALETTE[2])
    axes[0].set_xscale("log")
    axes[0].set_xlabel("object size √(w·h) [px]")
    axes[0].set_ylabel("objects")
    axes[1].hist(stats["aspect"], bins=np.geomspace(0.25, 4, 17), color=PALETTE[3])
    axes[1].set_xscale("log")
    axes[1].set_xlabel("aspect ratio w / h")
    counts = np.bincount(stats["objects_per_image"])
    axes[2].bar(np.arange(len(counts)), counts, color=PALETTE[1])
    axes[2].set_xlabel("objects per image")
    per_class = np.bincount(stats["label"], minlength=len(class_names))
    hard = np.bincount(stats["label"][stats["difficult"]], minlength=len(class_names))
    axes[3].bar(class_names, per_class, color=PALETTE[4], label="all")
    axes[3].bar(class_names, hard, color=PALETTE[0], label="difficult")
    axes[3].tick_params(axis="x", rotation=45, labelsize=8)
    axes[3].legend(fontsize=8)
    for k, sample in enumerate(list(samples)[:4]):
        ax = fig.add_subplot(n_rows, 4, 5 + k)
        show_image(ax, sample.image, f"{sample.image_id} {sample.image.shape[1]}×{sample.image.shape[0]}")
        easy = ~sample.difficult
        draw_boxes(ax, sample.boxes[easy], sample.labels[easy], class_names=class_names)
        draw_boxes(ax, sample.boxes[~easy], sample.labels[~easy], class_names=class_names,
                   linestyle="--")
    fig.tight_layout()
    return fig


def plot_accuracy_by_bin(ax, results: dict, key: str = "by_scale", xlabel: str = "") -> None:
    """One line per method of ``results["methods"][m][key]`` (chapter 04's comparison)."""
    for k, (name, res) in enumerate(results["methods"].items()):
        curve = res[key]
        ax.plot(curve["centers"], curve["accuracy"], marker="o", color=PALETTE[k % len(PALETTE)],
                label=f"{name} ({res['accuracy']:.1%})")
    ax.set_xlabel(xlabel or key)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_stage_times(ax, rows: dict[str, dict[str, float]], stages: Sequence[str] | None = None,
                     xlabel: str = "seconds per image",
                     colors: Sequence[str] | None = None) -> dict[str, float]:
    """Stacked horizontal bars of where each method's time goes, one bar per row.

    ``rows`` maps a method's name to its seconds per image in each stage (e.g. a
    detector's ``last_timing``, or :func:`sppnet_lite.evaluate.evaluate_detector`'s
    ``timing``); ``stages`` picks and orders the stages drawn (default: the first
    row's keys), each in its own colour (``colors``, default :data:`PALETTE`), with
    a legend. Keys of a row not in ``stages`` are left out. The first row is drawn at
    the top, and each bar's total (the sum of its drawn stages) is written at its end.
    Returns ``{name: total seconds}``. Taught in chapter 10 (R-CNN vs SPP-net) and
    used in chapter 12 (four detector generations).
    """
    if not rows:
        raise ValueError("rows is empty; expected at least one {name: {stage: seconds}} entry")
    stages = list(next(iter(rows.values())) if stages is None else stages)
    colors = list(colors or PALETTE)
    for name, row in rows.items():
        missing = [s for s in stages if s not in row]
        if missing:
            raise ValueError(f"rows[{name!r}] has no time for stages {missing}; expected every "
                             f"stage of {stages}")
    names = list(rows)
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for k, stage in enumerate(stages):
        widths = np.array([float(rows[name][stage]) for name in names])
        ax.barh(y, widths, left=left, color=colors[k % len(colors)], label=stage)
        left += widths
    for j, total in enumerate(left):
        ax.text(total, j, f" {total:.3g} s", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first row on top
    ax.set_xlim(0, 1.15 * left.max() if left.max() > 0 else 1)  # room for the totals
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return dict(zip(names, left.tolist()))
