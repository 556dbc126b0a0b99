"""The training pipeline on tiny fakes: stage keys, caching and resuming, seeds, a reader's folder."""

import json

import numpy as np
import pytest
import torch

from sppnet_lite import pipeline as pl
from sppnet_lite.pipeline import Pipeline, PipelineConfig


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
    pipe = make(tiny_voc, tmp_path / "run")
    first = pipe.run()
    seconds = pipe.training_seconds()
    assert set(seconds) == {"windows", "head", "svms", "regressor"}
    assert all(value > 0 for value in seconds.values())
    store = pipe.window_store("train")
    assert store.disk_bytes() == sum(p.stat().st_size for p in store.dir.iterdir()) > 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["classes"] == list(first.class_names) and saved["config"]["iterations"] == 60
    for name in ("train_fc_head", "head_outputs"):
        monkeypatch.setattr(pl, name, lambda *a, **k: pytest.fail("recomputed a cached stage"))
    from sppnet_lite import svm, window_store

    monkeypatch.setattr(svm, "train_svms", lambda *a, **k: pytest.fail("SVMs retrained"))
    monkeypatch.setattr(window_store.WindowStore, "put", lambda *a, **k: pytest.fail("re-pooled"))
    again = make(tiny_voc, tmp_path / "run")
    second = again.run()
    assert again.training_seconds() == seconds  # as recorded when each stage was computed
    assert make(tiny_voc, tmp_path / "run").training_seconds() == seconds  # without run() first
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


def test_a_stage_file_of_another_layout_is_recomputed_not_served(tiny_voc, tmp_path, fast):
    from sppnet_lite.cache import save_arrays

    make(tiny_voc, tmp_path / "run").head()
    (path,) = (tmp_path / "run" / "stages").glob("head-*.npz")
    save_arrays(path, {"w:fc6.weight": np.zeros(3, np.float32)}, {"history": {}, "in_dim": 3})
    head, _ = make(tiny_voc, tmp_path / "run").head()
    assert head.fc6.weight.shape[1] > 3 and "w:fc6.weight" not in np.load(path).files


def test_default_pipeline_on_another_folder_gets_its_own_run_folder(tiny_voc, photo_like_voc,
                                                                     tmp_path, monkeypatch):
    from sppnet_lite import config

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
    one = pl.default_pipeline(quick=True, data_dir=tiny_voc, iterations=5)
    same = pl.default_pipeline(quick=True, data_dir=tiny_voc, iterations=5)
    other = pl.default_pipeline(quick=True, data_dir=photo_like_voc, iterations=5)
    assert one.data_dir == tiny_voc and other.data_dir == photo_like_voc
    assert one.run_dir == same.run_dir and one.run_dir.parent == tmp_path / "runs"
    assert other.run_dir != one.run_dir
    assert one.windows_dir == other.windows_dir == tmp_path / "windows"  # keyed by the data inside
