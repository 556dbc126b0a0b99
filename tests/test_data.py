"""SynthVOC generator and the VOC-layout dataset class (chapter 04)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from sppnet_lite import data


def tiny_recipe(**changes) -> dict:
    recipe = data.load_recipe()
    recipe["splits"] = {"quick": {"train": 5, "val": 3, "test": 4},
                        "full": {"train": 2, "val": 1, "test": 1}}
    recipe.update(changes)
    return recipe


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthvoc")
    return data.make_dataset(root, seed=7, quick=True, recipe=tiny_recipe(), workers=2)


def test_recipe_and_classes():
    recipe = data.load_recipe()
    assert len(data.CLASSES) >= 5 and tuple(recipe["classes"]) == data.CLASSES
    full = recipe["splits"]["full"]
    assert full["train"] + full["val"] >= 600 and full["test"] >= 300
    with pytest.raises(FileNotFoundError, match="recipe"):
        data.load_recipe("/nonexistent/recipe.json")


def test_generator_is_deterministic(generated, tmp_path):
    again = data.make_dataset(tmp_path / "again", seed=7, quick=True, recipe=tiny_recipe(),
                              workers=1)  # other worker count, same bytes
    files = sorted(p.relative_to(generated) for p in generated.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (generated / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = data.make_dataset(tmp_path / "other", seed=8, quick=True, recipe=tiny_recipe(),
                              workers=1)
    assert (other / "Annotations" / "train_000000.xml").read_bytes() != (
        generated / "Annotations" / "train_000000.xml").read_bytes()


def test_voc_schema(generated):
    ids = {s: (generated / "ImageSets" / "Main" / f"{s}.txt").read_text().split()
           for s in ("train", "val", "trainval", "test")}
    assert len(ids["train"]) == 5 and len(ids["val"]) == 3 and len(ids["test"]) == 4
    assert ids["trainval"] == ids["train"] + ids["val"]
    for image_id in ids["trainval"] + ids["test"]:
        root = ET.parse(generated / "Annotations" / f"{image_id}.xml").getroot()
        assert root.tag == "annotation"
        assert root.findtext("filename") == f"{image_id}.jpg"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        image = cv2.imread(str(generated / "JPEGImages" / f"{image_id}.jpg"))
        assert image.shape == (height, width, 3)
        objects = root.findall("object")
        assert 1 <= len(objects) <= 6
        for obj in objects:
            assert obj.findtext("name") in data.CLASSES
            assert obj.findtext("difficult") in {"0", "1"}
            assert obj.findtext("truncated") in {"0", "1"}
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{k}"))
                                      for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height


def test_torchvision_vocdetection_reads_it(generated, tmp_path):
    from torchvision.datasets import VOCDetection

    (tmp_path / "VOCdevkit").mkdir()
    os.symlink(generated, tmp_path / "VOCdevkit" / "VOC2007")
    voc = VOCDetection(str(tmp_path), year="2007", image_set="test", download=False)
    image, target = voc[0]
    objects = target["annotation"]["object"]
    assert image.size == (int(target["annotation"]["size"]["width"]),
                          int(target["annotation"]["size"]["height"]))
    ours = data.VOCDataset(tmp_path, "test")[0]
    assert [o["name"] for o in objects] == [data.CLASSES[k] for k in ours.labels]


def test_dataset_class_on_generated(generated):
    ds = data.VOCDataset(generated, "train")
    assert len(ds) == 5 and ds.class_names == data.CLASSES
    sample = ds[0]
    assert sample.image.dtype == np.uint8 and sample.image.ndim == 3
    assert sample.boxes.dtype == np.float32 and sample.boxes.shape == (len(sample.labels), 4)
    assert sample.labels.dtype == np.int64 and sample.difficult.dtype == bool
    assert sample.image_id == ds.image_ids[0]
    height, width = sample.image.shape[:2]
    assert ds.image_size(0) == (height, width)
    b = sample.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= width).all() and (b[:, 3] <= height).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert ds.annotation(0).image is None
    np.testing.assert_array_equal(ds.annotation(0).boxes, sample.boxes)


def test_statistics_bounds():
    recipe = data.load_recipe()
    scenes = data.make_scenes(30, seed=123)
    sides, aspects, truncated, difficult, counts = [], [], 0, 0, []
    for i, s in enumerate(scenes):
        height, width = s.image.shape[:2]
        lo, hi = recipe["image_side"]
        assert lo <= min(height, width) <= max(height, width) <= hi
        counts.append(len(s.labels))
        rng = np.random.default_rng([123, data.SPLIT_CODES["pretrain"], i])
        _, objects = data.render_scene(rng, recipe)
        assert [o["box"] for o in objects] == [tuple(int(v) for v in b) for b in s.boxes]
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            truncated += o["truncated"]
            difficult += o["difficult"]
            if not o["truncated"]:
                sides.append(max(x2 - x1, y2 - y1))
                aspects.append((x2 - x1) / (y2 - y1))
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) >= 4
    assert min(sides) <= 24 and max(sides) >= 150 and max(sides) <= 215
    assert 0.4 <= min(aspects) <= 0.7 and 1.5 <= max(aspects) <= 2.5
    assert truncated > 0 and difficult > 0


def test_dataset_statistics(generated):
    stats = data.dataset_statistics(data.VOCDataset(generated, "trainval"))
    n_objects = stats["objects_per_image"].sum()
    assert len(stats["side"]) == len(stats["aspect"]) == n_objects
    assert (stats["image_width"] >= 240).all() and (stats["image_height"] <= 480).all()


def write_voc(root, annotations: dict, split="train"):
    """A hand-written VOC folder.

    ``annotations``: ``{image_id: (w, h, [(name, xmin, ymin, xmax, ymax, difficult)])}``.
    """
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (w, h, objects) in annotations.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.full((h, w, 3), 128, np.uint8))
        objs = "".join(
            f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, a, b, c, e, d in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")


def test_dataset_class_on_handwritten_voc(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    write_voc(voc, {"000005": (50, 40, [("dog", 1, 1, 50, 40, 0)]),
                    "000007": (60, 30, [("person", 11, 5, 20, 25, 1), ("car", 3, 4, 7, 8, 0)]),
                    "000009": (20, 20, [])})
    for root in (tmp_path, tmp_path / "VOCdevkit", voc):
        ds = data.VOCDataset(root, "train")
        assert ds.class_names == data.VOC_CLASSES and ds.image_ids == ["000005", "000007", "000009"]
    s = ds[1]
    assert s.image.shape == (30, 60, 3) and s.image_id == "000007"
    np.testing.assert_array_equal(s.boxes, np.array([[10, 4, 20, 25], [2, 3, 7, 8]], np.float32))
    np.testing.assert_array_equal(s.labels, [data.VOC_CLASSES.index("person"),
                                             data.VOC_CLASSES.index("car")])
    np.testing.assert_array_equal(s.difficult, [True, False])
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 50, 40]])  # whole image, 1-based in XML
    empty = ds[2]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    with pytest.raises(ValueError, match="split"):
        data.VOCDataset(voc, "val")
    with pytest.raises(ValueError, match="'dog' is not in class_names"):
        data.VOCDataset(voc, "train", classes=("person", "car"))
    with pytest.raises(FileNotFoundError, match="VOC-layout"):
        data.VOCDataset(tmp_path / "nowhere", "train")


def test_ensure_dataset_regenerates_only_when_recipe_changes(tmp_path, monkeypatch):
    recipe = tiny_recipe()
    monkeypatch.setattr(data, "load_recipe", lambda path=None: dict(recipe))
    root = tmp_path / "synthvoc-quick"
    assert data.ensure_dataset(quick=True, root=root) == root
    marker = root / "JPEGImages" / "marker.txt"
    marker.write_text("kept while the recipe is unchanged")
    data.ensure_dataset(quick=True, root=root)
    assert marker.exists()
    recipe["jpeg_quality"] = 80
    data.ensure_dataset(quick=True, root=root)
    assert not marker.exists() and len(data.VOCDataset(root, "test")) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_classification_set():
    cs = data.make_classification_set(12, seed=5)
    again = data.make_classification_set(12, seed=5)
    assert len(cs) == 12 and cs.class_names == data.CLASSES
    assert all(np.array_equal(a, b) for a, b in zip(cs.images, again.images))
    sizes = {im.shape for im in cs.images}
    assert len(sizes) > 1
    for image, box in zip(cs.images, cs.boxes):
        height, width = image.shape[:2]
        assert 64 <= min(height, width) and max(height, width) <= 192
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    assert ((cs.scale > 0.05) & (cs.scale < 1.0)).all()
    shifted = data.make_classification_set(2, seed=5, offset=10)
    assert np.array_equal(shifted.images[0], cs.images[10])


def test_committed_samples_match_the_generator(tmp_path):
    """data/samples/ holds the first full-set training images: regenerate and compare."""
    samples = data.config.ROOT / "data" / "samples"
    recipe = data.load_recipe()
    for xml in sorted(samples.glob("*.xml")):
        split, index = xml.stem.rsplit("_", 1)
        for sub in ("JPEGImages", "Annotations"):
            (tmp_path / sub).mkdir(exist_ok=True)
        data._write_one((recipe, split, int(index), str(tmp_path)))
        assert (tmp_path / "Annotations" / xml.name).read_text() == xml.read_text()
        ours = cv2.imread(str(tmp_path / "JPEGImages" / f"{xml.stem}.jpg")).astype(int)
        committed = cv2.imread(str(samples / f"{xml.stem}.jpg")).astype(int)
        assert np.abs(ours - committed).mean() < 2  # JPEG codecs may differ by a level
