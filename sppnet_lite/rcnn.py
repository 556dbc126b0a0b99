"""The R-CNN baseline: crop and warp every window, run the conv trunk on each crop.

R-CNN (Girshick et al., CVPR 2014) dilates each window so that, after warping
it to the network's fixed input size, ``context`` pixels of surrounding image
remain on every side (16 px at 224 in the paper), fills what falls outside the
image with the mean pixel, warps, and runs the full network per window. Here the
crops go through the same trunk as SPP-net and are pooled with the same pyramid,
so both extractors give the same ``C·Σn²`` vector and feed identical heads: the
only difference left is where the conv layers run. Taught in chapter 06.

Boxes are float32 ``(R, 4)`` ``[x1, y1, x2, y2]`` in input-image pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .features import DEFAULT_LEVELS, WindowExtractor, eval_mode


def context_boxes(boxes, size: int, context: int = 16) -> np.ndarray:
    """Dilate x1y1x2y2 pixel ``boxes`` so that, warped to ``size``, ``context`` px surround them.

    Warping maps the box's width ``w`` onto ``size − 2·context`` pixels, so the
    padding in input pixels is ``context · w / (size − 2·context)`` (the same for
    the height). The result may extend beyond the image. Taught in chapter 06.
    """
    if not 0 <= 2 * int(context) < int(size):
        raise ValueError(f"context must satisfy 0 <= 2*context < size={size}, got {context!r}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sides = boxes[:, 2:] - boxes[:, :2]
    pad = np.tile(sides * (context / (size - 2 * context)), 2)
    return boxes + pad * np.array([-1, -1, 1, 1], dtype=np.float32)


def warp_crops(image_tensor: torch.Tensor, boxes, size: int, context: int = 16) -> torch.Tensor:
    """Crop every box (with context) from a normalised ``(1, 3, H, W)`` image, warp to ``size²``.

    Bilinear sampling (``torchvision.ops.roi_align``, pixel-edge coordinates);
    samples beyond the image are 0, the mean pixel after normalisation, as in
    R-CNN. Returns ``(R, 3, size, size)`` on the image's device.
    """
    from torchvision.ops import roi_align

    dilated = torch.from_numpy(context_boxes(boxes, size, context))
    rois = torch.cat([torch.zeros(len(dilated), 1), dilated], dim=1)
    rois = rois.to(image_tensor.device, image_tensor.dtype)
    return roi_align(image_tensor, rois, (size, size), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


class RCNNFeatureExtractor(WindowExtractor):
    """R-CNN features: warp each window to ``size × size``, run the trunk per crop, pool.

    Same call as :class:`sppnet_lite.features.SPPFeatureExtractor`:
    ``extractor(image uint8 (H, W, 3), boxes (R, 4))`` → float32 ``(R, output_dim)``
    on the CPU with ``output_dim = C·Σn²`` for the same ``levels``. ``size``
    defaults to the backbone's ``canonical_size``; crops run through the trunk in
    batches of ``batch_size``. ``last_timing``: ``warp``, ``conv``, ``pool`` and
    ``total`` seconds of the last call. Taught in chapter 06.
    """

    def __init__(self, backbone: torch.nn.Module, size: int | None = None, context: int = 16,
                 levels: Sequence[int] = DEFAULT_LEVELS, preprocess: Callable | None = None,
                 batch_size: int = 128):
        super().__init__(backbone, levels, preprocess)
        size = int(backbone.canonical_size if size is None else size)
        context_boxes(np.zeros((0, 4)), size, context)  # validates size and context
        self.size, self.context = size, int(context)
        self.batch_size = int(batch_size)

    @property
    def config(self) -> dict:
        """Everything besides the weights that determines the features (for cache keys)."""
        return {"kind": "rcnn", "size": self.size, "context": self.context,
                "levels": list(self.levels), "out_channels": int(self.backbone.out_channels),
                "preprocess": self._preprocess_name()}

    def __call__(self, image: np.ndarray, boxes) -> torch.Tensor:
        from .spp import spatial_pyramid_pool

        image, boxes, device = self._inputs(image, boxes)
        start = time.perf_counter()
        out = torch.zeros((len(boxes), self.output_dim), dtype=torch.float32)
        warp_s = conv_s = pool_s = 0.0
        with eval_mode(self.backbone), torch.no_grad():
            image_tensor = self.preprocess(image).to(device)
            for lo in range(0, len(boxes), self.batch_size):
                tic = time.perf_counter()
                crops = warp_crops(image_tensor, boxes[lo:lo + self.batch_size], self.size,
                                   self.context)
                self._synchronize(device)
                warp_s += time.perf_counter() - tic

                tic = time.perf_counter()
                features = self.backbone(crops.contiguous(memory_format=torch.channels_last))
                self._synchronize(device)
                conv_s += time.perf_counter() - tic

                tic = time.perf_counter()
                out[lo:lo + len(crops)] = spatial_pyramid_pool(features, self.levels).float().cpu()
                pool_s += time.perf_counter() - tic
        self.last_timing = {"warp": warp_s, "conv": conv_s, "pool": pool_s,
                            "total": time.perf_counter() - start, "num_boxes": len(boxes)}
        return out
