"""SynthVOC: a small, offline, scale-varied detection dataset in the Pascal VOC layout.

The scenes are drawn by :mod:`sppnet_lite.synthvoc` and written in the VOC layout that
:mod:`sppnet_lite.voc` reads. Everything a generated image contains is decided by
``numpy.random.default_rng`` seeded with ``(seed, split, index)``, so the same seed
gives the same bytes whatever the number of worker processes. This module also makes
chapter 04's single-object classification images and the pretraining scenes.

Taught in chapter 04.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import config
from .cache import UMASK, config_hash
from .synthvoc import render_scene, render_single_object
from .voc import STAMP_NAME, Sample, annotation_xml

RECIPE_PATH = config.ROOT / "data" / "recipe.json"

SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "pretrain": 3, "classification": 4}


def load_recipe(path: str | os.PathLike | None = None) -> dict:
    """Read the generator's recipe (``data/recipe.json`` by default)."""
    path = Path(path) if path is not None else RECIPE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"recipe: no file at {str(path)!r}; expected the repository's "
                                "data/recipe.json (or pass path=... to load_recipe)")
    return json.loads(path.read_text())


CLASSES: tuple[str, ...] = tuple(load_recipe()["classes"]) if RECIPE_PATH.is_file() else (
    "disc", "square", "triangle", "star", "cross", "ring")
"""SynthVOC's class names; label ``k`` indexes this tuple."""


# ----------------------------------------------------------------------------------------
# Generate SynthVOC in the VOC layout
# ----------------------------------------------------------------------------------------

def recipe_hash(recipe: dict, quick: bool) -> str:
    """Hash of everything that determines a generated set's bytes."""
    return config_hash({"recipe": recipe, "quick": bool(quick)})


def make_dataset(out_dir: str | os.PathLike, seed: int | None = None, quick: bool = False,
                 workers: int = 2, recipe: dict | None = None) -> Path:
    """Generate SynthVOC in VOC layout under ``out_dir`` and return ``out_dir``.

    Writes ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml``,
    ``ImageSets/Main/{train,val,trainval,test}.txt``, ``classes.txt`` and a
    ``recipe_hash.txt`` stamp. ``seed`` defaults to the recipe's; ``quick`` selects
    the recipe's small split sizes. Same seed and recipe → identical files.
    Taught in chapter 04.
    """
    recipe = dict(recipe or load_recipe())
    if seed is not None:
        recipe["seed"] = int(seed)
    sizes = recipe["splits"]["quick" if quick else "full"]
    out = Path(out_dir)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(split, i) for split in ("train", "val", "test") for i in range(sizes[split])]
    args = [(recipe, split, i, str(out)) for split, i in jobs]
    if workers > 1 and len(args) > 8:
        # "spawn", never "fork": a process that has started torch's or OpenCV's thread
        # pools (a notebook, pytest) can deadlock a forked child on a lock held at fork time.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            ids = pool.map(_write_one, args, chunksize=16)
    else:
        ids = [_write_one(a) for a in args]
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for (split, _), image_id in zip(jobs, ids):
        by_split[split].append(image_id)
    by_split["trainval"] = by_split["train"] + by_split["val"]
    for split, names in by_split.items():
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    (out / "classes.txt").write_text("".join(c + "\n" for c in recipe["classes"]))
    (out / STAMP_NAME).write_text(recipe_hash(recipe, quick) + "\n")
    return out


def ensure_dataset(quick: bool | None = None, root: str | os.PathLike | None = None,
                   recipe: dict | None = None) -> Path:
    """Return the default SynthVOC folder, generating it only if missing or stale.

    ``data/synthvoc-quick`` or ``data/synthvoc-full`` (under ``config.DATA_DIR``; another
    ``recipe`` gives ``data/<its name>-...``). The folder is regenerated when its
    ``recipe_hash.txt`` differs from the recipe's hash; generation writes into a
    temporary folder renamed into place when complete. Taught in chapter 04.
    """
    quick = config.QUICK if quick is None else bool(quick)
    recipe = recipe or load_recipe()
    expected = recipe_hash(recipe, quick)
    target = Path(root) if root is not None else (
        config.DATA_DIR / f"{recipe['name']}-{'quick' if quick else 'full'}")
    if _stamp(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private
        make_dataset(tmp, quick=quick, recipe=recipe)
        if target.exists():
            stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.stale."))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _stamp(target) != expected:  # lost a race to a writer of a different recipe
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def shifted_recipe() -> dict:
    """SynthVOC's six shapes drawn as 3-px outlines instead of filled, on the same
    backgrounds: thin lines, the look of the clutter (lines, scribbles) that pretraining
    taught the trunk to ignore; smaller splits. The domain shift of chapter 11."""
    recipe = load_recipe()
    return {**recipe, "name": "synthvoc-outlines", "object_style": "outline", "outline_px": 3,
            "seed": 11, "splits": {"full": {"train": 60, "val": 10, "test": 40},
                                   "quick": {"train": 16, "val": 4, "test": 8}}}


# ----------------------------------------------------------------------------------------
# Single-object classification images (chapter 04) and scenes for pretraining crops
# ----------------------------------------------------------------------------------------

@dataclass
class ClassificationSet:
    """Single-object images for chapter 04.

    images: list of RGB uint8 ``(H, W, 3)`` of varying size; labels: int64 ``(N,)``;
    boxes: float32 ``(N, 4)`` x1y1x2y2 of the object; scale: float32 ``(N,)`` the
    object's side (sqrt of box area) divided by the image's shorter side.
    """

    images: list
    labels: np.ndarray
    boxes: np.ndarray
    scale: np.ndarray
    class_names: tuple

    def __len__(self) -> int:
        return len(self.images)


def make_classification_set(n: int, seed: int | None = None, side: tuple[int, int] = (64, 192),
                            scale: tuple[float, float] = (0.2, 0.8), offset: int = 0,
                            recipe: dict | None = None) -> ClassificationSet:
    """``n`` images, each with exactly one object, on SynthVOC-style backgrounds
    (fewer photographs and distractors than the detection scenes).

    Image sides are uniform in ``side`` (so aspect varies up to the ratio of its
    bounds); the object's longer side is ``scale`` × the image's shorter side
    (log-uniform), its aspect 1:2 to 2:1, its position uniform in the image (often
    off-centre). ``offset`` shifts the image indices so train and test sets drawn
    with one seed do not overlap. Taught in chapter 04.
    """
    recipe = recipe or load_recipe()
    seed = recipe["classification_seed"] if seed is None else seed
    images, labels, boxes, scales = [], [], [], []
    for i in range(offset, offset + n):
        rng = np.random.default_rng([seed, SPLIT_CODES["classification"], i])
        width, height = (int(v) for v in rng.integers(side[0], side[1] + 1, size=2))
        longer = min(width, height) * math.exp(rng.uniform(*np.log(scale)))
        image, box, label = render_single_object(rng, recipe, width, height, longer)
        images.append(image)
        labels.append(label)
        boxes.append(box)
        bw, bh = box[2] - box[0], box[3] - box[1]
        scales.append(math.sqrt(bw * bh) / min(width, height))
    return ClassificationSet(images, np.asarray(labels, np.int64),
                             np.asarray(boxes, np.float32).reshape(-1, 4),
                             np.asarray(scales, np.float32), tuple(recipe["classes"]))


def make_scenes(n: int, seed: int | None = None, offset: int = 0,
                recipe: dict | None = None) -> list[Sample]:
    """``n`` SynthVOC scenes in memory (the pretraining split: its own seed).

    Returns :class:`Sample` tuples with ``image_id`` ``"pretrain_<i>"``.
    Taught in chapter 04.
    """
    recipe = recipe or load_recipe()
    seed = recipe["pretrain_seed"] if seed is None else seed
    out = []
    for i in range(offset, offset + n):
        rng = np.random.default_rng([seed, SPLIT_CODES["pretrain"], i])
        image, objects = render_scene(rng, recipe)
        boxes, labels, difficult = _objects_to_arrays(objects)
        out.append(Sample(image, boxes, labels, difficult, f"pretrain_{i:06d}"))
    return out


# ----------------------------------------------------------------------------------------
# Helpers: files
# ----------------------------------------------------------------------------------------

def _stamp(folder: Path) -> str | None:
    path = folder / STAMP_NAME
    return path.read_text().strip() if path.is_file() else None



def _worker_init() -> None:
    cv2.setNumThreads(1)


def _write_one(args) -> str:
    recipe, split, index, out = args
    rng = np.random.default_rng([recipe["seed"], SPLIT_CODES[split], index])
    image, objects = render_scene(rng, recipe)
    image_id = f"{split}_{index:06d}"
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(recipe["jpeg_quality"])])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {image_id}")
    Path(out, "JPEGImages", f"{image_id}.jpg").write_bytes(jpg.tobytes())
    Path(out, "Annotations", f"{image_id}.xml").write_text(
        annotation_xml(image_id, image.shape, objects, recipe["classes"]))
    return image_id


def _objects_to_arrays(objects):
    boxes = np.asarray([o["box"] for o in objects], np.float32).reshape(-1, 4)
    labels = np.asarray([o["label"] for o in objects], np.int64)
    difficult = np.asarray([o["difficult"] for o in objects], bool)
    return boxes, labels, difficult


