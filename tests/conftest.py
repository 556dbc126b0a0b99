"""Shared fixtures: a tiny generated VOC folder and variants of it a reader might bring."""

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch


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


@pytest.fixture
def fast(monkeypatch):
    """A tiny ZFLite in place of the pretrained one and jittered ground truth in place of
    selective search, so a whole pipeline runs in seconds."""
    from sppnet_lite import pretrain
    from sppnet_lite.backbone import ZFLite
    from sppnet_lite.cache import config_hash
    from sppnet_lite.pipeline import Pipeline

    def tiny_trunk(quick=None, device=None, progress=True):
        torch.manual_seed(0)
        trunk = ZFLite((8, 8, 8, 8, 8)).eval()
        trunk.checkpoint_hash = config_hash(pretrain.pretrain_config(quick))
        return trunk

    def jittered_proposals(self, split):
        ds = self.dataset(split)
        out = []
        for i in range(len(ds)):
            rng = np.random.default_rng([7, i])
            gt = ds.annotation(i).boxes
            near = np.repeat(gt, 6, axis=0) + rng.normal(0, 8, (6 * len(gt), 4))
            xy = rng.uniform(0, 150, (20, 2))
            far = np.concatenate([xy, xy + rng.uniform(20, 80, (20, 2))], 1)
            boxes = np.concatenate([near, far]).astype(np.float32)
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 4)
            out.append(boxes)
        return out

    monkeypatch.setattr(pretrain, "ensure_pretrained", tiny_trunk)
    monkeypatch.setattr(Pipeline, "proposals", jittered_proposals)
