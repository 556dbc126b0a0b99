"""Chapter 11's measurements of Fast R-CNN: the cost of a training step by how its windows are
sampled, SPP-net's stage-wise heads on a Fast R-CNN's features, and truncated SVD of the FC
layers. Built on :mod:`sppnet_lite.fast_rcnn_training`. Taught in chapter 11.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .fast_rcnn import FastRCNNDetector, label_rois, multitask_loss, sample_rois
from .fast_rcnn_training import FastRCNNPipeline
from .pipeline import PipelineConfig


def time_minibatch(pipeline: FastRCNNPipeline, images: int, windows: int = 128,
                   repeats: int = 1) -> float:
    """Seconds of one training step (forward, backward, update) on ``windows`` windows
    drawn evenly from ``images`` training images: ``images = windows`` is SPP-net's and
    R-CNN's sampling (every window from another image), ``images = 2`` Fast R-CNN's. The
    median of ``repeats`` steps; the trained network is left untouched. Taught in chapter 11."""
    cfg = pipeline.cfg
    ds, proposals = pipeline.dataset(cfg.train_split), pipeline.proposals(cfg.train_split)
    model = pipeline.new_model().train()  # a fresh copy of the trunk
    optimiser = pipeline.new_optimiser(model)
    num_classes, scale = len(pipeline.class_names), cfg.training_scales()[0]
    rng = np.random.default_rng(cfg.seed)
    times = []
    for _ in range(repeats):
        chosen = rng.choice(len(ds), images, replace=images > len(ds))
        tic = time.perf_counter()
        pooled, labels, targets = [], [], []
        for i in chosen:
            sample = ds[int(i)]
            rois = label_rois(proposals[int(i)], sample.boxes, sample.labels, num_classes)
            boxes, lab, tgt = sample_rois(rois, num_classes, rng, max(windows // images, 1),
                                          cfg.fg_fraction, cfg.fg_iou, cfg.bg_iou)
            features, fx, fy = model.conv_features(sample.image, scale)
            pooled.append(model.pool(features, boxes, fx, fy))
            labels.append(lab)
            targets.append(tgt)
        logits, deltas = model.head(torch.cat(pooled))
        loss = multitask_loss(logits, deltas, torch.from_numpy(np.concatenate(labels)),
                              torch.from_numpy(np.concatenate(targets)))[0]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def stagewise_heads(detector: FastRCNNDetector, dataset, proposals, settings: PipelineConfig,
                    progress: bool = True):
    """SPP-net's later stages trained on a Fast R-CNN's features, for the comparison of
    chapter 11: linear SVMs on its fc7 and ridge box regressors on its pooled vectors, from
    the windows SPP-net's pipeline would store (:func:`sppnet_lite.windows.select_windows`
    with ``settings``' caps and thresholds). Returns ``(LinearSVMs, BoxRegressor)``."""
    from tqdm.auto import tqdm

    from .bbox_regression import train_box_regressor
    from .svm import train_svms
    from .windows import regression_targets, select_windows, svm_labels

    num_classes = len(detector.class_names)
    caps = (settings.fg_per_image, settings.mid_per_image, settings.low_per_image)
    parts, fc7, pooled_rows = [], [], []
    for i in tqdm(range(len(dataset)), desc="pool training windows", disable=not progress,
                  leave=False):
        sample = dataset[i]
        windows = select_windows(proposals[i], sample.boxes, sample.labels, sample.difficult,
                                 num_classes, caps, np.random.default_rng([settings.seed, i]),
                                 settings.fg_iou, settings.bg_iou)
        scores = detector.score(detector.pool(sample.image, windows["boxes"]))
        rows, targets = regression_targets(windows, settings.regression_iou)
        parts.append({**windows, "rows": rows, "targets": targets})
        fc7.append(scores.fc7)
        pooled_rows.append(scores.pooled[rows])
    windows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("rows", "targets")}
    positives, negatives = svm_labels(windows, num_classes, settings.svm_negative_iou)
    svms = train_svms(np.concatenate(fc7), positives, negatives, C=settings.svm_C,
                      rounds=settings.svm_rounds, cache_size=settings.svm_cache,
                      initial_negatives=min(2000, settings.svm_cache), seed=settings.seed,
                      progress=progress)
    labels = np.concatenate([p["labels"][p["rows"]] for p in parts])
    regressor = train_box_regressor(np.concatenate(pooled_rows), labels,
                                    np.concatenate([p["targets"] for p in parts]), num_classes,
                                    alpha=settings.regression_alpha)
    return svms, regressor


def evaluate_truncations(detector: FastRCNNDetector, dataset, proposals, ranks: dict,
                         max_images: int | None = None, progress: bool = True) -> dict:
    """Fast R-CNN's truncated SVD measured: ``ranks`` maps a name to ``(rank_fc6, rank_fc7)``
    (``(None, None)``: the whole head). One conv pass and pooling per image, then every
    truncated head scores the same pooled vectors. Returns ``{name: {"mAP", "mAP_all_point",
    "fc_seconds" (per image), "fc_multiply_adds" (per window)}}``. Taught in chapter 11."""
    from tqdm.auto import tqdm

    from .evaluate import evaluate_detections
    from .fast_rcnn import truncated_svd

    heads = {name: truncated_svd(detector.head, *rank) for name, rank in ranks.items()}
    detectors = {name: FastRCNNDetector(detector.backbone, head, detector.class_names,
                                        config=detector.config, device=detector.device)
                 for name, head in heads.items()}
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    found = {name: [] for name in ranks}
    seconds = dict.fromkeys(ranks, 0.0)
    truths = []
    for i in tqdm(range(n), desc="detect", disable=not progress, leave=False):
        sample = dataset[i]
        truths.append(sample)
        pooled = detector.pool(sample.image, proposals[i])
        for name, det in detectors.items():
            scores = det.score(pooled)
            seconds[name] += det.last_timing["fc"]
            found[name].append(det.postprocess(scores, proposals[i], sample.image.shape[:2]))
    out = {}
    for name, head in heads.items():
        result = evaluate_detections(found[name], truths, detector.class_names)
        adds = sum(p.numel() for n_, p in head.named_parameters() if n_.endswith("weight"))
        out[name] = {"mAP": result.mAP, "mAP_all_point": result.mAP_all_point,
                     "fc_seconds": seconds[name] / max(n, 1), "fc_multiply_adds": int(adds)}
    return out
