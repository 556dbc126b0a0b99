"""Chapter 04's experiment: one backbone, three ways to feed it images of any size.

* ``warp``: resize every image to ``size × size`` (aspect distorted), FC head.
* ``crop``: resize the shorter side to ``size``, keep the central ``size × size``
  (the rest, perhaps the object, is lost), FC head.
* ``spp``: resize the shorter side to ``size`` keeping the aspect ratio, the whole
  image goes through the trunk, an SPP layer turns the conv5 map of any size into
  a fixed-length vector, same FC head. ``spp`` trains at one size; ``spp-multi``
  alternates two sizes epoch by epoch, after the paper's multi-size training: the
  shorter side is 96 px in even epochs and 72 px in odd ones, the longer side in
  proportion. (The paper alternates 224×224 crops and the same crops resized to
  180×180, a ratio of 0.80; ours is 0.75, and 72 is not a multiple of the 16-px
  stride: conv5 is 5 cells high at 72 px, 6 at 96.)

The FC heads are identical: the fixed-size head max-pools the 6×6 conv5 map of a
96×96 input into 3×3 bins; the SPP head pools {3, 2, 1} — on a 96×96 input its
3×3 level *is* the fixed-size head's pooling, the two coarser levels are extra.

Batches of variable-size images: every image is resized so its shorter side is
``size`` and its longer side a multiple of the stride (16 px, an aspect change
of at most 8 px); images of one shape form a bucket and a batch never mixes
buckets (the paper trains each size as a separate fixed-size network).

Every trained network is cached (:func:`ensure_classifier`), so the comparison
(:func:`compare_methods`), the pyramid ablation on 96×96 crops
(:func:`compare_pyramids`), the crop-vs-full-image test (:func:`crop_vs_full`) and
the chapter's widget share one training of each.

Taught in chapter 04.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from . import config
from .backbone import Classifier, ZFLite, preprocess
from .cache import config_hash, load_weights, save_weights
from .spp_numpy import check_levels

METHODS = ("warp", "crop", "spp", "spp-multi")

PYRAMIDS = {"no SPP": None, "SPP {4, 3, 2, 1}": (4, 3, 2, 1), "SPP {6, 3, 2, 1}": (6, 3, 2, 1)}
"""The pooling after conv5 in :func:`compare_pyramids`, all on 96×96 centre crops: ``None``
is the fixed-size FC head (a 2×2/2 max-pool of the 6×6 conv5 map, i.e. one 3×3 level: 9
bins), a tuple an SPP head with that pyramid (30 and 50 bins)."""


# ----------------------------------------------------------------------------------------
# Input transforms: RGB uint8 (H, W, 3) -> RGB uint8
# ----------------------------------------------------------------------------------------

def warp(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size × size`` whatever the aspect ratio. Taught in chapter 04."""
    return _resize(image, size, size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size``, keep the central ``size × size``.
    Taught in chapter 04."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = _resize(image, new_w, new_h)
    y0, x0 = (new_h - size) // 2, (new_w - size) // 2
    return resized[y0:y0 + size, x0:x0 + size]


def resize_shorter(image: np.ndarray, size: int, multiple: int = 16) -> np.ndarray:
    """Resize the shorter side to ``size``, the longer side to the nearest multiple
    of ``multiple`` of its aspect-preserving length. Taught in chapter 04."""
    height, width = image.shape[:2]
    longer = max(height, width) * size / min(height, width)
    longer = max(multiple * round(longer / multiple), size)
    new_w, new_h = (longer, size) if width >= height else (size, longer)
    return _resize(image, int(new_w), int(new_h))


def transform(method: str, image: np.ndarray, size: int) -> np.ndarray:
    """The input transform of ``method`` (one of :data:`METHODS`) at ``size``."""
    if method == "warp":
        return warp(image, size)
    if method == "crop":
        return center_crop(image, size)
    if method in ("spp", "spp-multi"):
        return resize_shorter(image, size)
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------

def bucket_batches(images: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """Index arrays of at most ``batch_size`` images of one shape, in random order."""
    buckets: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        buckets.setdefault(image.shape, []).append(i)
    batches = []
    for members in buckets.values():
        members = rng.permutation(members)
        batches += [members[b:b + batch_size] for b in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_classifier(method: str, images: Sequence[np.ndarray], labels: np.ndarray,
                     num_classes: int, trunk: nn.Module, epochs: int, sizes: Sequence[int],
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     device: torch.device | str = "cpu", progress: bool = True,
                     levels: Sequence[int] | None = None, history: list | None = None
                     ) -> Classifier:
    """Fine-tune ``trunk`` (a copy is not made: pass a fresh one) + a new head.

    ``images``: RGB uint8 ``(H, W, 3)`` of any size; ``labels``: int64 ``(N,)``. ``sizes``
    are used in turn, one per epoch (``[96]`` single-size, ``[96, 72]`` multi-size;
    ``warp``/``crop`` take one size). ``levels=None`` gives ``method``'s own head (the
    fixed-size FC head for ``warp``/``crop``, SPP {3, 2, 1} for ``spp``/``spp-multi``); a
    pyramid such as ``(4, 3, 2, 1)`` gives an SPP head with those levels on ``method``'s
    input (``"crop"`` with ``(4, 3, 2, 1)``: 96×96 crops, a 30-bin pyramid). AdamW, cosine
    LR, horizontal flips. Head initialisation, batch order, flips and dropout all follow
    ``seed`` (the global random state is left as it was), so equal inputs give equal
    weights. ``history``: a list to which every optimisation step appends ``{"epoch",
    "size", "shape": (images, height, width) of its batch, "loss": float}``, in order.
    Returns the classifier in eval mode. Taught in chapter 04.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method in ("warp", "crop") and len(set(sizes)) != 1:
        raise ValueError(f"sizes: {method!r} needs one fixed size, got {list(sizes)}")
    head = _head(method, levels)
    device = torch.device(device)
    cuda = [torch.cuda.current_device() if device.index is None else device.index
            ] if device.type == "cuda" else []
    rng = np.random.default_rng(seed)
    inputs = {s: [transform(method, im, s) for im in images] for s in set(sizes)}
    plans = [bucket_batches(inputs[sizes[e % len(sizes)]], batch_size, rng) for e in range(epochs)]
    bar = tqdm(total=sum(len(p) for p in plans), desc=f"train {method}", disable=not progress,
               leave=False)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        net = Classifier(trunk, num_classes, **head, fixed_size=sizes[0]).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, sum(len(p) for p in plans))
        for epoch, plan in enumerate(plans):
            size = sizes[epoch % len(sizes)]
            net.train()
            for idx in plan:
                batch = np.stack([inputs[size][i] for i in idx])
                flip = rng.random(len(idx)) < 0.5
                batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
                logits = net(preprocess(batch, device))
                target = torch.from_numpy(labels[idx]).to(device)
                loss = nn.functional.cross_entropy(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if history is not None:
                    history.append({"epoch": epoch, "size": size, "shape": batch.shape[:3],
                                    "loss": loss.item()})
                bar.update(1)
                bar.set_postfix(epoch=epoch, size=size, loss=f"{loss.item():.3f}")
    bar.close()
    return net.eval()


@torch.no_grad()
def predict(net: Classifier, method: str, images: Sequence[np.ndarray], size: int,
            batch_size: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """Predicted labels ``(N,)`` int64 for ``images`` under ``method``'s transform at
    ``size``. Taught in chapter 04."""
    net.eval()
    inputs = [transform(method, im, size) for im in images]
    out = np.zeros(len(inputs), np.int64)
    for idx in bucket_batches(inputs, batch_size, np.random.default_rng(0)):
        logits = net(preprocess(np.stack([inputs[i] for i in idx]), device))
        out[idx] = logits.argmax(1).cpu().numpy()
    return out


def accuracy_by_bin(correct: np.ndarray, values: np.ndarray, edges: Sequence[float]) -> dict:
    """Accuracy of ``correct`` (bool ``(N,)``) within bins ``[edges[i], edges[i+1])``
    of ``values``: ``{"centers", "accuracy", "count"}`` (NaN accuracy for empty bins)."""
    edges = np.asarray(edges, float)
    which = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
    acc, count = [], []
    for b in range(len(edges) - 1):
        members = correct[which == b]
        count.append(len(members))
        acc.append(float(members.mean()) if len(members) else float("nan"))
    centers = [float(c) for c in (edges[:-1] + edges[1:]) / 2]
    return {"centers": centers, "accuracy": acc, "count": count}


def experiment_config(quick: bool | None = None) -> dict:
    """Settings of chapter 04's comparison (quick mode: fewer images and epochs)."""
    quick = config.QUICK if quick is None else bool(quick)
    return {"train_images": 1000 if quick else 3000, "test_images": 400 if quick else 1200,
            "epochs": 4 if quick else 12, "size": 96, "multi_sizes": [96, 72],
            "batch_size": 32, "lr": 1e-3, "seed": 0, "side": [64, 192],
            "scale": [0.25, 0.9]}


def experiment_images(split: str, quick: bool | None = None):
    """Chapter 04's ``"train"`` or ``"test"`` images: a
    :class:`sppnet_lite.data.ClassificationSet` of single-object RGB uint8 images as
    :func:`experiment_config` sets them (the test images follow the training ones, so the
    two never overlap). Generated once per process and settings and kept in memory: every
    experiment of the chapter uses the same ones. Taught in chapter 04."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    cfg = experiment_config(quick)
    n, offset = ((cfg["train_images"], 0) if split == "train"
                 else (cfg["test_images"], cfg["train_images"]))
    return _classification_set(n, tuple(cfg["side"]), tuple(cfg["scale"]), offset)


def ensure_classifier(method: str, quick: bool | None = None,
                      levels: Sequence[int] | None = None,
                      device: torch.device | str | None = None,
                      progress: bool = True, seed: int | None = None) -> tuple[Classifier, float]:
    """Chapter 04's ``method`` network, trained once: ``(net, train_seconds)``, the net on the
    CPU in eval mode.

    The pretrained ZFLite (:func:`sppnet_lite.pretrain.ensure_pretrained`) fine-tuned by
    :func:`train_classifier` on ``experiment_images("train")`` with
    :func:`experiment_config`'s settings and seed (or ``seed``: the same images, another
    initialisation, batch order and dropout); ``levels`` as there (``None``: the
    method's own head). The weights are saved atomically under ``config.CACHE_DIR /
    "classifiers" / "<name>-<hash>.npz"``, the hash covering those settings, ``method``,
    ``levels`` and the trunk's checkpoint hash, with the training's seconds; a later call
    loads them and reports those seconds. A file that cannot be read is deleted, with a
    warning, and the network trained again. ``device``: where to train
    (:func:`sppnet_lite.config.get_device` by default). Taught in chapter 04.
    """
    from .data import load_recipe
    from .pretrain import ensure_pretrained

    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    levels = None if levels is None else check_levels(levels)
    cfg = experiment_config(quick)
    if seed is not None:
        cfg = {**cfg, "seed": int(seed)}
    pretrained = ensure_pretrained(quick=quick, device="cpu", progress=progress)
    spec = {"method": method, "levels": None if levels is None else list(levels),
            "experiment": cfg, "trunk": pretrained.checkpoint_hash}
    name = method if levels is None else f"{method}-spp{'-'.join(map(str, levels))}"
    path = config.CACHE_DIR / "classifiers" / f"{name}-{config_hash(spec)}.npz"
    if path.is_file():
        try:
            state, meta = load_weights(path)
            net = Classifier(_copy_of(pretrained), len(load_recipe()["classes"]),
                             **_head(method, levels), fixed_size=cfg["size"])
            net.load_state_dict(state)
            return net.eval(), float(meta["train_seconds"])
        except (ValueError, RuntimeError, KeyError) as err:  # damaged, foreign or incomplete
            warnings.warn(f"{str(path)!r} cannot be loaded ({type(err).__name__}: {err}); "
                          f"deleting it and training {name} again", stacklevel=2)
            path.unlink(missing_ok=True)
    train = experiment_images("train", quick)
    device = config.get_device() if device is None else torch.device(device)
    start = time.perf_counter()
    net = train_classifier(method, train.images, train.labels, len(train.class_names),
                           _copy_of(pretrained), cfg["epochs"], _sizes(method, cfg),
                           cfg["batch_size"], cfg["lr"], cfg["seed"], device, progress, levels)
    seconds = time.perf_counter() - start
    net = net.cpu().eval()
    save_weights(path, net.state_dict(), {**spec, "train_seconds": seconds})
    return net, seconds


def compare_methods(quick: bool | None = None, methods: Sequence[str] = METHODS,
                    device: torch.device | str | None = None, progress: bool = True,
                    seed: int | None = None) -> dict:
    """Train and test every method on one generated single-object split.

    Each method fine-tunes a fresh copy of the pretrained ZFLite
    (:func:`sppnet_lite.pretrain.ensure_pretrained`) with the same seed (``seed``, default
    :func:`experiment_config`'s), once
    (:func:`ensure_classifier`: a later call, or a later experiment, reuses the network).
    Returns ``{"config", "methods": {name: {"accuracy", "train_seconds", "sizes",
    "by_scale", "by_aspect"}}, "test_scale", "test_aspect"}`` plus per-method
    ``predictions`` (lists, for plots). Taught in chapter 04.
    """
    from .pretrain import ensure_pretrained

    cfg = experiment_config(quick)
    if seed is not None:
        cfg = {**cfg, "seed": int(seed)}
    device = config.get_device() if device is None else torch.device(device)
    test = experiment_images("test", quick)
    pretrained = ensure_pretrained(quick=quick, device="cpu", progress=progress)
    aspect = np.array([max(im.shape[:2]) / min(im.shape[:2]) for im in test.images])
    results = {"config": cfg, "checkpoint": pretrained.checkpoint_hash, "methods": {},
               "test_scale": test.scale.tolist(), "test_aspect": aspect.tolist(),
               "test_labels": test.labels.tolist()}
    for method in methods:
        net, seconds = ensure_classifier(method, quick, device=device, progress=progress,
                                         seed=cfg["seed"])
        pred = predict(net.to(device), method, test.images, cfg["size"], device=device)
        correct = pred == test.labels
        results["methods"][method] = {
            "accuracy": float(correct.mean()), "train_seconds": round(seconds, 1),
            "sizes": _sizes(method, cfg),
            "by_scale": accuracy_by_bin(correct, test.scale, [0.1, 0.3, 0.45, 0.6, 0.9]),
            "by_aspect": accuracy_by_bin(correct, aspect, [1.0, 1.25, 1.6, 2.0, 3.1]),
            "predictions": pred.tolist()}
    return results


def compare_pyramids(quick: bool | None = None, device: torch.device | str | None = None,
                     progress: bool = True) -> dict:
    """The pooling after conv5, and nothing else, changed: one network per entry of
    :data:`PYRAMIDS`, each the pretrained ZFLite fine-tuned on 96×96 centre crops with
    :func:`compare_methods`' settings and seed (:func:`ensure_classifier` ``("crop",
    levels=...)``; "no SPP" is the comparison's ``"crop"`` network itself), tested on its
    test images as 96×96 crops.

    Returns ``{name: {"levels": the pooled grids (the fixed-size head's: [3]), "bins": Σ n²,
    "accuracy", "train_seconds"}}``. Taught in chapter 04.
    """
    cfg = experiment_config(quick)
    device = config.get_device() if device is None else torch.device(device)
    test = experiment_images("test", quick)
    fixed_grid = math.ceil(cfg["size"] / ZFLite.stride) // 2  # Classifier's FC head: 2×2/2 pool
    results = {}
    for name, levels in PYRAMIDS.items():
        net, seconds = ensure_classifier("crop", quick, levels, device, progress)
        pred = predict(net.to(device), "crop", test.images, cfg["size"], device=device)
        grids = list(levels) if levels is not None else [fixed_grid]
        results[name] = {"levels": grids, "bins": sum(n * n for n in grids),
                         "accuracy": float((pred == test.labels).mean()),
                         "train_seconds": round(seconds, 1)}
    return results


def crop_vs_full(quick: bool | None = None, device: torch.device | str | None = None,
                 progress: bool = True) -> dict:
    """One network, two ways to test it: the single-size SPP network
    (:func:`ensure_classifier` ``("spp")``) on the test images fed whole (shorter side
    ``size``, as it was trained) and as their central ``size × size`` crop.

    Returns ``{"full image": accuracy, "centre crop": accuracy}``; the first is
    :func:`compare_methods`' ``"spp"`` accuracy. Taught in chapter 04.
    """
    cfg = experiment_config(quick)
    device = config.get_device() if device is None else torch.device(device)
    test = experiment_images("test", quick)
    net, _ = ensure_classifier("spp", quick, device=device, progress=progress)
    net.to(device)
    return {feed: float((predict(net, method, test.images, cfg["size"], device=device)
                         == test.labels).mean())
            for feed, method in (("full image", "spp"), ("centre crop", "crop"))}


def _head(method: str, levels: Sequence[int] | None) -> dict:
    """:class:`Classifier`'s head arguments for ``method`` and ``levels`` (see
    :func:`train_classifier`)."""
    if levels is None:
        return {"head": "spp" if method.startswith("spp") else "fc"}
    return {"head": "spp", "levels": check_levels(levels)}


def _sizes(method: str, cfg: dict) -> list[int]:
    """The training sizes of ``method`` under :func:`experiment_config` ``cfg``."""
    return list(cfg["multi_sizes"]) if method == "spp-multi" else [cfg["size"]]


def _copy_of(pretrained: ZFLite) -> ZFLite:
    """A fresh ZFLite holding ``pretrained``'s weights (fine-tuning changes the copy)."""
    trunk = ZFLite(pretrained.widths)
    trunk.load_state_dict(pretrained.state_dict())
    return trunk


@functools.lru_cache(maxsize=2)  # one mode's training and test images
def _classification_set(n: int, side: tuple, scale: tuple, offset: int):
    from .data import make_classification_set

    return make_classification_set(n, side=side, scale=scale, offset=offset)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width < image.shape[1] and height < image.shape[0]
    return cv2.resize(image, (int(width), int(height)),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
