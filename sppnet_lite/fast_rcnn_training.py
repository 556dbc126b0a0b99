"""Training Fast R-CNN in one stage: hierarchical mini-batches, one loss, resumable.

:class:`FastRCNNPipeline` trains a :class:`~sppnet_lite.fast_rcnn.FastRCNN` on a VOC-layout
folder and saves a :class:`~sppnet_lite.fast_rcnn.FastRCNNDetector`. It takes the images,
the selective-search proposals and the pretrained trunk from the same
:class:`~sppnet_lite.pipeline.Pipeline` as SPP-net (so both methods see the same data),
and then has a single stage: no window vectors on disk, no SVMs, no separate regressor.
Training writes a checkpoint at least every ``checkpoint_seconds``; a killed run resumes
from it, and because every iteration draws its images, windows and dropout from a
generator seeded by ``(seed, iteration)`` a resumed run ends where an uninterrupted one
would. Taught in chapter 11.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .cache import config_hash, load_training_state, save_json_atomic, save_training_state
from .detector import FORMAT_VERSION, NMS_IOU, SCALES, SINGLE_SCALE
from .fast_rcnn import (
    IMAGES_PER_BATCH,
    ROIS_PER_IMAGE,
    FastRCNN,
    FastRCNNDetector,
    FastRCNNHead,
    flip_boxes,
    hierarchical_minibatch,
    jitter_boxes,
    label_rois,
    multitask_loss,
    sample_rois,
)
from .finetune import FG_FRACTION
from .pipeline import Pipeline, PipelineConfig
from .pretrain import trunk_key
from .voc import dataset_stamp
from .windows import BG_IOU, FG_IOU

INPUT_SETTINGS = ("backbone", "weights", "classes", "train_split", "val_split", "val_fraction",
                  "max_train_images", "scales", "levels", "rule", "nms_iou", "seed")
"""The :class:`FastRCNNConfig` fields that mean the same as SPP-net's :class:`PipelineConfig`'s:
the data, the trunk, the proposals and the pooling are shared."""

UNTRAINED_SETTINGS = ("checkpoint_seconds", "test_scales")
"""The :class:`FastRCNNConfig` fields that do not change the trained network (not in its key)."""


@dataclass
class FastRCNNConfig:
    """Every setting of Fast R-CNN training (all but ``checkpoint_seconds`` key its cache).

    ``scales``: shorter image sides for training, each image resized to one of them at
    random (``None``: the one-scale setting, :meth:`training_scales`); ``test_scales``: the
    saved detector's, each window pooled at the scale SPP-net would pick (``None``: the
    five-scale setting, the more accurate one in chapter 11, :meth:`testing_scales`);
    ``fine_tune_from``: ``"none"`` (frozen conv, SPP-net's limitation), ``"conv3"`` or
    ``"all"``; ``multitask``: train the box deltas with the classifier (else
    classification only, ``box_weight`` 0); ``jittered_per_gt``: extra foreground windows,
    random shifts of each ground truth; ``lr`` for the head, ``trunk_lr`` for the conv
    layers, both decayed on a cosine over ``iterations`` mini-batches of
    ``images_per_batch`` × ``rois_per_image`` windows.
    """

    backbone: str = "zflite"
    weights: str | None = None
    classes: tuple | None = None
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.2
    max_train_images: int | None = None
    scales: tuple | None = None
    test_scales: tuple | None = None
    levels: tuple = (6, 3, 2, 1)
    rule: str = "paper"
    fine_tune_from: str = "conv3"
    multitask: bool = True
    box_weight: float = 1.0
    iterations: int = 1600
    images_per_batch: int = IMAGES_PER_BATCH
    rois_per_image: int = ROIS_PER_IMAGE
    fg_fraction: float = FG_FRACTION
    fg_iou: float = FG_IOU
    bg_iou: tuple = BG_IOU
    jittered_per_gt: int = 0
    flip: bool = True
    hidden: int = 512
    lr: float = 1e-3
    trunk_lr: float = 3e-4
    weight_decay: float = 5e-4
    nms_iou: float = NMS_IOU
    seed: int = 0
    checkpoint_seconds: float = 60.0

    @staticmethod
    def default(quick: bool, **changes) -> FastRCNNConfig:
        """The book's settings (quick mode: 100 iterations instead of 1 600)."""
        base = FastRCNNConfig(iterations=100) if quick else FastRCNNConfig()
        return replace(base, **changes)

    def training_scales(self) -> tuple:
        """``scales``, or the one-scale setting: 448 px for ZFLite (as SPP-net's), the paper's
        688 px for a 224-px torchvision trunk."""
        return tuple(int(s) for s in (self.scales or self._defaults(multi_scale=False)))

    def testing_scales(self) -> tuple:
        """``test_scales``, or the five-scale setting (:data:`~sppnet_lite.detector.SCALES`
        for ZFLite, the paper's five for a torchvision trunk)."""
        return tuple(int(s) for s in (self.test_scales or self._defaults(multi_scale=True)))

    def _defaults(self, multi_scale: bool) -> tuple:
        from .features import default_scales

        if self.backbone == "zflite":
            return SCALES if multi_scale else SINGLE_SCALE
        return default_scales(224, multi_scale)


class FastRCNNPipeline:
    """Train Fast R-CNN on the VOC-layout folder ``data_dir``; checkpoints and the saved
    detector go to ``run_dir``. ``inputs`` is the SPP-net :class:`Pipeline` that supplies
    the splits, proposals and pretrained trunk. Taught in chapter 11."""

    METHOD = "fast-rcnn"
    """Names the checkpoint (and keys it): chapter 12 trains this network again on other proposals."""

    def __init__(self, data_dir, run_dir, quick: bool | None = None, device="auto",
                 config: FastRCNNConfig | None = None, progress: bool = True):
        from . import config as book_config

        quick = book_config.QUICK if quick is None else bool(quick)
        self.cfg = config or FastRCNNConfig.default(quick)
        shared = {name: getattr(self.cfg, name) for name in INPUT_SETTINGS}
        shared["scales"] = self.cfg.training_scales()
        self.inputs = Pipeline(data_dir, run_dir, quick, device,
                               PipelineConfig.default(quick, **shared), progress)
        self.quick, self.run_dir, self.progress = quick, Path(run_dir), progress
        self.device = self.inputs.device
        self.stage_seconds: dict = {}
        self._memo: dict = {}

    @property
    def class_names(self) -> tuple:
        return self.inputs.class_names

    def dataset(self, split: str):
        return self.inputs.dataset(split)

    def proposals(self, split: str) -> list:
        return self.inputs.proposals(split)

    def training_key(self) -> str:
        """The hash naming the checkpoint: every training setting, the trunk's weights,
        the data and the training images."""
        cfg = self.cfg
        settings = {k: v for k, v in asdict(cfg).items() if k not in UNTRAINED_SETTINGS}
        ds = self.dataset(cfg.train_split)
        return config_hash({"method": self.METHOD, "format": FORMAT_VERSION, "settings": settings,
                            "trunk": trunk_key(cfg.backbone, cfg.weights, self.quick),
                            "data": dataset_stamp(self.inputs.data_dir),
                            "images": list(ds.image_ids), "classes": list(self.class_names)})

    def checkpoint_path(self) -> Path:
        return self.run_dir / "stages" / f"{self.METHOD}-{self.training_key()}.npz"

    def network(self) -> tuple[FastRCNN, dict]:
        """The trained network and its history (``loss``, ``classification``, ``box`` per
        iteration, ``seconds``), resuming from or reusing the checkpoint."""
        if "network" not in self._memo:
            self._memo["network"] = self._train()
        return self._memo["network"]

    def detector(self, save: bool = True) -> FastRCNNDetector:
        """The trained detector (training it if needed), saved into ``run_dir``."""
        if "detector" not in self._memo:
            model = self.network()[0]
            config = replace(self.inputs.detector_config(), score="softmax",
                             scales=self.cfg.testing_scales())
            det = FastRCNNDetector(model.trunk.eval(), model.head.eval(), self.class_names,
                                   config=config, device=self.device)
            if save:
                self.inputs.check_run_dir()
                det.save(self.run_dir)
            self._memo["detector"] = det
        return self._memo["detector"]

    def run(self) -> FastRCNNDetector:
        """Every step in order, with a progress bar; writes ``run.json``."""
        from tqdm.auto import tqdm

        self.inputs.check_run_dir()
        splits = (self.cfg.train_split,)
        steps = [("dataset", lambda: [self.dataset(s) for s in splits]),
                 ("backbone", self.inputs.backbone),
                 ("proposals", lambda: [self.proposals(s) for s in splits]),
                 ("train Fast R-CNN", self.network), ("save detector", self.detector)]
        bar = tqdm(steps, desc="pipeline", disable=not self.progress)
        for name, step in bar:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            step()
            self.stage_seconds[name] = time.perf_counter() - start
        save_json_atomic(self.run_dir / "run.json", {
            "method": "fast-rcnn", "data": str(self.inputs.data_dir), "config": asdict(self.cfg),
            "notes": self.inputs.notes, "classes": list(self.class_names),
            "stage_seconds": self.stage_seconds})
        return self.detector()

    # -------------------------------------------------------------- training
    def _train(self) -> tuple[FastRCNN, dict]:
        from tqdm.auto import tqdm

        cfg, device = self.cfg, self.device
        ds, proposals = self.dataset(cfg.train_split), self.proposals(cfg.train_split)
        num_classes = len(self.class_names)
        model = self.new_model()
        optimiser = self.new_optimiser(model)
        path = self.checkpoint_path()
        history = {"loss": [], "classification": [], "box": [], "seconds": 0.0}
        start = 0
        if path.is_file():
            start, history = load_training_state(path, model, optimiser)
        if start >= cfg.iterations:
            return model.eval(), history
        rois = []
        for i in range(len(ds)):
            sample = ds.annotation(i)
            extra = jitter_boxes(sample.boxes, cfg.jittered_per_gt, np.random.default_rng([cfg.seed, i]))
            rois.append(label_rois(np.concatenate([extra, proposals[i]]), sample.boxes,
                                   sample.labels, num_classes))
        if start == 0:
            self.initialise(model, ds, rois)
        scales = cfg.training_scales()
        frozen_maps = {} if cfg.fine_tune_from == "none" else None  # conv5 maps reused
        model.train()
        tic = last_save = time.perf_counter()
        elapsed = history["seconds"]
        bar = tqdm(range(start, cfg.iterations), desc="train Fast R-CNN", initial=start,
                   total=cfg.iterations, disable=not self.progress, leave=False)
        for it in bar:
            rng = np.random.default_rng([cfg.seed, it])
            torch.manual_seed(cfg.seed * 1_000_003 + it)  # dropout, reproducible on resume
            pooled, labels, targets = [], [], []
            batch = hierarchical_minibatch(rois, num_classes, rng, cfg.images_per_batch,
                                           cfg.rois_per_image, cfg.fg_fraction, cfg.fg_iou, cfg.bg_iou)
            for i, boxes, lab, tgt in batch:
                flipped = bool(cfg.flip and rng.random() < 0.5)
                scale = int(scales[rng.integers(len(scales))])
                key = (i, flipped, scale)
                if frozen_maps is not None and key in frozen_maps:
                    features, fx, fy, width = frozen_maps[key]
                else:
                    image = ds[i].image
                    if flipped:
                        image = np.ascontiguousarray(image[:, ::-1])
                    features, fx, fy = model.conv_features(image, scale)
                    width = image.shape[1]
                    if frozen_maps is not None:
                        frozen_maps[key] = (features, fx, fy, width)
                if flipped:
                    boxes, tgt = flip_boxes(boxes, width), tgt * np.array([-1, 1, 1, 1], np.float32)
                pooled.append(model.pool(features, boxes, fx, fy))
                labels.append(lab)
                targets.append(tgt)
            logits, deltas = model.head(torch.cat(pooled))
            loss, classification, box = multitask_loss(
                logits, deltas, torch.from_numpy(np.concatenate(labels)).to(device),
                torch.from_numpy(np.concatenate(targets)).to(device),
                cfg.box_weight if cfg.multitask else 0.0)
            for group in optimiser.param_groups:  # cosine decay, a function of the iteration
                group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for name, value in (("loss", loss), ("classification", classification), ("box", box)):
                history[name].append(value.item())
            now = time.perf_counter()
            if now - last_save >= cfg.checkpoint_seconds or it + 1 == cfg.iterations:
                history["seconds"] = elapsed + now - tic
                save_training_state(path, model, optimiser, it + 1, history,
                                    {"fine_tune_from": cfg.fine_tune_from})
                last_save = now
        return model.eval(), history

    def new_model(self) -> FastRCNN:
        """A fresh network: a copy of the pretrained trunk and a new head, seeded."""
        import copy

        trunk = copy.deepcopy(self.inputs.backbone())  # the shared trunk stays pretrained
        levels = self.cfg.levels
        torch.manual_seed(self.cfg.seed)
        head = FastRCNNHead(trunk.out_channels * sum(n * n for n in levels), len(self.class_names),
                            self.cfg.hidden)
        return FastRCNN(trunk, head.to(self.device), levels, self.cfg.rule,
                        self.cfg.fine_tune_from).to(self.device)

    def initialise(self, model: FastRCNN, ds, rois: list) -> None:
        """Before the first iteration: scale the new head's input (chapter 07's rule)."""
        _set_input_scale(model, ds, rois, self.cfg)

    def new_optimiser(self, model: FastRCNN) -> torch.optim.Optimizer:
        """Adam over the head (``lr``) and the trainable conv layers (``trunk_lr``), fused into
        one kernel per step as chapter 07's fine-tuning is (several times faster on a CPU)."""
        cfg = self.cfg
        groups = [{"params": list(model.head.parameters()), "lr": cfg.lr, "initial_lr": cfg.lr}]
        trunk = [p for p in model.trunk.parameters() if p.requires_grad]
        if trunk:
            groups.append({"params": trunk, "lr": cfg.trunk_lr, "initial_lr": cfg.trunk_lr})
        return torch.optim.Adam(groups, weight_decay=cfg.weight_decay,
                                fused=torch.device(self.device).type in ("cpu", "cuda"))


def _set_input_scale(model: FastRCNN, ds, rois: list, cfg: FastRCNNConfig, images: int = 8) -> None:
    """Scale the head's input so pooled vectors have a mean squared entry near 1 (chapter
    07's rule), measured on windows of the first few training images."""
    rng = np.random.default_rng(cfg.seed)
    squares = []
    with torch.no_grad():
        for i in range(min(images, len(ds))):
            boxes = sample_rois(rois[i], len(model.head.fc8.bias) - 1, rng, cfg.rois_per_image,
                                cfg.fg_fraction, cfg.fg_iou, cfg.bg_iou)[0]
            features, fx, fy = model.conv_features(ds[i].image, cfg.training_scales()[0])
            squares.append(float((model.pool(features, boxes, fx, fy) ** 2).mean()))
    model.head.input_scale.fill_(1.0 / max(math.sqrt(float(np.mean(squares))), 1e-6))


def default_fast_rcnn(quick: bool | None = None, progress: bool = True, data_dir=None,
                      **changes) -> FastRCNNPipeline:
    """The book's Fast R-CNN: the generated SynthVOC set (or ``data_dir``), the run under
    ``build/cache/runs``, ``changes`` to :class:`FastRCNNConfig`'s defaults."""
    from . import config as book_config
    from .data import ensure_dataset

    quick = book_config.QUICK if quick is None else bool(quick)
    cfg = FastRCNNConfig.default(quick, **changes)
    data_dir = Path(data_dir) if data_dir is not None else ensure_dataset(quick)
    settings = {k: v for k, v in asdict(cfg).items() if k not in UNTRAINED_SETTINGS}
    name = config_hash({"method": "fast-rcnn", "quick": quick, "data": str(data_dir), **settings})
    return FastRCNNPipeline(data_dir, book_config.CACHE_DIR / "runs" / name, quick, "auto", cfg,
                            progress)
