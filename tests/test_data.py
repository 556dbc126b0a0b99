"""Generating SynthVOC in the VOC layout, the classification set and the pretraining scenes
(sppnet_lite.data); the generated folders read back through sppnet_lite.voc."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from sppnet_lite import data, voc
from sppnet_lite.synthvoc import render_scene


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
    theirs = VOCDetection(str(tmp_path), year="2007", image_set="test", download=False)
    image, target = theirs[0]
    objects = target["annotation"]["object"]
    assert image.size == (int(target["annotation"]["size"]["width"]),
                          int(target["annotation"]["size"]["height"]))
    ours = voc.VOCDataset(tmp_path, "test")[0]
    assert [o["name"] for o in objects] == [data.CLASSES[k] for k in ours.labels]


def test_generated_set_reads_back(generated):
    ds = voc.VOCDataset(generated, "train")
    assert len(ds) == 5 and ds.class_names == data.CLASSES and ds.class_source == "classes.txt"
    assert voc.available_splits(generated) == ["test", "train", "trainval", "val"]
    assert voc.dataset_stamp(generated) == data.recipe_hash(
        dict(tiny_recipe(), seed=7), quick=True)  # the recipe's hash, not the files'
    voc.check_images(ds)
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
    stats = voc.dataset_statistics(voc.VOCDataset(generated, "trainval"))
    n_objects = stats["objects_per_image"].sum()
    assert len(stats["side"]) == len(stats["aspect"]) == n_objects
    assert (stats["image_width"] >= 240).all() and (stats["image_height"] <= 480).all()


def test_scenes_are_rendered_from_the_pretraining_seed():
    scenes = data.make_scenes(4, seed=123)
    assert [s.image_id for s in scenes] == [f"pretrain_{i:06d}" for i in range(4)]
    recipe = data.load_recipe()
    for i, s in enumerate(scenes):
        image, objects = render_scene(np.random.default_rng([123, data.SPLIT_CODES["pretrain"], i]),
                                      recipe)
        np.testing.assert_array_equal(s.image, image)
        assert [o["box"] for o in objects] == [tuple(int(v) for v in b) for b in s.boxes]
        assert s.labels.tolist() == [o["label"] for o in objects]
        assert s.difficult.tolist() == [o["difficult"] for o in objects]
    shifted = data.make_scenes(1, seed=123, offset=3)[0]
    assert shifted.image_id == "pretrain_000003"
    np.testing.assert_array_equal(shifted.image, scenes[3].image)


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
    assert not marker.exists() and len(voc.VOCDataset(root, "test")) == 4
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
