"""Teaching drawings: one idea per picture, drawn on a matplotlib ``Axes``.

Each function draws on the ``ax`` it is given (so a chapter chooses the figure's size and
layout) and computes every number it prints with the package's own functions — the SPP
length with :func:`sppnet_lite.spp_numpy.output_length`, IoU with
:func:`sppnet_lite.boxes.box_iou`, box offsets with :func:`sppnet_lite.boxes.encode` — so a
picture cannot disagree with the code it explains (:mod:`sppnet_lite.boxes` is imported where
it is used: it loads torchvision, which chapter 02 otherwise never needs). Boxes are x1y1x2y2
in image pixels.
Patches that stand for something a test counts carry a ``gid`` (``"spp-bin"``,
``"intersection"``, ``"timing-bar"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .spp_numpy import check_levels, output_length
from .viz import PALETTE


def draw_spp_layer(ax, levels: Sequence[int] = (4, 2, 1), channels: int = 256,
                   map_size: tuple[int, int] = (13, 13)) -> dict:
    """The SPP layer as a diagram: conv5 map → one n×n grid of bins per level → the
    concatenated k·M vector → fc6.

    ``levels`` e.g. ``(4, 2, 1)`` (the paper's Figure 3) or ``(6, 3, 2, 1)`` (its
    detection pyramid), ``channels`` = k, ``map_size`` = ``(H, W)`` of the conv5 map
    drawn on the left (any size gives the same vector length). Each bin is one
    rectangle with ``gid="spp-bin"`` (Σ n² of them); the labels give n²·k per level and
    k·M for the whole vector. Returns ``{"bins": M, "length": k·M}``. Taught in chapter 02.
    """
    from matplotlib import patches

    levels = check_levels(levels)
    height, width = (int(s) for s in map_size)
    bins = sum(n * n for n in levels)
    length = output_length(channels, levels)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 50)
    ax.set_aspect("equal")
    ax.set_axis_off()

    # the conv5 map: k stacked channels, the front one with its H × W cells
    side = 18.0
    map_w, map_h = side * width / max(height, width), side * height / max(height, width)
    x0, y0 = 3.0, 25.0 - map_h / 2
    for k in (2, 1):
        ax.add_patch(patches.Rectangle((x0 + 1.2 * k, y0 + 1.2 * k), map_w, map_h,
                                       facecolor="#dfe6f0", edgecolor="#7f8c9d", linewidth=0.8))
    ax.add_patch(patches.Rectangle((x0, y0), map_w, map_h, facecolor="#eef2f7",
                                   edgecolor="#4a5568", linewidth=1.0))
    if max(height, width) <= 32:
        ax.vlines(x0 + np.arange(1, width) * map_w / width, y0, y0 + map_h, color="#c3ccd8",
                  linewidth=0.4)
        ax.hlines(y0 + np.arange(1, height) * map_h / height, x0, x0 + map_w, color="#c3ccd8",
                  linewidth=0.4)
    ax.text(x0 + map_w / 2, y0 - 2.5, f"conv5 map\n{height} × {width} × {channels}\n(any H × W)",
            ha="center", va="top", fontsize=8)

    # one grid per level, the level's block of the vector, and the concatenated vector
    bar_x, bar_w, bar_y0, bar_y1 = 76.0, 3.5, 5.0, 45.0
    gap = 8.0 if len(levels) <= 3 else 5.0
    cell = min(9.0, (bar_y1 - bar_y0 - gap * (len(levels) - 1)) / len(levels))
    grid_x = 33.0
    tops = bar_y1 - np.arange(len(levels)) * (cell + gap)
    seg_top = bar_y1
    for k, (n, top) in enumerate(zip(levels, tops)):
        colour = PALETTE[k % len(PALETTE)]
        step = cell / n
        for i in range(n):
            for j in range(n):
                rect = patches.Rectangle((grid_x + j * step, top - (i + 1) * step), step, step,
                                         facecolor=colour, alpha=0.35 + 0.5 * ((i + j) % 2),
                                         edgecolor="white", linewidth=0.6)
                rect.set_gid("spp-bin")
                ax.add_patch(rect)
        centre = top - cell / 2
        ax.annotate("", xy=(grid_x - 0.8, centre), xytext=(x0 + map_w + 2.6, 25.0),
                    arrowprops={"arrowstyle": "->", "color": "#4a5568", "linewidth": 0.8})
        seg_h = (bar_y1 - bar_y0) * n * n / bins
        ax.add_patch(patches.Rectangle((bar_x, seg_top - seg_h), bar_w, seg_h, facecolor=colour,
                                       edgecolor="white", linewidth=0.6))
        # the label is the arrow's tail: the level's n²·k numbers go to their block of the vector
        ax.annotate(f"{n}×{n} level: {n * n} bin{'s' if n > 1 else ''}\n"
                    f"{n * n} · {channels} = {_thousands(n * n * channels)} numbers",
                    xy=(bar_x - 0.5, seg_top - seg_h / 2), xytext=(grid_x + cell + 1.5, centre),
                    va="center", fontsize=7.5,
                    arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 0.8,
                                "shrinkB": 0})
        seg_top -= seg_h
    ax.text(bar_x + bar_w / 2, bar_y0 - 1.5,
            f"k · M = {channels} · {bins}\n= {_thousands(length)} numbers\n(fixed length)",
            ha="center", va="top", fontsize=7.5)

    # fc6 takes the fixed-length vector
    ax.add_patch(patches.FancyBboxPatch((89.0, 20.0), 8.0, 10.0, boxstyle="round,pad=0.6",
                                        facecolor="#fdf2d0", edgecolor="#8a6d1f"))
    ax.text(93.0, 25.0, "fc6", ha="center", va="center", fontsize=9)
    ax.annotate("", xy=(88.2, 25.0), xytext=(bar_x + bar_w + 0.6, 25.0),
                arrowprops={"arrowstyle": "->", "color": "#4a5568", "linewidth": 1.0})
    ax.set_title(f"SPP layer, levels {tuple(levels)}: M = {' + '.join(str(n * n) for n in levels)}"
                 f" = {bins} bins", fontsize=9)
    return {"bins": bins, "length": length}


def draw_iou(ax, box_a, box_b, image: np.ndarray | None = None,
             names: tuple[str, str] = ("A", "B"), margin: float = 0.25) -> float:
    """Two boxes, their intersection shaded, and ``IoU = area(A ∩ B) / area(A ∪ B)`` printed.

    ``box_a``, ``box_b``: one x1y1x2y2 pixel box each (shape ``(4,)``). ``image``, an RGB
    uint8 ``(H, W, 3)`` array, is drawn underneath when given. The view is the two boxes'
    union grown by ``margin`` of its size on each side (kept inside ``image`` when there is
    one), y pointing down as in an image.
    The intersection is one patch with ``gid="intersection"`` (none when the boxes do not
    overlap). Returns the IoU, computed by :func:`sppnet_lite.boxes.box_iou`.
    Taught in chapter 05.
    """
    from matplotlib import patches

    from .boxes import box_iou

    a, b = _one_box(box_a, "box_a"), _one_box(box_b, "box_b")
    iou = float(box_iou(a[None], b[None])[0, 0])
    area = lambda box: float((box[2] - box[0]) * (box[3] - box[1]))
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = area(a) + area(b) - inter
    if image is not None:
        ax.imshow(image)
    if inter > 0:
        shade = patches.Rectangle(tuple(lo), *(hi - lo), facecolor="#ffd400", alpha=0.55,
                                  edgecolor="none", hatch="///")
        shade.set_gid("intersection")
        ax.add_patch(shade)
    for box, name, colour, style in ((a, names[0], PALETTE[0], "-"),
                                     (b, names[1], PALETTE[2], "--")):
        ax.add_patch(patches.Rectangle(tuple(box[:2]), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=colour, linewidth=2, linestyle=style))
        ax.text(box[0], box[1], f" {name} ", fontsize=8, color="white", va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})
    both = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
    pad = margin * (both[2:] - both[:2])
    view = np.concatenate([both[:2] - pad, both[2:] + pad])
    if image is not None:  # no blank margin outside the picture
        view = np.clip(view, 0, np.tile([image.shape[1], image.shape[0]], 2))
    ax.set_xlim(view[0], view[2])
    ax.set_ylim(view[3], view[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"IoU = area({names[0]} ∩ {names[1]}) / area({names[0]} ∪ {names[1]})\n"
                 f"= {inter:.0f} / {union:.0f} px² = {iou:.2f}", fontsize=9)
    return iou


def draw_box_offsets(ax, proposal, truth, names: tuple[str, str] = ("proposal P", "ground truth G"),
                     margin: float = 0.3) -> np.ndarray:
    """The regression targets ``(dx, dy, dw, dh)`` drawn on a proposal and its ground truth.

    ``proposal``, ``truth``: one x1y1x2y2 pixel box each. Draws both boxes, their
    centres, the centre shift split into its x and y parts, and each box's width and
    height, then writes every offset as its formula with the numbers filled in. The
    offsets come from :func:`sppnet_lite.boxes.encode` and are returned, shape ``(4,)``
    float32. Taught in chapter 09.
    """
    from matplotlib import patches

    from .boxes import encode

    p, g = _one_box(proposal, "proposal"), _one_box(truth, "truth")
    deltas = encode(p[None], g[None])[0]
    (px, py), (pw, ph) = (p[:2] + p[2:]) / 2, p[2:] - p[:2]
    (gx, gy), (gw, gh) = (g[:2] + g[2:]) / 2, g[2:] - g[:2]
    for box, colour, style in ((p, PALETTE[3], "-"), (g, PALETTE[1], "--")):
        ax.add_patch(patches.Rectangle(tuple(box[:2]), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=colour, linewidth=2, linestyle=style))
    ax.plot([px], [py], "o", color=PALETTE[3], markersize=5)
    ax.plot([gx], [gy], "o", color=PALETTE[1], markersize=5)
    arrow = {"arrowstyle": "->", "color": "#333333", "linewidth": 1.2, "shrinkA": 0, "shrinkB": 0}
    ax.annotate("", xy=(gx, py), xytext=(px, py), arrowprops=arrow)        # the x part of the shift
    ax.annotate("", xy=(gx, gy), xytext=(gx, py), arrowprops=arrow)        # then the y part
    both = np.concatenate([np.minimum(p[:2], g[:2]), np.maximum(p[2:], g[2:])])
    size = both[2:] - both[:2]
    pad = margin * size
    # widths below the boxes, heights to their right: the sizes the log ratios compare
    sizes = ((p, PALETTE[3], "pw", "ph"), (g, PALETTE[1], "gw", "gh"))
    for k, (box, colour, w, h) in enumerate(sizes):
        y = both[3] + (0.1 + 0.1 * k) * size[1]
        ax.annotate("", xy=(box[2], y), xytext=(box[0], y),
                    arrowprops={"arrowstyle": "<->", "color": colour, "shrinkA": 0, "shrinkB": 0})
        ax.text(box[2], y, f" {w} = {box[2] - box[0]:.0f}", color=colour, fontsize=7, va="center")
        x = both[2] + (0.06 + 0.1 * k) * size[0]
        ax.annotate("", xy=(x, box[3]), xytext=(x, box[1]),
                    arrowprops={"arrowstyle": "<->", "color": colour, "shrinkA": 0, "shrinkB": 0})
        ax.text(x, box[1], f"{h} = {box[3] - box[1]:.0f}", color=colour, fontsize=7, ha="center",
                va="bottom", rotation=90)
    ax.text(px, py, f"({px:.0f}, {py:.0f})  ", fontsize=7, color=PALETTE[3], va="bottom",
            ha="right")
    ax.text(gx, gy, f"  ({gx:.0f}, {gy:.0f})", fontsize=7, color=PALETTE[1], va="top")
    formulas = (f"dx = (gx − px) / pw = ({gx:.0f} − {px:.0f}) / {pw:.0f} = {deltas[0]:+.3f}\n"
                f"dy = (gy − py) / ph = ({gy:.0f} − {py:.0f}) / {ph:.0f} = {deltas[1]:+.3f}\n"
                f"dw = log(gw / pw) = log({gw:.0f} / {pw:.0f}) = {deltas[2]:+.3f}\n"
                f"dh = log(gh / ph) = log({gh:.0f} / {ph:.0f}) = {deltas[3]:+.3f}")
    ax.text(1.02, 0.5, formulas, transform=ax.transAxes, fontsize=8, va="center",
            family="monospace")
    ax.plot([], [], color=PALETTE[3], linewidth=2, label=names[0])
    ax.plot([], [], color=PALETTE[1], linewidth=2, linestyle="--", label=names[1])
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(both[0] - pad[0], both[2] + pad[0])
    ax.set_ylim(both[3] + pad[1], both[1] - pad[1])
    ax.set_aspect("equal")
    ax.set_title("box offsets: centre shift in box sizes, size change in log space", fontsize=9)
    return deltas


def draw_timings(ax, table: Mapping[str, Mapping[str, float]], unit: str = "ms",
                 title: str | None = None, log: bool = True) -> None:
    """Grouped horizontal bars: one group per row of ``table``, one bar per entry, each
    bar labelled with its value.

    ``table`` maps a group name (e.g. ``"batch 16"``) to ``{implementation: time}`` in
    ``unit``; implementations keep one colour across groups. Every bar is a patch with
    ``gid="timing-bar"`` whose width is the time. ``log`` puts times on a log scale, so
    a 100× gap stays readable. Taught in chapter 03.
    """
    names = list(dict.fromkeys(name for row in table.values() for name in row))
    colours = {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(names)}
    height = 0.8 / max(len(names), 1)
    ticks, labels, in_legend = [], [], set()
    for g, (group, row) in enumerate(table.items()):
        for name, value in row.items():
            y = g + (names.index(name) - (len(names) - 1) / 2) * height
            bar = ax.barh(y, float(value), height=height * 0.9, color=colours[name],
                          label=None if name in in_legend else name)
            in_legend.add(name)
            bar.patches[0].set_gid("timing-bar")
            ax.text(float(value), y, f" {_short(float(value))} {unit}", va="center", fontsize=7)
        ticks.append(g)
        labels.append(group)
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"time [{unit}], {'log scale, ' if log else ''}shorter is faster")
    ax.margins(x=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, never over a bar
    if title:
        ax.set_title(title, fontsize=9)


def _one_box(box, name: str) -> np.ndarray:
    """One x1y1x2y2 box as a float32 ``(4,)`` array, or a ``ValueError`` naming ``name``."""
    array = np.asarray(box, np.float32)
    if array.size != 4:
        raise ValueError(f"{name} must be one x1y1x2y2 box (4 numbers), got shape {array.shape}")
    return array.reshape(4)


def _thousands(value: int) -> str:
    """``12800`` → ``"12 800"``: the book's way of writing large numbers."""
    return f"{int(value):,}".replace(",", " ")


def _short(value: float) -> str:
    """A time as a reader wants to read it: ``1234.5`` → ``"1 234"``, ``3.21`` → ``"3.2"``."""
    if value >= 100:
        return _thousands(round(value))
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"
