"""Faster R-CNN at inference: chapter 11's detector with its proposals from a region proposal
network on the same conv5 map.

:class:`FasterRCNNDetector` runs one conv pass per image and feeds it to both heads: the RPN
(:mod:`sppnet_lite.rpn`) proposes windows, the Fast R-CNN head scores and refines them. No
selective search. Training is :mod:`sppnet_lite.faster_rcnn_training`. Taught in chapter 12.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .boxes import Detections
from .cache import load_weights, save_json_atomic, save_weights
from .detector import DetectorConfig, read_run_config
from .fast_rcnn import FastRCNNDetector
from .features import check_image
from .rpn import RegionProposalNetwork


class FasterRCNNDetector(FastRCNNDetector):
    """A trained Faster R-CNN: a :class:`~sppnet_lite.fast_rcnn.FastRCNNDetector` plus a
    :class:`~sppnet_lite.rpn.RegionProposalNetwork` on the same trunk, at one scale.

    ``detect(image)`` runs the trunk once (``config.scales[0]``), the RPN on that conv5
    map (``proposal_settings``), then pooling, the head and NMS on the same map;
    ``last_timing`` holds ``proposals`` (the RPN head, decoding, NMS: not the shared conv
    pass), ``conv``, ``pool``, ``fc``, ``svm``, ``regression``, ``nms``. Given
    ``proposals`` it behaves as chapter 11's detector. Taught in chapter 12."""

    METHOD = "faster-rcnn"

    def __init__(self, backbone, head, class_names, svms=None, regressor=None,
                 config: DetectorConfig | None = None, device="cpu",
                 rpn: RegionProposalNetwork | None = None, proposal_settings: dict | None = None):
        super().__init__(backbone, head, class_names, svms, regressor, config, device)
        self.rpn = rpn.to(self.device).eval() if rpn is not None else None
        self.proposal_settings = dict(proposal_settings or {})

    def propose(self, image: np.ndarray, **settings) -> tuple[np.ndarray, np.ndarray, tuple]:
        """The RPN's ``(boxes (N, 4) px, scores (N,))`` for ``image`` and the conv pass they
        came from, ``(features, fx, fy)``; ``settings`` override ``proposal_settings``.
        Times ``conv`` and ``proposals``."""
        image = check_image(image)
        tic = time.perf_counter()
        features, fx, fy = self.extractor.conv_map(image, self.config.scales[0])
        conv_s = time.perf_counter() - tic
        tic = time.perf_counter()
        boxes, scores = self.rpn.proposals(features, image.shape[:2], fx, fy,
                                           **{**self.proposal_settings, **settings})
        self.last_timing = {"proposals": time.perf_counter() - tic, "conv": conv_s}
        return boxes, scores, (features, fx, fy)

    def detect(self, image: np.ndarray, proposals=None, **overrides) -> Detections:
        """Detections in ``image``: the RPN's proposals and the head on one conv pass (or,
        given ``proposals`` (R, 4), chapter 11's stages on them)."""
        if proposals is not None or self.rpn is None:
            return super().detect(image, proposals, **overrides)
        image = check_image(image)
        boxes, _, (features, fx, fy) = self.propose(image)
        if len(boxes) == 0:
            return Detections.empty()
        timing = dict(self.last_timing)
        tic = time.perf_counter()
        pooled = self.extractor.pool_map(features, boxes, fx, fy)
        timing["pool"] = time.perf_counter() - tic
        scores = self.score(pooled)
        dets = self.postprocess(scores, boxes, image.shape[:2], **overrides)
        self.last_timing = {**timing, **self.last_timing}
        return dets

    def dataset_proposals(self, dataset, progress: bool = True) -> list:
        """The RPN's proposals (``proposal_settings``) for every image of ``dataset``."""
        from tqdm.auto import tqdm

        return [self.propose(dataset[i].image)[0]
                for i in tqdm(range(len(dataset)), desc="RPN proposals", disable=not progress,
                              leave=False)]

    def save(self, directory: str | Path) -> Path:
        """:meth:`SPPNetDetector.save`, plus ``rpn.npz`` and the RPN's settings."""
        directory = super().save(directory)
        save_weights(directory / "rpn.npz", self.rpn.state_dict())
        meta = read_run_config(directory)
        meta["rpn"] = {"in_channels": self.rpn.head.conv.in_channels, "sizes": list(self.rpn.sizes),
                       "ratios": list(self.rpn.ratios), "stride": self.rpn.stride,
                       "mid_channels": self.rpn.head.conv.out_channels,
                       "proposal_settings": self.proposal_settings}
        save_json_atomic(directory / "config.json", meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device="cpu", backbone: str | None = None,
             weights_hash: str | None = None) -> FasterRCNNDetector:
        """:meth:`SPPNetDetector.load`, with the RPN."""
        det = super().load(directory, device, backbone, weights_hash)
        spec = read_run_config(directory)["rpn"]
        rpn = RegionProposalNetwork(spec["in_channels"], spec["sizes"], spec["ratios"],
                                    spec["stride"], spec["mid_channels"])
        rpn.load_state_dict(load_weights(Path(directory) / "rpn.npz")[0])
        det.rpn, det.proposal_settings = rpn.to(det.device).eval(), spec["proposal_settings"]
        return det
