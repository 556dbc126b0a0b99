"""Reading (and writing) the Pascal VOC folder layout: any annotated photo set, SynthVOC included.

A VOC-layout folder holds ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and
``ImageSets/Main/<split>.txt`` (one image id per line). :class:`VOCDataset` reads
one split of it; the class names come from ``classes=``, else the folder's
``classes.txt``, else the sorted names found in the split's annotations (what a
labelImg folder of your own photos needs).

Box convention. VOC XML stores 1-based, inclusive pixel indices. The package uses
continuous x1y1x2y2 pixel-edge coordinates, float32: a box covering columns
``c0..c1`` (0-based, inclusive) is ``x1 = c0, x2 = c1 + 1``. Reading converts
``(xmin - 1, ymin - 1, xmax, ymax)``; :func:`annotation_xml` is the exact inverse.
Images are RGB uint8 ``(H, W, 3)``. Taught in chapter 04.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .cache import config_hash, file_hash

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")
"""The 20 PASCAL VOC 2007 classes, in the devkit's (alphabetical) order."""

STAMP_NAME = "recipe_hash.txt"
"""The file a generated set carries: the hash of the recipe that made it."""


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


class VOCDataset:
    """One split of a VOC-layout folder: SynthVOC, a real VOC 2007 devkit, or your own photos.

    ``root`` is the folder holding ``JPEGImages/``, ``Annotations/`` and
    ``ImageSets/Main/`` (a ``VOCdevkit`` folder or its parent also works: the
    ``VOC2007`` inside is found). ``split`` names ``ImageSets/Main/<split>.txt``.
    Class names come from ``classes=``, else the folder's ``classes.txt``, else the
    sorted names in this split's annotations; ``class_source`` says which. XML is
    parsed by ``torchvision``'s VOC parser, once, at construction; images are read
    on indexing. Taught in chapter 04.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 classes: Sequence[str] | None = None):
        self.root = find_voc_root(Path(root))
        list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise ValueError(f"split: {split!r} has no list file {str(list_file)!r}; "
                             f"available splits: {available_splits(self.root)}")
        self.split = split
        self.image_ids: list[str] = list_file.read_text().split()
        parsed = [self._parse(i) for i in self.image_ids]
        names_file = self.root / "classes.txt"
        if classes is not None:
            self.class_source = "argument"
        elif names_file.is_file():
            classes, self.class_source = names_file.read_text().split(), "classes.txt"
        else:
            classes = sorted({obj[0] for ann in parsed for obj in ann["objects"]})
            self.class_source = "annotations"
        self.class_names: tuple[str, ...] = tuple(classes)
        index = {name: k for k, name in enumerate(self.class_names)}
        self._annotations = []
        for image_id, ann in zip(self.image_ids, parsed):
            unknown = [name for name, *_ in ann["objects"] if name not in index]
            if unknown:
                raise ValueError(f"annotation of {image_id!r} in {str(self.root)!r}: class "
                                 f"{unknown[0]!r} is not in class_names {self.class_names}; "
                                 "name every class (sppnet-lite train --classes a,b,c, or "
                                 "VOCDataset(..., classes=...))")
            objects = ann.pop("objects")
            ann["boxes"] = np.asarray([o[1] for o in objects], np.float32).reshape(-1, 4)
            ann["labels"] = np.asarray([index[o[0]] for o in objects], np.int64)
            ann["difficult"] = np.asarray([o[2] for o in objects], bool)
            self._annotations.append(ann)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> Sample:
        path = self.image_path(i)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"image of {self.image_ids[i]!r}: cannot read {str(path)!r}")
        return Sample(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), *self._targets(i))

    def image_path(self, i: int) -> Path:
        """The file of the ``i``-th image."""
        return self.root / "JPEGImages" / self._annotations[i]["filename"]

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
            objects = ann.get("object", [])
            objects = [(obj["name"].strip(), _box(obj["bndbox"]),
                        str(obj.get("difficult", "0")).strip() == "1") for obj in objects]
        except (OSError, ET.ParseError, KeyError, ValueError) as err:
            raise ValueError(f"annotation of {image_id!r}: cannot parse {str(path)!r} as VOC "
                             f"XML ({type(err).__name__}: {err})") from err
        size = ann.get("size", {})
        return {"filename": ann.get("filename", f"{image_id}.jpg").strip(),
                "size": (int(size.get("height", 0)), int(size.get("width", 0))),
                "objects": objects}


class Subset:
    """Some images of a dataset, with the same interface (``[i]``, ``len``, ``image_ids``,
    ``class_names``, ``annotation``, ``image_path``). Used for held-out validation
    images and for evaluating on the first N images."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.class_names = dataset.class_names
        self.image_ids = [dataset.image_ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.dataset[self.indices[i]]

    def annotation(self, i: int) -> Sample:
        return self.dataset.annotation(self.indices[i])

    def image_path(self, i: int) -> Path:
        return self.dataset.image_path(self.indices[i])


def training_splits(root: str | os.PathLike, train: str = "train", val: str = "val",
                    classes: Sequence[str] | None = None, val_fraction: float = 0.2,
                    seed: int = 0) -> tuple:
    """The training and validation images of a VOC folder: ``(train, val, notes)``.

    Falls back to ``trainval`` when the folder has neither ``train`` nor ``val``, and
    holds out ``val_fraction`` of the training images (seeded) when it has no ``val``
    list, as a folder of your own labelled photos often has not. The class names
    come from the training split (:class:`VOCDataset`); ``notes`` say, in words,
    every such decision. Taught in chapter 10.
    """
    splits = available_splits(root)
    name, notes = train, []
    if name not in splits and "trainval" in splits and val not in splits:
        name = "trainval"
        notes.append(f"no {train!r} split: training on 'trainval'")
    full = VOCDataset(root, name, classes=classes)
    if full.class_source == "annotations":
        notes.append(f"no classes.txt: the class names come from the annotations of {name!r}: "
                     f"{', '.join(full.class_names)} (name them with --classes a,b,c)")
    if val in splits:
        return full, VOCDataset(root, val, classes=full.class_names), notes
    n_val = max(1, round(val_fraction * len(full)))
    if n_val >= len(full):
        raise ValueError(f"split {name!r} of {str(root)!r} has {len(full)} image(s) and no {val!r} "
                         f"list: holding out {val_fraction:.0%} for validation needs more images")
    order = np.random.default_rng(seed).permutation(len(full))
    notes.append(f"no {val!r} split: holding out {n_val} of the {len(full)} {name!r} images "
                 "for validation")
    return Subset(full, np.sort(order[n_val:])), Subset(full, np.sort(order[:n_val])), notes


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from an image file, or a ``ValueError`` naming the file.

    A file cut short is an error (OpenCV alone would return the decoded part with a
    grey remainder): Pillow decodes it fully first and reports truncation.
    """
    from PIL import Image

    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except OSError as err:  # PIL's errors for unreadable, unknown or truncated files
        reason = str(err).strip() or type(err).__name__
        raise ValueError(f"cannot read {str(path)!r} as an image ({reason})") from None
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError(f"cannot read {str(path)!r} as an image (OpenCV cannot decode it)")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def check_images(dataset) -> None:
    """Read every image of ``dataset`` once with :func:`read_image`: a missing, corrupt or
    truncated file is a ``ValueError`` that names it, before any training starts."""
    for i in range(len(dataset)):
        path = dataset.image_path(i)
        if not path.is_file():
            raise ValueError(f"image {dataset.image_ids[i]!r}: no file {str(path)!r}")
        read_image(path)


def find_voc_root(root: Path) -> Path:
    """The folder holding ``Annotations/`` and ``ImageSets/Main/``: ``root`` itself, or its
    ``VOC2007/`` or ``VOCdevkit/VOC2007/``; ``FileNotFoundError`` otherwise."""
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise FileNotFoundError(f"root: {str(root)!r} is not a VOC-layout folder; expected "
                            "Annotations/, JPEGImages/ and ImageSets/Main/ in it (or in its "
                            "VOC2007/ or VOCdevkit/VOC2007/)")


def available_splits(root: str | os.PathLike) -> list[str]:
    """The split names of a VOC-layout folder (``ImageSets/Main/*.txt`` without ``_``)."""
    main = find_voc_root(Path(root)) / "ImageSets" / "Main"
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def dataset_stamp(root: str | os.PathLike) -> str:
    """A key for a VOC folder's content, for cache keys.

    A generated SynthVOC folder carries the hash of its recipe (``recipe_hash.txt``);
    any other folder is keyed by the bytes of its list files, annotations and
    ``classes.txt``, so editing an annotation never serves a stale cache (the images
    themselves are keyed by content where they are cached)."""
    folder = find_voc_root(Path(root))
    stamp = folder / STAMP_NAME
    if stamp.is_file():
        return stamp.read_text().strip()
    files = sorted([*(folder / "ImageSets" / "Main").glob("*.txt"),
                    *(folder / "Annotations").glob("*.xml"), *folder.glob("classes.txt")])
    return config_hash([(p.relative_to(folder).as_posix(), file_hash(p)) for p in files])


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


def _box(bndbox: dict) -> list[float]:
    """VOC's 1-based inclusive ``bndbox`` as x1y1x2y2 pixel edges."""
    return [float(bndbox["xmin"]) - 1, float(bndbox["ymin"]) - 1,
            float(bndbox["xmax"]), float(bndbox["ymax"])]


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
