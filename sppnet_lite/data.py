"""SynthVOC: a small, offline, scale-varied detection dataset in the Pascal VOC layout.

Six shape classes (``disc``, ``square``, ``triangle``, ``star``, ``cross``, ``ring``) are
drawn with random colours, textures, stretches (aspect 1:2 to 2:1) and sizes (16 to
200 px) on cluttered backgrounds (patches of scikit-learn's two sample photographs,
gradients, noise) next to distractors that belong to no class (lines, scribbles,
jagged blobs). Shape, not colour, identifies a class. Objects may occlude each other
and be cut by the image border (``truncated``); tiny or heavily occluded ones are
marked ``difficult``, as in VOC.

Everything a generated image contains is decided by ``numpy.random.default_rng``
seeded with ``(seed, split, index)``, so the same seed gives the same bytes whatever
the number of worker processes.

Box convention. VOC XML stores 1-based, inclusive pixel indices. The package uses
continuous x1y1x2y2 pixel-edge coordinates, float32: a box covering columns
``c0..c1`` (0-based, inclusive) is ``x1 = c0, x2 = c1 + 1``. Reading converts
``(xmin - 1, ymin - 1, xmax, ymax)``; writing is the exact inverse.

Taught in chapter 04.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from . import config
from .cache import UMASK, config_hash

RECIPE_PATH = config.ROOT / "data" / "recipe.json"

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")
"""The 20 PASCAL VOC 2007 classes, in the devkit's order."""

STAMP_NAME = "recipe_hash.txt"
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


class Sample(NamedTuple):
    """One annotated image.

    image: RGB uint8 ``(H, W, 3)`` (``None`` from :meth:`VOCDataset.annotation`);
    boxes: float32 ``(K, 4)`` x1y1x2y2 pixel edges; labels: int64 ``(K,)``;
    difficult: bool ``(K,)``; image_id: the file stem.
    """

    image: np.ndarray | None
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    image_id: str


# ----------------------------------------------------------------------------------------
# Public API: generate, ensure, read
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


def ensure_dataset(quick: bool | None = None, root: str | os.PathLike | None = None) -> Path:
    """Return the default SynthVOC folder, generating it only if missing or stale.

    ``data/synthvoc-quick`` or ``data/synthvoc-full`` (under ``config.DATA_DIR``). The
    folder is regenerated when its ``recipe_hash.txt`` differs from the recipe's hash;
    generation writes into a temporary folder renamed into place when complete.
    Taught in chapter 04.
    """
    quick = config.QUICK if quick is None else bool(quick)
    recipe = load_recipe()
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


class VOCDataset:
    """Any VOC-layout folder: SynthVOC or a real PASCAL VOC 2007 devkit.

    ``root`` is the folder holding ``JPEGImages/``, ``Annotations/`` and
    ``ImageSets/Main/`` (a ``VOCdevkit`` folder or its parent also works: the
    ``VOC2007`` inside is found). ``split`` names ``ImageSets/Main/<split>.txt``.
    Class names come from ``classes=``, else the folder's ``classes.txt``, else the
    20 VOC classes. XML is parsed by ``torchvision``'s VOC parser. Annotations are
    read once at construction; images are read on indexing.
    Taught in chapter 04.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 classes: Sequence[str] | None = None):
        self.root = _find_voc_root(Path(root))
        list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in (self.root / "ImageSets" / "Main").glob("*.txt")
                               if "_" not in p.stem)
            raise ValueError(f"split: {split!r} has no list file {str(list_file)!r}; "
                             f"available splits: {available}")
        if classes is None:
            names_file = self.root / "classes.txt"
            classes = (names_file.read_text().split() if names_file.is_file() else VOC_CLASSES)
        self.split = split
        self.class_names: tuple[str, ...] = tuple(classes)
        self._index = {name: k for k, name in enumerate(self.class_names)}
        self.image_ids: list[str] = list_file.read_text().split()
        self._annotations = [self._parse(i) for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> Sample:
        ann = self._annotations[i]
        path = self.root / "JPEGImages" / ann["filename"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"image {ann['filename']!r} of {self.image_ids[i]!r}: "
                                    f"cannot read {str(path)!r}")
        return Sample(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), *self._targets(i))

    def annotation(self, i: int) -> Sample:
        """The ``i``-th sample's boxes, labels and flags without reading its image."""
        return Sample(None, *self._targets(i))

    def image_size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` from the annotation's ``<size>``."""
        return self._annotations[i]["size"]

    def _targets(self, i):
        ann = self._annotations[i]
        return (ann["boxes"].copy(), ann["labels"].copy(), ann["difficult"].copy(),
                self.image_ids[i])

    def _parse(self, image_id: str) -> dict:
        from torchvision.datasets import VOCDetection

        path = self.root / "Annotations" / f"{image_id}.xml"
        try:
            ann = VOCDetection.parse_voc_xml(ET.parse(path).getroot())["annotation"]
        except (OSError, ET.ParseError, KeyError) as err:
            raise ValueError(f"annotation of {image_id!r}: cannot parse {str(path)!r} as VOC "
                             f"XML ({err})") from err
        objects = ann.get("object", [])
        boxes, labels, difficult = [], [], []
        for obj in objects:
            name = obj["name"].strip()
            if name not in self._index:
                raise ValueError(f"annotation {str(path)!r}: class {name!r} is not in class_names "
                                 f"{self.class_names}; pass classes=... to VOCDataset")
            b = obj["bndbox"]
            boxes.append([float(b["xmin"]) - 1, float(b["ymin"]) - 1,
                          float(b["xmax"]), float(b["ymax"])])
            labels.append(self._index[name])
            difficult.append(str(obj.get("difficult", "0")).strip() == "1")
        size = ann.get("size", {})
        return {
            "filename": ann.get("filename", f"{image_id}.jpg").strip(),
            "size": (int(size.get("height", 0)), int(size.get("width", 0))),
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "difficult": np.asarray(difficult, dtype=bool),
        }


def dataset_statistics(dataset: VOCDataset) -> dict[str, np.ndarray]:
    """Per-object ``side`` (sqrt of box area, px), ``width``, ``height``, ``aspect``
    (width / height), ``label``, ``difficult``; per-image ``objects_per_image``,
    ``image_height``, ``image_width``. Reads annotations only. Taught in chapter 04."""
    rows = [dataset.annotation(i) for i in range(len(dataset))]
    boxes = np.concatenate([r.boxes for r in rows]) if rows else np.zeros((0, 4), np.float32)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = np.array([dataset.image_size(i) for i in range(len(dataset))]).reshape(-1, 2)
    return {
        "width": w, "height": h, "side": np.sqrt(w * h), "aspect": w / np.maximum(h, 1e-6),
        "label": np.concatenate([r.labels for r in rows]) if rows else np.zeros(0, np.int64),
        "difficult": np.concatenate([r.difficult for r in rows]) if rows else np.zeros(0, bool),
        "objects_per_image": np.array([len(r.labels) for r in rows]),
        "image_height": sizes[:, 0], "image_width": sizes[:, 1],
    }


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
        image, box, label = _single_object_image(rng, recipe, width, height, longer)
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


def render_scene(rng: np.random.Generator, recipe: dict, width: int | None = None,
                 height: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Draw one cluttered scene: RGB uint8 image and its objects.

    Each object is a dict with ``box`` (x1y1x2y2 pixel edges, int), ``label``,
    ``truncated``, ``difficult`` and ``visible`` (fraction of its area not
    occluded and inside the image). Taught in chapter 04.
    """
    lo, hi = recipe["image_side"]
    width = int(rng.integers(lo, hi + 1)) if width is None else width
    height = int(rng.integers(lo, hi + 1)) if height is None else height
    image = _background(rng, recipe, width, height)
    n_distract = int(rng.integers(recipe["distractors_per_image"][0],
                                  recipe["distractors_per_image"][1] + 1))
    n_on_top = int(rng.integers(0, 3))
    for _ in range(n_distract):
        _draw_distractor(rng, image, thin_only=False)

    owner = np.full((height, width), -1, np.int16)  # which object is on top, per pixel
    placed: list[dict] = []
    n_objects = int(rng.integers(recipe["objects_per_image"][0],
                                 recipe["objects_per_image"][1] + 1))
    for _ in range(n_objects):
        for _attempt in range(20):
            obj = _sample_object(rng, recipe, width, height)
            if obj is None:
                continue
            covered = obj["mask"] >= 128
            ok = True
            for k, other in enumerate(placed):
                still = np.count_nonzero((owner == k) & ~covered)
                if still < recipe["min_visible_fraction"] * other["area"]:
                    ok = False
                    break
            if ok:
                owner[covered] = len(placed)
                _paint_object(rng, recipe, image, obj)
                placed.append(obj)
                break
    top = np.zeros((height, width), np.uint8)
    for _ in range(n_on_top):
        _draw_distractor(rng, image, thin_only=True, mask=top)
    sigma = rng.uniform(2.0, 7.0)
    image = _add_noise(rng, image, sigma)

    objects = []
    for k, obj in enumerate(placed):
        visible_px = np.count_nonzero((owner == k) & (top == 0))
        visible = visible_px / max(obj["area"], 1)
        x1, y1, x2, y2 = obj["box"]
        side = max(x2 - x1, y2 - y1)
        difficult = (side < recipe["difficult_if_side_below"]
                     or visible < recipe["difficult_if_visible_below"])
        objects.append({"box": obj["box"], "label": obj["label"], "truncated": obj["truncated"],
                        "difficult": bool(difficult), "visible": float(visible)})
    return image, objects


# ----------------------------------------------------------------------------------------
# Helpers: files
# ----------------------------------------------------------------------------------------

def _stamp(folder: Path) -> str | None:
    path = folder / STAMP_NAME
    return path.read_text().strip() if path.is_file() else None


def _find_voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise FileNotFoundError(f"root: {str(root)!r} is not a VOC-layout folder; expected "
                            "Annotations/, JPEGImages/ and ImageSets/Main/ in it (or in its "
                            "VOC2007/ or VOCdevkit/VOC2007/)")


_PHOTOS: list[np.ndarray] = []


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


def annotation_xml(image_id: str, shape: tuple, objects: list[dict],
                   class_names: Sequence[str]) -> str:
    """VOC annotation XML for one image (boxes converted to 1-based inclusive)."""
    height, width = shape[:2]
    parts = ["<annotation>", "  <folder>SynthVOC</folder>",
             f"  <filename>{image_id}.jpg</filename>",
             "  <source><database>SynthVOC (sppnet-lite)</database></source>",
             f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
             "  <segmented>0</segmented>"]
    for obj in objects:
        x1, y1, x2, y2 = (int(v) for v in obj["box"])
        parts += ["  <object>", f"    <name>{class_names[obj['label']]}</name>",
                  "    <pose>Unspecified</pose>",
                  f"    <truncated>{int(obj['truncated'])}</truncated>",
                  f"    <difficult>{int(obj['difficult'])}</difficult>",
                  (f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                   f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"),
                  "  </object>"]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _objects_to_arrays(objects):
    boxes = np.asarray([o["box"] for o in objects], np.float32).reshape(-1, 4)
    labels = np.asarray([o["label"] for o in objects], np.int64)
    difficult = np.asarray([o["difficult"] for o in objects], bool)
    return boxes, labels, difficult


# ----------------------------------------------------------------------------------------
# Helpers: drawing
# ----------------------------------------------------------------------------------------

def _photos() -> list[np.ndarray]:
    if not _PHOTOS:
        from sklearn.datasets import load_sample_images

        _PHOTOS.extend(np.ascontiguousarray(img) for img in load_sample_images().images)
    return _PHOTOS


def _background(rng, recipe, width, height) -> np.ndarray:
    xx = np.arange(width, dtype=np.float32)[None, :] / width
    yy = np.arange(height, dtype=np.float32)[:, None] / height
    angle = rng.uniform(0, 2 * np.pi)
    t = np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    gradient = c1 + t[..., None] * (c2 - c1)
    if rng.random() < recipe["photo_background_probability"]:
        photo = _photos()[int(rng.integers(len(_photos())))]
        ph, pw = photo.shape[:2]
        zoom = rng.uniform(0.4, 1.0)
        cw, ch = int(pw * zoom), int(ph * zoom)
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        patch = cv2.resize(photo[y0:y0 + ch, x0:x0 + cw], (width, height),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        mix = np.float32(rng.uniform(0.55, 0.9))
        image = mix * patch + (1 - mix) * gradient
    else:
        noise = np.zeros((height, width), np.float32)
        for cell in (4, 16, 48):  # multi-scale value noise
            coarse = rng.uniform(-1, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
            noise += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * cell
        noise *= np.float32(rng.uniform(0.4, 1.2))
        image = gradient + noise[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
        # Soft-edged patches of colour (sharp rectangles would look like the class "square"),
        # drawn and blurred at quarter resolution.
        small = (max(width // 4, 1), max(height // 4, 1))
        tint = np.zeros((small[1], small[0], 3), np.float32)
        weight = np.zeros((small[1], small[0]), np.float32)
        for _ in range(int(rng.integers(2, 8))):
            x, y = int(rng.integers(0, small[0])), int(rng.integers(0, small[1]))
            w, h = int(rng.integers(5, small[0] // 2)), int(rng.integers(5, small[1] // 2))
            tint[y:y + h, x:x + w] = 0.5 * rng.uniform(0, 255, 3)  # premultiplied by weight
            weight[y:y + h, x:x + w] = 0.5
        tint = cv2.resize(cv2.GaussianBlur(tint, (0, 0), 2.5), (width, height))
        weight = cv2.resize(cv2.GaussianBlur(weight, (0, 0), 2.5), (width, height))
        image = image * (1 - weight[..., None]) + tint
    return np.clip(image, 0, 255).astype(np.uint8)


def _random_colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _draw_distractor(rng, image, thin_only: bool, mask: np.ndarray | None = None) -> None:
    height, width = image.shape[:2]
    colour = _random_colour(rng)
    kind = int(rng.integers(0, 2 if thin_only else 3))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    size = float(np.exp(rng.uniform(np.log(10), np.log(120))))
    targets = [image] if mask is None else [image, mask]
    if kind == 0:  # a straight line
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)]) * size
        p1 = (int(cx - d[0]), int(cy - d[1]))
        p2 = (int(cx + d[0]), int(cy + d[1]))
        thickness = int(rng.integers(1, 4))
        for t, c in zip(targets, (colour, 255)):
            cv2.line(t, p1, p2, c, thickness, cv2.LINE_AA)
    elif kind == 1:  # a scribble
        pts = np.stack([cx + np.cumsum(rng.normal(0, size / 3, 5)),
                        cy + np.cumsum(rng.normal(0, size / 3, 5))], 1).astype(np.int32)
        thickness = int(rng.integers(1, 3))
        for t, c in zip(targets, (colour, 255)):
            cv2.polylines(t, [pts], False, c, thickness, cv2.LINE_AA)
    else:  # a jagged irregular blob (many vertices, strongly varying radius)
        k = int(rng.integers(9, 16))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = size / 2 * rng.uniform(0.25, 1.0, k)
        pts = np.stack([cx + radii * np.cos(angles),
                        cy + radii * rng.uniform(0.5, 1.5) * np.sin(angles)], 1)
        cv2.fillPoly(image, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


def _shape_polygons(name: str, rng) -> list[tuple[np.ndarray, bool]]:
    """Unit-square ([-1, 1]^2) polygons; ``True`` fills, ``False`` cuts a hole."""
    if name in ("disc", "ring"):
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        circle = np.stack([np.cos(t), np.sin(t)], 1)
        if name == "disc":
            return [(circle, True)]
        return [(circle, True), (circle * rng.uniform(0.45, 0.65), False)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), True)]
    if name == "triangle":
        tri = np.array([[0, -1], [1, 1], [-1, 1]], float)
        return [(tri * [1, -1] if rng.random() < 0.3 else tri, True)]
    if name == "star":
        k = np.arange(10)
        r = np.where(k % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        t = -np.pi / 2 + k * np.pi / 5
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        pts[:, 1] = (pts[:, 1] - (pts[:, 1].max() + pts[:, 1].min()) / 2) * 2 / np.ptp(pts[:, 1])
        return [(pts, True)]
    if name == "cross":
        a = rng.uniform(0.28, 0.4)
        return [(np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                           [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], float), True)]
    raise ValueError(f"class name {name!r} has no shape; expected one of "
                     "disc, square, triangle, star, cross, ring")


def _sample_object(rng, recipe, width, height) -> dict | None:
    lo, hi = recipe["object_side"]
    longer = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    longer = min(longer, 0.9 * min(width, height))
    aspect = float(np.exp(rng.uniform(np.log(recipe["aspect"][0]), np.log(recipe["aspect"][1]))))
    w, h = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    label = int(rng.integers(len(recipe["classes"])))
    # Centre such that at most half of each side may leave the image (truncation).
    if rng.random() < 0.25:
        cx, cy = rng.uniform(-0.25 * w, width + 0.25 * w), rng.uniform(-0.25 * h, height + 0.25 * h)
    else:
        cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
    return _rasterise(rng, recipe, label, cx, cy, w, h, width, height)


def _rasterise(rng, recipe, label, cx, cy, w, h, width, height) -> dict | None:
    theta = np.deg2rad(rng.uniform(-1, 1) * recipe["max_rotation_deg"])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    polys = _shape_polygons(recipe["classes"][label], rng)
    pts_all = [((p * [w / 2, h / 2]) @ rot.T + [cx, cy], fill) for p, fill in polys]
    outer = pts_all[0][0]
    fx1, fy1 = outer.min(0)
    fx2, fy2 = outer.max(0)
    full_area = max((fx2 - fx1) * (fy2 - fy1), 1e-6)
    x1, y1 = max(int(np.floor(fx1)), 0), max(int(np.floor(fy1)), 0)
    x2, y2 = min(int(np.ceil(fx2)), width), min(int(np.ceil(fy2)), height)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    if (x2 - x1) * (y2 - y1) < recipe["min_in_image_fraction"] * full_area:
        return None
    mask = np.zeros((height, width), np.uint8)
    for pts, fill in pts_all:
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255 if fill else 0,
                     cv2.LINE_AA, shift=4)
    ys, xs = np.nonzero(mask >= 128)
    if len(xs) < 12:
        return None
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    truncated = fx1 < -0.5 or fy1 < -0.5 or fx2 > width + 0.5 or fy2 > height + 0.5
    full_px = np.count_nonzero(mask >= 128) / max(
        ((x2 - x1) * (y2 - y1)) / full_area, 1e-6) if truncated else len(xs)
    return {"mask": mask, "box": box, "label": label, "truncated": bool(truncated),
            "area": float(full_px)}


def _paint_object(rng, recipe, image, obj) -> None:
    x1, y1, x2, y2 = obj["box"]
    region = image[y1:y2, x1:x2]
    alpha = obj["mask"][y1:y2, x1:x2].astype(np.float32)[..., None] / 255.0
    bg = region.reshape(-1, 3).astype(np.float32).mean(0)
    lum_bg = float(bg @ [0.299, 0.587, 0.114])
    colour = np.array(_random_colour(rng), np.float32)
    for _ in range(12):  # shape must stand out from its local background
        if abs(float(colour @ [0.299, 0.587, 0.114]) - lum_bg) >= recipe["min_contrast"]:
            break
        colour = np.array(_random_colour(rng), np.float32)
    else:
        colour = np.full(3, 20.0 if lum_bg > 128 else 235.0, np.float32)
    h, w = y2 - y1, x2 - x1
    style = rng.random()
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if style < 0.25:  # stripes of a darker/lighter shade
        period = rng.uniform(4, 12)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = (np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period) > 0)
        fill = fill * np.where(stripes, rng.uniform(0.6, 0.85), 1.0)[..., None]
    elif style < 0.5:  # a gradient within the shape
        t = np.linspace(0.7, 1.15, w, dtype=np.float32)[None, :, None]
        fill = fill * t
    fill = fill + rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    out = region.astype(np.float32) * (1 - alpha) + np.clip(fill, 0, 255) * alpha
    region[...] = np.clip(out, 0, 255).astype(np.uint8)


def _single_object_image(rng, recipe, width, height, longer):
    # Lighter clutter than the detection scenes: chapter 04 studies scale, aspect and
    # framing, and must train in about a minute.
    image = _background(rng, dict(recipe, photo_background_probability=0.3), width, height)
    for _ in range(int(rng.integers(0, 2))):
        _draw_distractor(rng, image, thin_only=True)
    label = int(rng.integers(len(recipe["classes"])))
    for _ in range(50):
        aspect = float(np.exp(rng.uniform(*np.log(recipe["aspect"]))))
        w, h = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
        cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
        obj = _rasterise(rng, recipe, label, cx, cy, w, h, width, height)
        if obj is not None:
            break
    _paint_object(rng, recipe, image, obj)
    return _add_noise(rng, image, rng.uniform(2, 6)), obj["box"], label


def _add_noise(rng, image, sigma) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(image + noise, 0, 255).astype(np.uint8)
