"""Shared conv features: SPP-net's one conv pass per image, pooled for every window.

R-CNN warps each of ~2 000 windows to the network's input size and runs the
whole conv trunk on every one of them. SPP-net runs the conv trunk once on the
whole image (once per scale), projects every window onto the conv5 map and
pools it with a spatial pyramid into a fixed-length vector. Both produce the
same ``C·Σn²`` features, so the same heads sit on top. Taught in chapter 06.

Boxes are float32 ``(R, 4)`` ``[x1, y1, x2, y2]`` in input-image pixels (pixel
edges: ``x2 - x1`` is the width), as everywhere in the book.

Scales. The paper resizes the image so that its shorter side is
``s ∈ {480, 576, 688, 864, 1200}`` (single scale: 688) for a network whose
canonical input is 224 px. What matters is the ratio ``s / canonical``: it sets
how large an object of a given image fraction is relative to the inputs the
network learned from. We keep the ratios and scale them to the backbone's own
canonical size (:func:`default_scales`): for ZFLite (96 px) that is
``{208, 248, 296, 368, 512}`` and ``296`` for one scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

PAPER_SCALES = (480, 576, 688, 864, 1200)
PAPER_SINGLE_SCALE = 688
PAPER_CANONICAL_SIZE = 224
"""The paper's detection scales, its one-scale setting and ZF-5's input side (px)."""

DEFAULT_LEVELS = (6, 3, 2, 1)


def default_scales(canonical_size: int, multi_scale: bool = False) -> tuple[int, ...]:
    """The paper's scales (shorter image side, px) rescaled to a backbone's canonical size.

    ``s · canonical_size / 224``, rounded to a multiple of 8. For 224 this returns
    the paper's ``(688,)`` or ``(480, 576, 688, 864, 1200)``; for ZFLite's 96,
    ``(296,)`` or ``(208, 248, 296, 368, 512)``. Taught in chapter 06.
    """
    if int(canonical_size) < 1:
        raise ValueError(f"canonical_size must be a positive number of pixels, "
                         f"got {canonical_size!r}")
    scales = PAPER_SCALES if multi_scale else (PAPER_SINGLE_SCALE,)
    factor = int(canonical_size) / PAPER_CANONICAL_SIZE
    return tuple(int(round(s * factor / 8) * 8) for s in scales)


def select_scales(boxes, image_size: tuple[int, int], scales: Sequence[int],
                  canonical_size: int) -> np.ndarray:
    """For each box, the index of the scale at which its area is closest to ``canonical_size²``.

    ``boxes`` float ``(R, 4)`` x1y1x2y2 in input pixels; ``image_size`` ``(H, W)``.
    At scale ``s`` the image is resized by ``f = s / min(H, W)``, so a ``w × h``
    box covers ``w·h·f²`` pixels; we pick ``argmin |w·h·f² − canonical_size²|``
    (the paper's rule, Sec. 4.2; ties go to the smaller scale).
    Returns int64 ``(R,)``. Taught in chapter 06.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales.size == 0:
        raise ValueError("scales must hold at least one shorter-side length in pixels, got none")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    factors = scales / min(image_size)
    distance = np.abs(areas[:, None] * factors[None, :] ** 2 - float(canonical_size) ** 2)
    return distance.argmin(axis=1).astype(np.int64)


def resized_size(image_size: tuple[int, int], scale: int) -> tuple[int, int]:
    """``(H, W)`` of an ``image_size = (H, W)`` image resized to shorter side ``scale`` px."""
    height, width = image_size
    factor = scale / min(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize_shorter_side(image: np.ndarray, scale: int) -> tuple[np.ndarray, float, float]:
    """Resize RGB uint8 ``image`` so its shorter side is ``scale`` px.

    Returns ``(resized, fx, fy)`` with the exact per-axis factors (after rounding
    the new size) that map input-pixel x / y coordinates onto the resized image.
    """
    height, width = image.shape[:2]
    new_h, new_w = resized_size((height, width), scale)
    interpolation = cv2.INTER_AREA if scale < min(height, width) else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized, new_w / width, new_h / height


class WindowExtractor:
    """What both window extractors share: a trunk, a pyramid, the input checks.

    ``extractor(image, boxes)`` with RGB uint8 ``(H, W, 3)`` and float ``(R, 4)``
    x1y1x2y2 pixel boxes returns ``pooled``: float32 ``(R, output_dim)`` on the CPU,
    ``output_dim = C·Σn²``, rows in the order of ``boxes``; ``last_timing`` holds the
    seconds of the last call. :class:`SPPFeatureExtractor` (SPP-net) and
    :class:`sppnet_lite.rcnn.RCNNFeatureExtractor` (R-CNN) differ only in where the
    conv trunk runs. Taught in chapter 06.
    """

    def __init__(self, backbone: torch.nn.Module, levels: Sequence[int] = DEFAULT_LEVELS,
                 preprocess: Callable | None = None):
        _check_backbone(backbone)
        self.backbone = backbone
        self.levels = tuple(int(n) for n in levels)
        self.preprocess = preprocess or _default_preprocess()
        self.output_dim = int(backbone.out_channels) * sum(n * n for n in self.levels)
        self.last_timing: dict = {}

    def _inputs(self, image, boxes) -> tuple[np.ndarray, np.ndarray, torch.device]:
        """The checked image and boxes and the trunk's device."""
        return check_image(image), _check_boxes(boxes), _module_device(self.backbone)

    def _preprocess_name(self) -> str:
        return _qualified_name(self.preprocess)

    @staticmethod
    def _synchronize(device: torch.device) -> None:
        """Wait for the GPU, so stage timings measure work, not queueing."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)


class SPPFeatureExtractor(WindowExtractor):
    """SPP-net features: one conv pass per scale, every window pooled from the shared map.

    ``backbone``: an ``nn.Module`` mapping a normalised ``(1, 3, H, W)`` batch to conv
    features ``(1, C, H', W')`` and exposing ``stride``, ``out_channels`` and
    ``canonical_size``. ``levels``: the pyramid. ``scales``: shorter-side lengths
    (default: :func:`default_scales` one-scale). ``rule``: the box projection rule
    of :func:`sppnet_lite.spp.project_boxes`. ``preprocess``: uint8 image →
    normalised tensor (default :func:`sppnet_lite.backbone.preprocess`).

    ``extractor(image, boxes)`` with RGB uint8 ``(H, W, 3)`` and float ``(R, 4)``
    x1y1x2y2 pixel boxes returns float32 ``(R, output_dim)`` on the CPU, rows in the
    order of ``boxes``. Each box uses the scale chosen by :func:`select_scales`; a
    scale no box chooses is not computed. ``last_timing`` holds the seconds of the
    last call: ``conv`` (trunk passes), ``pool`` (projection + ROI pooling),
    ``total``, and ``scales_run``. Runs on the backbone's device, with channels-last
    tensors (oneDNN's fast layout on CPU; R-CNN's crops get the same). Taught in chapter 06.
    """

    def __init__(self, backbone: torch.nn.Module, levels: Sequence[int] = DEFAULT_LEVELS,
                 scales: Sequence[int] | None = None, rule: str = "paper",
                 preprocess: Callable | None = None, roi_batch: int = 2048):
        from .spp import PROJECTION_RULES

        super().__init__(backbone, levels, preprocess)
        if rule not in PROJECTION_RULES:
            raise ValueError(f"rule must be one of {PROJECTION_RULES}, got {rule!r}")
        if scales is None:
            scales = default_scales(backbone.canonical_size)
        scales = tuple(int(s) for s in scales)
        if not scales or min(scales) < 16:
            raise ValueError(f"scales must be shorter-side lengths >= 16 px, got {scales!r}")
        self.scales = scales
        self.rule = rule
        self.roi_batch = int(roi_batch)

    @property
    def config(self) -> dict:
        """Everything besides the weights that determines the features (for cache keys)."""
        return {"kind": "spp", "levels": list(self.levels), "scales": list(self.scales),
                "rule": self.rule, "stride": float(self.backbone.stride),
                "canonical_size": int(self.backbone.canonical_size),
                "out_channels": int(self.backbone.out_channels),
                "preprocess": self._preprocess_name()}

    def __call__(self, image: np.ndarray, boxes) -> torch.Tensor:
        image, boxes, _ = self._inputs(image, boxes)
        start = time.perf_counter()
        choice = select_scales(boxes, image.shape[:2], self.scales, self.backbone.canonical_size)
        out = torch.zeros((len(boxes), self.output_dim), dtype=torch.float32)
        conv_s = pool_s = 0.0
        scales_run = []
        with eval_mode(self.backbone), torch.no_grad():
            for k in np.unique(choice):
                tic = time.perf_counter()
                features, fx, fy = self.conv_map(image, self.scales[k])
                conv_s += time.perf_counter() - tic
                scales_run.append(self.scales[k])
                tic = time.perf_counter()
                rows = np.flatnonzero(choice == k)
                out[torch.from_numpy(rows)] = self.pool_map(features, boxes[rows], fx, fy)
                pool_s += time.perf_counter() - tic
        self.last_timing = {"conv": conv_s, "pool": pool_s, "total": time.perf_counter() - start,
                            "scales_run": scales_run, "num_boxes": len(boxes)}
        return out

    @torch.no_grad()
    def conv_map(self, image: np.ndarray, scale: int) -> tuple[torch.Tensor, float, float]:
        """One conv pass: conv5 ``(1, C, H', W')`` of ``image`` (checked RGB uint8) resized to
        shorter side ``scale``, and the resize factors ``(fx, fy)``. Chapter 12's region
        proposal network reads the same map."""
        resized, fx, fy = resize_shorter_side(image, scale)
        device = _module_device(self.backbone)
        with eval_mode(self.backbone):
            features = self.backbone(self.preprocess(resized).to(device)
                                     .contiguous(memory_format=torch.channels_last))
        self._synchronize(device)
        return features, fx, fy

    @torch.no_grad()
    def pool_map(self, features: torch.Tensor, boxes: np.ndarray, fx: float, fy: float) -> torch.Tensor:
        """``pooled`` float32 ``(R, output_dim)`` on the CPU: pixel ``boxes`` (R, 4) projected
        onto ``features`` (from :meth:`conv_map` with factors ``fx``, ``fy``) and pooled."""
        from .spp import project_boxes

        scaled = torch.from_numpy(np.asarray(boxes, np.float32) * np.array([fx, fy, fx, fy], np.float32))
        cells = project_boxes(scaled, self.backbone.stride, self.rule, feature_size=features.shape[-2:])
        rois = torch.cat([torch.zeros(len(boxes), 1), cells], dim=1).to(features.device, features.dtype)
        out = torch.zeros((len(boxes), self.output_dim), dtype=torch.float32)
        self._pool(features, rois, np.arange(len(boxes)), out)
        self._synchronize(features.device)
        return out

    def _pool(self, features: torch.Tensor, rois: torch.Tensor, rows: np.ndarray, out: torch.Tensor):
        """``roi_spp`` of ``rois`` (K, 5) into ``out[rows]``, at most ``roi_batch`` windows a call.

        On the CPU the windows are split over torch's threads, one chunk each:
        torchvision's CPU ``roi_pool`` runs on a single core."""
        from .spp import roi_spp

        threads = torch.get_num_threads() if features.device.type == "cpu" else 1
        size = max(1, min(self.roi_batch, -(-len(rows) // threads)))
        chunks = [slice(lo, lo + size) for lo in range(0, len(rows), size)]

        def pool(chunk: slice) -> None:  # chunks write disjoint rows of ``out``
            pooled = roi_spp(features, rois[chunk], 1.0, self.levels)
            out[torch.from_numpy(rows[chunk])] = pooled.float().cpu()

        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(threads, len(chunks))) as executor:
                list(executor.map(pool, chunks))
        else:
            for chunk in chunks:
                pool(chunk)


def norm_scale(vectors, target_norm: float = 20.0, sample: int = 2000, seed: int = 0) -> float:
    """The factor that gives ``vectors`` ``(N, D)`` (pooled or fc7) a mean L2 norm of ``target_norm``.

    R-CNN rescales window features to a mean norm of 20 before its SVMs and box
    regressors, so that one ``C`` / ``alpha`` suits every feature type (pool5, fc7);
    the mean is taken over a seeded sample of at most ``sample`` rows. Taught in chapter 08.
    """
    x = vectors.detach().cpu().numpy() if hasattr(vectors, "detach") else vectors
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample, len(x)), replace=False) if len(x) else []
    norm = (float(np.linalg.norm(np.asarray(x[np.sort(rows)]).astype(np.float32), axis=1).mean())
            if len(rows) else 1.0)
    return target_norm / max(norm, 1e-6)


def check_image(image) -> np.ndarray:
    """``image`` as a contiguous RGB uint8 ``(H, W, 3)`` array, or a ``ValueError``
    naming what was received (the image convention at the package boundary)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got dtype {image.dtype} and "
                         f"shape {image.shape}")
    return np.ascontiguousarray(image)


class eval_mode:
    """``with eval_mode(module):`` runs it in eval mode and restores its previous mode."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)


# ----------------------------------------------------------------------------------------
# Helpers of the window extractors
# ----------------------------------------------------------------------------------------

def _check_backbone(backbone) -> None:
    missing = [a for a in ("stride", "out_channels", "canonical_size") if not hasattr(backbone, a)]
    if missing or not isinstance(backbone, torch.nn.Module):
        raise ValueError(f"backbone must be an nn.Module with stride, out_channels and "
                         f"canonical_size attributes; got {type(backbone).__name__} "
                         f"missing {missing}")


def _check_boxes(boxes) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (R, 4) x1y1x2y2 pixels, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes must be finite, got NaN or inf")
    return boxes


def _default_preprocess() -> Callable:
    from .backbone import preprocess

    return preprocess


def _qualified_name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
