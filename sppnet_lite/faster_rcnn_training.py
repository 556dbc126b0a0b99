"""Training Faster R-CNN: a region proposal network on chapter 11's trunk, then the detector's
head on its proposals.

:class:`FasterRCNNPipeline` trains a :class:`~sppnet_lite.faster_rcnn.FasterRCNNDetector` in the
spirit of the paper's 4-step alternating training, cut to the chapter's time budget (Ren et
al., Sec. 3.2):

1. (the paper: an RPN fine-tuned from ImageNet.) Skipped: its only use is to propose the
   windows step 2 trains on, and selective search's serve here;
2. chapter 11's Fast R-CNN, trained on selective-search proposals (the paper trains it on
   step 1's; we reuse the network chapter 11 already trained);
3. an RPN on that detector's fine-tuned trunk, kept fixed: :meth:`FasterRCNNPipeline.rpn`;
   from here on the two heads share every conv layer;
4. the detector's FC head fine-tuned on step 3's proposals, trunk still fixed.

Every step is cached by its settings, checkpointed at least every
``checkpoint_seconds`` and resumable, as chapter 11's training is. Taught in chapter 12.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .boxes import as_boxes
from .cache import (
    config_hash,
    load_arrays,
    load_training_state,
    save_arrays,
    save_json_atomic,
    save_training_state,
)
from .detector import FORMAT_VERSION
from .fast_rcnn import FastRCNN, flip_boxes
from .fast_rcnn_training import FastRCNNConfig, FastRCNNPipeline
from .faster_rcnn import FasterRCNNDetector
from .features import resize_shorter_side
from .rpn import (
    ANCHOR_RATIOS,
    ANCHOR_SIZES,
    RegionProposalNetwork,
    anchor_targets,
    label_anchors,
    rpn_loss,
    sample_anchors,
)

RPN_SETTINGS = ("scale", "sizes", "ratios", "mid_channels", "rpn_iterations", "rpn_lr",
                "anchors_per_image", "positive_fraction", "positive_iou", "negative_iou",
                "allowed_border", "seed")
"""The :class:`FasterRCNNConfig` fields that shape a trained RPN (its cache key)."""

@dataclass(frozen=True)
class FasterRCNNConfig:
    """The RPN's and step 4's settings (all but ``checkpoint_seconds`` key the caches).

    ``scale``: the shorter image side (px) of the one conv pass both heads read (``None``:
    the one Fast R-CNN trained at); ``sizes``/``ratios``: the anchors (√area in input px, h/w); ``rpn_iterations`` of one
    image and ``anchors_per_image`` sampled anchors (at most ``positive_fraction``
    positive, IoU ≥ ``positive_iou`` or an object's best anchor; negatives below
    ``negative_iou``; anchors crossing the image by more than ``allowed_border`` px left out,
    as in the paper, or, by default (``None``), none left out: on our small images many
    anchors cross the border, and training on them raised validation recall of the top 300
    from 0.941 to 0.958 in our experiment); proposals: the ``pre_nms_top`` best anchors, NMS at
    ``proposal_nms_iou``, boxes under ``min_size`` input px dropped, ``train_proposals``
    per image to train step 4 on and ``test_proposals`` at test; ``head_iterations`` and
    ``head_lr`` for step 4 (chapter 11's own schedule for its head: with 400 iterations at 3e-4,
    test mAP on RPN-300 was 0.722 in our experiment)."""

    scale: int | None = None
    sizes: tuple = ANCHOR_SIZES
    ratios: tuple = ANCHOR_RATIOS
    mid_channels: int = 128
    rpn_iterations: int = 1500
    rpn_lr: float = 3e-3
    anchors_per_image: int = 256
    positive_fraction: float = 0.5
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    allowed_border: float | None = None
    pre_nms_top: int = 2000
    proposal_nms_iou: float = 0.7
    min_size: float = 4.0
    train_proposals: int = 2000
    test_proposals: int = 300
    head_iterations: int = 1600
    head_lr: float = 1e-3
    seed: int = 0
    checkpoint_seconds: float = 60.0

    @staticmethod
    def default(quick: bool, **changes) -> FasterRCNNConfig:
        """The book's settings (quick mode: 400 RPN and 40 head iterations)."""
        base = FasterRCNNConfig(rpn_iterations=400, head_iterations=40) if quick else FasterRCNNConfig()
        return replace(base, **changes)

    def proposal_settings(self, count: int) -> dict:
        """Keyword arguments of :meth:`RegionProposalNetwork.proposals` for ``count`` boxes."""
        return {"pre_nms_top_n": self.pre_nms_top, "post_nms_top_n": int(count),
                "nms_iou": self.proposal_nms_iou, "min_size": self.min_size}


class FasterRCNNPipeline:
    """Train Faster R-CNN (the four steps of the module docstring) from ``fast``, chapter 11's
    :class:`~sppnet_lite.fast_rcnn_training.FastRCNNPipeline` (the data, the selective-search
    proposals, the pretrained trunk and step 2); the RPN, step 4 and the saved detector
    go to ``run_dir``. Taught in chapter 12."""

    def __init__(self, fast: FastRCNNPipeline, run_dir, config: FasterRCNNConfig | None = None,
                 progress: bool = True):
        self.fast, self.quick, self.run_dir, self.progress = fast, fast.quick, Path(run_dir), progress
        self.cfg = config or FasterRCNNConfig.default(fast.quick)
        self.device = fast.device
        self.stage_seconds: dict = {}
        self._memo: dict = {}

    @property
    def class_names(self) -> tuple:
        return self.fast.class_names

    def dataset(self, split: str):
        return self.fast.dataset(split)

    def scale(self) -> int:
        """The one scale (shorter side, px) at which both heads see every image."""
        return int(self.cfg.scale or self.fast.cfg.training_scales()[0])

    # -------------------------------------------------------------- the RPN
    def trunk(self) -> torch.nn.Module:
        """The trunk both heads share: chapter 11's fine-tuned one, kept fixed from here on."""
        return self.fast.network()[0].trunk.eval()

    def rpn_key(self) -> str:
        """The hash naming the RPN: its settings, the trunk (step 2's training key), the data."""
        fast = self.fast.cfg
        settings = {k: v for k, v in asdict(self.cfg).items() if k in RPN_SETTINGS}
        return config_hash({"method": "rpn", "format": FORMAT_VERSION, "settings": settings,
                            "trunk": self.fast.training_key(), "scale": self.scale(),
                            "flip": fast.flip, "images": list(self.dataset(fast.train_split).image_ids)})

    def rpn(self) -> tuple[RegionProposalNetwork, dict]:
        """The RPN trained on the shared trunk and its history (``loss``, ``classification``,
        ``box`` per iteration, ``seconds``), resumed or reused."""
        if "rpn" not in self._memo:
            path = self.run_dir / "stages" / f"rpn-{self.rpn_key()}.npz"
            self._memo["rpn"] = train_rpn(self.trunk(), self.dataset(self.fast.cfg.train_split),
                                          self.cfg, self.scale(), path, self.device,
                                          self.fast.cfg.flip, self.progress)
        return self._memo["rpn"]

    def proposals(self, split: str, count: int | None = None, nms_iou: float | None = None) -> list:
        """The RPN's proposals, original px, for every image of ``split``: the first ``count``
        (default ``train_proposals``) of each after NMS at ``nms_iou`` (default
        ``proposal_nms_iou``), best first; cached on disk."""
        count = self.cfg.train_proposals if count is None else int(count)
        settings = self.cfg.proposal_settings(max(count, self.cfg.train_proposals))
        if nms_iou is not None:
            settings["nms_iou"] = float(nms_iou)
        key = (split, json.dumps(settings, sort_keys=True))
        if key not in self._memo:
            name = config_hash({"rpn": self.rpn_key(), "settings": settings,
                                "images": list(self.dataset(split).image_ids)})
            path = self.run_dir / "stages" / f"rpn-proposals-{split}-{name}.npz"
            self._memo[key] = _cached_proposals(path, lambda: self.rpn()[0], self.trunk(),
                                                self.dataset(split), self.scale(), settings,
                                                self.progress)
        return [boxes[:count] for boxes in self._memo[key]]

    # -------------------------------------------------------------- step 4 and the detector
    def head_pipeline(self) -> FastRCNNPipeline:
        """Step 4: chapter 11's network, trunk frozen, head fine-tuned on the shared RPN's
        proposals (a :class:`~sppnet_lite.fast_rcnn_training.FastRCNNPipeline`)."""
        if "head" not in self._memo:
            cfg = replace(self.fast.cfg, fine_tune_from="none", iterations=self.cfg.head_iterations,
                          lr=self.cfg.head_lr, scales=(self.scale(),), test_scales=(self.scale(),))
            self._memo["head"] = _HeadOnRPNProposals(self, cfg)
        return self._memo["head"]

    def detector(self, save: bool = True) -> FasterRCNNDetector:
        """The trained Faster R-CNN (training what is missing), saved into ``run_dir``."""
        if "detector" not in self._memo:
            model = self.head_pipeline().network()[0]
            config = replace(self.fast.inputs.detector_config(), score="softmax",
                             scales=(self.scale(),))
            det = FasterRCNNDetector(model.trunk.eval(), model.head.eval(), self.class_names,
                                     config=config, device=self.device, rpn=self.rpn()[0],
                                     proposal_settings=self.cfg.proposal_settings(self.cfg.test_proposals))
            if save:
                det.save(self.run_dir)
            self._memo["detector"] = det
        return self._memo["detector"]

    def training_seconds(self) -> dict:
        """Recorded training seconds per step (``None`` where not recorded)."""
        return {"Fast R-CNN (chapter 11)": self.fast.network()[1].get("seconds"),
                "RPN on the shared trunk": self.rpn()[1].get("seconds"),
                "head on RPN proposals": self.head_pipeline().network()[1].get("seconds")}

    def run(self) -> FasterRCNNDetector:
        """Every step in order, with a progress bar; writes ``run.json``."""
        from tqdm.auto import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        split = self.fast.cfg.train_split
        steps = [("dataset", lambda: self.dataset(split)),
                 ("backbone", self.fast.inputs.backbone),
                 ("selective search", lambda: self.fast.proposals(split)),
                 ("train Fast R-CNN", self.fast.network),
                 ("train RPN", self.rpn),
                 ("RPN proposals", lambda: self.proposals(split)),
                 ("fine-tune head", lambda: self.head_pipeline().network()),
                 ("save detector", self.detector)]
        bar = tqdm(steps, desc="pipeline", disable=not self.progress)
        for name, step in bar:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            step()
            self.stage_seconds[name] = time.perf_counter() - start
        save_json_atomic(self.run_dir / "run.json", {
            "method": "faster-rcnn", "data": str(self.fast.inputs.data_dir),
            "config": asdict(self.cfg), "fast_rcnn": asdict(self.fast.cfg),
            "notes": self.fast.inputs.notes, "classes": list(self.class_names),
            "stage_seconds": self.stage_seconds})
        return self.detector()


class _HeadOnRPNProposals(FastRCNNPipeline):
    """Chapter 11's training loop for step 4: windows from the shared RPN, the network
    starting from chapter 11's trained one with its trunk frozen (conv5 maps reused)."""

    METHOD = "faster-rcnn-head"

    def __init__(self, parent: FasterRCNNPipeline, cfg: FastRCNNConfig):
        super().__init__(parent.fast.inputs.data_dir, parent.run_dir, parent.quick,
                         parent.fast.inputs.device, cfg, parent.progress)
        self.parent = parent

    def proposals(self, split: str) -> list:
        return self.parent.proposals(split)

    def training_key(self) -> str:
        return config_hash({"base": super().training_key(), "rpn": self.parent.rpn_key(),
                            "from": self.parent.fast.training_key(),
                            "proposals": self.parent.cfg.train_proposals})

    def new_model(self) -> FastRCNN:
        trained = self.parent.fast.network()[0]
        return FastRCNN(copy.deepcopy(trained.trunk), copy.deepcopy(trained.head), trained.levels,
                        trained.rule, "none").to(self.device)

    def initialise(self, model, ds, rois) -> None:
        """The head is chapter 11's, its input scale already set."""


def train_rpn(trunk: torch.nn.Module, dataset, cfg: FasterRCNNConfig, scale: int, path: Path,
              device, flip: bool = True, progress: bool = True) -> tuple[RegionProposalNetwork, dict]:
    """Train a :class:`~sppnet_lite.rpn.RegionProposalNetwork` on the frozen ``trunk``.

    Each iteration takes one training image (flipped at random when ``flip``) at shorter
    side ``scale``, labels every anchor (:func:`~sppnet_lite.rpn.label_anchors`), samples
    ``anchors_per_image`` of them and takes one Adam step on :func:`~sppnet_lite.rpn.rpn_loss`,
    with the learning rate on a cosine. Image, flip and sample come from a generator seeded
    by ``(seed, iteration)``, and the checkpoint at ``path`` (written at least every
    ``checkpoint_seconds``) holds the Adam state, so a resumed run ends where an
    uninterrupted one would. Returns the RPN (eval mode) and its history. Taught in chapter 12."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rpn = RegionProposalNetwork(trunk.out_channels, cfg.sizes, cfg.ratios, trunk.stride,
                                cfg.mid_channels).to(device)
    optimiser = torch.optim.Adam(rpn.parameters(), lr=cfg.rpn_lr,
                                 fused=torch.device(device).type in ("cpu", "cuda"))
    history = {"loss": [], "classification": [], "box": [], "seconds": 0.0}
    start = 0
    if path.is_file():
        try:
            start, history = load_training_state(path, rpn, optimiser)
        except (ValueError, KeyError, RuntimeError):
            path.unlink()  # damaged, or another layout: train again
    bar = tqdm(range(start, cfg.rpn_iterations), desc="train RPN", initial=start, total=cfg.rpn_iterations,
               disable=not progress, leave=False)
    tic = last_save = time.perf_counter()
    elapsed = history["seconds"]
    maps: dict = {}  # the trunk is frozen: each (image, flip)'s conv5 map is computed once
    rpn.train()
    for it in bar:
        rng = np.random.default_rng([cfg.seed, it])
        i = int(rng.integers(len(dataset)))
        flipped = bool(flip and rng.random() < 0.5)
        if (i, flipped) not in maps:
            sample = dataset[i]
            image, gt = sample.image, as_boxes(sample.boxes, "gt_boxes")
            if flipped:
                image, gt = np.ascontiguousarray(image[:, ::-1]), flip_boxes(gt, image.shape[1])
            features, fx, fy = conv_map(trunk, image, scale, device)
            input_size = (round(image.shape[0] * fy), round(image.shape[1] * fx))
            maps[(i, flipped)] = (features.half(), gt * np.array([fx, fy, fx, fy], np.float32),
                                  input_size)
        features, gt, input_size = maps[(i, flipped)]
        objectness, deltas, labels, targets = rpn_batch(rpn, features.float(), gt, input_size, cfg, rng)
        loss, classification, box = rpn_loss(objectness, deltas, labels, targets)
        for group in optimiser.param_groups:
            group["lr"] = cfg.rpn_lr * 0.5 * (1 + math.cos(math.pi * it / cfg.rpn_iterations))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for name, value in (("loss", loss), ("classification", classification), ("box", box)):
            history[name].append(value.item())
        now = time.perf_counter()
        if now - last_save >= cfg.checkpoint_seconds or it + 1 == cfg.rpn_iterations:
            history["seconds"] = elapsed + now - tic
            save_training_state(path, rpn, optimiser, it + 1, history)
            last_save = now
    return rpn.eval(), history


def rpn_batch(rpn: RegionProposalNetwork, features: torch.Tensor, gt_boxes,
              input_size: tuple[int, int], cfg: FasterRCNNConfig, rng: np.random.Generator) -> tuple:
    """One image's RPN mini-batch from its conv5 ``features`` ``(1, C, H', W')``: the RPN's
    ``(objectness (A,), deltas (A, 4))``, the sampled ``labels`` (A,) (1, 0, or -1 for
    anchors left out) and ``targets`` (A, 4). ``gt_boxes`` and ``input_size = (H, W)`` are
    in the input frame, the image as the trunk saw it (:func:`conv_map`'s ``fx``, ``fy``
    applied). Taught in chapter 12."""
    anchors = rpn.anchors(*features.shape[-2:])
    border = float("inf") if cfg.allowed_border is None else cfg.allowed_border
    labels, matched = label_anchors(anchors, gt_boxes, input_size, cfg.positive_iou,
                                    cfg.negative_iou, border)
    labels = sample_anchors(labels, rng, cfg.anchors_per_image, cfg.positive_fraction)
    targets = anchor_targets(anchors, gt_boxes, np.where(labels == 1, matched, -1))
    objectness, deltas = rpn(features)
    device = objectness.device
    return objectness, deltas, torch.from_numpy(labels).to(device), torch.from_numpy(targets).to(device)


@torch.no_grad()
def conv_map(trunk: torch.nn.Module, image: np.ndarray, scale: int, device) -> tuple:
    """conv5 ``(1, C, H', W')`` of RGB uint8 ``image`` at shorter side ``scale`` and the
    factors ``(fx, fy)`` onto that input: one pass of the frozen ``trunk``."""
    resized, fx, fy = resize_shorter_side(image, scale)
    return trunk(_preprocess(resized, device)), fx, fy


def _preprocess(resized: np.ndarray, device) -> torch.Tensor:
    from .backbone import preprocess

    return preprocess(resized).to(device).contiguous(memory_format=torch.channels_last)


def _cached_proposals(path: Path, trained_rpn, trunk, dataset, scale: int, settings: dict,
                      progress: bool) -> list:
    """Every image's RPN proposals (original px), from ``path`` or computed with
    ``trained_rpn()`` and saved there atomically in one file (seconds per hundred images)."""
    from tqdm.auto import tqdm

    if path.is_file():
        try:
            arrays, meta = load_arrays(path)
            return [arrays[f"p{i}"] for i in range(meta["images"])]
        except (ValueError, KeyError):
            path.unlink()
    rpn = trained_rpn()
    device = next(rpn.parameters()).device
    proposals = []
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc="RPN proposals", disable=not progress, leave=False):
            image = dataset[i].image
            features, fx, fy = conv_map(trunk, image, scale, device)
            proposals.append(rpn.proposals(features, image.shape[:2], fx, fy, **settings)[0])
    save_arrays(path, {f"p{i}": p for i, p in enumerate(proposals)}, {"images": len(proposals)})
    return proposals


def default_faster_rcnn(quick: bool | None = None, progress: bool = True, data_dir=None,
                        fast_changes: dict | None = None, **changes) -> FasterRCNNPipeline:
    """The book's Faster R-CNN: chapter 11's Fast R-CNN (``fast_changes`` to its defaults)
    and ``changes`` to :class:`FasterRCNNConfig`'s, in a run folder of its own beside it."""
    from .fast_rcnn_training import default_fast_rcnn

    fast = default_fast_rcnn(quick, progress, data_dir, **(fast_changes or {}))
    cfg = FasterRCNNConfig.default(fast.quick, **changes)
    name = config_hash({"method": "faster-rcnn", "fast": fast.run_dir.name,
                        **{k: v for k, v in asdict(cfg).items() if k != "checkpoint_seconds"}})
    return FasterRCNNPipeline(fast, fast.run_dir.parent / name, cfg, progress)
