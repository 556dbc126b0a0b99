"""Pretraining ZFLite: the book's stand-in for ImageNet, cached by its settings.

:func:`ensure_pretrained` trains ZFLite (with an SPP classifier on top) to classify
crops of SynthVOC objects, plus a background class, cut from a separate pretraining
split with its own seed, and caches the trunk's weights under
``build/cache/checkpoints/<hash>.npz``, keyed by every setting that determines them:
a changed setting trains anew, an interrupted run leaves no half-written file.
Taught in chapter 04 (used from chapter 06 on).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import config
from .backbone import Classifier, ZFLite, preprocess, torchvision_trunk
from .cache import config_hash, file_hash, load_weights, save_weights

CHECKPOINT_FORMAT = 2
PRETRAIN_VERSION = 2


def save_checkpoint(model: ZFLite, path: str | os.PathLike, config_dict: dict,
                    info: dict | None = None) -> str:
    """Save ``model``'s weights with ``config_dict`` and its hash, atomically.

    ``info`` (plain numbers/strings, e.g. training time and accuracy) is stored too
    and comes back as ``.pretrain_info``. Returns the hash (``cache.config_hash`` of
    ``config_dict``). Taught in chapter 04.
    """
    digest = config_hash(config_dict)
    save_weights(path, model.state_dict(), {
        "format": CHECKPOINT_FORMAT, "config": config_dict, "config_hash": digest,
        "model_config": model.config(), "info": dict(info or {})})
    return digest


def load_checkpoint(path: str | os.PathLike, expected_hash: str | None = None,
                    device: torch.device | str | None = None) -> ZFLite:
    """Load a ZFLite checkpoint written by :func:`save_checkpoint` (eval mode).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for a file that is
    not such a checkpoint (corrupt, truncated, foreign) or whose config hash differs
    from ``expected_hash``. The model gets ``.checkpoint_hash``. Taught in chapter 04.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint at {str(path)!r}; create one with "
                                "ensure_pretrained() or save_checkpoint()")
    state, meta = load_weights(path)
    if meta.get("format") != CHECKPOINT_FORMAT or any(
            key not in meta for key in ("config_hash", "model_config")):
        raise ValueError(f"path: {str(path)!r} is not a sppnet-lite checkpoint (format "
                         f"{CHECKPOINT_FORMAT}); delete it and rerun ensure_pretrained()")
    if expected_hash is not None and meta["config_hash"] != expected_hash:
        raise ValueError(f"checkpoint {str(path)!r} has config hash {meta['config_hash']!r}, "
                         f"expected {expected_hash!r}: it was trained with other settings; "
                         "delete it or rerun ensure_pretrained()")
    model = ZFLite(meta["model_config"]["widths"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or misshapen weights
        raise ValueError(f"checkpoint {str(path)!r} does not hold ZFLite's weights "
                         f"({str(err).strip().splitlines()[0]}); delete it and rerun") from None
    model.checkpoint_hash = meta["config_hash"]
    model.pretrain_info = meta.get("info", {})
    return model.to(device or "cpu").eval()


def pretrained_trunk(backbone: str = "zflite", weights: str | os.PathLike | None = None,
                     quick: bool | None = None, device: torch.device | str | None = None,
                     progress: bool = True) -> nn.Module:
    """The trunk a detector starts from, in eval mode: ZFLite pretrained on SynthVOC
    (:func:`ensure_pretrained`), or torchvision's ``alexnet``/``vgg16``/``resnet18`` with
    the ImageNet weights in the local file ``weights``. Taught in chapter 10."""
    if backbone == "zflite":
        return ensure_pretrained(quick, device=device, progress=progress)
    if weights is None:
        raise ValueError(f"backbone {backbone!r} needs a weights file (--weights FILE: "
                         "torchvision's ImageNet state dict; see the README)")
    return torchvision_trunk(backbone, weights).to(device or "cpu")


def trunk_key(backbone: str = "zflite", weights: str | os.PathLike | None = None,
              quick: bool | None = None) -> str:
    """What :func:`pretrained_trunk` will hold, known without training or loading it: the
    hash of ZFLite's pretraining settings, or the SHA-256 of the weights file."""
    if backbone == "zflite":
        return config_hash(pretrain_config(quick))
    return file_hash(weights, length=64)


def pretrain_config(quick: bool | None = None) -> dict:
    """Every setting that determines the pretrained weights (hashed into the file name)."""
    from .data import load_recipe, recipe_hash

    quick = config.QUICK if quick is None else bool(quick)
    recipe = load_recipe()
    return {
        "version": PRETRAIN_VERSION, "model": ZFLite().config(),
        "recipe": recipe_hash(recipe, quick=False), "seed": recipe["pretrain_seed"],
        "scenes": 300 if quick else 700, "crops_per_object": 3, "context": [1.0, 2.5], "background_fraction": 0.3,
        "size": ZFLite.canonical_size, "epochs": 5 if quick else 7, "batch_size": 64,
        "lr": 1e-3, "weight_decay": 1e-4, "levels": [6, 3, 2, 1],
    }


def checkpoint_path(quick: bool | None = None) -> Path:
    """Where :func:`ensure_pretrained` keeps the pretrained ZFLite of this mode:
    ``config.CACHE_DIR / "checkpoints" / <hash of its settings>.npz`` (the file may not
    exist yet; its stem is the hash :func:`load_checkpoint` expects)."""
    return config.CACHE_DIR / "checkpoints" / f"{config_hash(pretrain_config(quick))}.npz"


def ensure_pretrained(quick: bool | None = None, device: torch.device | str | None = None,
                      progress: bool = True) -> ZFLite:
    """Return the pretrained ZFLite (eval mode, ``.checkpoint_hash`` set).

    Trains once (≈1 min quick, ≈3 min full on 2 CPU cores) and caches the weights
    at ``config.CACHE_DIR / "checkpoints" / <hash>.npz``; a later call with the same
    settings loads them, a call with other settings trains anew (never a stale
    file). Taught in chapter 04.
    """
    cfg = pretrain_config(quick)
    path = checkpoint_path(quick)
    digest = path.stem
    device = config.get_device() if device is None else torch.device(device)
    if path.is_file():
        try:
            return load_checkpoint(path, expected_hash=digest, device=device)
        except ValueError:
            path.unlink(missing_ok=True)  # corrupt cache file: train again
    model, info = pretrain(cfg, device=device, progress=progress)
    save_checkpoint(model, path, cfg, info)
    model.checkpoint_hash = digest
    return model.to(device).eval()


def pretraining_crops(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the pretraining scenes: uint8 ``(N, s, s, 3)`` and labels ``(N,)``.

    Object crops (label = class) are windows around an object whose side is its
    longer side times ``cfg["context"]`` (log-uniform, e.g. 1–2.5: the object
    fills all or as little as 40 % of the crop), whose aspect ratio is jittered
    (2:3 to 3:2; the object keeps its own) and which are shifted up to ±20 % of
    the object's size, so partial views occur; background
    crops (label = number of classes) are random windows of 16–240 px overlapping
    every object's box by IoU < 0.3 and holding < 40 % of any object, many of
    them near objects. All are warped
    to ``cfg["size"]``. Taught in chapter 04.
    """
    import cv2

    from .data import load_recipe, make_scenes

    recipe = load_recipe()
    num_classes = len(recipe["classes"])
    rng = np.random.default_rng(cfg["seed"] + 1000)
    size = cfg["size"]
    crops, labels = [], []
    for scene in make_scenes(cfg["scenes"], seed=cfg["seed"], recipe=recipe):
        image, boxes = scene.image, scene.boxes
        height, width = image.shape[:2]
        windows, window_labels = [], []
        for box, label in zip(boxes, scene.labels):
            w, h = box[2] - box[0], box[3] - box[1]
            for _ in range(cfg["crops_per_object"]):
                side = max(w, h) * math.exp(rng.uniform(*np.log(cfg["context"])))
                aspect = math.exp(rng.uniform(-0.4, 0.4))
                cx = (box[0] + box[2]) / 2 + rng.uniform(-0.2, 0.2) * w
                cy = (box[1] + box[3]) / 2 + rng.uniform(-0.2, 0.2) * h
                side_w, side_h = max(side * math.sqrt(aspect), 8), max(side / math.sqrt(aspect), 8)
                windows.append([cx - side_w / 2, cy - side_h / 2,
                                cx + side_w / 2, cy + side_h / 2])
                window_labels.append(int(label))
        fraction = cfg["background_fraction"]
        n_bg = round(len(windows) * fraction / (1 - fraction))
        tries = 0
        while n_bg > 0 and tries < 50 * max(n_bg, 1):
            tries += 1
            side = math.exp(rng.uniform(math.log(16), math.log(240)))
            aspect = math.exp(rng.uniform(-0.7, 0.7))
            bw, bh = side * math.sqrt(aspect), side / math.sqrt(aspect)
            if len(boxes) and rng.random() < 0.5:  # near an object: hard negatives
                b = boxes[rng.integers(len(boxes))]
                cx = rng.uniform(b[0] - bw / 2, b[2] + bw / 2)
                cy = rng.uniform(b[1] - bh / 2, b[3] + bh / 2)
            else:
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            win = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            if len(boxes) and _overlaps(win, boxes) >= 0.3:
                continue
            windows.append(list(win))
            window_labels.append(num_classes)
            n_bg -= 1
        for win, label in zip(windows, window_labels):
            crops.append(_crop_warp(image, win, size, cv2))
            labels.append(label)
    return np.stack(crops), np.asarray(labels, np.int64)


def pretrain(cfg: dict, device: torch.device | str = "cpu", progress: bool = True
             ) -> tuple[ZFLite, dict]:
    """Train a fresh ZFLite + SPP head on :func:`pretraining_crops` (AdamW, one-cycle LR,
    horizontal flips). Returns the trunk and ``{"seconds", "train_accuracy",
    "val_accuracy", "crops"}``. Taught in chapter 04."""
    from tqdm.auto import tqdm

    from .data import load_recipe

    start = time.perf_counter()
    num_classes = len(load_recipe()["classes"]) + 1
    crops, labels = pretraining_crops(cfg)
    rng = np.random.default_rng(cfg["seed"])
    order = rng.permutation(len(labels))
    n_val = max(len(labels) // 10, 1)
    val_idx, train_idx = order[:n_val], order[n_val:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        trunk = ZFLite(cfg["model"]["widths"])
        net = Classifier(trunk, num_classes, "spp", cfg["levels"]).to(device)
        steps_per_epoch = math.ceil(len(train_idx) / cfg["batch_size"])
        opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=steps_per_epoch
                                                    * cfg["epochs"], pct_start=0.2)
        bar = tqdm(total=steps_per_epoch * cfg["epochs"], desc="pretraining ZFLite",
                   disable=not progress, leave=False)
        correct = seen = 0
        for _epoch in range(cfg["epochs"]):
            net.train()
            perm = rng.permutation(train_idx)
            correct = seen = 0
            for b in range(steps_per_epoch):
                idx = perm[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]]
                batch = crops[idx]
                flip = rng.random(len(idx)) < 0.5
                batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
                x = preprocess(batch, device)
                y = torch.from_numpy(labels[idx]).to(device)
                logits = net(x)
                loss = nn.functional.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                correct += int((logits.argmax(1) == y).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        val_acc = _accuracy(net, crops[val_idx], labels[val_idx], device)
    info = {"seconds": time.perf_counter() - start, "train_accuracy": correct / max(seen, 1),
            "val_accuracy": val_acc, "crops": len(labels)}
    trunk.pretrain_info = info
    return trunk.cpu().eval(), info


@torch.no_grad()
def _accuracy(net, crops, labels, device, batch_size=256) -> float:
    net.eval()
    correct = 0
    for b in range(0, len(labels), batch_size):
        logits = net(preprocess(crops[b:b + batch_size], device))
        correct += int((logits.argmax(1).cpu().numpy() == labels[b:b + batch_size]).sum())
    return correct / max(len(labels), 1)


def _overlaps(window: np.ndarray, boxes: np.ndarray) -> float:
    """Largest of IoU(window, box) and the fraction of a box inside the window: a
    background crop may neither match an object nor contain most of one."""
    from torchvision.ops import box_iou

    win = torch.as_tensor(window[None], dtype=torch.float32)
    gts = torch.as_tensor(boxes, dtype=torch.float32)
    lt, rb = torch.maximum(win[:, :2], gts[:, :2]), torch.minimum(win[:, 2:], gts[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    covered = inter / ((gts[:, 2:] - gts[:, :2]).prod(1)).clamp(min=1e-6)
    return float(torch.maximum(box_iou(win, gts)[0], covered / 0.4 * 0.3).max())


def _crop_warp(image, window, size, cv2) -> np.ndarray:
    """Cut ``window`` (x1y1x2y2; parts outside the image replicate its border) and
    resize it to size×size (area interpolation when shrinking)."""
    height, width = image.shape[:2]
    x1, y1 = math.floor(window[0]), math.floor(window[1])
    x2, y2 = max(math.ceil(window[2]), x1 + 1), max(math.ceil(window[3]), y1 + 1)
    pad = (max(-y1, 0), max(y2 - height, 0), max(-x1, 0), max(x2 - width, 0))
    if any(pad):
        image = cv2.copyMakeBorder(image, *pad, cv2.BORDER_REPLICATE)
        x1, x2, y1, y2 = x1 + pad[2], x2 + pad[2], y1 + pad[0], y2 + pad[0]
    patch = image[y1:y2, x1:x2]
    shrink = patch.shape[0] > size and patch.shape[1] > size
    return cv2.resize(patch, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
