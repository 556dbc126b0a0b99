"""The SPP-net detector at inference: public stages from one image to its detections.

Naming, used throughout the detector half of the package (as detectron2's
``fast_rcnn.py`` opens with its shape shorthand):

* ``R``: the windows of one image (its proposals); ``K``: the object classes, and
  index ``K`` of a (K + 1)-way softmax is *background*; ``D``: the length of a
  pooled window vector, ``C·Σn²`` (6 400 for ZFLite's 128 channels and {6, 3, 2, 1}).
* ``features``: conv maps ``(N, C, H, W)`` only; ``pooled``: ``(R, D)`` window
  vectors; ``fc7``: ``(R, hidden)`` activations; ``proposals``: what selective search
  returns for an image; ``windows``: labelled training boxes (:mod:`sppnet_lite.windows`).
* Boxes are float32 ``(R, 4)`` x1y1x2y2 in input-image pixels.

The stages, each a public method: :meth:`SPPNetDetector.pool` (one conv pass per
scale, SPP over every proposal) → :meth:`~SPPNetDetector.score` (fc6–fc8 and the
per-class SVMs) → :meth:`~SPPNetDetector.postprocess` (per-class candidates, box
refinement by :meth:`~SPPNetDetector.refine`, NMS at ``nms_iou`` 0.3) →
:class:`~sppnet_lite.boxes.Detections`; :meth:`~SPPNetDetector.detect` runs them all.
This module knows nothing of training or caches (:mod:`sppnet_lite.pipeline`).
Taught in chapter 10.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .backbone import backbone_name, backbone_spec, build_backbone
from .bbox_regression import BoxRegressor
from .boxes import Detections, as_boxes, clip_boxes, nms_per_class
from .cache import load_npz, load_weights, save_json_atomic, save_npz_atomic, save_weights
from .finetune import FCHead
from .svm import LinearSVMs

FORMAT_VERSION = 2
"""Bumped whenever the layout of a saved detector directory changes."""

SCALES = (296, 368, 448, 560, 720)
"""The detector's five scales (shorter image side, px). The paper's
(480, 576, 688, 864, 1200) for ZF-5's 224-px input are 0.7–1.7× its one-scale
setting 688; ours keep those ratios around 448 instead of the proportional
688·96/224 ≈ 296 (:func:`sppnet_lite.features.default_scales`), because SynthVOC's
objects are smaller relative to their images than VOC's: on the validation split, full
mode, 0.840 mAP against the proportional scales' 0.808 (``benchmarks/bench_seeds.py``;
chapter 10)."""

SINGLE_SCALE = (448,)
"""The one-scale detector's scale: the middle of :data:`SCALES`, as 688 is the paper's."""

NMS_IOU = 0.3
"""Per-class NMS threshold at test time (the paper's and R-CNN's)."""

TIMED_STAGES = ("conv", "pool", "fc", "svm", "regression", "nms")
"""The stages ``last_timing`` reports, in order (proposals come before them)."""

SHARED_STAGES = ("fc", "svm", "regression", "nms")
"""The stages R-CNN and SPP-net both run on every window: they cap SPP-net's speed-up
(R-CNN's time / theirs; chapter 10)."""

SCORES = ("svm", "softmax")


@dataclass
class DetectorConfig:
    """Everything that shapes a detector besides its weights (saved as ``config.json``).

    ``levels``/``scales``/``rule``: the SPP feature extractor (chapter 06);
    ``extractor``: ``"spp"`` or ``"rcnn"`` (the crop-and-warp baseline of chapter 10);
    ``score``: ``"svm"`` or ``"softmax"``; ``regression``: refine boxes; ``nms_iou``:
    the per-class NMS threshold; ``pre_nms_top``: windows per class kept before NMS;
    ``max_detections``: per image after NMS; ``score_threshold``: drop detections
    scoring below it; ``max_proposals``: selective-search boxes per image.
    """

    levels: tuple = (6, 3, 2, 1)
    scales: tuple = SCALES
    rule: str = "paper"
    extractor: str = "spp"
    score: str = "svm"
    regression: bool = True
    nms_iou: float = NMS_IOU
    pre_nms_top: int = 200
    max_detections: int = 100
    score_threshold: float = -float("inf")
    max_proposals: int = 2000

    def to_json(self) -> dict:
        d = asdict(self)
        d["levels"], d["scales"] = list(self.levels), list(self.scales)
        d["score_threshold"] = None if np.isinf(self.score_threshold) else self.score_threshold
        return d

    @staticmethod
    def from_json(d: dict) -> DetectorConfig:
        d = dict(d)
        unknown = set(d) - set(DetectorConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"detector config has unknown fields {sorted(unknown)}")
        d["levels"], d["scales"] = tuple(d["levels"]), tuple(d["scales"])
        if d.get("score_threshold") is None:
            d["score_threshold"] = -float("inf")
        return DetectorConfig(**d)


@dataclass
class WindowScores:
    """What :meth:`SPPNetDetector.score` returns for ``R`` windows: ``pooled`` (R, D)
    float32, ``fc7`` (R, hidden), ``softmax`` (R, K + 1) probabilities (background
    last) and ``svm`` (R, K) margins (``None`` without SVMs), all NumPy."""

    pooled: np.ndarray
    fc7: np.ndarray
    softmax: np.ndarray
    svm: np.ndarray | None


def select_detections(boxes, scores, refine: Callable | None, image_size: tuple[int, int],
                      nms_iou: float = NMS_IOU, pre_nms_top: int = 200, max_detections: int = 100,
                      score_threshold: float = -float("inf")) -> Detections:
    """Per-class candidates → box refinement → per-class NMS → the image's top detections.

    ``boxes`` (R, 4) proposals, ``scores`` (R, K) (SVM margins or probabilities,
    background excluded). For each class ``k`` the at most ``pre_nms_top`` windows
    scoring ≥ ``score_threshold`` are candidates; ``refine(rows, k)`` returns their
    refined ``(len(rows), 4)`` boxes (``None``: no refinement), so the regressor runs
    on candidates only, not on all R × K; boxes are clipped to ``image_size`` =
    (H, W). Taught in chapter 10.
    """
    boxes = as_boxes(boxes)
    if len(boxes) == 0:
        return Detections.empty()
    scores = np.asarray(scores, np.float32).reshape(len(boxes), -1)
    height, width = image_size
    out_boxes, out_scores, out_labels = [], [], []
    for k in range(scores.shape[1]):
        s = scores[:, k]
        idx = np.flatnonzero(s >= score_threshold)
        if len(idx) > pre_nms_top:
            idx = idx[np.argsort(-s[idx], kind="stable")[:pre_nms_top]]
        if len(idx) == 0:
            continue
        b = boxes[idx] if refine is None else refine(idx, k)
        out_boxes.append(clip_boxes(b, width, height))
        out_scores.append(s[idx])
        out_labels.append(np.full(len(idx), k, np.int64))
    if not out_boxes:
        return Detections.empty()
    b, s, lab = np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)
    keep = nms_per_class(b, s, lab, nms_iou)[:max_detections]
    return Detections(b[keep], s[keep], lab[keep])


def make_extractor(backbone: nn.Module, config: DetectorConfig, device="cpu"):
    """The window extractor a detector config describes: SPP (one conv pass per scale)
    or, for ``extractor="rcnn"``, crop-and-warp with the same pyramid. Taught in chapter 10."""
    from .features import SPPFeatureExtractor
    from .rcnn import RCNNFeatureExtractor

    if config.extractor == "rcnn":
        return RCNNFeatureExtractor(backbone.to(device), levels=config.levels)
    if config.extractor != "spp":
        raise ValueError(f"extractor must be 'spp' or 'rcnn', got {config.extractor!r}")
    return SPPFeatureExtractor(backbone.to(device), levels=config.levels, scales=config.scales,
                               rule=config.rule)


class SPPNetDetector:
    """A trained SPP-net detector: frozen conv trunk + FC head + SVMs + box regressors.

    ``detect(image)`` runs every stage on one RGB uint8 ``(H, W, 3)`` image and
    returns :class:`~sppnet_lite.boxes.Detections` (labels index ``class_names``);
    ``last_timing`` then holds seconds per stage (``proposals`` and
    :data:`TIMED_STAGES`). The stages are public so that chapters, widgets and the
    evaluation loop can run the cheap later ones again on cached outputs.
    Taught in chapter 10.
    """

    METHOD = "sppnet"
    """What ``sppnet-lite train --method`` trained (saved with the detector)."""
    HEAD = FCHead

    def __init__(self, backbone: nn.Module, head: FCHead, class_names: Sequence[str],
                 svms: LinearSVMs | None = None, regressor: BoxRegressor | None = None,
                 config: DetectorConfig | None = None, device: str | torch.device = "cpu"):
        self.backbone = backbone.eval()
        self.head = head.eval()
        self.class_names = tuple(class_names)
        self.svms, self.regressor = svms, regressor
        self.config = config or DetectorConfig()
        self.device = torch.device(device)
        self.extractor = make_extractor(self.backbone, self.config, self.device)
        self.last_timing: dict = {}

    def at_scales(self, scales) -> SPPNetDetector:
        """The same trained detector (weights shared, not copied) pooling its windows at
        ``scales`` (shorter image sides, px) instead: chapter 10's test-scale sweep."""
        other = copy.copy(self)
        other.config = replace(self.config, scales=tuple(int(s) for s in scales))
        other.extractor = make_extractor(self.backbone, other.config, self.device)
        other.last_timing = {}
        return other

    def pool(self, image: np.ndarray, proposals) -> torch.Tensor:
        """``pooled`` (R, D) float32 vectors of ``proposals`` (R, 4) in ``image``: the conv
        pass(es) and SPP (R-CNN: a warp and a conv pass per window). Starts a new
        ``last_timing`` with ``conv`` (R-CNN's warping included) and ``pool``."""
        pooled = self.extractor(image, as_boxes(proposals, "proposals"))
        t = self.extractor.last_timing
        self.last_timing = {"conv": t.get("conv", 0.0) + t.get("warp", 0.0),
                            "pool": t.get("pool", 0.0)}
        return pooled

    @torch.no_grad()
    def score(self, pooled) -> WindowScores:
        """fc7, softmax and SVM scores of ``pooled`` (R, D) vectors (times ``fc``, ``svm``)."""
        tic = time.perf_counter()
        x = torch.as_tensor(np.asarray(pooled, np.float32)) if not torch.is_tensor(pooled) else pooled
        fc7 = self.head.fc7_activations(x.float())
        softmax = torch.softmax(self.head.fc8(fc7), 1).numpy()
        self.last_timing["fc"] = time.perf_counter() - tic
        tic = time.perf_counter()
        svm = self.svms.decision_function(fc7.numpy()) if self.svms is not None else None
        self.last_timing["svm"] = time.perf_counter() - tic
        # NumPy from here on: alternating torch and NumPy matrix products makes their
        # two thread pools wait on each other
        return WindowScores(x.float().numpy(), fc7.numpy(), softmax, svm)

    def can_refine(self, scores: WindowScores) -> bool:
        """Whether :meth:`refine` can move boxes (SPP-net: when box regressors were trained)."""
        return self.regressor is not None

    def refine(self, scores: WindowScores, proposals, rows: np.ndarray, k: int) -> np.ndarray:
        """Class ``k``'s box regressor on windows ``rows``: refined ``(len(rows), 4)`` boxes."""
        return self.regressor.refine(scores.pooled[rows], as_boxes(proposals)[rows],
                                     np.full(len(rows), k))

    def postprocess(self, scores: WindowScores, proposals, image_size: tuple[int, int],
                    class_scores: np.ndarray | None = None, **overrides) -> Detections:
        """Detections from :meth:`score`'s output: the config's scores (or ``class_scores``
        (R, K), e.g. an ablation's), refinement of each class's candidates, NMS.
        ``overrides`` replace config fields for this call (``score``, ``regression``,
        ``nms_iou``, ``score_threshold``, ...). Times ``regression`` and ``nms``."""
        cfg = replace(self.config, **overrides)
        if class_scores is None:
            if cfg.score not in SCORES:
                raise ValueError(f"score must be one of {SCORES}, got {cfg.score!r}")
            if cfg.score == "svm" and scores.svm is None:
                raise ValueError("score='svm' needs trained SVMs; this detector has none "
                                 "(use score='softmax')")
            class_scores = scores.svm if cfg.score == "svm" else scores.softmax[:, :-1]
        regression_s = 0.0

        def refine(rows, k):
            nonlocal regression_s
            tic = time.perf_counter()
            boxes = self.refine(scores, proposals, rows, k)
            regression_s += time.perf_counter() - tic
            return boxes

        use_regression = cfg.regression and self.can_refine(scores)
        tic = time.perf_counter()
        dets = select_detections(proposals, class_scores, refine if use_regression else None,
                                 image_size, cfg.nms_iou, cfg.pre_nms_top, cfg.max_detections,
                                 cfg.score_threshold)
        self.last_timing["regression"] = regression_s
        self.last_timing["nms"] = time.perf_counter() - tic - regression_s
        return dets

    def detect(self, image: np.ndarray, proposals=None, **overrides) -> Detections:
        """Detections in ``image`` (RGB uint8 (H, W, 3)): selective search (unless
        ``proposals`` (R, 4) are given), then every stage; ``overrides`` as in
        :meth:`postprocess`."""
        from .features import check_image

        image = check_image(image)
        tic = time.perf_counter()
        if proposals is None:
            from .proposals import selective_search

            proposals = selective_search(image, max_proposals=self.config.max_proposals)
        proposal_s = time.perf_counter() - tic
        proposals = as_boxes(proposals, "proposals")
        if len(proposals) == 0:
            self.last_timing = {"proposals": proposal_s}
            return Detections.empty()
        scores = self.score(self.pool(image, proposals))
        dets = self.postprocess(scores, proposals, image.shape[:2], **overrides)
        self.last_timing = {"proposals": proposal_s, **self.last_timing}
        return dets

    def dataset_proposals(self, dataset, progress: bool = True) -> list:
        """The windows this detector scores in each image of ``dataset``: selective search,
        cached (:func:`sppnet_lite.proposals.ensure_proposals`)."""
        from .proposals import ensure_proposals

        return ensure_proposals(dataset, progress=progress)

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and the weights (``backbone.npz``, ``head.npz``, ``svms.npz``,
        ``regressor.npz``: plain arrays, no pickles) into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory / "backbone.npz", self.backbone.state_dict())
        save_weights(directory / "head.npz", self.head.state_dict())
        if self.svms is not None:
            save_npz_atomic(directory / "svms.npz", **self.svms.to_arrays())
        if self.regressor is not None:
            save_npz_atomic(directory / "regressor.npz", **self.regressor.to_arrays())
        meta = {"format": FORMAT_VERSION, "sppnet_lite": __version__, "method": self.METHOD,
                "class_names": list(self.class_names), "config": self.config.to_json(),
                "backbone": backbone_spec(self.backbone),
                "head": {"in_dim": self.head.in_dim, "hidden": self.head.hidden,
                         "num_classes": self.head.num_classes},
                "has_svms": self.svms is not None, "has_regressor": self.regressor is not None}
        save_json_atomic(directory / "config.json", meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             backbone: str | None = None, weights_hash: str | None = None) -> SPPNetDetector:
        """Rebuild the detector saved in ``directory`` by :meth:`save` (arrays only).

        ``backbone`` (e.g. ``"resnet18"``) and ``weights_hash`` (the SHA-256 of a
        weights file), when given, must match what the run was trained with.
        ``FileNotFoundError`` when it is not a detector directory, ``ValueError`` for
        another format version or a mismatch."""
        meta = read_run_config(directory)
        method = meta.get("method", SPPNetDetector.METHOD)
        if method != cls.METHOD:
            raise ValueError(f"run {str(directory)!r} holds a {method} detector, not {cls.METHOD}")
        spec = meta["backbone"]
        if backbone is not None and backbone != backbone_name(spec):
            raise ValueError(f"run {str(directory)!r} was trained with backbone "
                             f"{backbone_name(spec)!r}, not {backbone!r}")
        if weights_hash is not None and weights_hash != spec.get("checkpoint_hash"):
            raise ValueError(f"run {str(directory)!r} was trained with other trunk weights "
                             f"(SHA-256 {str(spec.get('checkpoint_hash'))[:12]}…, given "
                             f"{weights_hash[:12]}…)")
        directory = Path(directory)
        trunk = build_backbone(spec)
        trunk.load_state_dict(load_weights(directory / "backbone.npz")[0])
        h = meta["head"]
        head = cls.HEAD(h["in_dim"], h["num_classes"], h["hidden"])
        head.load_state_dict(load_weights(directory / "head.npz")[0])
        svms = LinearSVMs.from_arrays(load_npz(directory / "svms.npz")) if meta["has_svms"] else None
        regressor = (BoxRegressor.from_arrays(load_npz(directory / "regressor.npz"))
                     if meta["has_regressor"] else None)
        return cls(trunk.to(device), head, meta["class_names"], svms, regressor,
                   DetectorConfig.from_json(meta["config"]), device)


def read_run_config(directory: str | Path) -> dict:
    """The ``config.json`` of a saved detector, checked: ``FileNotFoundError`` when the
    folder holds none, ``ValueError`` when it is unreadable or of another format version.
    Cheap (no torch work), so the command line checks a run folder before loading it."""
    directory = Path(directory)
    meta_path = directory / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"run directory {str(directory)!r} has no config.json; "
                                "expected the output of `sppnet-lite train`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(meta_path)!r} is not valid JSON ({err})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"run directory {str(directory)!r} was written by detector format "
                         f"{meta.get('format')!r} (sppnet-lite {meta.get('sppnet_lite')}); this is "
                         f"sppnet-lite {__version__} with format {FORMAT_VERSION}: retrain it")
    return meta
