"""Small matplotlib helpers shared by every chapter: images, boxes, labels.

Boxes are float ``(K, 4)`` arrays ``[x1, y1, x2, y2]`` in image pixels
(the book's convention, chapter 01 onwards).
"""

from __future__ import annotations

from typing import Sequence

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
               linewidth: float = 1.5, linestyle: str = "-") -> None:
    """Draw ``(K, 4)`` x1y1x2y2 pixel boxes on ``ax``, optionally captioned.

    ``labels`` index ``class_names`` (and pick the colour unless ``color`` is
    given); ``scores`` are appended to the caption.
    """
    import matplotlib.patches as patches

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
        if caption:
            ax.text(x1, y1, " ".join(caption), fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=edge, alpha=0.8, pad=1, edgecolor="none"))
