"""The training pipeline on tiny fakes: stage keys, caching and resuming, seeds, a reader's folder."""

import json

import numpy as np
import pytest
import torch

from sppnet_lite import pipeline as pl
from sppnet_lite.pipeline import Pipeline, PipelineConfig


@pytest.fixture
def fast(monkeypatch):
    """A tiny ZFLite in place of the pretrained one and jittered ground truth in place of
    selective search, so a whole pipeline runs in seconds."""
    from sppnet_lite import pretrain
    from sppnet_lite.backbone import ZFLite
    from sppnet_lite.cache import config_hash

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


def tiny_config(**changes):
    settings = {"scales": (160,), "iterations": 60, "batch_size": 32, "hidden": 32,
                "svm_cache": 500, "val_windows": 200, **changes}
    return PipelineConfig.default(True, **settings)


def make(data, run, **changes):
    return Pipeline(data, run, quick=True, device="cpu", config=tiny_config(**changes),
                    progress=False)


def test_stage_keys_follow_the_settings_they_read(tiny_voc, tmp_path, fast):
    base = make(tiny_voc, tmp_path / "a")
    keys = {s: base.stage_key(s) for s in ("windows-train", "head", "svms-fc7", "svms-pool5", "regressor")}
    more = make(tiny_voc, tmp_path / "b", iterations=61)
    assert more.stage_key("windows-train") == keys["windows-train"]
    assert more.stage_key("regressor") == keys["regressor"]
    assert more.stage_key("svms-pool5") == keys["svms-pool5"]
    assert more.stage_key("head") != keys["head"]
    assert more.stage_key("svms-fc7") != keys["svms-fc7"]  # its input, the head, changed
    looser = make(tiny_voc, tmp_path / "c", fg_iou=0.4)
    assert all(looser.stage_key(s) != k for s, k in keys.items())  # labels change everything
    negatives = make(tiny_voc, tmp_path / "d", svm_negative_iou=0.2)
    assert negatives.stage_key("svms-fc7") != keys["svms-fc7"]
    assert negatives.stage_key("head") == keys["head"]
    assert base.stage_key("windows-val") != keys["windows-train"]
    with pytest.raises(ValueError, match="stage must be"):
        base.stage_key("bogus")


def test_run_caches_every_stage_and_a_rerun_computes_nothing(tiny_voc, tmp_path, fast, monkeypatch):
    first = make(tiny_voc, tmp_path / "run").run()
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["classes"] == list(first.class_names) and saved["config"]["iterations"] == 60
    for name in ("train_fc_head", "head_outputs"):
        monkeypatch.setattr(pl, name, lambda *a, **k: pytest.fail("recomputed a cached stage"))
    from sppnet_lite import svm, window_store

    monkeypatch.setattr(svm, "train_svms", lambda *a, **k: pytest.fail("SVMs retrained"))
    monkeypatch.setattr(window_store.WindowStore, "put", lambda *a, **k: pytest.fail("re-pooled"))
    again = make(tiny_voc, tmp_path / "run")
    second = again.run()
    sample = again.dataset("test")[0]
    boxes = again.proposals("test")[0]
    a, b = first.detect(sample.image, boxes, score_threshold=-5), second.detect(sample.image, boxes,
                                                                              score_threshold=-5)
    assert len(a) > 0
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_same_seed_gives_the_same_detector(tiny_voc, tmp_path, fast):
    runs = [make(tiny_voc, tmp_path / name) for name in ("one", "two")]
    heads = [run.head()[0].state_dict() for run in runs]
    for key in heads[0]:
        assert torch.equal(heads[0][key], heads[1][key]), key
    svms = [run.svms() for run in runs]
    np.testing.assert_array_equal(svms[0].weights, svms[1].weights)
    other = make(tiny_voc, tmp_path / "three", seed=1)
    assert not torch.equal(other.head()[0].state_dict()["fc8.weight"], heads[0]["fc8.weight"])


def test_a_readers_folder_names_its_classes_and_holds_out_validation(photo_like_voc, tmp_path,
                                                                      fast):
    pipe = make(photo_like_voc, tmp_path / "run")
    assert pipe.class_names == ("hedgehog",)
    train, val = pipe.dataset("train"), pipe.dataset("val")
    assert set(train.image_ids).isdisjoint(val.image_ids)
    trainval = (photo_like_voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert sorted(train.image_ids + val.image_ids) == sorted(trainval)
    assert len(val) == round(0.2 * len(trainval))
    notes = " ".join(pipe.notes)
    assert "trainval" in notes and "class names come from the annotations" in notes
    assert "holding out" in notes
    named = make(photo_like_voc, tmp_path / "named", classes=("hedgehog", "badger"))
    assert named.class_names == ("hedgehog", "badger")
    assert named.dataset("test").class_names == ("hedgehog", "badger")


def test_a_run_folder_is_not_overwritten_by_another_trunk(tiny_voc, tmp_path, fast):
    make(tiny_voc, tmp_path / "run").run()
    weights = tmp_path / "resnet18.pth"
    torch.save({"not": torch.zeros(1)}, weights)
    other = make(tiny_voc, tmp_path / "run", backbone="resnet18", weights=str(weights))
    with pytest.raises(ValueError, match="backbone 'zflite'"):
        other.run()


def test_config_checks():
    with pytest.raises(ValueError, match="needs a weights file"):
        Pipeline(".", "run", quick=True, device="cpu", config=tiny_config(backbone="vgg16"))
    with pytest.raises(ValueError, match="backbone must be"):
        Pipeline(".", "run", quick=True, device="cpu", config=tiny_config(backbone="zf5"))
    with pytest.raises(ValueError, match="extractor must be"):
        Pipeline(".", "run", quick=True, device="cpu", config=tiny_config(extractor="warp"))
