"""Training SPP-net (or the R-CNN baseline) stage by stage, each stage cached and resumable.

Stages, in the paper's order: the trunk (ZFLite pretrained on SynthVOC, or a
torchvision trunk with local ImageNet weights) → proposals (the shared
selective-search cache) → the stored windows and their pooled vectors (a
:class:`~sppnet_lite.window_store.WindowStore`) → FC fine-tuning → SVMs → box
regression → the saved detector. One helper caches every stage: a stage's file is
named by the hash of the settings it reads and of its inputs' keys
(:meth:`Pipeline.stage_key`), written atomically, so an interrupted run resumes and a
changed setting never reads a stale file. :class:`PipelineConfig` owns every
training threshold, one name each. Taught in chapters 07–10.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbone import TRUNKS, backbone_name
from .cache import (
    config_hash,
    load_arrays,
    save_arrays,
    save_json_atomic,
    state_arrays,
    state_tensors,
)
from .detector import FORMAT_VERSION, NMS_IOU, SCALES, DetectorConfig, SPPNetDetector
from .finetune import FG_FRACTION, FCHead, head_outputs, train_fc_head
from .pretrain import pretrained_trunk, trunk_key
from .voc import Subset, VOCDataset, dataset_stamp, training_splits
from .windows import BG_IOU, FG_IOU, REGRESSION_IOU, SVM_NEGATIVE_IOU

STAGE_SETTINGS = {
    "windows": ("extractor", "levels", "rule", "fg_per_image", "mid_per_image", "low_per_image",
                "fg_iou", "bg_iou", "seed"),
    "head": ("hidden", "iterations", "batch_size", "lr", "val_windows", "fg_iou", "bg_iou",
             "fg_fraction", "seed"),
    "svms": ("svm_C", "svm_rounds", "svm_cache", "svm_negative_iou", "seed"),
    "regressor": ("regression_iou", "regression_alpha"),
}
"""The :class:`PipelineConfig` fields each training stage reads (and so its cache key hashes)."""


@dataclass
class PipelineConfig:
    """Settings of every training stage; each stage's cache key hashes the ones it reads.

    ``backbone``: ``"zflite"`` or a torchvision trunk with its local ``weights`` file;
    ``scales``: ``None`` gives :data:`~sppnet_lite.detector.SCALES` for ZFLite, the paper's
    five for a 224-px trunk; ``classes``: ``None`` takes the training split's; a missing
    val split is ``val_fraction`` of the training split; per training image, every ground
    truth plus at most ``fg_per_image`` windows with IoU ≥ ``fg_iou``, ``mid_per_image`` in
    ``bg_iou`` and ``low_per_image`` below it. Every IoU threshold has one name here.
    """

    backbone: str = "zflite"
    weights: str | None = None
    extractor: str = "spp"
    scales: tuple | None = None
    levels: tuple = (6, 3, 2, 1)
    rule: str = "paper"
    classes: tuple | None = None
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.2
    max_train_images: int | None = None
    fg_per_image: int = 32
    mid_per_image: int = 48
    low_per_image: int = 32
    fg_iou: float = FG_IOU
    bg_iou: tuple = BG_IOU
    fg_fraction: float = FG_FRACTION
    svm_negative_iou: float = SVM_NEGATIVE_IOU
    regression_iou: float = REGRESSION_IOU
    nms_iou: float = NMS_IOU
    hidden: int = 512
    iterations: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    val_windows: int = 8000
    svm_C: float = 1e-3
    svm_rounds: int = 2
    svm_cache: int = 10000
    regression_alpha: float = 1000.0
    seed: int = 0

    @staticmethod
    def default(quick: bool, **changes) -> PipelineConfig:
        """The book's settings (quick mode: fewer fine-tuning iterations, a smaller SVM cache)."""
        base = PipelineConfig(iterations=500, svm_cache=4000) if quick else PipelineConfig()
        return PipelineConfig(**{**asdict(base), **changes})


class Pipeline:
    """Train a detector on the VOC-layout folder ``data_dir``, caching each stage in ``run_dir``.

    The stages are public methods: chapters 07–10 call them one by one; :meth:`run`, what
    ``sppnet-lite train`` runs, calls them all and saves the detector. The stored windows go
    to ``windows_dir`` (default ``run_dir/windows``), which pipelines that differ only in
    later stages' settings may share. ``notes`` says what the pipeline decided for you.
    """

    def __init__(self, data_dir, run_dir, quick: bool | None = None, device="auto",
                 config: PipelineConfig | None = None, progress: bool = True, windows_dir=None):
        from . import config as book_config

        self.quick = book_config.QUICK if quick is None else bool(quick)
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.windows_dir = Path(windows_dir) if windows_dir is not None else self.run_dir / "windows"
        self.device = book_config.get_device(device) if isinstance(device, str) else torch.device(device)
        self.cfg = config or PipelineConfig.default(self.quick)
        if self.cfg.extractor not in ("spp", "rcnn"):
            raise ValueError(f"extractor must be 'spp' or 'rcnn', got {self.cfg.extractor!r}")
        if self.cfg.backbone not in ("zflite", *TRUNKS):
            raise ValueError(f"backbone must be 'zflite' or one of {TRUNKS}, got {self.cfg.backbone!r}")
        if self.cfg.backbone != "zflite" and self.cfg.weights is None:
            raise ValueError(f"backbone {self.cfg.backbone!r} needs a weights file (--weights FILE)")
        self.progress = progress
        self.stage_seconds: dict = {}
        self.notes: list[str] = []
        self._memo: dict = {}

    # -------------------------------------------------------------- inputs
    def dataset(self, split: str):
        """The images of ``split``: the training split (cut to ``max_train_images``), the
        validation split (held out of the training split when the folder has none), or any
        other split of the folder (e.g. ``"test"``), with the training split's class names."""
        key = ("dataset", split)
        if key not in self._memo:
            cfg = self.cfg
            if split in (cfg.train_split, cfg.val_split):
                ds = self._training_splits()[split != cfg.train_split]
            else:
                ds = VOCDataset(self.data_dir, split, classes=self.class_names)
            if len(ds) == 0:
                raise ValueError(f"split {split!r} of {str(self.data_dir)!r} lists no images")
            self._memo[key] = ds
        return self._memo[key]

    def _training_splits(self):
        if "splits" not in self._memo:
            cfg = self.cfg
            train, val, notes = training_splits(self.data_dir, cfg.train_split, cfg.val_split,
                                                cfg.classes, cfg.val_fraction, cfg.seed)
            for note in notes:
                self._note(note)
            if cfg.max_train_images is not None:
                limit = cfg.max_train_images
                train = Subset(train, range(min(limit, len(train))))
                val = Subset(val, range(min(max(limit // 2, 1), len(val))))
            self._memo["splits"] = (train, val)
        return self._memo["splits"]

    @property
    def class_names(self) -> tuple:
        return tuple(self.dataset(self.cfg.train_split).class_names)

    def backbone(self) -> nn.Module:
        """The frozen trunk: pretrained ZFLite (trained once, cached) or a torchvision trunk."""
        if "backbone" not in self._memo:
            self._memo["backbone"] = pretrained_trunk(self.cfg.backbone, self.cfg.weights,
                                                      self.quick, self.device, self.progress)
        return self._memo["backbone"]

    def detector_config(self) -> DetectorConfig:
        """The inference settings the trained detector will carry."""
        from .features import default_scales

        cfg = self.cfg
        scales = cfg.scales or (SCALES if cfg.backbone == "zflite" else default_scales(224, True))
        return DetectorConfig(levels=tuple(cfg.levels), rule=cfg.rule, extractor=cfg.extractor,
                              scales=tuple(int(s) for s in scales), nms_iou=cfg.nms_iou)

    def proposals(self, split: str) -> list:
        """Cached selective-search boxes of every image of ``split``: (P, 4) arrays."""
        from .proposals import ensure_proposals

        key = ("proposals", split)
        if key not in self._memo:
            self._memo[key] = ensure_proposals(self.dataset(split), progress=self.progress,
                                               workers=max(2, min(8, os.cpu_count() or 2)))
        return self._memo[key]

    # -------------------------------------------------------------- cache keys
    def stage_key(self, stage: str) -> str:
        """The hash naming ``stage``'s cache: the settings it reads and its inputs' keys.

        ``stage`` is ``"windows-<split>"``, ``"head"``, ``"svms-fc7"``, ``"svms-pool5"``
        or ``"regressor"``."""
        cfg = self.cfg
        kind = stage.split("-")[0]
        if not (stage.startswith("windows-") or stage in ("head", "svms-fc7", "svms-pool5",
                                                          "regressor")):
            raise ValueError(f"stage must be windows-<split>, head, svms-fc7, svms-pool5 or "
                             f"regressor, got {stage!r}")
        settings = {name: getattr(cfg, name) for name in STAGE_SETTINGS[kind]}
        train = f"windows-{cfg.train_split}"
        if kind == "windows":
            split = stage[len("windows-"):]
            ds = self.dataset(split)
            inputs = {"backbone": trunk_key(cfg.backbone, cfg.weights, self.quick),
                      "scales": self.detector_config().scales, "data": dataset_stamp(self.data_dir),
                      "images": list(ds.image_ids), "classes": list(self.class_names)}
        elif kind == "head":
            inputs = {"train": self.stage_key(train), "val": self.stage_key(f"windows-{cfg.val_split}")}
        elif stage == "svms-fc7":
            inputs = {"train": self.stage_key(train), "head": self.stage_key("head")}
        else:  # svms-pool5, regressor
            inputs = {"train": self.stage_key(train)}
        return config_hash({"stage": stage, "format": FORMAT_VERSION, "settings": settings,
                            "inputs": inputs})

    def _cached(self, stage: str, needs, compute, encode, decode):
        """Memo, else the stage file ``stages/<stage>-<key>.npz``, else compute and save it.

        ``needs()`` fetches the stage's inputs first, so that the seconds ``compute()``
        takes — saved with the stage, see :meth:`training_seconds` — are this stage's own.
        ``encode(value) -> (arrays, meta)`` and ``decode(arrays, meta) -> value``."""
        if stage not in self._memo:
            path = self.run_dir / "stages" / f"{stage}-{self.stage_key(stage)}.npz"
            value = None
            if path.is_file():
                try:
                    arrays, meta = load_arrays(path)
                    value = decode(arrays, meta)
                except (ValueError, RuntimeError, KeyError):  # damaged or from an older layout
                    path.unlink(missing_ok=True)
            if value is None:
                needs()
                tic = time.perf_counter()
                value = compute()
                arrays, meta = encode(value)
                meta = {**meta, "seconds": time.perf_counter() - tic}
                save_arrays(path, arrays, meta)
            self._memo[stage] = value
            self._memo[("seconds", stage)] = meta.get("seconds")
        return self._memo[stage]

    def window_store(self, split: str):
        """The :class:`~sppnet_lite.window_store.WindowStore` that holds (or will hold, once
        :meth:`windows` has run) ``split``'s windows: named by the windows stage's key and
        the extractor's settings, so opening it computes nothing."""
        key = ("store", split)
        if key not in self._memo:
            from .detector import make_extractor
            from .window_store import WindowStore

            extractor = make_extractor(self.backbone(), self.detector_config(), self.device)
            name = f"{split}-{self.stage_key(f'windows-{split}')[:8]}"
            self._memo[key] = WindowStore.for_extractor(extractor, name=name, root=self.windows_dir)
        return self._memo[key]

    def training_seconds(self) -> dict:
        """Seconds each training stage took when it was computed (cached stages report the
        time recorded then): ``windows`` (choosing, pooling and storing the training and
        validation windows), ``head``, ``svms``, ``regressor``; ``None`` where unrecorded.
        Proposals and the trunk's pretraining are not included. Taught in chapter 11."""
        self.detector(save=False)
        splits = (self.cfg.train_split, self.cfg.val_split)
        windows = [self.window_store(split).build_seconds(list(self.dataset(split).image_ids))
                   for split in splits]
        return {"windows": None if None in windows else sum(windows),
                **{name: self._memo[("seconds", stage)] for name, stage in
                   (("head", "head"), ("svms", "svms-fc7"), ("regressor", "regressor"))}}

    # -------------------------------------------------------------- stage 1: windows
    def windows(self, split: str) -> dict:
        """The stored windows of ``split`` (:func:`sppnet_lite.windows.select_windows`'s dict)
        with their ``pooled`` vectors, float16 (N, D), and ``image_index`` (N,). Taught in
        chapter 07."""
        key = ("windows", split)
        if key in self._memo:
            return self._memo[key]
        from .detector import make_extractor
        from .windows import select_windows

        cfg = self.cfg
        ds, proposals = self.dataset(split), self.proposals(split)
        caps = (cfg.fg_per_image, cfg.mid_per_image, cfg.low_per_image)

        def boxes_fn(i, sample):
            rng = np.random.default_rng([cfg.seed, i])
            return select_windows(proposals[i], sample.boxes, sample.labels, sample.difficult,
                                  len(self.class_names), caps, rng, cfg.fg_iou, cfg.bg_iou)

        store = self.window_store(split)
        store.build(ds, make_extractor(self.backbone(), self.detector_config(), self.device),
                    boxes_fn, progress=self.progress)
        self._memo[key] = store.load(list(ds.image_ids))
        return self._memo[key]

    # -------------------------------------------------------------- stage 2: FC fine-tuning
    def head(self) -> tuple[FCHead, dict]:
        """The fine-tuned fc6/fc7/fc8 head and its training history (cached)."""
        cfg = self.cfg

        def compute():
            train, val = self.windows(cfg.train_split), self.windows(cfg.val_split)
            return train_fc_head(train["pooled"], train["labels"], train["ious"],
                                 len(self.class_names), hidden=cfg.hidden,
                                 iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr,
                                 fg_fraction=cfg.fg_fraction, fg_iou=cfg.fg_iou, bg_iou=cfg.bg_iou,
                                 device=self.device, seed=cfg.seed, progress=self.progress,
                                 val=(val["pooled"], val["labels"]), val_windows=cfg.val_windows)

        def encode(value):
            head, history = value
            return state_arrays(head.state_dict()), {"history": history, "in_dim": head.in_dim}

        def decode(arrays, meta):
            head = FCHead(meta["in_dim"], len(self.class_names), cfg.hidden)
            head.load_state_dict(state_tensors(arrays))
            return head.eval(), meta["history"]

        return self._cached("head", lambda: (self.windows(cfg.train_split),
                                             self.windows(cfg.val_split)), compute, encode, decode)

    def fc7(self, split: str) -> np.ndarray:
        """fc7 activations (N, hidden) float32 of the stored windows of ``split``."""
        key = ("fc7", split)
        if key not in self._memo:
            self._memo[key] = head_outputs(self.head()[0], self.windows(split)["pooled"])[0]
        return self._memo[key]

    # -------------------------------------------------------------- stage 3: SVMs
    def svms(self, on: str = "fc7"):
        """Per-class linear SVMs on ``fc7`` (the detector's) or ``pool5`` vectors (ablation)."""
        from .svm import LinearSVMs, train_svms
        from .windows import svm_labels

        cfg = self.cfg
        if on not in ("fc7", "pool5"):
            raise ValueError(f"on must be 'fc7' or 'pool5', got {on!r}")

        def compute():
            train = self.windows(cfg.train_split)
            positives, negatives = svm_labels(train, len(self.class_names), cfg.svm_negative_iou)
            vectors = self.fc7(cfg.train_split) if on == "fc7" else train["pooled"]
            return train_svms(vectors, positives, negatives, C=cfg.svm_C, rounds=cfg.svm_rounds,
                              cache_size=cfg.svm_cache, initial_negatives=min(2000, cfg.svm_cache),
                              seed=cfg.seed, progress=self.progress)

        def decode(arrays, meta):
            svms = LinearSVMs.from_arrays(arrays)
            svms.history = meta["history"]
            return svms

        needs = (lambda: (self.windows(cfg.train_split), self.head())) if on == "fc7" else (
            lambda: self.windows(cfg.train_split))
        return self._cached(f"svms-{on}", needs, compute,
                            lambda svms: (svms.to_arrays(), {"history": svms.history}), decode)

    # -------------------------------------------------------------- stage 4: box regression
    def regressor(self):
        """Class-specific ridge box regressors on the pooled vectors (cached)."""
        from .bbox_regression import BoxRegressor, train_box_regressor
        from .windows import regression_targets

        cfg = self.cfg

        def compute():
            train = self.windows(cfg.train_split)
            rows, targets = regression_targets(train, cfg.regression_iou)
            return train_box_regressor(np.asarray(train["pooled"][rows], np.float32),
                                       train["labels"][rows], targets, len(self.class_names),
                                       alpha=cfg.regression_alpha)

        return self._cached("regressor", lambda: self.windows(cfg.train_split), compute, lambda reg: (reg.to_arrays(), {}),
                            lambda arrays, meta: BoxRegressor.from_arrays(arrays))

    # -------------------------------------------------------------- the detector
    def detector(self, save: bool = True) -> SPPNetDetector:
        """The trained detector (training what is not cached yet), saved into ``run_dir``."""
        if "detector" not in self._memo:
            if save:
                self.check_run_dir()
            det = SPPNetDetector(self.backbone(), self.head()[0], self.class_names,
                                 self.svms("fc7"), self.regressor(), self.detector_config(),
                                 self.device)
            if save:
                det.save(self.run_dir)
            self._memo["detector"] = det
        return self._memo["detector"]

    def run(self) -> SPPNetDetector:
        """Every stage in order, with a progress bar over the stages."""
        from tqdm.auto import tqdm

        self.check_run_dir()
        splits = (self.cfg.train_split, self.cfg.val_split)
        steps = [("dataset", lambda: [self.dataset(s) for s in splits]),
                 ("backbone", self.backbone),
                 ("proposals", lambda: [self.proposals(s) for s in splits]),
                 ("windows", lambda: [self.windows(s) for s in splits]),
                 ("fine-tune FC", self.head), ("SVMs", self.svms),
                 ("box regression", self.regressor), ("save detector", self.detector)]
        bar = tqdm(steps, desc="pipeline", disable=not self.progress)
        for name, step in bar:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            step()
            self.stage_seconds[name] = time.perf_counter() - start
        save_json_atomic(self.run_dir / "run.json", {  # what was decided, set and timed
            "data": str(self.data_dir), "config": asdict(self.cfg), "notes": self.notes,
            "classes": list(self.class_names), "stage_seconds": self.stage_seconds})
        return self.detector()

    def check_run_dir(self) -> None:
        """Refuse to overwrite a run trained with another trunk."""
        path = self.run_dir / "config.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text()).get("backbone", {})
        if (backbone_name(saved), saved.get("checkpoint_hash")) != (
                self.cfg.backbone, trunk_key(self.cfg.backbone, self.cfg.weights, self.quick)):
            raise ValueError(f"run folder {str(self.run_dir)!r} holds a detector trained with "
                             f"backbone {backbone_name(saved)!r} and other weights; choose another "
                             "--out")

    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self.progress:
            print(f"sppnet-lite: {message}", flush=True)


def default_pipeline(quick: bool | None = None, progress: bool = True, data_dir=None,
                     **changes) -> Pipeline:
    """The book's pipeline: the generated SynthVOC set (or ``data_dir``), stages cached under
    ``build/cache/runs``, ``changes`` to :class:`PipelineConfig`'s defaults.

    Its stored windows go to ``build/cache/windows``, shared by every ``changes`` that
    leaves the trunk, the extractor and the window sampling alone (e.g. ``iterations``)."""
    from . import config as book_config
    from .data import ensure_dataset

    quick = book_config.QUICK if quick is None else bool(quick)
    cfg = PipelineConfig.default(quick, **changes)
    other_data = {} if data_dir is None else {"data": str(data_dir)}
    name = config_hash({"quick": quick, **other_data, **asdict(cfg)})
    data_dir = Path(data_dir) if data_dir is not None else ensure_dataset(quick)
    return Pipeline(data_dir, book_config.CACHE_DIR / "runs" / name, quick, "auto", cfg,
                    progress, windows_dir=book_config.CACHE_DIR / "windows")

