"""The speed-up at the paper's own scale: ZF-5, 224-px crops, 688-px images, 2 000 windows.

Our ZFLite trunk is too cheap per window to show the paper's 38–102× (chapter 10's
ceiling). Here the paper's own network and settings are timed instead:

* :class:`ZF5` — the five conv layers of ZF-5 (the SPP-net paper's Table 1, padding as
  in the authors' released ``model-defs/Zeiler_conv5.prototxt``), 256 × 13 × 13 conv5
  at 224 px, ≈ 1.11 G multiply-adds per crop; :func:`fc_layers` — fc6 (12 800 → 4 096)
  and fc7 (4 096 → 4 096), ≈ 69 M per window.
* :func:`time_paper_scale` — R-CNN (warp every window to 224 × 224, ZF-5 on every
  crop) against SPP-net (ZF-5 once on the image at one scale, 688 px, or five,
  480–1 200 px; ``roi_spp`` of every window), both followed by fc6/fc7 on every window.
* :func:`format_table` — the result beside the paper's GPU figures.

Weights are random: dense float convolutions and matrix products take the same time
whatever the values, so no ImageNet weights are needed. LRN (ZF-5's within-channel
local response normalisation after conv1 and conv2) is left out, of the count and of the
time: it is element-wise, no multiply-adds, and would add to both methods in about the
proportion of the conv1 and conv2 maps each computes. Taught in chapter 10.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from .backbone import receptive_field
from .features import (
    DEFAULT_LEVELS,
    PAPER_SCALES,
    PAPER_SINGLE_SCALE,
    SPPFeatureExtractor,
    eval_mode,
)
from .rcnn import RCNNFeatureExtractor

PAPER = {"conv_speedup": {"1 scale": 270, "5 scales": 49},
         "speedup": {"1 scale": 102, "5 scales": 38},
         "seconds": {"R-CNN": 14.46, "fc": 0.089, "1 scale": 0.142, "5 scales": 0.382}}
"""The paper's Table 10 (ZF-5, VOC 2007, one GPU): conv-only and overall speed-ups of
SPP-net over R-CNN, and seconds per image (R-CNN's conv 14.37 s + fc 0.089 s)."""

IMAGE_SIZE = (375, 500)
"""(H, W) of the synthetic test image: VOC's typical 4:3 photo (688 px → 688 × 917)."""


class ZF5(nn.Module):
    """ZF-5's conv trunk, random weights: ``(N, 3, H, W)`` → conv5 ``(N, 256, H', W')``.

    conv1 96 × 7 × 7 stride 2 (pad 1), max-pool 3 × 3 stride 2; conv2 256 × 5 × 5 stride 2
    (pad 0), max-pool 3 × 3 stride 2; conv3 384, conv4 384, conv5 256, all 3 × 3 (pad 1);
    ReLU after every conv; pools round up as Caffe's do (``ceil_mode``). A 224-px crop
    gives 110 → 55 → 26 → 13: a 13 × 13 conv5, 688 × 917 px a 42 × 56 one. ``stride`` is
    16 px per conv5 cell, ``out_channels`` 256, ``canonical_size`` 224 px. (With this
    padding cell ``i`` is centred near pixel ``16·i + 20``, not ``16·i``: the box projection
    is a little off, which changes no timing.) Taught in chapter 10.
    """

    stride = 16
    out_channels = 256
    canonical_size = 224

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 96, 7, 2, 1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(96, 256, 5, 2, 0), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(inplace=True))
        self.receptive_field = receptive_field(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def fc_layers(levels: Sequence[int] = DEFAULT_LEVELS, width: int = 4096) -> nn.Sequential:
    """fc6 and fc7 of ZF-5 with ReLUs: pooled ``(R, 256·Σn²)`` → fc7 ``(R, width)``.

    For the {6, 3, 2, 1} pyramid fc6 takes 256 · 50 = 12 800 inputs. Taught in chapter 10.
    """
    return nn.Sequential(nn.Linear(ZF5.out_channels * sum(n * n for n in levels), width),
                         nn.ReLU(inplace=True), nn.Linear(width, width), nn.ReLU(inplace=True))


def multiply_adds(module: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of one forward pass of ``module`` on ``x`` (convolutions and matrix
    products, counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs each)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2


def time_paper_scale(windows: int = 2000, rcnn_sample: int = 128,
                     scales: Sequence[int] = PAPER_SCALES, single_scale: int = PAPER_SINGLE_SCALE,
                     device: torch.device | str | None = None, repeats: int = 1,
                     seed: int = 0) -> dict:
    """Seconds per image of R-CNN and SPP-net with ZF-5 at the paper's settings.

    One synthetic RGB image of :data:`IMAGE_SIZE` and ``windows`` random boxes of VOC-like
    sizes (x1y1x2y2 pixels, 0.05–1 × the image side). R-CNN warps a box to 224 × 224 (16 px
    of context) and runs ZF-5 on the crop; it is timed on the first ``rcnn_sample`` boxes and
    scaled linearly to ``windows`` (its cost is the same for every crop). SPP-net runs ZF-5
    on the image with its shorter side at ``single_scale`` px, or at each of ``scales``
    (each box pooled at the scale where its area is closest to 224², ``select_scales``),
    and pools every box with ``roi_spp`` ({6, 3, 2, 1}: 12 800 values). fc6 and fc7 run
    once on ``windows`` pooled rows; both methods pay that time. ``device``: CUDA when
    present if ``None``. Each step is run once to build its kernels, then ``repeats`` times;
    the fastest run counts (other load only adds time). Denormal floats are flushed to zero
    while timing, as trained weights would not produce them.

    Returns a dict: ``"R-CNN"``, ``"SPP-net, 1 scale"``, ``"SPP-net, 5 scales"``, each
    ``{"warp", "conv", "pool", "fc", "total"}`` seconds per image (``warp``: R-CNN's crops;
    SPP-net's ``conv`` includes resizing the image) plus ``"conv_speedup"`` (R-CNN's conv /
    its own) and ``"speedup"`` (R-CNN's total / its own); ``"ceiling"``
    (R-CNN's total / the fc time: SPP-net's speed-up with free conv and pooling);
    ``"multiply_adds"`` (per 224 crop, per window in fc6+fc7); the settings; ``"paper"``.
    Taught in chapter 10.
    """
    if windows < 1 or not 1 <= rcnn_sample <= windows or repeats < 1:
        raise ValueError(f"need windows >= 1, 1 <= rcnn_sample <= windows and repeats >= 1, "
                         f"got windows={windows!r}, rcnn_sample={rcnn_sample!r}, "
                         f"repeats={repeats!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Random weights can leave tiny activations in the denormal range, which trained weights
    # do not and which x86 CPUs compute many times slower: flush them to zero while timing.
    torch.set_flush_denormal(True)
    try:
        return _time(windows, rcnn_sample, scales, single_scale, device, repeats, seed)
    finally:
        torch.set_flush_denormal(False)  # torch's default


def _time(windows, rcnn_sample, scales, single_scale, device, repeats, seed) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
    boxes = voc_like_boxes(windows, IMAGE_SIZE, rng)
    trunk, head = ZF5().to(device).eval(), fc_layers().to(device).eval()
    size = ZF5.canonical_size
    macs = {"crop": multiply_adds(trunk, torch.zeros(1, 3, size, size, device=device)),
            "fc_window": multiply_adds(head, torch.zeros(1, head[0].in_features, device=device))}

    rcnn = RCNNFeatureExtractor(trunk, batch_size=32)
    t = _fastest(partial(_timed, rcnn, image, boxes[:rcnn_sample]), repeats)
    factor = windows / rcnn_sample
    table = {"R-CNN": {"warp": t["warp"] * factor, "conv": t["conv"] * factor,
                       "pool": t["pool"] * factor}}
    for name, run_scales in (("SPP-net, 1 scale", (single_scale,)), ("SPP-net, 5 scales", scales)):
        spp = SPPFeatureExtractor(trunk, scales=run_scales)
        t = _fastest(partial(_timed, spp, image, boxes), repeats)
        table[name] = {"warp": 0.0, "conv": t["conv"], "pool": t["pool"],
                       "scales_run": t["scales_run"]}
    pooled = torch.rand(windows, head[0].in_features, device=device)
    fc = _fastest(partial(_time_fc, head, pooled), repeats)["total"]
    for row in table.values():
        row.update(fc=fc, total=row["warp"] + row["conv"] + row["pool"] + fc)
    base = table["R-CNN"]
    for row in table.values():
        row.update(conv_speedup=base["conv"] / row["conv"], speedup=base["total"] / row["total"])
    return {**table, "ceiling": base["total"] / fc, "multiply_adds": macs, "windows": windows,
            "rcnn_sample": rcnn_sample, "repeats": repeats, "image_size": list(IMAGE_SIZE),
            "device": device.type, "threads": torch.get_num_threads(), "paper": PAPER}


def format_table(result: dict) -> str:
    """:func:`time_paper_scale`'s result as a table, the paper's GPU speed-ups in brackets."""
    title = (f"ZF-5 at the paper's scale on {result['device']} ({result['threads']} threads): "
             f"{result['windows']} windows/image, R-CNN timed on {result['rcnn_sample']} crops "
             f"and scaled x{result['windows'] / result['rcnn_sample']:.1f}")
    header = (f"{'seconds / image':18s}{'warp':>8s}{'conv':>9s}{'pool':>8s}{'fc':>8s}{'total':>9s}"
              f"{'conv speed-up (paper)':>24s}{'speed-up (paper)':>19s}")
    rows = [title, header]
    for name in ("R-CNN", "SPP-net, 1 scale", "SPP-net, 5 scales"):
        row, key = result[name], name.removeprefix("SPP-net, ")
        conv, overall = "1x", "1x"
        if name != "R-CNN":
            conv = f"{row['conv_speedup']:.0f}x ({PAPER['conv_speedup'][key]}x)"
            overall = f"{row['speedup']:.1f}x ({PAPER['speedup'][key]}x)"
        rows.append(f"{name:18s}{row['warp']:8.3f}{row['conv']:9.3f}{row['pool']:8.3f}"
                    f"{row['fc']:8.3f}{row['total']:9.3f}{conv:>24s}{overall:>19s}")
    paper = PAPER["seconds"]
    rows.append(f"ceiling (R-CNN's total / the shared fc6+fc7 time): {result['ceiling']:.0f}x "
                f"(the paper: {paper['R-CNN']} / {paper['fc']} = "
                f"{paper['R-CNN'] / paper['fc']:.0f}x)")
    return "\n".join(rows)


def voc_like_boxes(count: int, image_size: tuple[int, int], rng: np.random.Generator
                   ) -> np.ndarray:
    """``count`` float32 x1y1x2y2 pixel boxes inside an ``(H, W)`` image, each side
    log-uniform in 5–100 % of the image's, like selective search's spread of sizes."""
    height, width = image_size
    sides = np.exp(rng.uniform(np.log(0.05), 0.0, (count, 2))) * [width, height]
    corner = rng.uniform(0.0, 1.0, (count, 2)) * ([width, height] - sides)
    return np.concatenate([corner, corner + sides], axis=1).astype(np.float32)


def _fastest(run: Callable[[], dict], repeats: int) -> dict:
    """The timing dict of the fastest of ``repeats`` calls of ``run``, after one warm-up
    call (the first call at a shape builds its kernels)."""
    timings = [run() for _ in range(repeats + 1)]
    return min(timings[1:], key=lambda t: t["total"])


def _timed(extractor, image: np.ndarray, boxes: np.ndarray) -> dict:
    extractor(image, boxes)
    return extractor.last_timing


def _time_fc(head: nn.Module, pooled: torch.Tensor) -> dict:
    with eval_mode(head), torch.no_grad():
        start = time.perf_counter()
        head(pooled)
        if pooled.device.type == "cuda":
            torch.cuda.synchronize(pooled.device)
        return {"total": time.perf_counter() - start}
