"""The SPP-net detector: FC head on pooled features, SVM scores, box regression, NMS.

Training follows the paper (Sec. 4): the conv trunk stays frozen, its conv5 map
is computed once per image and every window's fixed-length SPP vector is pooled
from it; only fc6, fc7 and a new (K+1)-way classifier (index ``K`` = background)
are fine-tuned, on mini-batches with 25% foreground windows (IoU >= 0.5 with a
ground truth) and 75% background windows (IoU in [0.1, 0.5)). Linear SVMs on fc7
(chapter 08) and class-specific box regressors on the pooled features
(chapter 09) complete it. Inference: scores -> box refinement -> per-class NMS at
IoU 0.3 -> the top detections of the image.

Boxes are float32 x1y1x2y2 input-image pixels. Taught in chapters 07 and 10.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .bbox_regression import BoxRegressor
from .boxes import as_boxes, clip_boxes, decode, nms_per_class
from .cache import atomic_path, config_hash, load_npz, save_json_atomic, save_npz_atomic
from .evaluate import Detections
from .svm import LinearSVMs

FORMAT_VERSION = 1
"""Bumped whenever the layout of a saved detector directory changes."""

SCALES = (296, 368, 448, 560, 720)
"""The detector's five scales (shorter image side, px). The paper's
(480, 576, 688, 864, 1200) for ZF-5's 224-px input are 0.7–1.7× its one-scale
setting 688; ours keep those ratios around 448 instead of the proportional
688·96/224 ≈ 296 (:func:`sppnet_lite.features.default_scales`), because SynthVOC's
objects are smaller relative to their images than VOC's: with 208–512 the small
ones never reach a useful size on conv5 (full mode: 0.799 mAP vs 0.835; chapter 10)."""

SINGLE_SCALE = (448,)
"""The one-scale detector's scale: the middle of :data:`SCALES`, as 688 is the paper's."""


class FCHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8 with ``num_classes + 1`` outputs.

    Input: pooled SPP features ``(N, in_dim)`` float; they are multiplied by the
    buffer ``input_scale`` first (set from the training features so their mean
    squared entry is about 1). Output: logits ``(N, K + 1)``, index ``K`` =
    background. :meth:`fc7` gives the ``(N, hidden)`` features the SVMs use.
    Taught in chapter 07.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        self.in_dim, self.num_classes, self.hidden = int(in_dim), int(num_classes), int(hidden)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.fc6 = nn.Linear(self.in_dim, self.hidden)
        self.fc7_layer = nn.Linear(self.hidden, self.hidden)
        self.fc8 = nn.Linear(self.hidden, self.num_classes + 1)
        self.dropout = nn.Dropout(dropout)

    def fc7(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * self.input_scale
        x = self.dropout(torch.relu(self.fc6(x)))
        return torch.relu(self.fc7_layer(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.dropout(self.fc7(x)))


def sample_minibatch(labels, ious, batch_size: int, rng: np.random.Generator,
                     fg_fraction: float = 0.25, fg_iou: float = 0.5,
                     bg_iou: tuple[float, float] = (0.1, 0.5)) -> np.ndarray:
    """Row indices of one fine-tuning mini-batch: 25% foreground, the rest background.

    ``labels`` (N,) int in 0..K (``K`` = background), ``ious`` (N,) best IoU of each
    window with a ground truth. Foreground: IoU >= ``fg_iou`` (ground-truth boxes
    have IoU 1); background: IoU in ``bg_iou``. When there are too few foreground
    windows the batch is filled with background. Taught in chapter 07.
    """
    ious = np.asarray(ious)
    fg = np.flatnonzero(ious >= fg_iou)
    bg = np.flatnonzero((ious >= bg_iou[0]) & (ious < bg_iou[1]))
    if len(bg) == 0:
        bg = np.flatnonzero(ious < fg_iou)
    n_fg = min(round(fg_fraction * batch_size), len(fg))
    n_bg = min(batch_size - n_fg, len(bg))
    parts = [rng.choice(fg, n_fg, replace=False) if n_fg else np.zeros(0, np.int64),
             rng.choice(bg, n_bg, replace=len(bg) < n_bg) if n_bg else np.zeros(0, np.int64)]
    return np.concatenate(parts).astype(np.int64)


def train_fc_head(features, labels, ious, num_classes: int, hidden: int = 512,
                  iterations: int = 2000, batch_size: int = 128, lr: float = 1e-3,
                  weight_decay: float = 5e-4, fg_fraction: float = 0.25,
                  bg_iou: tuple[float, float] = (0.1, 0.5), device: str | torch.device = "cpu",
                  seed: int = 0, progress: bool = True, val=None,
                  val_windows: int = 8000) -> tuple[FCHead, dict]:
    """Fine-tune an :class:`FCHead` on stored pooled features with the conv trunk frozen.

    ``features`` (N, D) float16/float32 array (memmaps fine), ``labels`` (N,) int in
    0..K with K = background (a window's class is that of its best-overlapping
    ground truth when IoU >= 0.5, else K), ``ious`` (N,). Adam, ``iterations``
    mini-batches from :func:`sample_minibatch`. ``val=(features, labels)`` adds a
    validation loss/accuracy (on a fixed random sample of at most ``val_windows``
    of them) every 5% of training and keeps the weights with the lowest validation
    loss (early stopping). Returns ``(head in eval mode, history)``
    with ``history["loss"]`` (per iteration), ``history["val"]`` and
    ``history["best_iteration"]``.
    Taught in chapter 07.
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels, np.int64)
    ious = np.asarray(ious, np.float32)
    if not (len(features) == len(labels) == len(ious)):
        raise ValueError(f"features ({len(features)}), labels ({len(labels)}) and ious "
                         f"({len(ious)}) must have the same number of rows")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(device)
    head = FCHead(np.asarray(features[:1]).shape[1], num_classes, hidden)
    sample = np.asarray(features[np.sort(rng.choice(len(features), min(2000, len(features)), replace=False))],
                        np.float32)
    head.input_scale.fill_(1.0 / max(float(np.sqrt((sample ** 2).mean())), 1e-6))
    head.to(device).train()
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay,
                                 fused=device.type in ("cpu", "cuda"))  # one kernel per step
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(iterations, 1))
    history = {"loss": [], "val": [], "best_iteration": iterations}
    every = max(iterations // 20, 1)
    if val is not None:  # a fixed sample of the held-out windows keeps each check cheap
        keep = np.sort(rng.choice(len(val[1]), min(val_windows, len(val[1])), replace=False))
        val = (val[0][keep], np.asarray(val[1])[keep])
    best_loss, best_state = float("inf"), None
    for it in tqdm(range(iterations), desc="fine-tune fc6-fc8", disable=not progress, leave=False):
        rows = np.sort(sample_minibatch(labels, ious, batch_size, rng, fg_fraction, bg_iou=bg_iou))
        x = torch.from_numpy(np.asarray(features[rows], np.float32)).to(device)
        y = torch.from_numpy(labels[rows]).to(device)
        loss = nn.functional.cross_entropy(head(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        history["loss"].append(loss.item())
        if val is not None and ((it + 1) % every == 0 or it == iterations - 1):
            head.eval()
            metrics = classification_metrics(head, *val, device=device)
            history["val"].append({"iteration": it + 1, **metrics})
            if metrics["loss"] < best_loss:  # early stopping on the held-out windows
                best_loss, history["best_iteration"] = metrics["loss"], it + 1
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            head.train()
    if best_state is not None:
        head.load_state_dict(best_state)
    return head.eval().cpu(), history


@torch.no_grad()
def head_outputs(head: FCHead, features, batch: int = 4096, device=None) -> tuple[np.ndarray, np.ndarray]:
    """``(fc7 (N, hidden) float32, softmax probabilities (N, K+1) float32)`` for ``(N, D)`` features.

    Runs on ``device`` (default: where the head's weights are), in eval mode."""
    was_training = head.training
    head.eval()
    device = device or next(head.parameters()).device
    fc7, probs = [], []
    for start in range(0, len(features), batch):
        x = torch.as_tensor(np.asarray(features[start:start + batch], np.float32)).to(device)
        f = head.fc7(x)
        fc7.append(f.cpu().numpy())
        probs.append(torch.softmax(head.fc8(f), 1).cpu().numpy())
    head.train(was_training)
    hidden, k1 = head.hidden, head.num_classes + 1
    return (np.concatenate(fc7) if fc7 else np.zeros((0, hidden), np.float32),
            np.concatenate(probs) if probs else np.zeros((0, k1), np.float32))


def classification_metrics(head: FCHead, features, labels, device=None) -> dict:
    """Window-classification loss and accuracy (overall and foreground-only) of ``head``."""
    _, probs = head_outputs(head, features, device=device)
    labels = np.asarray(labels, np.int64)
    loss = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    pred = probs.argmax(1)
    fg = labels < head.num_classes
    return {"loss": loss, "accuracy": float((pred == labels).mean()),
            "fg_accuracy": float((pred[fg] == labels[fg]).mean()) if fg.any() else float("nan")}


# ----------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------

@dataclass
class DetectorConfig:
    """Everything that shapes a detector besides its weights (saved as ``config.json``).

    ``levels``/``scales``/``rule``: the SPP feature extractor (chapter 06);
    ``score``: ``"svm"`` or ``"softmax"``; ``regression``: refine boxes;
    ``nms_iou``: per-class NMS threshold (0.3 in the paper); ``pre_nms_top``:
    windows per class kept before NMS; ``max_detections``: per image after NMS;
    ``score_threshold``: drop detections scoring below it; ``extractor``: ``"spp"``
    or ``"rcnn"`` (the crop-and-warp baseline of chapter 10).
    """

    levels: tuple = (6, 3, 2, 1)
    scales: tuple = SCALES
    rule: str = "paper"
    hidden: int = 512
    score: str = "svm"
    regression: bool = True
    nms_iou: float = 0.3
    pre_nms_top: int = 200
    max_detections: int = 100
    score_threshold: float = -float("inf")
    max_proposals: int = 2000
    extractor: str = "spp"

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


def postprocess(boxes, scores, deltas, image_size: tuple[int, int], nms_iou: float = 0.3,
                pre_nms_top: int = 200, max_detections: int = 100,
                score_threshold: float = -float("inf")) -> Detections:
    """Per-class candidates -> box refinement -> per-class NMS -> the image's top detections.

    ``boxes`` (R, 4) proposals, ``scores`` (R, K) (SVM margins or probabilities,
    background excluded), ``deltas``: (R, K, 4), ``None`` (no refinement), or a
    function ``deltas(rows, k) -> (len(rows), 4)`` called for each class's candidates
    only (at most ``pre_nms_top`` rows per class instead of all R × K);
    ``image_size`` = (H, W) for clipping. Taught in chapter 10.
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
        if deltas is None:
            b = boxes[idx]
        else:
            b = decode(boxes[idx], deltas(idx, k) if callable(deltas) else deltas[idx, k])
        out_boxes.append(clip_boxes(b, width, height))
        out_scores.append(s[idx])
        out_labels.append(np.full(len(idx), k, np.int64))
    if not out_boxes:
        return Detections.empty()
    b, s, lab = np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)
    keep = nms_per_class(b, s, lab, nms_iou)[:max_detections]
    return Detections(b[keep], s[keep], lab[keep])


class SPPNetDetector:
    """A trained SPP-net detector: frozen conv trunk + FC head + SVMs + box regressors.

    ``detect(image, proposals=None)`` runs the whole pipeline on one RGB uint8
    ``(H, W, 3)`` image and returns :class:`~sppnet_lite.evaluate.Detections`
    (x1y1x2y2 pixels, scores, labels indexing ``class_names``);
    ``last_timing`` then holds seconds per stage (proposals, conv, pool, fc, svm,
    regression, nms). Taught in chapter 10.
    """

    def __init__(self, backbone: nn.Module, head: FCHead, class_names: Sequence[str],
                 svms: LinearSVMs | None = None, regressor: BoxRegressor | None = None,
                 config: DetectorConfig | None = None, device: str | torch.device = "cpu"):
        self.backbone = backbone.eval()
        self.head = head.eval()
        self.class_names = tuple(class_names)
        self.svms, self.regressor = svms, regressor
        self.config = config or DetectorConfig()
        self.device = torch.device(device)
        self.last_timing: dict = {}
        self._extractor = None

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = make_spp_extractor(self.backbone, self.config, self.device)
        return self._extractor

    def detect(self, image: np.ndarray, proposals=None, **overrides) -> Detections:
        """Detections in ``image`` (RGB uint8 (H, W, 3)); ``overrides`` replace config fields
        for this call (``score``, ``regression``, ``nms_iou``, ``score_threshold``, ...)."""
        image = _check_image(image)
        timing = {}
        t0 = time.perf_counter()
        if proposals is None:
            from .proposals import selective_search

            proposals = selective_search(image, max_proposals=self.config.max_proposals)
        timing["proposals"] = time.perf_counter() - t0
        boxes = as_boxes(proposals, "proposals")
        if len(boxes) == 0:
            self.last_timing = timing
            return Detections.empty()
        pooled = self.extractor(image, boxes)
        timing.update(feature_timing(self.extractor))
        dets = self.detect_from_features(pooled, boxes, image.shape[:2], timing=timing, **overrides)
        self.last_timing = timing
        return dets

    def detect_from_features(self, pooled, boxes, image_size, timing: dict | None = None,
                             **overrides) -> Detections:
        """The pipeline after pooling: ``pooled`` (R, D) SPP features of ``boxes`` (R, 4)."""
        timing = {} if timing is None else timing
        shared = self._shared_outputs(pooled, timing)
        return self._finish(shared, as_boxes(boxes), image_size, timing, **overrides)

    @torch.no_grad()
    def _shared_outputs(self, pooled, timing: dict) -> dict:
        """fc7, softmax and SVM scores for ``pooled`` (R, D) (box deltas come later, only
        for the windows that can become detections)."""
        t = time.perf_counter()
        x = pooled.float() if torch.is_tensor(pooled) else torch.from_numpy(np.asarray(pooled, np.float32))
        fc7 = self.head.fc7(x)
        probs = torch.softmax(self.head.fc8(fc7), 1).numpy()
        timing["fc"] = time.perf_counter() - t
        t = time.perf_counter()
        svm = self.svms.decision_function(fc7.numpy()) if self.svms is not None else None
        timing["svm"] = time.perf_counter() - t
        return {"pooled": x, "probs": probs, "svm": svm}

    def _finish(self, shared: dict, boxes, image_size, timing: dict, pool5_svms=None,
                **overrides) -> Detections:
        cfg = replace(self.config, **overrides)
        if cfg.score == "svm":
            if shared["svm"] is None:
                raise ValueError("score='svm' needs trained SVMs; this detector has none "
                                 "(use score='softmax')")
            scores = shared["svm"]
        elif cfg.score == "softmax":
            scores = shared["probs"][:, :-1]
        elif cfg.score == "pool5_svm" and pool5_svms is not None:
            scores = pool5_svms.decision_function(shared["pooled"].numpy())
        else:
            raise ValueError(f"score must be 'svm', 'softmax' or 'pool5_svm' (with pool5_svms), "
                             f"got {cfg.score!r}")
        regression_s = 0.0
        pooled = shared["pooled"].numpy()  # NumPy all the way: alternating torch and NumPy
        # matrix products makes their two thread pools wait on each other

        def deltas(rows, k):  # class k's regressor on its candidate windows only
            nonlocal regression_s
            tic = time.perf_counter()
            out = self.regressor.predict_deltas(pooled[rows], np.full(len(rows), k))
            regression_s += time.perf_counter() - tic
            return out

        use_regression = cfg.regression and self.regressor is not None
        t = time.perf_counter()
        dets = postprocess(boxes, scores, deltas if use_regression else None, image_size, cfg.nms_iou,
                           cfg.pre_nms_top, cfg.max_detections, cfg.score_threshold)
        timing["regression"] = regression_s
        timing["nms"] = time.perf_counter() - t - regression_s
        return dets

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``head.pt``, ``backbone.pt`` (state dicts) and ``svms.npz`` /
        ``regressor.npz`` into ``directory``; each file is written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, module in (("backbone.pt", self.backbone), ("head.pt", self.head)):
            with atomic_path(directory / name) as tmp:
                torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
        if self.svms is not None:
            save_npz_atomic(directory / "svms.npz", **self.svms.to_arrays())
        if self.regressor is not None:
            save_npz_atomic(directory / "regressor.npz", **self.regressor.to_arrays())
        meta = {"format": FORMAT_VERSION, "sppnet_lite": __version__, "class_names": list(self.class_names),
                "config": self.config.to_json(), "backbone": backbone_spec(self.backbone),
                "head": {"in_dim": self.head.in_dim, "hidden": self.head.hidden,
                         "num_classes": self.head.num_classes},
                "has_svms": self.svms is not None, "has_regressor": self.regressor is not None}
        save_json_atomic(directory / "config.json", meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> SPPNetDetector:
        """Load a directory written by :meth:`save` (weights only: no pickled objects).

        Raises ``FileNotFoundError`` when it is not a detector directory and
        ``ValueError`` when it was written by another format version."""
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
        config = DetectorConfig.from_json(meta["config"])
        backbone = build_backbone(meta["backbone"])
        backbone.load_state_dict(torch.load(directory / "backbone.pt", map_location="cpu", weights_only=True))
        h = meta["head"]
        head = FCHead(h["in_dim"], h["num_classes"], h["hidden"])
        head.load_state_dict(torch.load(directory / "head.pt", map_location="cpu", weights_only=True))
        svms = LinearSVMs.from_arrays(load_npz(directory / "svms.npz")) if meta["has_svms"] else None
        regressor = (BoxRegressor.from_arrays(load_npz(directory / "regressor.npz"))
                     if meta["has_regressor"] else None)
        return cls(backbone.to(device), head, meta["class_names"], svms, regressor, config, device)


def backbone_spec(backbone: nn.Module) -> dict:
    """What rebuilds ``backbone``'s architecture (saved in ``config.json``)."""
    if not hasattr(backbone, "config") or backbone.config().get("arch") != "ZFLite":
        raise ValueError(f"backbone: only ZFLite trunks can be saved with a detector, got "
                         f"{type(backbone).__name__}")
    return {**backbone.config(), "checkpoint_hash": getattr(backbone, "checkpoint_hash", None)}


def build_backbone(spec: dict) -> nn.Module:
    """An untrained ZFLite with the architecture in ``spec`` (weights are loaded after)."""
    from .backbone import ZFLite

    if spec.get("arch") != "ZFLite":
        raise ValueError(f"backbone spec names architecture {spec.get('arch')!r}; expected 'ZFLite'")
    model = ZFLite(spec["widths"])
    model.checkpoint_hash = spec.get("checkpoint_hash")
    return model.eval()


def make_spp_extractor(backbone: nn.Module, config: DetectorConfig, device="cpu"):
    """The feature extractor a detector config describes: SPP (one conv pass per scale)
    or, for ``extractor="rcnn"``, crop-and-warp with the same pyramid."""
    from .features import SPPFeatureExtractor
    from .rcnn import RCNNFeatureExtractor

    if config.extractor == "rcnn":
        return RCNNFeatureExtractor(backbone.to(device), levels=config.levels)
    return SPPFeatureExtractor(backbone.to(device), levels=config.levels, scales=config.scales,
                               rule=config.rule)


def feature_timing(extractor) -> dict:
    """``{"conv", "pool"}`` seconds of the extractor's last call; R-CNN's warping of the
    crops counts as part of its conv stage."""
    t = getattr(extractor, "last_timing", {})
    return {"conv": t.get("conv", 0.0) + t.get("warp", 0.0), "pool": t.get("pool", 0.0)}


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 (H, W, 3) array, got dtype {image.dtype} "
                         f"shape {image.shape}")
    return image


# ----------------------------------------------------------------------------------------
# Evaluation on a dataset split
# ----------------------------------------------------------------------------------------

TIMED_STAGES = ("conv", "pool", "fc", "svm", "regression", "nms")
SHARED_STAGES = ("fc", "svm", "regression", "nms")
"""The stages R-CNN and SPP-net both run on every window: they cap SPP-net's speed-up
(R-CNN's time / theirs; chapter 10)."""

ABLATIONS = {
    "no fine-tuning (SVMs on pool5)": {"score": "pool5_svm", "regression": False},
    "fine-tuned FC, softmax": {"score": "softmax", "regression": False},
    "fine-tuned FC + SVMs": {"score": "svm", "regression": False},
    "+ box regression": {"score": "svm", "regression": True},
}
"""The chapter-10 ablation table: each row adds one stage of the paper's pipeline."""


def evaluate_detector(detector: SPPNetDetector, dataset, proposals=None, max_images: int | None = None,
                      variants: dict | None = None, pool5_svms: LinearSVMs | None = None,
                      progress: bool = True) -> dict:
    """Run ``detector`` on the images of ``dataset`` and compute VOC AP for each variant.

    ``variants`` maps a name to config overrides (default: ``{"detector": {}}``);
    ``score="pool5_svm"`` scores with ``pool5_svms`` (SVMs on the pooled features,
    the no-fine-tuning ablation). Features are pooled once per image and shared by
    all variants. ``proposals``: list of (P, 4) arrays (default: the cached
    selective-search boxes). Returns ``{"results": {name: VOCResult}, "detections":
    {name: [Detections]}, "images": n, "timing": mean seconds per stage of the last
    variant (in :data:`ABLATIONS` the whole pipeline), "seconds_per_image": their sum}``.
    Taught in chapter 10.
    """
    from tqdm.auto import tqdm

    from .evaluate import evaluate_detections

    variants = variants or {"detector": {}}
    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    if n == 0:
        raise ValueError("dataset has no images to evaluate on")
    if proposals is None:
        from .proposals import ensure_proposals

        proposals = ensure_proposals(_Subset(dataset, range(n)), progress=progress)
    found = {name: [] for name in variants}
    truths, timings = [], []
    for i in tqdm(range(n), desc="detect", disable=not progress, leave=False):
        sample = dataset[i]
        boxes = as_boxes(proposals[i], "proposals")
        truths.append(sample)
        timing: dict = {}
        pooled = detector.extractor(sample.image, boxes) if len(boxes) else torch.zeros(0, 1)
        timing.update(feature_timing(detector.extractor) if len(boxes) else {})
        shared = detector._shared_outputs(pooled, timing) if len(boxes) else None
        for j, (name, overrides) in enumerate(variants.items()):
            t = timing if j == len(variants) - 1 else {}
            if shared is None:
                found[name].append(Detections.empty())
                continue
            found[name].append(detector._finish(shared, boxes, sample.image.shape[:2], t,
                                                pool5_svms=pool5_svms, **overrides))
        timings.append(timing)
    results = {name: evaluate_detections(found[name], truths, detector.class_names) for name in variants}
    mean_timing = {k: float(np.mean([t.get(k, 0.0) for t in timings])) for k in TIMED_STAGES}
    return {"results": results, "detections": found, "images": n, "timing": mean_timing,
            "seconds_per_image": float(sum(mean_timing.values()))}


class _Subset:
    """The first images of a dataset, with the same interface (``[i]``, ``len``, names)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)
        self.class_names = dataset.class_names
        self.image_ids = [dataset.image_ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def annotation(self, i: int):
        return self.dataset.annotation(self.indices[i])


# ----------------------------------------------------------------------------------------
# The resumable training pipeline
# ----------------------------------------------------------------------------------------

@dataclass
class PipelineConfig:
    """Settings of every training stage (each stage's cache key hashes the ones it uses).

    ``extractor``: ``"spp"`` (SPP-net) or ``"rcnn"`` (crop-and-warp baseline);
    ``scales``: shorter image sides (px) of the conv passes; each window is pooled at
    the one where it is closest to the trunk's canonical size (default :data:`SCALES`,
    the paper's most accurate setting; :data:`SINGLE_SCALE` is the faster one);
    ``max_train_images``: train on
    the first N images only (the R-CNN comparison); ``*_per_image``: how many
    windows of each kind are stored per training image (foreground IoU >= 0.5,
    background IoU in [0.1, 0.5), background IoU < 0.1; ground truth always).
    """

    extractor: str = "spp"
    scales: tuple = SCALES
    levels: tuple = (6, 3, 2, 1)
    rule: str = "paper"
    train_split: str = "train"
    val_split: str = "val"
    max_train_images: int | None = None
    fg_per_image: int = 32
    mid_per_image: int = 48
    low_per_image: int = 32
    hidden: int = 512
    iterations: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    val_windows: int = 8000
    svm_C: float = 1e-3
    svm_rounds: int = 2
    svm_cache: int = 10000
    regression_iou: float = 0.6
    regression_alpha: float = 1000.0
    seed: int = 0

    @staticmethod
    def default(quick: bool, **changes) -> PipelineConfig:
        base = PipelineConfig(iterations=500, svm_cache=4000) if quick else PipelineConfig()
        return PipelineConfig(**{**asdict(base), **changes})


class Pipeline:
    """Train an SPP-net (or R-CNN) detector stage by stage, caching each stage in ``run_dir``.

    Stages: proposals (shared selective-search cache) -> stored window features
    (``features_dir``, default ``run_dir/features``) -> FC fine-tuning -> SVMs ->
    box regression -> the saved detector (``run_dir/config.json`` + weights). Each
    stage's file name holds a hash of its settings and of its inputs, so a rerun
    resumes where it stopped and a changed setting never reads a stale file.
    Pipelines that differ only in later stages' settings may share one
    ``features_dir``. Chapters 07-10 call the stages one by one;
    :func:`train_pipeline` runs them all.
    """

    def __init__(self, data_dir, run_dir, quick: bool | None = None, device="auto",
                 config: PipelineConfig | None = None, progress: bool = True,
                 features_dir=None):
        from . import config as book_config

        self.quick = book_config.QUICK if quick is None else bool(quick)
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.features_dir = Path(features_dir) if features_dir is not None else self.run_dir / "features"
        self.device = book_config.get_device(device) if isinstance(device, str) else torch.device(device)
        self.cfg = config or PipelineConfig.default(self.quick)
        if self.cfg.extractor not in ("spp", "rcnn"):
            raise ValueError(f"extractor must be 'spp' or 'rcnn', got {self.cfg.extractor!r}")
        self.progress = progress
        self.stage_seconds: dict = {}
        self._memo: dict = {}

    # -------------------------------------------------------------- inputs
    def dataset(self, split: str):
        """``VOCDataset`` of ``split`` (the training split cut to ``max_train_images``)."""
        key = ("dataset", split)
        if key not in self._memo:
            from .data import VOCDataset

            ds = VOCDataset(self.data_dir, split)
            limit = self.cfg.max_train_images
            if split in (self.cfg.train_split, self.cfg.val_split) and limit is not None:
                ds = _Subset(ds, range(min(limit if split == self.cfg.train_split
                                           else max(limit // 2, 1), len(ds))))
            if len(ds) == 0:
                raise ValueError(f"split {split!r} of {str(self.data_dir)!r} lists no images")
            self._memo[key] = ds
        return self._memo[key]

    @property
    def class_names(self) -> tuple:
        return tuple(self.dataset(self.cfg.train_split).class_names)

    def backbone(self) -> nn.Module:
        """The pretrained ZFLite trunk (trained once, cached by ``ensure_pretrained``)."""
        if "backbone" not in self._memo:
            from .backbone import ensure_pretrained

            self._memo["backbone"] = ensure_pretrained(self.quick, device=self.device,
                                                       progress=self.progress)
        return self._memo["backbone"]

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(levels=tuple(self.cfg.levels), rule=self.cfg.rule, hidden=self.cfg.hidden,
                              scales=tuple(int(s) for s in self.cfg.scales), extractor=self.cfg.extractor)

    def extractor(self):
        if "extractor" not in self._memo:
            self._memo["extractor"] = make_spp_extractor(self.backbone(), self.detector_config(),
                                                         self.device)
        return self._memo["extractor"]

    def proposals(self, split: str, max_images: int | None = None) -> list:
        """Cached selective-search boxes of the first ``max_images`` images of ``split``."""
        from .proposals import ensure_proposals

        ds = self.dataset(split)
        n = len(ds) if max_images is None else min(max_images, len(ds))
        key = ("proposals", split, n)
        if key not in self._memo:
            self._memo[key] = ensure_proposals(_Subset(ds, range(n)), progress=self.progress,
                                               workers=max(2, min(8, os.cpu_count() or 2)))
        return self._memo[key]

    # -------------------------------------------------------------- stage 1: window features
    def windows(self, split: str) -> dict:
        """The stored training windows of ``split`` and their pooled features.

        Returns ``features`` float16 (N, D), ``boxes`` (N, 4), ``image_index`` (N,),
        ``labels`` (N,) in 0..K (K = background: best IoU < 0.5), ``ious`` (N,),
        ``class_ious`` (N, K) (best IoU with a ground truth of each class),
        ``gt_boxes`` (N, 4) (the best-overlapping ground truth), ``is_gt`` and
        ``difficult`` (N,) bool. Taught in chapter 07.
        """
        key = ("windows", split)
        if key in self._memo:
            return self._memo[key]
        from .features import FeatureStore

        ds = self.dataset(split)
        proposals = self.proposals(split)
        k = len(self.class_names)
        cfg = self.cfg
        caps = (cfg.fg_per_image, cfg.mid_per_image, cfg.low_per_image)

        def boxes_fn(i, sample):
            rng = np.random.default_rng([cfg.seed, i])
            return select_windows(proposals[i], sample.boxes, sample.labels, sample.difficult, k, caps, rng)

        extractor = self.extractor()
        # The store's key covers the trunk and the extractor; its name covers the data and
        # the window sampling, so pipelines that differ only in later stages share it.
        sampling = config_hash({"data": _data_stamp(self.data_dir), "caps": caps, "seed": cfg.seed}, 8)
        store = FeatureStore.for_extractor(extractor, name=f"windows-{split}-{sampling}",
                                           root=self.features_dir)
        store.build(ds, extractor, boxes_fn, progress=self.progress)
        data = store.load(list(ds.image_ids))
        self._memo[key] = data
        return data

    # -------------------------------------------------------------- stage 2: FC fine-tuning
    def head(self) -> tuple[FCHead, dict]:
        """The fine-tuned fc6/fc7/fc8 head and its training history (cached)."""
        if "head" in self._memo:
            return self._memo["head"]
        cfg = self.cfg
        key = self._head_key()
        weights, hist_path = self._stage_path(f"head-{key}.pt"), self._stage_path(f"head-{key}.json")
        k = len(self.class_names)
        if weights.is_file() and hist_path.is_file():
            history = json.loads(hist_path.read_text())
            head = FCHead(history["in_dim"], k, cfg.hidden)
            head.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            head.eval()
        else:
            train, val = self.windows(cfg.train_split), self.windows(cfg.val_split)
            head, history = train_fc_head(train["features"], train["labels"], train["ious"], k,
                                          hidden=cfg.hidden, iterations=cfg.iterations,
                                          batch_size=cfg.batch_size, lr=cfg.lr, device=self.device,
                                          seed=cfg.seed, progress=self.progress,
                                          val=(val["features"], val["labels"]),
                                          val_windows=cfg.val_windows)
            history["in_dim"] = head.in_dim
            with atomic_path(weights) as tmp:
                torch.save(head.state_dict(), tmp)
            save_json_atomic(hist_path, history)
        self._memo["head"] = (head, history)
        return head, history

    def fc7(self, split: str) -> np.ndarray:
        """fc7 features (N, hidden) float32 of the stored windows of ``split``."""
        key = ("fc7", split)
        if key not in self._memo:
            self._memo[key] = head_outputs(self.head()[0], self.windows(split)["features"])[0]
        return self._memo[key]

    # -------------------------------------------------------------- stage 3: SVMs
    def svms(self, on: str = "fc7") -> LinearSVMs:
        """Per-class linear SVMs on ``fc7`` (the detector's) or ``pool5`` features (ablation)."""
        if ("svms", on) in self._memo:
            return self._memo[("svms", on)]
        cfg = self.cfg
        extra = {"head": self._head_key()} if on == "fc7" else {}
        key = self._stage_key("svms", on=on, C=cfg.svm_C, rounds=cfg.svm_rounds, cache=cfg.svm_cache, **extra)
        path = self._stage_path(f"svms-{on}-{key}.npz")
        hist_path = self._stage_path(f"svms-{on}-{key}.json")
        if path.is_file() and hist_path.is_file():
            svms = LinearSVMs.from_arrays(load_npz(path))
            svms.history = json.loads(hist_path.read_text())
        else:
            train = self.windows(cfg.train_split)
            features = self.fc7(cfg.train_split) if on == "fc7" else train["features"]
            positives, negatives = svm_labels(train, len(self.class_names))
            svms = train_svms_cached(features, positives, negatives, cfg, self.progress)
            save_npz_atomic(path, **svms.to_arrays())
            save_json_atomic(hist_path, svms.history)
        self._memo[("svms", on)] = svms
        return svms

    # -------------------------------------------------------------- stage 4: box regression
    def regressor(self) -> BoxRegressor:
        """Class-specific ridge box regressors on the pooled features (cached)."""
        if "regressor" in self._memo:
            return self._memo["regressor"]
        from .bbox_regression import train_box_regressor
        from .boxes import encode

        cfg = self.cfg
        key = self._stage_key("regressor", iou=cfg.regression_iou, alpha=cfg.regression_alpha)
        path = self._stage_path(f"regressor-{key}.npz")
        if path.is_file():
            regressor = BoxRegressor.from_arrays(load_npz(path))
        else:
            train = self.windows(cfg.train_split)
            rows = np.flatnonzero(train["ious"] >= cfg.regression_iou)
            targets = encode(train["boxes"][rows], train["gt_boxes"][rows])
            regressor = train_box_regressor(np.asarray(train["features"][rows], np.float32),
                                            train["labels"][rows], targets, len(self.class_names),
                                            alpha=cfg.regression_alpha)
            save_npz_atomic(path, **regressor.to_arrays())
        self._memo["regressor"] = regressor
        return regressor

    # -------------------------------------------------------------- the detector
    def detector(self, save: bool = True) -> SPPNetDetector:
        """Assemble (and save into ``run_dir``) the trained detector."""
        if "detector" not in self._memo:
            det = SPPNetDetector(self.backbone(), self.head()[0], self.class_names, self.svms("fc7"),
                                 self.regressor(), self.detector_config(), self.device)
            det._extractor = self.extractor()
            if save:
                det.save(self.run_dir)
            self._memo["detector"] = det
        return self._memo["detector"]

    def run(self) -> SPPNetDetector:
        """Every stage in order, with a progress bar over the stages."""
        from tqdm.auto import tqdm

        steps = [("dataset", lambda: [self.dataset(s) for s in (self.cfg.train_split, self.cfg.val_split)]),
                 ("backbone", self.backbone),
                 ("proposals", lambda: [self.proposals(s) for s in (self.cfg.train_split, self.cfg.val_split)]),
                 ("window features", lambda: [self.windows(s) for s in (self.cfg.train_split, self.cfg.val_split)]),
                 ("fine-tune FC", self.head), ("SVMs", self.svms), ("box regression", self.regressor),
                 ("save detector", self.detector)]
        bar = tqdm(steps, desc="pipeline", disable=not self.progress)
        for name, step in bar:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            step()
            self.stage_seconds[name] = time.perf_counter() - start
        return self.detector()

    # -------------------------------------------------------------- cache keys
    def _head_key(self) -> str:
        cfg = self.cfg
        return self._stage_key("head", hidden=cfg.hidden, iterations=cfg.iterations,
                               batch=cfg.batch_size, lr=cfg.lr, val_windows=cfg.val_windows)

    def _stage_key(self, stage: str, **settings) -> str:
        backbone = self.backbone()
        ids = {s: list(self.dataset(s).image_ids) for s in (self.cfg.train_split, self.cfg.val_split)}
        return config_hash({"stage": stage, "settings": settings, "format": FORMAT_VERSION,
                            "checkpoint": getattr(backbone, "checkpoint_hash", None),
                            "extractor": self.detector_config().to_json(), "ids": ids,
                            "windows": [self.cfg.fg_per_image, self.cfg.mid_per_image,
                                        self.cfg.low_per_image, self.cfg.seed],
                            "data": _data_stamp(self.data_dir)})

    def _stage_path(self, name: str) -> Path:
        path = self.run_dir / "stages" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def train_pipeline(data_dir, run_dir, quick: bool | None = None, device="auto",
                   config: PipelineConfig | None = None, progress: bool = True) -> SPPNetDetector:
    """Train a detector on the VOC-layout folder ``data_dir`` and save it in ``run_dir``.

    Every stage is cached in ``run_dir``, so an interrupted run resumes. What
    ``sppnet-lite train`` runs. Taught in chapter 10.
    """
    return Pipeline(data_dir, run_dir, quick, device, config, progress).run()


def default_pipeline(quick: bool | None = None, progress: bool = True, **changes) -> Pipeline:
    """The book's pipeline: the generated SynthVOC set, stages cached under ``build/cache/runs``.

    Its window features go to ``build/cache/windows``, shared by every ``changes`` that
    leaves the trunk, the extractor and the window sampling alone (e.g. ``iterations``)."""
    from . import config as book_config
    from .data import ensure_dataset

    quick = book_config.QUICK if quick is None else bool(quick)
    cfg = PipelineConfig.default(quick, **changes)
    name = config_hash({"quick": quick, **asdict(cfg)})
    return Pipeline(ensure_dataset(quick), book_config.CACHE_DIR / "runs" / name, quick, "auto", cfg,
                    progress, features_dir=book_config.CACHE_DIR / "windows")


def select_windows(proposals, gt_boxes, gt_labels, gt_difficult, num_classes: int,
                   caps: tuple[int, int, int], rng: np.random.Generator) -> dict:
    """Choose the windows of one training image to store, and label them.

    Keeps every ground-truth box, then at most ``caps = (fg, mid, low)`` proposals
    with best IoU >= 0.5, in [0.1, 0.5) and < 0.1 (random, seeded). Returns the
    dict :meth:`Pipeline.windows` documents (without features). Taught in chapter 07.
    """
    from .boxes import box_iou

    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_labels = np.asarray(gt_labels, np.int64)
    proposals = as_boxes(proposals, "proposals")
    boxes = np.concatenate([gt_boxes, proposals])
    iou = box_iou(boxes, gt_boxes) if len(gt_boxes) else np.zeros((len(boxes), 0), np.float32)
    best = iou.max(1) if iou.shape[1] else np.zeros(len(boxes), np.float32)
    index = iou.argmax(1) if iou.shape[1] else np.zeros(len(boxes), np.int64)
    g = len(gt_boxes)
    chosen = [np.arange(g)]
    prop_best = best[g:]
    for (lo, hi), cap in zip(((0.5, 1.01), (0.1, 0.5), (-1.0, 0.1)), caps):
        rows = np.flatnonzero((prop_best >= lo) & (prop_best < hi)) + g
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, cap, replace=False))
        chosen.append(rows)
    rows = np.concatenate(chosen).astype(np.int64)
    class_ious = np.zeros((len(rows), num_classes), np.float32)
    for k in range(num_classes):
        mine = gt_labels == k
        if mine.any():
            class_ious[:, k] = iou[rows][:, mine].max(1)
    labels = np.where(best[rows] >= 0.5, gt_labels[index[rows]] if g else num_classes, num_classes)
    is_gt = rows < g
    difficult = np.zeros(len(rows), bool)
    difficult[is_gt] = np.asarray(gt_difficult, bool)[rows[is_gt]]
    return {"boxes": boxes[rows], "labels": labels.astype(np.int64), "ious": best[rows].astype(np.float32),
            "class_ious": class_ious.astype(np.float16),
            "gt_boxes": gt_boxes[index[rows]] if g else np.zeros((len(rows), 4), np.float32),
            "is_gt": is_gt, "difficult": difficult}


def svm_labels(windows: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """SVM positives (ground-truth boxes, not difficult) and negatives (IoU < 0.3 with
    every ground truth of the class), both (N, K) bool. Taught in chapter 08."""
    labels = windows["labels"]
    positives = np.zeros((len(labels), num_classes), bool)
    negatives = np.asarray(windows["class_ious"], np.float32) < 0.3
    good_gt = windows["is_gt"] & ~windows["difficult"]
    for k in range(num_classes):
        positives[:, k] = good_gt & (labels == k)
    return positives, negatives


def train_svms_cached(features, positives, negatives, cfg: PipelineConfig, progress: bool) -> LinearSVMs:
    from .svm import train_svms

    return train_svms(features, positives, negatives, C=cfg.svm_C, rounds=cfg.svm_rounds,
                      cache_size=cfg.svm_cache, initial_negatives=min(2000, cfg.svm_cache),
                      seed=cfg.seed, progress=progress)


def _data_stamp(data_dir: Path) -> str:
    from .data import STAMP_NAME, _find_voc_root

    root = _find_voc_root(Path(data_dir))
    stamp = root / STAMP_NAME
    return stamp.read_text().strip() if stamp.is_file() else str(root.resolve())
