"""Shared fixtures: a tiny generated VOC folder and variants of it a reader might bring."""

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest


def tiny_recipe():
    from sppnet_lite.data import load_recipe

    recipe = load_recipe()
    recipe["splits"] = {"quick": {"train": 16, "val": 8, "test": 8},
                        "full": {"train": 16, "val": 8, "test": 8}}
    recipe["image_side"] = [200, 260]
    recipe["object_side"] = [40, 110]
    recipe["objects_per_image"] = [1, 3]
    return recipe


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    """SynthVOC with 16 train, 8 val and 8 test images of 200–260 px (generated once)."""
    from sppnet_lite.data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny") / "voc", quick=True, recipe=tiny_recipe(),
                        workers=1)


@pytest.fixture(scope="session")
def photo_like_voc(tiny_voc, tmp_path_factory):
    """What a reader's labelImg folder looks like: one custom class ("hedgehog"), no
    ``classes.txt``, only ``trainval`` and ``test`` lists (no ``val``)."""
    root = tmp_path_factory.mktemp("photos") / "hedgehogs"
    shutil.copytree(tiny_voc, root)
    (root / "classes.txt").unlink()
    (root / "recipe_hash.txt").unlink()
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").unlink()
    for path in (root / "Annotations").glob("*.xml"):
        tree = ET.parse(path)
        for obj in tree.getroot().findall("object"):
            obj.find("name").text = "hedgehog"
        tree.write(path)
    return root


@pytest.fixture()
def image():
    """A 64×48 RGB uint8 noise image for the window extractors and the store."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture()
def boxes():
    """Four windows of :func:`image`, from the whole image to a 3×3 one."""
    return np.array([[0, 0, 64, 48], [4, 4, 20, 28], [30, 10, 33, 13], [40, 20, 64, 48]],
                    np.float32)
